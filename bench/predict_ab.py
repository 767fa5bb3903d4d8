"""A/B tunefuse's inference choices against its defaults, interleaved, on this CPU.

One model is fine-tuned (MiniLM-L6 on ``--train`` reviews), then ``predict_proba`` on ``--test`` held-out reviews runs
under the defaults and under each variant, chunk by chunk in turn (A B C, C B A, ... over chunks of ``--chunk``
reviews), ``--repeats`` times; each variant's median throughput ratio to the defaults is printed with its range,
beside how far its probabilities move from an fp32 forward (the exact reference) and how often its predicted label
agrees with it.

    python bench/predict_ab.py                                    # the standard variants below
    python bench/predict_ab.py --variant predict_tokens=16384 --repeats 5
    python bench/predict_ab.py --isa avx512_core_bf16             # oneDNN capped below AMX

A variant is ``NAME=JSON`` (several joined by ``,``) over these module constants: ``bf16_weights``,
``attention`` and ``packed`` (tunefuse.inference), ``predict_tokens`` (tunefuse.finetuner.PREDICT_TOKENS).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

STANDARD = {
    "training_forward (fp32 weights, autocast, eager, packed)":
        "bf16_weights=false,attention=null,packed=true",
    "fp32_weights_autocast": "bf16_weights=false",
    "eager_attention": "attention=null",
    "sdpa_unaligned": "attention=\"sdpa\"",
    "packed": "packed=true",
    "predict_tokens=2048": "predict_tokens=2048",
    "predict_tokens=8192": "predict_tokens=8192",
}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", help="NAME=JSON[,NAME=JSON...]; repeatable (default: a standard set)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train", type=int, default=320)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=250, help="test rows each variant predicts in turn")
    ap.add_argument("--isa", default=None, help="ONEDNN_MAX_CPU_ISA, e.g. avx512_core_bf16 (no AMX)")
    return ap.parse_args()


ARGS = parse()
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench.cpu import prepare  # noqa: E402  (torch-free)

prepare(ARGS.isa)  # before torch is imported

import numpy as np  # noqa: E402

import tunefuse.finetuner as ftm  # noqa: E402
import tunefuse.inference as inf  # noqa: E402
from bench.cpu import Report, cpu_flags, cpu_kind, cpu_summary  # noqa: E402
from tunefuse import Finetuner  # noqa: E402
from tunefuse.datasets import load_reviews  # noqa: E402

CONSTANTS = {"bf16_weights": (inf, "BF16_WEIGHTS"), "attention": (inf, "ATTENTION"), "packed": (inf, "PACKED"),
             "predict_tokens": (ftm, "PREDICT_TOKENS")}


def parse_variant(text: str) -> dict:
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in CONSTANTS:
            sys.exit(f"--variant {text!r}: write NAME=JSON with NAME one of {sorted(CONSTANTS)}")
        out[name.strip()] = json.loads(value)
    return out


def predict(clf: Finetuner, Xt, settings: dict) -> tuple[float, np.ndarray]:
    saved = {k: getattr(*CONSTANTS[k]) for k in settings}
    for k, v in settings.items():
        setattr(*CONSTANTS[k], v)
    try:
        t = time.perf_counter()
        proba = clf.predict_proba(Xt)
        return len(Xt) / (time.perf_counter() - t), proba
    finally:
        for k, v in saved.items():
            setattr(*CONSTANTS[k], v)


def main() -> None:
    named = {v: v for v in ARGS.variant} if ARGS.variant else STANDARD
    variants = {"defaults": {}} | {name: parse_variant(text) for name, text in named.items()}
    X, y, Xt, yt = load_reviews(2000, ARGS.test)
    report = Report()
    report(f"predict_ab: {cpu_summary()}; a model fitted on {ARGS.train} reviews predicts {len(Xt)} reviews, "
           f"{ARGS.repeats} rounds")
    clf = Finetuner("minilm-l6", epochs=1, batch_size=16, max_length=128, random_state=0, verbose=0)
    clf.fit(X.iloc[:ARGS.train], y[:ARGS.train])
    exact = clf.set_params(precision="fp32")  # the reference: fp32 weights, no autocast
    exact.precision_ = "fp32"
    _, reference = predict(exact, Xt, {"attention": None})
    clf.precision_ = "bf16"
    predict(clf, Xt.iloc[:64], {})  # warm-up: first-call costs (the bf16 copy, kernel choice) out of the way
    # Paired at a fine grain: every variant predicts each chunk of the test set in turn, so all of them see the same
    # moments of a noisy machine; a variant's throughput in a round is its rows over its summed chunk times.
    speed: dict[str, list[float]] = {k: [] for k in variants}
    proba: dict[str, list[np.ndarray]] = {}
    for r in range(ARGS.repeats):
        seconds = dict.fromkeys(variants, 0.0)
        proba = {k: [] for k in variants}
        for start in range(0, len(Xt), ARGS.chunk):
            chunk = Xt.iloc[start:start + ARGS.chunk]
            for name, settings in (list(variants.items()) if (start // ARGS.chunk) % 2 == 0
                                   else list(variants.items())[::-1]):  # ABC CBA: no variant always runs first
                s, p = predict(clf, chunk, settings)
                seconds[name] += len(chunk) / s
                proba[name].append(p)
        for name in variants:
            speed[name].append(len(Xt) / seconds[name])
            report(f"  round {r} {name:58s} {speed[name][-1]:6.1f} ex/s")
    proba = {k: np.concatenate(v) for k, v in proba.items()}
    base = np.array(speed["defaults"])
    report(f"\n{'variant':58s} {'median ex/s':>11s} {'ratio':>6s} {'range':>13s} {'max |dp|':>9s} "
               f"{'agree':>7s} {'acc':>7s}")
    for name in variants:
        ratios = np.array(speed[name]) / base  # paired by round: the same moment of the machine
        p = proba[name]
        report(f"{name:58s} {np.median(speed[name]):11.1f} {np.median(ratios):6.2f} "
                   f"[{ratios.min():.2f}, {ratios.max():.2f}] {np.abs(p - reference).max():9.4f} "
                   f"{(p.argmax(1) == reference.argmax(1)).mean():7.4f} {(p.argmax(1) == yt).mean():7.4f}")
    acc = (reference.argmax(1) == yt).mean()
    report(f"(max |dp| and agree: against an fp32 forward of the same model; acc {acc:.4f} there) {cpu_flags()}")
    report.save(os.path.join(os.path.dirname(__file__), "results", f"predict_ab_{cpu_kind()}.txt"))


if __name__ == "__main__":
    main()
