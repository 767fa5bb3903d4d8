"""Scale-out on this machine: the Ray executor against the local one, Ray's cost per task, DDP inside a member, and a
run whose worker is killed mid-fit.

    python bench/scale.py [--quick] [--only overhead|ddp] [--out runs/bench_scale]

1. Four MiniLM-L6 LP-FT members (seeds 0-3) on the reviews, `tunefuse fit` in a fresh process: `local` at its best
   thread setting (torch's default: every core) against `--executor ray` with 2 workers of 1 thread (1 CPU per
   member), wall time of the whole command (Ray's start included). On 2 cores two 1-thread processes give about
   1.07x one 2-thread process, so the ratio shows Ray's overhead, not scale.
2. 200 tiny members (TF-IDF + logistic regression on 160 reviews, ~30 ms each) through the same member path
   (fit_members: fit and write in the task, read back by the driver), local against Ray on an already started
   1-CPU cluster: the overhead per task is (ray fitting phase - local fitting phase) / 200, what each task costs
   beyond its fit (the driver's read-back, the same in both, is timed apart and left out). The simulation check of
   the README's arithmetic: Ray's bare round trip per task predicts the ray phase.
3. bench/ddp_member.py under `torchrun --nproc-per-node 2` and `1` (gloo): the same global batches, test accuracy
   of each; the delta must be within 0.001.
4. The Ray run of 1 again with TUNEFUSE_FAULT: one worker SIGKILLed in its first member's epoch (training state
   saved every 2 s); Ray retries the task, the member resumes, and every prediction file must equal the
   undisturbed Ray run's byte for byte.

Ends with ``ray_speedup_4members_2workers=A ray_overhead_ms_per_task=B ddp_metric_delta=C fault_run_identical=D``;
targets A >= 0.95, B <= 50, |C| <= 0.001, D = 1. Timings need fresh fits: every rerun fits again (--quick: minutes).
Results: bench/results/scale[_quick].txt.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import start_tee, write_results  # noqa: E402

BIN = Path(sys.executable).parent


def members_config(out: Path, quick: bool) -> dict:
    return {"task": "text-classification", "seed": 0, "output": str(out), "checkpoint_every_s": 2,
            "data": {"train": "reviews", "options": {"n_train": 400 if quick else 2000, "n_test": 400 if quick
                                                     else 2000}},
            "members": [{"name": "lpft", "backbone": "minilm-l6", "strategy": "lp-ft",
                         "params": {"epochs": 1 if quick else 2}, "grid": {"random_state": [0, 1, 2, 3]}}],
            "fusions": [{"method": "vote_soft"}]}


def fit(cfg_path: Path, *extra: str, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([str(BIN / "tunefuse"), "fit", str(cfg_path), "--quiet", *extra], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    if done.returncode != 0:
        sys.exit(f"tunefuse fit {cfg_path} {' '.join(extra)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def same_predictions(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in (a / "predictions").glob("*.csv"))
    return bool(names) and names == sorted(p.name for p in (b / "predictions").glob("*.csv")) and all(
        (a / "predictions" / n).read_bytes() == (b / "predictions" / n).read_bytes() for n in names)


def tiny_overhead(root: Path, n: int) -> dict:
    """n tiny members through fit_members, local and on a started 1-CPU Ray cluster (one worker: the other core
    keeps the driver and Ray's daemons off the worker's, which on 2 cores would otherwise be counted as overhead).
    Each run's wall splits into its fitting phase and the driver's read-back of the n members (timed by a second
    call, which only reads); the overhead per task is (ray fitting phase - local fitting phase) / n. The simulation
    check: Ray's bare round trip per task, measured alone with n empty tasks, predicts the ray fitting phase as
    local fitting phase + n x round trip; the rest is tunefuse's own per-task work (config, log file, data)."""
    import ray

    from tunefuse.runs.config import MemberConfig, load_config
    from tunefuse.runs.executors import fit_members
    from tunefuse.runs.experiment import _digest, task_entry
    from tunefuse.runs.folder import RunFolder
    from tunefuse.runs.inputs import load_data

    out = {}
    for kind in ("local", "ray"):
        cfg = load_config({"data": {"train": "reviews", "options": {"n_train": 200, "n_test": 40}},
                           "members": [{"backbone": "tfidf-logreg"}], "output": str(root / f"tiny_{kind}"),
                           "executor": {"kind": kind, "cpus_per_member": 1}})
        shutil.rmtree(cfg.output, ignore_errors=True)
        s = load_data(cfg)
        key = _digest(s.X_train, s.y_train, s.X_val, s.y_val)
        members = [MemberConfig(name=f"tiny-{i:03d}", backbone="tfidf-logreg") for i in range(n)]
        run = RunFolder(cfg.output)
        run.path.mkdir(parents=True)
        if kind == "ray":
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
            noop = ray.remote(lambda: 0).options(num_cpus=1)
            ray.get([noop.remote() for _ in range(4)])  # the worker up
            t0 = time.perf_counter()
            ray.get([noop.remote() for _ in range(n)])
            out["round_trip_ms"] = (time.perf_counter() - t0) / n * 1000
        t0 = time.perf_counter()
        fit_members(run, cfg, members, task_entry(cfg), s, key, say=lambda m: None)
        wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        fit_members(run, cfg, members, task_entry(cfg), s, key, say=lambda m: None)  # reads back only
        out[kind] = wall - (time.perf_counter() - t0)
        if kind == "ray":
            ray.shutdown()
    out["overhead_ms"] = (out["ray"] - out["local"]) / n * 1000
    out["predicted_ray"] = out["local"] + n * out["round_trip_ms"] / 1000
    return out


def ddp(root: Path, quick: bool) -> tuple[dict, dict]:
    out = {}
    n = ["--n-train", "400", "--n-test", "400"] if quick else ["--n-train", "2000", "--n-test", "2000"]
    for procs in (1, 2):
        path = root / f"ddp{procs}.npy"
        done = subprocess.run([str(BIN / "torchrun"), f"--nproc-per-node={procs}", str(ROOT / "bench" /
                                                                                         "ddp_member.py"),
                               "--out", str(path), *n], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            sys.exit(f"torchrun --nproc-per-node={procs} failed:\n{done.stderr[-3000:]}")
        out[procs] = json.loads(Path(str(path) + ".json").read_text())
    return out[1], out[2]


def print_overhead(root: Path, n: int) -> float:
    t = tiny_overhead(root, n)
    print(f"{n} tiny members, fitting phase: local {t['local']:.2f} s, ray (1 worker) {t['ray']:.2f} s -> "
          f"{t['overhead_ms']:.1f} ms per task beyond its fit; Ray's bare round trip {t['round_trip_ms']:.1f} "
          f"ms per task predicts the ray phase at {t['predicted_ray']:.2f} s (measured {t['ray']:.2f} s)")
    return t["overhead_ms"]


def print_ddp(root: Path, quick: bool) -> float:
    one, two = ddp(root, quick)
    delta = two["accuracy"] - one["accuracy"]
    print(f"DDP (torchrun, gloo): 1 process acc {one['accuracy']:.4f} in {one['fit_time_s']:.1f} s; 2 processes "
          f"acc {two['accuracy']:.4f} in {two['fit_time_s']:.1f} s; delta {delta:+.4f}")
    return delta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="400 reviews, 1 epoch per member, 400-row DDP (minutes)")
    p.add_argument("--out", default="runs/bench_scale")
    p.add_argument("--tiny", type=int, default=200, help="tiny members of the overhead measurement")
    p.add_argument("--only", choices=["overhead", "ddp"], help="one part alone (B, or C at the full or --quick "
                   "size), printed as its key=value and written to bench/results/scale_<part>[_quick].txt")
    a = p.parse_args()
    tee = start_tee()
    size = "quick" if a.quick else "full"
    root = Path(a.out) / (f"{a.only}_{size}" if a.only else size)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    import torch

    print(f"scale bench ({size}{', ' + a.only + ' only' if a.only else ''}): {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads by default")
    if a.only == "overhead":
        print(f"ray_overhead_ms_per_task={print_overhead(root, a.tiny):.1f}")
    elif a.only == "ddp":
        print(f"ddp_metric_delta={print_ddp(root, a.quick):.4f}")
    if a.only:
        write_results(tee, ROOT / "bench" / "results" / f"scale_{a.only}{'_quick' if a.quick else ''}.txt")
        return

    runs = {}
    for kind, extra, env in (("local", (), None), ("ray", ("--executor", "ray"), None),
                             ("ray_fault", ("--executor", "ray"), {"TUNEFUSE_FAULT": "step:8",
                                                                   "TUNEFUSE_FAULT_ONCE": str(root / "fired")})):
        cfg = root / f"{kind}.yaml"
        cfg.write_text(yaml.safe_dump(members_config(root / kind, a.quick), sort_keys=False))
        runs[kind] = fit(cfg, *extra, env=env)
        print(f"4 LP-FT members, {kind:9s}: {runs[kind]:7.1f} s wall (tunefuse fit, fresh process)")
    speedup = runs["local"] / runs["ray"]
    fired = (root / "fired").exists()
    logs = "".join(p.read_text() for p in (root / "ray_fault" / "logs").glob("*.log"))
    identical = int(fired and "resuming" in logs and same_predictions(root / "ray", root / "ray_fault"))
    print(f"  fault run: worker killed={fired}, resumed from its training state={'resuming' in logs}, "
          f"predictions identical to the undisturbed ray run={bool(identical)}")
    print(f"  local vs ray predictions identical: {same_predictions(root / 'local', root / 'ray')} (local uses "
          f"{torch.get_num_threads()} threads, each Ray task 1: float summation order differs)")

    overhead = print_overhead(root, a.tiny)

    delta = print_ddp(root, a.quick)
    print(f"ray_speedup_4members_2workers={speedup:.3f} ray_overhead_ms_per_task={overhead:.1f} "
          f"ddp_metric_delta={delta:.4f} fault_run_identical={identical}")
    write_results(tee, ROOT / "bench" / "results" / f"scale{'_quick' if a.quick else ''}.txt")


if __name__ == "__main__":
    main()
