"""The ``search:`` block: an Optuna study whose finished trials are members of the run, named ``NAME-000``...

Hyperparameter search and soups are one idea seen twice (Wortsman et al., "Model soups", 2022, built their soups
from a sweep's fine-tunes): every complete trial is fitted into ``RUN/members/NAME-k`` like a listed member, so a
greedy soup, ensemble selection or stacking takes the trials as ingredients. Optuna does the sampling (TPE, random,
grid), the pruning (median, or ASHA's successive halving, on each epoch's validation score) and the bookkeeping
(SQLite in the run folder by default: ``RUN/search.db``). Trials run one after another on the local executor, and as
Ray tasks, as many at a time as the cluster has room for, on the ``ray`` executor; a Ray trial reports its epochs to
the same storage, so on a cluster that is a database every node reaches (``search.storage: postgresql://...``).

Resume: the study is found again by name (the search block, task, seed and data digested); finished trials are
kept, a trial cut short by a kill is marked failed and run again with its parameters and member name (its fit
resumes from its training state), and each trial's sampler is seeded by ``seed + trials so far``, so a resumed
search asks what the uninterrupted one would have.
"""
from __future__ import annotations

import json
import shutil
from typing import Any, Callable

from .config import Config, ConfigError, MemberConfig, SearchConfig


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("search: needs Optuna, which is not installed; fix: pip install 'tunefuse[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(sc: SearchConfig) -> dict:
    optuna = _optuna()
    D = optuna.distributions
    out = {}
    for k, v in sc.space.items():
        if isinstance(v, list):
            out[k] = D.CategoricalDistribution(v)
        elif all(isinstance(v[b], int) and not isinstance(v[b], bool) for b in ("low", "high")):
            out[k] = D.IntDistribution(v["low"], v["high"], log=bool(v.get("log")), step=int(v.get("step") or 1))
        else:
            out[k] = D.FloatDistribution(float(v["low"]), float(v["high"]), log=bool(v.get("log")),
                                         step=v.get("step"))
    return out


def sampler(sc: SearchConfig, seed: int):
    s = _optuna().samplers
    # grid: every combination is enqueued (see _enqueue_grid); Optuna's GridSampler calls study.stop(), which only
    # works inside study.optimize, and trials here are asked and told one by one
    return s.RandomSampler(seed=seed) if sc.sampler in ("random", "grid") else s.TPESampler(seed=seed)


def pruner(sc: SearchConfig):
    p = _optuna().pruners
    return {"median": lambda: p.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
            "asha": lambda: p.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
            "none": p.NopPruner}[sc.pruner]()


def study_name(cfg: Config, data_key: str) -> str:
    from .experiment import _digest

    block = cfg.search.model_dump(exclude={"n_trials"})  # more trials later: the same study, continued
    return f"{cfg.search.name}-{_digest(block, cfg.task, cfg.task_options, cfg.seed, data_key)}"


def storage_url(run, sc: SearchConfig) -> str:
    return sc.storage or f"sqlite:///{(run.path / 'search.db').resolve()}"


def trial_member(sc: SearchConfig, name: str, params: dict) -> MemberConfig:
    return MemberConfig(name=name, backbone=sc.backbone, strategy=sc.strategy, params={**sc.params, **params})


def objective(run, name: str) -> float:
    """A trial's value: the best validation score of its fit's training epochs (the weights it keeps)."""
    history = json.loads((run.member(name) / "fit.json").read_text()).get("history", [])
    trained = [h["val_score"] for h in history if h.get("stage") != "probe" and h.get("val_score") is not None]
    scores = trained or [h["val_score"] for h in history if h.get("val_score") is not None]
    if not scores:
        raise ConfigError(f"search: trial {name!r} recorded no validation score; fix: hold out validation rows "
                          "(data.validation_fraction) so trials can be compared")
    return float(max(scores))


def fit_trial(run, cfg: Config, m: MemberConfig, task, s, data_key: str, say: Callable, trial) -> tuple[str, Any]:
    """Fit one trial's member, reporting each epoch's validation score to Optuna: ('complete', value), or
    ('pruned', epoch) with its state removed (a pruned trial is no member)."""
    import inspect

    optuna = _optuna()
    from ..finetuner import Finetuner
    from .experiment import fit_member

    epochs = m.params.get("epochs", inspect.signature(Finetuner).parameters["epochs"].default)

    def report(record: dict) -> None:
        if record.get("val_score") is None:
            return
        trial.report(record["val_score"], record["epoch"])
        if record["epoch"] < epochs and trial.should_prune():
            raise optuna.TrialPruned(f"epoch {record['epoch']}")

    try:
        fit_member(run, cfg, m, task, s, data_key, say, load=False, on_epoch_end=report)
    except optuna.TrialPruned as e:
        shutil.rmtree(run.path / "state" / m.name, ignore_errors=True)
        shutil.rmtree(run.member(m.name), ignore_errors=True)
        say(f"trial {m.name}: pruned after {e}")
        return "pruned", str(e)
    return "complete", objective(run, m.name)


def trial_job(run_path: str, cfg_doc: dict, member_doc: dict, splits, data_key: str, cwd: str, storage: str,
              name: str, trial_id: int) -> tuple[str, Any]:
    """One trial in a Ray worker: the study opened from its storage, the trial reporting there (pruning)."""
    import contextlib

    from .config import validate
    from .executors import in_worker
    from .experiment import task_entry
    from .folder import RunFolder

    optuna = _optuna()
    cfg, m = validate(cfg_doc), MemberConfig.model_validate(member_doc)
    say, log = in_worker(cwd, cfg.executor.cpus_per_member, m.name, run_path)
    import time

    from .executors import task_info

    t0 = time.perf_counter()
    study = optuna.load_study(study_name=name, storage=storage, pruner=pruner(cfg.search))
    with log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        outcome = fit_trial(RunFolder(run_path), cfg, m, task_entry(cfg), splits, data_key, say,
                            optuna.trial.Trial(study, trial_id))
    return outcome, task_info(m.name, t0)


def _open(run, cfg: Config, data_key: str, refit: bool):
    optuna = _optuna()
    name, storage = study_name(cfg, data_key), storage_url(run, cfg.search)
    if not refit:
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise ConfigError(f"search: the run folder {str(run.path)!r} holds no study {name!r} of this search "
                              "block and data; fix: `tunefuse fit` it first") from None
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner(cfg.search),
                               load_if_exists=True)


def _requeue_interrupted(study) -> None:
    """Trials left RUNNING by a killed run (the run lock says no other process works on them): failed, and queued
    again with the same parameters and member name, so their fit resumes from its training state."""
    optuna = _optuna()
    S = optuna.trial.TrialState
    waiting = {t.user_attrs.get("member") for t in study.get_trials(deepcopy=False, states=(S.WAITING,))}
    for t in study.get_trials(deepcopy=False, states=(S.RUNNING,)):
        study.tell(t.number, state=S.FAIL)
        if t.user_attrs.get("member") not in waiting:
            study.enqueue_trial(t.params, user_attrs={"member": t.user_attrs.get("member")})


def _enqueue_grid(study, sc: SearchConfig) -> None:
    import itertools

    keys = list(sc.space)
    for combo in itertools.product(*(sc.space[k] for k in keys)):
        study.enqueue_trial(dict(zip(keys, combo)), skip_if_exists=True)


def run_search(run, cfg: Config, task, s, data_key: str, say: Callable[[str], None], refit: bool = True) -> dict:
    """Run (or resume, or with ``refit=False`` only read) the config's search; its complete trials as members,
    read back from their folders, in trial order. Writes ``RUN/search.csv`` (every trial, its state and value)."""
    import contextlib
    import os

    optuna = _optuna()
    from .experiment import fit_member

    S, sc = optuna.trial.TrialState, cfg.search
    study = _open(run, cfg, data_key, refit)
    space = distributions(sc)
    finished = lambda: [t for t in study.get_trials(deepcopy=False) if t.state in (S.COMPLETE, S.PRUNED)]  # noqa
    if refit:
        _requeue_interrupted(study)
        if sc.sampler == "grid":
            _enqueue_grid(study, sc)
        done = len(finished())
        if done:
            say(f"search {sc.name}: {done} of {sc.n_trials} trials finished already")
        with contextlib.ExitStack() as stack:
            slots, splits = 1, s
            if cfg.executor.kind == "ray":  # one connection and one copy of the data in the object store
                from .executors import ray_cluster, remote_map

                ray = stack.enter_context(ray_cluster(cfg.executor))
                free = ray.cluster_resources()
                slots = int(free.get("CPU", 1) // cfg.executor.cpus_per_member)
                if cfg.executor.gpus_per_member:
                    slots = min(slots, int(free.get("GPU", 0) // cfg.executor.gpus_per_member))
                slots, splits = max(1, slots), ray.put(s)
            while len(finished()) < sc.n_trials:
                left = sc.n_trials - len(finished())
                if sc.sampler == "grid":
                    left = min(left, _grid_size(sc) - len(finished()))
                batch = {}
                for _ in range(min(slots, left)):
                    names = {t.user_attrs.get("member") for t in study.get_trials(deepcopy=False)} - {None}
                    study.sampler = sampler(sc, cfg.seed + len(names))  # by member index: a resumed search asks alike
                    trial = study.ask(space)
                    member = trial.user_attrs.get("member") or f"{sc.name}-{len(names):03d}"
                    trial.set_user_attr("member", member)
                    batch[f"trial {member}"] = (trial, trial_member(sc, member, trial.params))
                say(f"search {sc.name}: trial(s) " + ", ".join(f"{m.name} {t.params}" for t, m in batch.values()))
                if cfg.executor.kind == "ray":
                    doc, storage = cfg.model_dump(mode="json"), storage_url(run, sc)
                    jobs = [(label, (str(run.path.resolve()), doc, m.model_dump(mode="json"), "splits", data_key,
                                     os.getcwd(), storage, study.study_name, trial._trial_id))
                            for label, (trial, m) in batch.items()]
                    outcomes = remote_map(cfg.executor, trial_job, jobs, say, put={"splits": splits})
                else:
                    outcomes = ((label, (fit_trial(run, cfg, m, task, s, data_key, say, trial), None))
                                for label, (trial, m) in batch.items())
                for label, (outcome, info) in outcomes:  # told as each ends: a later failure keeps them
                    if info is not None:
                        run.log(info)
                    (trial, m), (state, value) = batch[label], outcome
                    if state == "pruned":
                        study.tell(trial, state=S.PRUNED)
                    else:
                        study.tell(trial, value)
                        say(f"trial {m.name}: validation score {value:.4f}")
                if sc.sampler == "grid" and len(finished()) >= _grid_size(sc):
                    break
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == S.COMPLETE]
    if not trials:
        raise ConfigError(f"search {sc.name}: no trial completed (all {len(finished())} were pruned); fix: "
                          "pruner: none, or more epochs before pruning")
    _write_table(run, study)
    members = {}
    for t in trials:
        m = trial_member(sc, t.user_attrs["member"], t.params)
        members[m.name] = fit_member(run, cfg, m, task, s, data_key, say, refit)
    return members


def _grid_size(sc: SearchConfig) -> int:
    n = 1
    for v in sc.space.values():
        n *= len(v)
    return n


def _write_table(run, study) -> None:
    from .folder import atomic_write

    rows = ["trial,member,state,value,params"]
    for t in study.get_trials(deepcopy=False):
        params = json.dumps(t.params, sort_keys=True).replace('"', '""')
        value = "" if t.value is None else f"{t.value:.6f}"
        rows.append(f'{t.number},{t.user_attrs.get("member", "")},{t.state.name.lower()},{value},"{params}"')
    atomic_write(run.path / "search.csv", "\n".join(rows) + "\n")
