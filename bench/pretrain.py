"""Does continued MLM pretraining on unlabelled in-domain reviews help the fine-tune that follows?

    python bench/pretrain.py [--quick] [--run-dir runs/bench_select] [--fresh]

MiniLM-L6 as it ships against MiniLM-L6 after one epoch of masked-language-model pretraining (`tunefuse.pretrain`)
on 16,000 reviews that are neither labelled nor test rows, each fine-tuned by the same recipe (LP-FT, 3 epochs,
batch 16) on the same 1,600 labelled reviews (400 validation) under 3 seeds, scored on the same 4,000 test reviews.
The pretrained backbone and the fine-tunes are bench/select_backbone.py's (same folder, same keys): what one has
fitted the other loads. Prints each seed's pair, the mean effect and its spread over seeds, and a paired bootstrap
interval of the seed-averaged effect over test rows. Ends with ``pretrain_effect=D sd=S``.

--quick: 600 labelled (480/120), 1,000 test, 2,000 unlabelled texts, one epoch, still 3 seeds.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.common import bench_args, bootstrap_lift, fit_or_load, mlm_backbone, reviews_split, start_tee, write_results  # noqa: E402,E501

SEEDS = (0, 1, 2)


def main() -> None:
    args = bench_args(__doc__, ROOT)
    tee = start_tee()
    run_dir = Path(args.run_dir).resolve() / ("quick" if args.quick else "full")
    (Xtr, ytr), (Xva, yva), (Xt, yt), unlabelled = reviews_split(args.quick)
    print(f"reviews: {len(ytr)} train, {len(yva)} validation, {len(yt)} test; {len(unlabelled)} unlabelled texts; "
          f"seeds {list(SEEDS)}", flush=True)
    folder = mlm_backbone(run_dir, unlabelled, args.fresh)
    # bench/select_backbone.py's names and recipe (finetune_params): its fits are these
    recipe = dict(strategy="lp-ft", epochs=1 if args.quick else 3, batch_size=16, verbose=0)
    arms = {"minilm-l6": {"backbone": "minilm-l6", **recipe}, "minilm-l6+mlm": {"backbone": str(folder), **recipe}}
    correct = {a: [] for a in arms}
    print(f"\n{'seed':>4} {'minilm-l6':>10} {'+mlm':>8} {'effect':>8}  fits")
    for seed in SEEDS:
        accs, hows = {}, []
        for arm, params in arms.items():
            est, _, how = fit_or_load(params, seed, run_dir / "finetunes" / f"{arm}-s{seed}", args.fresh,
                                      Xtr, ytr, Xva, yva)
            ok = est.predict(Xt) == yt
            correct[arm].append(ok)
            accs[arm] = float(ok.mean())
            hows.append(how)
        print(f"{seed:>4} {accs['minilm-l6']:>10.4f} {accs['minilm-l6+mlm']:>8.4f} "
              f"{accs['minilm-l6+mlm'] - accs['minilm-l6']:>+8.4f}  {'/'.join(hows)}", flush=True)
    base, mlm = (np.array([c.mean() for c in correct[a]]) for a in arms)
    effect = mlm - base
    lo, hi = bootstrap_lift(np.mean(correct["minilm-l6"], 0), np.mean(correct["minilm-l6+mlm"], 0))
    print(f"\nmean test accuracy over {len(SEEDS)} seeds: minilm-l6 {base.mean():.4f} (sd {base.std(ddof=1):.4f}), "
          f"+mlm {mlm.mean():.4f} (sd {mlm.std(ddof=1):.4f})")
    print(f"effect of continued pretraining: {effect.mean():+.4f} (sd over seeds {effect.std(ddof=1):.4f}, min "
          f"{effect.min():+.4f}, max {effect.max():+.4f}); seed-averaged effect, 95% paired bootstrap over the "
          f"{len(yt)} test rows: [{lo:+.4f}, {hi:+.4f}]")
    print(f"\npretrain_effect={effect.mean():+.4f} sd={effect.std(ddof=1):.4f}")
    write_results(tee, ROOT / "bench" / "results" / f"pretrain{'_quick' if args.quick else ''}.txt")


if __name__ == "__main__":
    main()
