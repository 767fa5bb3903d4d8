"""Where members and trials are fitted: ``local`` (this process, one after another) or ``ray`` (one Ray task each).

Ray does the scheduling, the placement on nodes, the retries of a task whose worker died and the cluster itself;
tunefuse only says what a task needs (``executor.cpus_per_member``, ``gpus_per_member``, ``retries``) and where it
writes: every task fits into the run folder exactly as the local executor does (its training state in
``RUN/state/NAME``, its finished member in ``RUN/members/NAME`` with its validation and test probabilities), so a
retried task resumes from the last checkpoint and the driver reads every member back from disk, as a resumed local
run does: its probabilities, and its model only when the weights are needed (a soup). The run folder must therefore be a
path every node sees (NFS, a mounted bucket); the driver holds the lock and only reads.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import ConfigError, ExecutorConfig

# environment a worker needs as the driver has it (a cluster started elsewhere has its own): offline hub, tunefuse's
# fault points, tokenizer threads, caches
FORWARDED = ("HF_", "TUNEFUSE_", "TOKENIZERS_", "TRANSFORMERS_", "TORCH_HOME", "RAYON_", "OMP_", "MKL_")


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED)}


_session = {"depth": 0, "started": False}


@contextlib.contextmanager
def ray_session() -> Iterator[None]:
    """Inside this block (a run), a Ray cluster that :func:`ray_cluster` started is kept for the block's later
    tasks and shut down when it ends; outside, each :func:`ray_cluster` block shuts down what it started."""
    _session["depth"] += 1
    try:
        yield
    finally:
        _session["depth"] -= 1
        if _session["depth"] == 0 and _session["started"]:
            import ray

            _session["started"] = False
            ray.shutdown()


@contextlib.contextmanager
def ray_cluster(ex: ExecutorConfig) -> Iterator[Any]:
    """Ray, connected: to the cluster this process joined already (left running), to ``ex.address``, or to a local
    cluster started here for the run (shut down after it: see :func:`ray_session`)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("executor.kind='ray' needs Ray, which is not installed; fix: pip install 'tunefuse[ray]' "
                          "(or executor.kind: local)") from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"runtime_env": {"env_vars": forwarded_env()}}
        if not (ex.address or "").startswith("ray://"):  # Ray Client takes fewer options
            kwargs.update(include_dashboard=False, log_to_driver=os.environ.get("TUNEFUSE_QUIET") != "1")
        try:
            _reachable(ex.address)
            ray.init(address=ex.address or "local", **kwargs)  # None would join a cluster RAY_ADDRESS names
        except ConnectionError as e:
            raise ConfigError(f"executor.address={ex.address!r}: no Ray cluster answers there ({str(e)[:160]}); fix: "
                              "`ray start --head` on that machine, or leave address unset to start a local "
                              "cluster") from None
        started = True
        if _session["depth"]:
            _session["started"], started = True, False  # the session shuts it down
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _reachable(address: str | None) -> None:
    """Fail in seconds, not minutes (Ray retries a dead GCS address for a long while): 'host:port' must accept a
    TCP connection. None (start one) and 'auto' (Ray looks up this machine's cluster) are Ray's to check."""
    import socket

    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"executor.address={address!r} is not host:port; fix: e.g. 10.0.0.5:6379, "
                          "ray://10.0.0.5:10001 or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConnectionError(f"{host}:{port} refuses connections ({e.strerror or e})") from None


def _failure(ray, label: str, e: BaseException, retries: int) -> BaseException:
    """A task's exception as the driver raises it: a user error as itself (one line), a dead worker as one line that
    says why and what to do, a bug with the worker's traceback."""
    exc = ray.exceptions
    if isinstance(e, exc.RayTaskError):
        cause = getattr(e, "cause", None)
        if isinstance(cause, (ValueError, OSError, KeyboardInterrupt)):  # ConfigError and other user errors
            return cause
        return RuntimeError(f"{label} failed on its Ray worker:\n{e}")
    if isinstance(e, getattr(exc, "OutOfMemoryError", ())):
        return ConfigError(f"{label}: its Ray worker ran out of memory ({retries} retries); fix: request more per "
                           "task (executor.cpus_per_member, so fewer run per node) or a smaller batch_size")
    if isinstance(e, getattr(exc, "RuntimeEnvSetupError", ())):
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        return ConfigError(f"{label}: Ray could not set up the worker's environment ({first[:200]}); fix: install "
                           "tunefuse and its extras on every node, with the driver's versions")
    if isinstance(e, (exc.WorkerCrashedError, exc.NodeDiedError, exc.TaskCancelledError)):
        return ConfigError(f"{label}: its Ray worker died {retries + 1} time(s) ({type(e).__name__}); the run folder "
                           "keeps its training state; fix: see the worker's log (RUN/logs), raise executor.retries, "
                           "then fit again to resume")
    return e


def remote_map(ex: ExecutorConfig, fn: Callable, jobs: list[tuple[str, tuple]], say: Callable[[str], None],
               put: dict[str, Any] | None = None) -> Iterator[tuple[str, Any]]:
    """Run ``fn(*args)`` for each ``(label, args)`` as one Ray task, yielding ``(label, result)`` as tasks finish.

    ``put``: large arguments shared by every task (the data splits), stored once in Ray's object store (or given
    as the ``ObjectRef`` of an earlier ``ray.put``); an argument that is a key of ``put`` is passed as that object.
    A failed task does not stop the others (what they fit is kept); the first failure is raised once all have
    ended. Ctrl-C cancels every task and leaves the run resumable.
    """
    with ray_cluster(ex) as ray:
        refs_of = {k: v if isinstance(v, ray.ObjectRef) else ray.put(v) for k, v in (put or {}).items()}
        task = ray.remote(fn).options(num_cpus=ex.cpus_per_member, num_gpus=ex.gpus_per_member,
                                      max_retries=ex.retries, retry_exceptions=False)
        label_of = {}
        for label, args in jobs:
            args = tuple(refs_of[a] if isinstance(a, str) and a in refs_of else a for a in args)
            label_of[task.remote(*args)] = label
        pending, first_error, done_n = list(label_of), None, 0
        say(f"ray: {len(jobs)} task(s) of {ex.cpus_per_member:g} CPU, {ex.gpus_per_member:g} GPU each, on "
            f"{ray.cluster_resources().get('CPU', 0):g} CPUs")
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    done_n += 1
                    try:
                        value = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 (sorted by _failure)
                        err = _failure(ray, label_of[ref], e, ex.retries)
                        say(f"[{done_n}/{len(jobs)}] {label_of[ref]}: failed ({str(err).splitlines()[0][:200]})")
                        first_error = first_error or err
                        continue
                    say(f"[{done_n}/{len(jobs)}] {label_of[ref]}: done")
                    yield label_of[ref], value
        except BaseException:  # Ctrl-C, or the caller stopped: stop the workers; their state stays on disk
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        if first_error is not None:
            raise first_error


def in_worker(cwd: str, threads: float, name: str, run_path: str) -> tuple[Callable[[str], None], Any]:
    """Set up a Ray worker for one task: the driver's working directory (relative paths of the config resolve as
    they did there), torch threads from the task's CPU request, the task's log file ``RUN/logs/NAME.log``; returns
    (say, log file): say prints a progress line to the driver and the log."""
    import torch

    if os.path.isdir(cwd):
        os.chdir(cwd)
    torch.set_num_threads(max(1, int(threads)))
    logs = Path(run_path) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / f"{name}.log", "a", encoding="utf-8", buffering=1)
    log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} on {os.uname().nodename}\n")
    out = sys.__stdout__

    def say(msg: str) -> None:
        log.write(msg + "\n")
        print(msg, file=out, flush=True)  # Ray forwards a worker's stdout to the driver, prefixed with its pid

    return say, log


def member_job(run_path: str, cfg_doc: dict, member_doc: dict, splits, data_key: str, cwd: str) -> dict:
    """One member fitted into the run folder inside a Ray worker (the same ``fit_member`` as the local executor)."""
    from .config import MemberConfig, validate
    from .experiment import fit_member, task_entry
    from .folder import RunFolder

    cfg, m = validate(cfg_doc), MemberConfig.model_validate(member_doc)
    name = m.name
    say, log = in_worker(cwd, cfg.executor.cpus_per_member, name, run_path)
    t0 = time.perf_counter()
    with log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):  # progress bars into the log
        fit_member(RunFolder(run_path), cfg, m, task_entry(cfg), splits, data_key, say, load=False)
    return task_info(name, t0)


def task_info(name: str, t0: float) -> dict:
    """Where and how long a task ran (``RUN/metrics.jsonl`` event ``task``)."""
    import ray

    return {"event": "task", "name": name, "node": ray.get_runtime_context().get_node_id(),
            "host": os.uname().nodename, "pid": os.getpid(), "wall_s": round(time.perf_counter() - t0, 3)}


def fit_members(run, cfg, members: list, task, s, data_key: str, say: Callable[[str], None],
                refit: bool = True) -> dict:
    """Fit the members (on the config's executor) and return each as read back from its folder."""
    from .experiment import fit_member, is_fitted

    todo = [m for m in members if not is_fitted(run, cfg, m, data_key)]
    if cfg.executor.kind == "ray" and todo and refit:
        doc = cfg.model_dump(mode="json")
        jobs = [(f"member {m.name}", (str(run.path.resolve()), doc, m.model_dump(mode="json"), "splits", data_key,
                                      os.getcwd())) for m in todo]
        for _, info in remote_map(cfg.executor, member_job, jobs, say, put={"splits": s}):
            run.log(info)
    return {m.name: fit_member(run, cfg, m, task, s, data_key, say, refit) for m in members}


def fold_job(fit_fold: Callable, job: tuple, folder: str, run_path: str, label: str, cwd: str,
             threads: float) -> tuple[str, Any, dict]:
    """One fold of a k-fold bag in a Ray worker: fitted, saved to ``folder`` (read back by the driver), and its
    held-out probabilities returned; its log is ``RUN/logs/LABEL.log``."""
    from ..fusion.persist import save_member

    say, log = in_worker(cwd, threads, label, run_path)
    t0 = time.perf_counter()
    with log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        est, proba = fit_fold(*job)
        save_member(est, folder)
    return folder, proba, task_info(label, t0)


def fold_map(run, ex: ExecutorConfig, name: str, say: Callable[[str], None]) -> Callable:
    """A k-fold bag's ``_fold_map``: each fold model a Ray task writing to ``RUN/fusions/NAME/folds/foldI``; the
    training data (inside ``fit_fold``) goes to Ray's object store once, not once per fold."""
    from ..fusion.persist import load_member

    def run_folds(fit_fold: Callable, jobs: list) -> list:
        root = run.path.resolve() / "fusions" / name / "folds"
        tasks = [(f"{name} fold {j[0]}", ("fit_fold", j, str(root / f"fold{j[0]}"), str(run.path.resolve()),
                                          f"{name}-fold{j[0]}", os.getcwd(), ex.cpus_per_member)) for j in jobs]
        out = {}
        for label, (folder, proba, info) in remote_map(ex, fold_job, tasks, say, put={"fit_fold": fit_fold}):
            out[label] = (folder, proba)
            run.log(info)
        return [(load_member(out[label][0]), out[label][1]) for label, _ in tasks]

    return run_folds
