"""Kill `tunefuse fit` with SIGKILL at 5 moments, resume each, and check it ends as an uninterrupted run does.

    python bench/resume.py [--quick] [--out runs/bench_resume]

The moments: inside a member's epoch (the 5th training step), between members (after the first member is written),
during a fusion's fit, during a save (inside an atomic folder write, before its rename) - each reached exactly
through tunefuse.faults' injection points (TUNEFUSE_FAULT=point:count) - and one kill on a timer (at 45 % of the
uninterrupted run's time). Each killed run is rerun, unchanged, until it finishes. "Identical": the same test
predictions (every model's predictions/*.csv, byte for byte) and leaderboard scores equal to 4 decimals as the
uninterrupted run of the same config and seed. Ends with ``resume_identical=K resume_runs=5``.

The config is a real one: MiniLM-L6 (--quick: its first 2 layers) fine-tuned in full under two seeds on 320 reviews,
a TF-IDF baseline, stacking, a soft vote and a greedy soup; training state saved every second.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import start_tee, write_results  # noqa: E402

SCORES = ["val_score", "val_se", "val_loss", "test_score", "ece"]


def config(out: Path, quick: bool) -> dict:
    overrides = {"num_hidden_layers": 2} if quick else None
    params = {"epochs": 2, "batch_size": 16, **({"config_overrides": overrides} if overrides else {})}
    return {"task": "text-classification",
            "data": {"train": "reviews", "options": {"n_train": 320 if quick else 800, "n_test": 400}},
            "members": [{"name": "ft", "backbone": "minilm-l6", "strategy": "full", "params": params,
                         "grid": {"random_state": [0, 1]}},
                        {"name": "tfidf", "backbone": "tfidf-logreg"}],
            "fusions": [{"method": "stacking"}, {"method": "vote_soft"},
                        {"method": "greedy_soup", "members": ["ft-random_state=0", "ft-random_state=1"]}],
            "seed": 0, "output": str(out), "checkpoint_every_s": 1.0}


def fit(cfg_path: Path, fault: str | None = None, kill_after: float | None = None) -> tuple[int, float]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("TUNEFUSE_FAULT", None)
    if fault:
        env["TUNEFUSE_FAULT"] = fault
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tunefuse.cli", "fit", str(cfg_path), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGKILL):
        print(err[-2000:])
        raise SystemExit(f"fit exited {proc.returncode} (not a kill): see above")
    return proc.returncode, time.perf_counter() - t0


def outcome(run: Path) -> tuple[pd.DataFrame, dict[str, bytes]]:
    board = pd.read_csv(run / "leaderboard.csv").set_index("model")[SCORES].round(4)
    preds = {p.name: p.read_bytes() for p in sorted((run / "predictions").glob("*.csv"))}
    return board, preds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="MiniLM cut to 2 layers (a few minutes)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_resume"))
    args = ap.parse_args()
    tee = start_tee()
    root = Path(args.out) / ("quick" if args.quick else "full")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)

    def cfg_file(name: str) -> Path:
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config(root / name, args.quick), sort_keys=False))
        return path

    rc, ref_s = fit(cfg_file("reference"))
    board, preds = outcome(root / "reference")
    print(f"uninterrupted run: {ref_s:.1f} s, {len(board)} models, {len(preds)} prediction files")
    moments = [("inside a member's epoch", "step:5", None), ("between members", "member:1", None),
               ("during a fusion", "fusion:2", None), ("during a save", "save:3", None),
               ("on a timer", None, 0.45 * ref_s)]
    identical = 0
    print(f"\n{'moment':<26} {'kill':<10} {'killed':>6} {'resumes':>7} {'total_s':>8}  identical")
    for i, (what, fault, after) in enumerate(moments):
        cfg = cfg_file(f"kill{i}")
        rc, t = fit(cfg, fault, after)
        killed, total, resumes = rc == -signal.SIGKILL, t, 0
        while True:  # rerun, unchanged, until it finishes
            rc, t = fit(cfg)
            total += t
            resumes += 1
            if rc == 0:
                break
        b, p = outcome(root / f"kill{i}")
        same = b.equals(board) and p == preds
        identical += same
        print(f"{what:<26} {fault or f'{after:.0f} s':<10} {str(killed):>6} {resumes:>7} {total:>8.1f}  {same}")
        if not same:
            diff = (b - board).abs().max().max() if b.shape == board.shape else "shape"
            print(f"    differs: max |score difference| {diff}; prediction files equal: {p == preds}")
    print(f"\nresume_identical={identical} resume_runs={len(moments)}")
    write_results(tee, ROOT / "bench" / "results" / f"resume{'_quick' if args.quick else ''}.txt")


if __name__ == "__main__":
    main()
