"""Scale-out on real engines: a real local Ray cluster fits the members (one killed mid-fit, retried, resumed) to the
local executor's very predictions; a cluster of two Ray nodes started with `ray start` runs members and search
trials on both; an Optuna search resumes after an interrupt and its trials become a soup and an ensemble."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tunefuse.runs.config import ConfigError, load_config
from tunefuse.runs.experiment import fit_run

pytestmark = pytest.mark.slow  # Ray clusters: seconds to start each; `make test` and CI run them

TINY = {"epochs": 2, "config_overrides": {"num_hidden_layers": 1}}
DATA = {"train": "reviews", "options": {"n_train": 160, "n_test": 80}}
RAY = str(Path(sys.executable).with_name("ray"))


def four_members(out, **extra) -> dict:
    cfg = {"data": DATA, "seed": 0, "output": str(out),
           "members": [{"name": "ft", "backbone": "minilm-l6", "strategy": "full", "params": dict(TINY),
                        "grid": {"random_state": [0, 1, 2]}},
                       {"name": "tfidf", "backbone": "tfidf-logreg"}],
           "fusions": [{"method": "stacking"},
                       {"method": "greedy_soup", "members": ["ft-random_state=0", "ft-random_state=1"]},
                       {"method": "kfold_bagging", "members": ["tfidf"], "params": {"n_splits": 3}}]}  # folds: tasks
    cfg.update(extra)
    return cfg


def same_run(a: Path, b: Path) -> None:
    names = sorted(p.name for p in (a / "predictions").glob("*.csv"))
    assert names == sorted(p.name for p in (b / "predictions").glob("*.csv"))
    for name in names:  # byte-identical probabilities: the same weights
        assert (a / "predictions" / name).read_bytes() == (b / "predictions" / name).read_bytes(), name
    cols = ["model", "val_score", "val_se", "test_score", "ece"]
    pd.testing.assert_frame_equal(pd.read_csv(a / "leaderboard.csv")[cols], pd.read_csv(b / "leaderboard.csv")[cols])


def events(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == kind]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The local executor's run at one torch thread, the thread count of a 1-CPU Ray task (torch's intra-op
    threads change float summation order, so bit-identical needs the same count; see README, Scale-out)."""
    out = tmp_path_factory.mktemp("scale") / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit_run(load_config(four_members(out)), say=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    return out


def test_ray_run_with_a_worker_killed_mid_fit_equals_the_local_run(local_run, tmp_path, monkeypatch):
    """A real 2-CPU Ray cluster; one worker is SIGKILLed in its member's 2nd epoch (after the epoch-1 checkpoint);
    Ray retries the task, the member resumes from its training state, the k-fold bag's folds run as Ray tasks too,
    and the run ends as the local one did."""
    monkeypatch.setenv("TUNEFUSE_FAULT", "step:11")  # inherited by the workers of the cluster fit_run starts
    monkeypatch.setenv("TUNEFUSE_FAULT_ONCE", str(tmp_path / "fired"))
    run = tmp_path / "ray"
    lines = []
    fit_run(load_config(four_members(run, executor={"kind": "ray", "cpus_per_member": 1})), say=lines.append)
    assert (tmp_path / "fired").exists(), "the fault never fired: no worker was killed"
    logs = "".join(p.read_text() for p in (run / "logs").glob("*.log"))
    assert "resuming full training from" in logs, "the retried member did not resume from its checkpoint"
    tasks = [e["name"] for e in events(run, "task")]
    folds = {f"kfold_bagging-fold{i}" for i in range(3)}  # 4 members, 3 folds of the bag, each with its log
    assert len(tasks) == 7 and folds <= set(tasks), tasks
    assert folds <= {p.stem for p in (run / "logs").glob("*.log")}
    assert any(line.startswith("ray: 4 task(s)") for line in lines)
    same_run(local_run, run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_nodes(tmp_path):
    """A head node (`ray start --head`, 1 CPU) and a second node joining it (1 CPU), each a
    foreground `ray start --block` process killed with its process group (not `ray stop`: it stops every Ray here)."""
    import tempfile

    from ray.util import get_node_ip_address

    port = free_port()
    address = f"{get_node_ip_address()}:{port}"  # the address Ray's nodes advertise (it listens on all of them)
    env = dict(os.environ, RAY_AUTH_MODE="disabled")  # token auth would need the token in every process
    common = ["--num-cpus=1", "--block", "--disable-usage-stats"]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen([RAY, "start", "--head", f"--port={port}", f"--temp-dir={temp}",
                             "--include-dashboard=false", *common], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    procs = [head]
    try:
        deadline = time.time() + 90
        while True:  # the head answers, then the second node joins it
            probe = subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True)
            if probe.returncode == 0:
                break
            assert time.time() < deadline and head.poll() is None, probe.stderr[-1000:]
            time.sleep(1)
        procs.append(subprocess.Popen([RAY, "start", f"--address={address}", *common],  # a second node
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        while "2 node(s)" not in probe.stdout and probe.stdout.count(" node_") < 2:
            assert time.time() < deadline, f"the second node did not join: {probe.stdout[-1000:]}"
            time.sleep(1)
            probe = subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True)
        yield address, env
    finally:
        for p in reversed(procs):  # SIGKILL of each node's process group (SIGTERM drains for 30 s)
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def test_members_and_search_trials_run_on_both_nodes_of_a_ray_start_cluster(two_nodes, tmp_path):
    """`tunefuse fit --executor ray --address HOST:PORT` from a fresh driver process (as a user runs it): members
    and trials are Ray tasks spread over the two nodes, and the fusion takes the trials. (A driver that already
    started and shut down a local Ray in the same process cannot own objects for a second node: Ray's
    OwnerDiedError, seen when this ran inside pytest's process after the other Ray tests.)"""
    import yaml

    address, env = two_nodes
    cfg = {"data": DATA, "seed": 0, "output": str(tmp_path / "run"),
           "members": [{"name": "ft", "backbone": "minilm-l6", "strategy": "full", "params": dict(TINY, epochs=1),
                        "grid": {"random_state": [0, 1]}}],
           "search": {"name": "sweep", "backbone": "minilm-l6", "strategy": "full", "params": dict(TINY, epochs=1),
                      "space": {"lr": [3e-5, 1e-4]}, "n_trials": 2, "sampler": "grid"},
           "fusions": [{"method": "ensemble_selection"}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "-m", "tunefuse.cli", "fit", str(tmp_path / "run.yaml"), "--executor",
                           "ray", "--address", address, "--quiet"], env=dict(env, HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    tasks = events(tmp_path / "run", "task")
    assert sorted(t["name"] for t in tasks) == ["ft-random_state=0", "ft-random_state=1", "sweep-000", "sweep-001"]
    assert len({t["node"] for t in tasks}) == 2, f"every task ran on one node: {tasks}"
    board = pd.read_csv(tmp_path / "run" / "leaderboard.csv")
    assert set(board["model"]) >= {"sweep-000", "sweep-001", "ensemble_selection"}


def test_search_resumes_after_an_interrupt_and_its_trials_become_a_soup_and_an_ensemble(tmp_path):
    """examples/sweep.yaml at tiny scale: an Optuna study in the run folder, interrupted after its 2nd trial's member
    was written (before Optuna heard of it); the same fit again requeues that trial with its parameters and member,
    finishes 4 trials, and the greedy soup and ensemble selection take the trials; search.csv and the report list
    them."""
    from tests.test_cli import EXAMPLES, SHRINK
    from tunefuse import faults

    cfg = load_config(EXAMPLES / "sweep.yaml", SHRINK["sweep.yaml"] + [f"output={tmp_path / 'run'}"])
    faults.arm("member", 2, KeyboardInterrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            fit_run(cfg, say=lambda m: None)
    finally:
        faults.disarm()
    lines = []
    result = fit_run(cfg, say=lines.append)
    assert "member sweep-001: fitted already" in "\n".join(lines)  # the requeued trial found its member
    table = pd.read_csv(tmp_path / "run" / "search.csv")
    done = table[table.state == "complete"]
    assert list(table[table.state != "fail"].member) == ["sweep-000", "sweep-001", "sweep-002", "sweep-003"]
    assert {"sweep-000", "sweep-001"} <= set(done.member) and len(done) >= 3  # (the median pruner may stop one)
    failed = table[table.state == "fail"]
    assert list(failed.member) == ["sweep-001"] and failed.params.iloc[0] == done.params.iloc[1]
    board = set(result.board["model"])
    assert {"greedy_soup", "ensemble_selection", *done.member} <= board
    weights = [e["weights"] for e in events(tmp_path / "run", "fusion") if e["fusion"] == "greedy_soup"][-1]
    assert set(weights) <= set(done.member)
    assert "<h2>Search (sweep)</h2>" in (tmp_path / "run" / "report.html").read_text()
    again = []
    fit_run(cfg, say=again.append)  # a third fit trains nothing
    assert not [m for m in again if "fitting minilm" in m]


@pytest.mark.parametrize("search,expected", [
    ({"space": {"learning_rate": [1e-5]}}, "search.space: unknown parameter 'learning_rate'"),
    ({"space": {"lr": {"low": 1e-4, "high": 1e-5}}}, "need low < high"),
    ({"space": {"lr": {"low": 1e-5, "high": 1e-4}}, "sampler": "grid"}, "sampler=grid needs lists"),
    ({"space": {"epochs": [0]}}, "search.params.epochs=0"),
    ({"space": {"lr": [1e-5]}, "pruner": "hyperband"}, "search.pruner='hyperband' is not valid"),
])
def test_a_bad_search_block_is_one_line_naming_the_fix(search, expected):
    with pytest.raises(ConfigError) as e:
        load_config({"data": DATA, "search": search})
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_executor_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"executor.kind='slurm' is not valid|executor.kind="):
        load_config({"data": DATA, "members": [{"backbone": "tfidf-logreg"}], "executor": {"kind": "slurm"}})
    from tunefuse.runs.config import ExecutorConfig
    from tunefuse.runs.executors import ray_cluster

    with pytest.raises(ConfigError, match="executor.address='127.0.0.1:1'.*fix: `ray start --head`"):
        with ray_cluster(ExecutorConfig(kind="ray", address="127.0.0.1:1")):
            pass


def test_ddp_inside_a_member_two_processes_match_one(tmp_path):
    """`torchrun --nproc-per-node 2` (gloo on CPU) and `--nproc-per-node 1` fed the same global batches, with early
    stopping on a validation split and a resumable training state: the same validation curve and test accuracy,
    probabilities within summation-order noise, and the finished state removed (bench/scale.py: the full size)."""
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"ddp{n}.npy"
        cmd = [str(Path(sys.executable).with_name("torchrun")), f"--nproc-per-node={n}", "--master-port",
               str(free_port()), str(Path(__file__).parents[1] / "bench" / "ddp_member.py"), "--out", str(out),
               "--n-train", "160", "--n-test", "64", "--layers", "1", "--epochs", "3", "--val", "32",
               "--checkpoint-dir", str(tmp_path / f"state{n}")]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[n] = (np.load(out), json.loads(Path(str(out) + ".json").read_text()))
    assert runs[2][1]["world"] == 2 and runs[1][1]["world"] == 1
    assert len(runs[2][1]["val_scores"]) == len(runs[1][1]["val_scores"]) >= 2
    assert np.allclose(runs[2][1]["val_scores"], runs[1][1]["val_scores"], atol=1e-6)
    assert not any(p.is_file() for p in (tmp_path / "state2").rglob("*"))  # rank 0 removed it after every rank
    assert abs(runs[2][1]["accuracy"] - runs[1][1]["accuracy"]) <= 0.001
    assert np.abs(runs[2][0] - runs[1][0]).max() < 5e-3
