"""What the task benches share: a stdout that is also kept, an atomic results file, keys of saved runs, and the
paired statistics every lift is printed with (bootstrap interval, McNemar's test)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
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
