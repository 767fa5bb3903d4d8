"""A/B one speed choice of tunefuse's fit against the defaults, interleaved, on this CPU.

On a shared 2-core machine one fit's throughput moves by ±25 % from run to run, so an ablation measured once says
little. This runs the defaults and each variant alternately (A B C A B C ...), ``--repeats`` times, on the speed
bench's reviews and settings, and prints each variant's median ratio to the defaults with its range. Every fit
scores the same held-out reviews, so a variant that is faster but less accurate shows it.

    python bench/train_ab.py --variant precision='"fp32"' --variant dropout=null
    python bench/train_ab.py --variant micro_batch_overhead=256 --repeats 5 --train 480
    python bench/train_ab.py --isa avx512_core_bf16 --variant micro_batch_overhead=256   # oneDNN capped below AMX

A variant is ``NAME=JSON`` for a ``Finetuner`` parameter, or one of tunefuse.finetuner's module constants:
``micro_batch_overhead=N`` (when batches split into micro-batches), ``sparse_embedding_grads=false`` (dense token
embedding gradients). Several ``NAME=JSON`` joined by ``,`` form one variant. The table is also written to
``bench/results/train_ab_<cpu kind>_<variants>.txt``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", required=True, help="NAME=JSON[,NAME=JSON...]; repeatable")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train", type=int, default=640)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--isa", default=None, help="ONEDNN_MAX_CPU_ISA, e.g. avx512_core_bf16 (no AMX)")
    return ap.parse_args()


ARGS = parse()
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench.cpu import prepare  # noqa: E402  (torch-free)

prepare(ARGS.isa)  # before torch is imported

import numpy as np  # noqa: E402

import tunefuse.finetuner as ftm  # noqa: E402
from bench.cpu import Report, cpu_flags, cpu_kind, cpu_summary  # noqa: E402
from tunefuse import Finetuner  # noqa: E402
from tunefuse.datasets import load_reviews  # noqa: E402

HP = dict(epochs=1, batch_size=16, lr=5e-5, max_length=128, warmup_ratio=0.0, weight_decay=0.0, verbose=0)
MODULE_CONSTANTS = {"micro_batch_overhead": (ftm, "MICRO_BATCH_OVERHEAD"),
                    "sparse_embedding_grads": (ftm, "SPARSE_EMBEDDING_GRADS")}


def parse_variant(text: str) -> dict:
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep:
            sys.exit(f"--variant {text!r}: write NAME=JSON, e.g. precision='\"fp32\"' or dropout=null")
        out[name.strip()] = json.loads(value)
    return out


def run(X, y, Xt, yt, settings: dict, seed: int) -> tuple[float, float]:
    params = {k: v for k, v in settings.items() if k not in MODULE_CONSTANTS}
    saved = {c: getattr(*c) for c in MODULE_CONSTANTS.values()}
    for k, c in MODULE_CONSTANTS.items():
        if k in settings:
            setattr(*c, settings[k])
    try:
        clf = Finetuner("minilm-l6", random_state=seed, **HP, **params)
        t = time.perf_counter()
        clf.fit(X, y)
        seconds = time.perf_counter() - t
    finally:
        for c, v in saved.items():
            setattr(*c, v)
    return len(X) / seconds, float((clf.predict(Xt) == yt).mean())


def main() -> None:
    variants = {"defaults": {}} | {v: parse_variant(v) for v in ARGS.variant}
    X, y, Xt, yt = load_reviews(ARGS.train, ARGS.test)
    say = Report()
    say(f"train_ab: {cpu_summary()}; {len(X)} train, {len(Xt)} test reviews, {ARGS.repeats} rounds")
    run(X.iloc[:32], y[:32], Xt.iloc[:8], yt[:8], {}, 0)  # warm-up: first-call costs out of the way
    speed: dict[str, list[float]] = {k: [] for k in variants}
    acc: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(ARGS.repeats):
        for name, settings in variants.items():
            s, a = run(X, y, Xt, yt, settings, seed=r)
            speed[name].append(s)
            acc[name].append(a)
            say(f"  round {r} {name:40s} {s:6.1f} ex/s  acc {a:.4f}")
    base = np.array(speed["defaults"])
    say(f"\n{'variant':40s} {'median ex/s':>11s} {'ratio':>6s} {'range':>13s} {'mean acc':>9s}")
    for name in variants:
        ratios = np.array(speed[name]) / base  # paired by round: the same seed and the same moment of the machine
        say(f"{name:40s} {np.median(speed[name]):11.1f} {np.median(ratios):6.2f} "
            f"[{ratios.min():.2f}, {ratios.max():.2f}] {np.mean(acc[name]):9.4f}")
    say(cpu_flags())
    slug = re.sub(r"[^a-z0-9=]+", "-", "_".join(ARGS.variant).lower()).strip("-")[:80]
    say.save(os.path.join(os.path.dirname(__file__), "results", f"train_ab_{cpu_kind()}_{slug}.txt"))


if __name__ == "__main__":
    main()
