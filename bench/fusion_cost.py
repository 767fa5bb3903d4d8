"""What fusion costs: fit time of shared-feature bagging against the naive loop, and soup memory against K.

Every measurement runs in a fresh Python process, so times start from a cold feature cache and peak memory
(max RSS, minus the process's RSS before the measured work) belongs to that measurement alone.

    python bench/fusion_cost.py               # about 10 minutes on 2 cores
    python bench/fusion_cost.py --train 500   # a quick look

Bagging members are head-only Finetuners on MiniLM-L6 (2,000 reviews by default): the shared path computes each
text's frozen features once for the whole bag; the naive loop clears the cache before every member, as a loop of
independent fits would. Soup checkpoints are head-only members of different seeds (full 22.7 M-parameter
checkpoints, so the streaming path reads whole models); streaming keeps a running sum, the naive soup loads all K.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind: str, k: int, n_train: int, ckpt_dir: str) -> dict:
    """Runs inside the child process: one measurement, reported as JSON."""
    from tunefuse import Finetuner, features
    from tunefuse.datasets import load_reviews
    from tunefuse.fusion import Bagging, soup_from_checkpoints
    from tunefuse.fusion.weights import uniform

    X, y, _, _ = load_reviews(n_train, 10)
    head = Finetuner("minilm-l6", "head", verbose=0)
    base = rss_mb()
    t = time.perf_counter()
    if kind == "single":
        head.fit(X, y)
    elif kind == "bag_shared":
        Bagging(head, n_estimators=k).fit(X, y)
    elif kind == "bag_naive":  # one full pass per member: what K independent fits cost
        for i in range(k):
            features.clear()
            idx = __import__("numpy").random.default_rng(i).integers(0, len(y), len(y))
            Finetuner("minilm-l6", "head", verbose=0, random_state=i).fit(X.iloc[idx], y[idx])
    elif kind == "soup_stream":
        soup_from_checkpoints([os.path.join(ckpt_dir, f"m{i}") for i in range(k)])
    elif kind == "soup_naive":
        from safetensors.torch import load_file

        states = [load_file(os.path.join(ckpt_dir, f"m{i}", "model.safetensors")) for i in range(k)]
        uniform(states)
    return {"kind": kind, "k": k, "seconds": time.perf_counter() - t, "peak_above_base_mb": peak_mb() - base}


def run_child(kind: str, k: int, n_train: int, ckpt_dir: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(k), str(n_train), ckpt_dir],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--ks", default="1,3,5,10")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, k, n, d = args.child
        print(json.dumps(measure(kind, int(k), int(n), d)))
        return
    ks = [int(k) for k in args.ks.split(",")]
    single = run_child("single", 1, args.train, "")
    print(f"one head-only member on {args.train} reviews: {single['seconds']:.1f} s", flush=True)
    print(f"\n{'bagging':10s} {'K':>3s} {'shared s':>9s} {'naive s':>8s} {'shared/single':>13s} {'naive/single':>12s}")
    bag = {}
    for k in ks:
        shared = run_child("bag_shared", k, args.train, "")
        naive = run_child("bag_naive", k, args.train, "")
        bag[k] = shared["seconds"] / single["seconds"]
        print(f"{'':10s} {k:3d} {shared['seconds']:9.1f} {naive['seconds']:8.1f} {bag[k]:13.2f} "
              f"{naive['seconds'] / single['seconds']:12.2f}", flush=True)

    from tunefuse import Finetuner
    from tunefuse.datasets import load_reviews

    X, y, _, _ = load_reviews(200, 10)
    soup_ks = sorted({2, *[k for k in ks if k >= 2]})
    with tempfile.TemporaryDirectory() as d:
        for i in range(max(soup_ks)):
            Finetuner("minilm-l6", "head", verbose=0, random_state=i).fit(X, y).save(
                os.path.join(d, f"m{i}"))
        print(f"\n{'soup':10s} {'K':>3s} {'stream MB':>10s} {'naive MB':>9s} {'stream s':>9s}")
        peak = {}
        for k in soup_ks:
            stream = run_child("soup_stream", k, 0, d)
            naive = run_child("soup_naive", k, 0, d)
            peak[k] = stream["peak_above_base_mb"]
            print(f"{'':10s} {k:3d} {stream['peak_above_base_mb']:10.0f} {naive['peak_above_base_mb']:9.0f} "
                  f"{stream['seconds']:9.1f}", flush=True)
    bag5 = bag.get(5, float("nan"))
    q = peak[max(soup_ks)] / peak[2] if max(soup_ks) == 10 else float("nan")
    print(f"\nbag5_over_single={bag5:.2f} soup_peak_mem_ratio_k10_over_k2={q:.2f}")


if __name__ == "__main__":
    main()
