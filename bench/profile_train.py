"""Where a tunefuse fine-tuning step spends its time on this CPU: phases by wall clock, then the heaviest ops.

MiniLM-L6 on the speed bench's reviews and settings (batch 16, lr 5e-5, max length 128, 1 epoch). Two fits: one
timed by phase (batch collation, forward + loss, backward, gradient clipping, optimiser step; hooks around
``Tensor.backward``, ``clip_grad_norm_``, the optimiser step and the task's ``collate``, so the loop is unchanged),
then one under ``torch.profiler`` for the per-op table (self CPU time: time inside the op itself).

    python bench/profile_train.py                            # 480 reviews, 30 steps, this CPU as it is
    python bench/profile_train.py --isa avx512_core_bf16     # oneDNN capped below AMX
    python bench/profile_train.py --label after --param freeze_embeddings=true

``--isa`` sets ``ONEDNN_MAX_CPU_ISA`` before torch loads, so bf16 matmuls run on AVX512-BF16 without AMX tiles (not an
AMD Zen 4 proxy); oneDNN documents the variable (its values: avx2, avx512_core, avx512_core_bf16, avx512_core_amx, ...).
Writes ``bench/results/profile_train_<cpu kind>_<label>.txt``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import defaultdict


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=480, help="training reviews (steps = train / 16)")
    ap.add_argument("--isa", default=None, help="ONEDNN_MAX_CPU_ISA, e.g. avx512_core_bf16 (no AMX)")
    ap.add_argument("--label", default="before", help="names the results file: before | after | ...")
    ap.add_argument("--param", action="append", default=[], help="Finetuner parameter NAME=JSON, repeatable")
    ap.add_argument("--ops", type=int, default=30, help="rows of the per-op table")
    ap.add_argument("--out", default=None)
    return ap.parse_args()


ARGS = parse()
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench.cpu import prepare  # noqa: E402  (torch-free)

prepare(ARGS.isa)  # before torch is imported

import torch  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook  # noqa: E402

from bench.cpu import Report, cpu_kind, cpu_summary  # noqa: E402
import tunefuse.train  # noqa: E402
from tunefuse import Finetuner  # noqa: E402
from tunefuse.datasets import load_reviews  # noqa: E402
from tunefuse.tasks.text_classification import TextClassification  # noqa: E402

HP = dict(epochs=1, batch_size=16, lr=5e-5, max_length=128, warmup_ratio=0.0, weight_decay=0.0, verbose=0)
PHASES = ("collate", "forward + loss", "backward", "clip", "optimizer")


class PhaseClock:
    """Wall-clock seconds per phase, from hooks around the calls the loop makes; 'forward + loss' is the rest."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._opt_t = 0.0

    @contextlib.contextmanager
    def installed(self):
        clock = self
        backward, clip, collate = torch.Tensor.backward, tunefuse.train.clip_grad_norm, TextClassification.collate

        def timed(name, fn):
            def wrapper(*a, **k):
                t = time.perf_counter()
                with torch.profiler.record_function(f"## {name}"):
                    out = fn(*a, **k)
                clock.seconds[name] += time.perf_counter() - t
                return out
            return wrapper

        def pre(opt, args, kwargs):
            clock._opt_t = time.perf_counter()

        def post(opt, args, kwargs):
            clock.seconds["optimizer"] += time.perf_counter() - clock._opt_t

        torch.Tensor.backward = timed("backward", backward)
        tunefuse.train.clip_grad_norm = timed("clip", clip)
        TextClassification.collate = timed("collate", collate)
        handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
        try:
            yield self
        finally:
            torch.Tensor.backward, tunefuse.train.clip_grad_norm = backward, clip
            TextClassification.collate = collate
            for h in handles:
                h.remove()


def fit(X, y, params: dict) -> tuple[Finetuner, float]:
    clf = Finetuner("minilm-l6", random_state=0, **HP, **params)
    t = time.perf_counter()
    clf.fit(X, y)
    return clf, time.perf_counter() - t


def main() -> None:
    params = {}
    for p in ARGS.param:
        name, _, value = p.partition("=")
        params[name] = json.loads(value)
    X, y, _, _ = load_reviews(ARGS.train, 10)
    say = Report()

    say(f"profile_train ({ARGS.label}): {cpu_summary()}; torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; {len(X)} reviews, {-(-len(X) // HP['batch_size'])} steps; params {params or 'defaults'}")
    fit(X.iloc[:32], y[:32], params)  # warm-up: first-call costs (oneDNN kernel generation, allocator) out of the way
    clock = PhaseClock()
    with clock.installed():
        clf, total = fit(X, y, params)
    loop = sum(h["time_s"] for h in clf.history_)
    phases = dict(clock.seconds)
    phases["forward + loss"] = loop - sum(phases.values())
    say(f"\nphases of the training loop (wall clock; fit {total:.1f} s, of which the loop {loop:.1f} s, "
        f"{len(X) / total:.1f} examples/s)")
    for name in PHASES:
        say(f"  {name:16s} {phases.get(name, 0.0):7.2f} s  {100 * phases.get(name, 0.0) / loop:5.1f} %")
    say(f"  {'outside the loop':16s} {total - loop:7.2f} s  (model loading, tokenisation)")

    with clock.installed(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fit(X, y, params)
    say("\nheaviest ops by self CPU time (torch.profiler; '## phase' rows are the hooks' spans, their totals "
        "include the ops inside)\n")
    say(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=ARGS.ops, max_name_column_width=48))
    path = ARGS.out or os.path.join(os.path.dirname(__file__), "results",
                                    f"profile_train_{cpu_kind()}_{ARGS.label}.txt")
    say.save(path)


if __name__ == "__main__":
    main()
