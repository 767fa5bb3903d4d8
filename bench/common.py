"""What the task benches share: a stdout that is also kept, an atomic results file, keys of saved runs, and the
paired statistics every lift is printed with (bootstrap interval, McNemar's test)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

N_BOOT, BOOT_SEED = 1000, 0


class Tee:
    """stdout that is also kept, so the results file holds what the run printed."""

    def __init__(self, stream):
        self.stream, self.parts = stream, []

    def write(self, s: str) -> int:
        self.parts.append(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):  # isatty, encoding, fileno: what libraries ask of sys.stdout
        return getattr(self.stream, name)


def start_tee() -> Tee:
    sys.stdout = tee = Tee(sys.stdout)
    return tee


def write_results(tee: Tee, out: Path) -> None:
    """Write what the run printed to ``out`` atomically (a crash never leaves a half-written results file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(tee.parts))
    os.replace(tmp, out)
    sys.stdout = tee.stream


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, default=list).encode()).hexdigest()[:10]


def bootstrap_lift(a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> tuple[float, float]:
    """95 % paired bootstrap interval of mean(b) - mean(a) over the same resampled test rows (per-row scores)."""
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    lo, hi = np.percentile(b[idx].mean(1) - a[idx].mean(1), [2.5, 97.5])
    return float(lo), float(hi)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """Exact McNemar p-value (two-sided binomial test on the discordant pairs) of two classifiers' correctness."""
    from scipy.stats import binomtest

    only_a = int(np.sum(a_correct & ~b_correct))
    only_b = int(np.sum(b_correct & ~a_correct))
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_b, only_a + only_b, 0.5).pvalue)


# ------------------------------------------------ what bench/select_backbone.py and bench/pretrain.py share

def bench_args(doc: str, root: Path):
    """The options bench/select_backbone.py and bench/pretrain.py share: --quick, --run-dir (their shared cache),
    --fresh."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--run-dir", default=str(root / "runs" / "bench_select"))
    ap.add_argument("--fresh", action="store_true", help="pretrain and refit everything, even what is saved")
    return ap.parse_args()


def reviews_split(quick: bool):
    """The fusion bench's reviews: 2,000 labelled (1,600 train, 400 validation; --quick 600: 480/120), the last 4,000
    test (--quick 1,000), and 16,000 unlabelled texts (--quick 2,000) from rows that are neither: rows 2,000 on of
    the same shuffle. Returns ((Xtr, ytr), (Xva, yva), (Xt, yt), unlabelled texts)."""
    from tunefuse.datasets import load_reviews

    n_lab, n_test, n_unlab = (600, 1000, 2000) if quick else (2000, 4000, 16000)
    X, y, Xt, yt = load_reviews(n_train=n_lab, n_test=n_test)
    cut = int(n_lab * 0.8)
    pool, _, _, _ = load_reviews(n_train=2000 + n_unlab, n_test=4000)  # the same shuffle: rows 2,000 on unlabelled
    unlabelled = pool["text"].iloc[2000:2000 + n_unlab].tolist()
    return (X.iloc[:cut], y[:cut]), (X.iloc[cut:], y[cut:]), (Xt, yt), unlabelled


def mlm_backbone(run_dir: Path, unlabelled: list[str], fresh: bool) -> Path:
    """MiniLM-L6 after one epoch of continued MLM pretraining on ``unlabelled`` (the last 200 held out), kept in
    ``run_dir/minilm-l6-mlm`` and reused by later runs."""
    from tunefuse.pretrain import pretrain

    folder = run_dir / "minilm-l6-mlm"
    t0 = time.perf_counter()
    if fresh or not (folder / "pretrain.json").is_file():
        pretrain(unlabelled[:-200], X_val=unlabelled[-200:], task="text-classification", backbone="minilm-l6",
                 out=folder, epochs=1, batch_size=32, lr=5e-5, checkpoint_dir=run_dir / "state", verbose=1)
    pre = json.loads((folder / "pretrain.json").read_text())
    print(f"continued MLM pretraining of minilm-l6: {pre['texts']} texts, {pre['fit_time_s']:.0f} s, held-out "
          f"MLM loss {pre['history'][-1].get('val_loss', float('nan')):.3f} ({time.perf_counter() - t0:.0f} s now)",
          flush=True)
    return folder


def fit_or_load(params: dict, seed: int, path: Path, fresh: bool, Xtr, ytr, Xva, yva):
    """The Finetuner saved at ``path`` when it was fitted with these parameters, else a new fit (saved)."""
    from tunefuse import Finetuner

    record = path / "bench.json"
    want = json.dumps({**params, "random_state": seed}, sort_keys=True, default=str)
    if not fresh and record.is_file() and json.loads(record.read_text())["params"] == want:
        meta = json.loads(record.read_text())
        return Finetuner.load(path / "model"), meta["fit_time_s"], "loaded"
    t0 = time.perf_counter()
    est = Finetuner(**params, random_state=seed).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    fit_time = time.perf_counter() - t0
    est.save(path / "model")
    path.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"params": want, "fit_time_s": fit_time}))
    os.replace(tmp, record)
    return est, fit_time, "fitted"


