"""``tunefuse fit``: a config's members fitted into a run folder, its fusions, the leaderboard, the test predictions,
the verdict and the report; resumable after a kill at any moment.

A member whose folder holds a record of the same fit (same spec, task and data) is loaded, not refitted; an
interrupted member continues from its training state (``Finetuner(checkpoint_dir=...)``); fusions are refitted from
the saved members (seconds: they read the members' predictions) except those that train new models (bagging,
boosting), which are saved and skipped like members. Members are always read back from disk before they are used,
so a resumed run and an uninterrupted one predict from the very same weights. A classifier member's probabilities on
the validation and test rows are computed once, from that read-back copy, where the member was fitted (a Ray worker:
beside the other members' fits), and kept in its folder (``split_proba.safetensors``); the driver, a resumed run and
``tunefuse report`` replay them instead of running every member again, and read a member's model only when its
weights are needed (soups, bags refitting its recipe, other rows).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import yaml

from .. import faults
from .config import CLASSICAL, Config, ConfigError, FusionConfig, MemberConfig
from .folder import RUN_FORMAT, RunFolder, atomic_write, versions, write_json
from .inputs import Splits, load_data

TRAINING_FUSIONS = ("bagging", "kfold_bagging", "boosting")  # fusions that fit new models: saved, skipped on resume
SPLIT_PROBA = "split_proba.safetensors"  # a member's validation and test probabilities, keyed by the rows' content


@dataclass
class RunResult:
    run: RunFolder
    board: pd.DataFrame
    verdict: Any
    models: dict = field(default_factory=dict)
    splits: Splits | None = None


def task_entry(cfg: Config):
    """The config's task entry with its ``task_options`` (unknown options are a one-line error)."""
    import dataclasses

    from ..tasks import get_task

    entry = get_task(cfg.task)
    opts = dict(cfg.task_options)
    if entry.name == "ctr" and not opts and cfg.data.train == "movielens-100k":
        from ..ctr.data import MOVIELENS_COLUMNS

        opts = dict(MOVIELENS_COLUMNS)
    names = [f.name for f in dataclasses.fields(entry) if f.name != "name"]
    for k in opts:
        if k not in names:
            from .config import closest

            raise ConfigError(f"task_options: unknown option {k!r} of task {entry.name!r}{closest(k, names)}; valid: "
                              f"{names}")
    deep = lambda v: tuple(deep(x) for x in v) if isinstance(v, list) else v  # noqa: E731 (YAML lists -> tuples)
    try:
        return dataclasses.replace(entry, **{k: deep(v) for k, v in opts.items()})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"task_options: {e}") from None


def _digest(*parts) -> str:
    from ..fusion.members import _digest as content

    return hashlib.sha1("\x1f".join(content(p) for p in parts).encode()).hexdigest()[:16]


def member_key(cfg: Config, m: MemberConfig, data_key: str) -> str:
    """What decides a member's weights: its spec, the task and its options, the seed and the data."""
    return _digest(m.model_dump(), cfg.task, cfg.task_options, cfg.seed, data_key)


def _recorded(record, key: str) -> bool:
    """A fit record (fit.json) of exactly this fit: the member or fusion can be loaded, not refitted."""
    return record.is_file() and json.loads(record.read_text()).get("key") == key


def build_member(cfg: Config, m: MemberConfig, task, run: RunFolder | None = None):
    """The unfitted estimator of one member entry."""
    if m.backbone == "tfidf-logreg":
        from ..baselines import tfidf_logreg

        return tfidf_logreg()
    if m.backbone in ("ctr-lr", "ctr-hgb"):
        from ..ctr.tabular import TabularModel

        return TabularModel(m.backbone.split("-")[1], task=task, random_state=cfg.seed)
    from ..finetuner import Finetuner

    params = {"random_state": cfg.seed, **m.params}
    if isinstance(params.get("config_overrides"), dict):
        params["config_overrides"] = dict(params["config_overrides"])
    checkpoint = str(run.path / "state" / m.name) if run is not None else None
    return Finetuner(m.backbone, m.strategy, task=task, checkpoint_dir=checkpoint,
                     checkpoint_every_s=cfg.checkpoint_every_s, verbose=1, **params)


def _fit(est, X, y, X_val, y_val):
    import inspect

    if "X_val" in inspect.signature(est.fit).parameters:  # Finetuner, TabularModel: early stopping on validation
        return est.fit(X, y, X_val=X_val, y_val=y_val)
    return est.fit(X, y)


def is_fitted(run: RunFolder, cfg: Config, m: MemberConfig, data_key: str) -> bool:
    return _recorded(run.member(m.name) / "fit.json", member_key(cfg, m, data_key))


def fit_member(run: RunFolder, cfg: Config, m: MemberConfig, task, s: Splits, data_key: str, say: Callable,
               refit: bool = True, load: bool = True, on_epoch_end: Callable[[dict], None] | None = None):
    """Fit (or find already fitted) one member; returns the copy read back from its folder (``load=False``: None,
    for a worker that only fits). ``on_epoch_end(record)``: each epoch's validation record (a search's pruning)."""
    from ..fusion.persist import load_member, save_member

    folder = run.member(m.name)
    key = member_key(cfg, m, data_key)
    record = folder / "fit.json"
    if _recorded(record, key):
        say(f"member {m.name}: fitted already, loaded from {folder}")
        return read_member(folder, s) if load else None
    if not refit:
        raise ConfigError(f"member {m.name!r} of {str(run.path)!r} was fitted on other data or another spec than "
                          "the run's config.yaml now reads (a data file changed, or a relative path resolves "
                          "elsewhere from this folder); fix: run `tunefuse report` from the folder the fit ran in, "
                          "or `tunefuse fit` to refit")
    say(f"member {m.name}: fitting {m.backbone} ({m.strategy if m.backbone not in CLASSICAL else 'baseline'}) ...")
    t0 = time.perf_counter()
    est = build_member(cfg, m, task, run)
    est._keep_training_state = True  # removed below once the member is saved: a kill in between resumes finished
    if on_epoch_end is not None:
        est._on_epoch_end = on_epoch_end
    est = _fit(est, s.X_train, s.y_train, s.X_val, s.y_val)
    fit_s = time.perf_counter() - t0
    est.fit_time_ = getattr(est, "fit_time_", fit_s)
    save_member(est, folder)
    if task.is_classifier:
        save_split_proba(load_member(folder), folder, s)
    history = getattr(est, "history_", [])
    write_json(record, {"key": key, "name": m.name, "spec": m.model_dump(), "fit_time_s": est.fit_time_,
                        "history": history})
    shutil.rmtree(run.path / "state" / m.name, ignore_errors=True)
    for h in history:
        run.log({"event": "epoch", "member": m.name, **h})
    run.log({"event": "member", "member": m.name, "fit_time_s": est.fit_time_})
    faults.point("member")
    say(f"member {m.name}: done in {fit_s:.1f} s")
    return read_member(folder, s) if load else None


def save_split_proba(est, folder, s: Splits) -> None:
    """``est``'s probabilities on the validation and test rows into ``folder/split_proba.safetensors`` (atomically),
    each with the rows' content digest and the seconds the prediction took, and what the driver asks of a member
    besides its predictions (classes, task, fit time, history, its attribute names), so it can leave it on disk."""
    import os

    import numpy as np
    from safetensors.numpy import save_file

    from ..fusion.members import tags_to_json
    from ..fusion.persist import classes_to_json, member_files, task_to_json

    arrays, meta = {}, {}
    for split, X in (("val", s.X_val), ("test", s.X_test)):
        if X is None or len(X) == 0:
            continue
        t0 = time.perf_counter()
        proba = np.asarray(est.predict_proba(X))
        if proba.dtype.kind != "f":
            return  # not probabilities (a custom member): the driver predicts it as before
        arrays[split] = np.ascontiguousarray(proba)
        meta[split] = json.dumps({"digest": s.input_keys(split)[0], "seconds": time.perf_counter() - t0})
    model = [p for p in member_files(folder) if p.name != "member.json"]
    # a Finetuner's module is imported already if est is one: a Ray worker of baselines imports no torch for this
    tuned = sys.modules.get("tunefuse.finetuner")
    known = {"classes_": classes_to_json(est.classes_), "names": sorted(set(dir(est))),
             "finetuner": tuned is not None and isinstance(est, tuned.Finetuner), "size_mb_": sum(
                 f.stat().st_size for p in model for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()) / 1e6}
    if getattr(est, "feature_names_in_", None) is not None:  # scikit-learn meta-estimators compare them to X's
        known["feature_names_in_"] = [str(c) for c in est.feature_names_in_]
    for name in ("fit_time_", "history_", "backbone", "labels_", "n_features_in_"):
        try:
            json.dumps(value := getattr(est, name))
            known[name] = value
        except (AttributeError, TypeError, ValueError):  # absent, or not plain data: read from the model when asked
            pass
    if getattr(est, "task_", None) is not None:
        known["task_"] = task_to_json(est.task_)
    try:
        from sklearn.utils import get_tags

        known["sklearn_tags"] = tags_to_json(get_tags(est))
        json.dumps(known["sklearn_tags"])
    except (AttributeError, TypeError, ValueError):  # no tags, or not plain data: read from the model when asked
        known.pop("sklearn_tags", None)
    meta["member"] = json.dumps(known)
    tmp = folder / (SPLIT_PROBA + ".tmp")
    save_file(arrays, str(tmp), metadata=meta)
    os.replace(tmp, folder / SPLIT_PROBA)


def read_member(folder, s: Splits):
    """A fitted member of a run folder as :class:`Cached`, replaying its saved validation and test probabilities
    (those whose rows are still the run's: a changed test file is predicted again). With them, the model stays on
    disk until something needs its weights (a soup, a refit, other rows)."""
    import numpy as np
    from safetensors import safe_open

    from ..fusion.members import Cached
    from ..fusion.persist import classes_from_json, load_member, task_from_json

    file = folder / SPLIT_PROBA
    if not file.is_file():
        return Cached(load_member(folder))
    with safe_open(str(file), framework="np") as f:
        meta = f.metadata() or {}
        known = json.loads(meta.get("member", "null"))
        if known is None:
            return Cached(load_member(folder))
        known["classes_"] = classes_from_json(known["classes_"])
        if "feature_names_in_" in known:
            known["feature_names_in_"] = np.asarray(known["feature_names_in_"], dtype=object)
        if "task_" in known:
            known["task_"] = task_from_json(known["task_"])
        member = Cached(load=lambda: load_member(folder), known={**known, "saved_folder_": str(folder)})
        for split, X in (("val", s.X_val), ("test", s.X_test)):
            info = json.loads(meta.get(split, "null"))
            if info is not None and X is not None and info["digest"] == s.input_keys(split)[0]:
                member.remember("proba", X, f.get_tensor(split), info["seconds"], keys=s.input_keys(split))
    return member


def _fusion_members(cfg: Config, f: FusionConfig, members: dict) -> list[tuple[str, Any]]:
    from ..finetuner import Finetuner
    from ..fusion import FUSION_METHODS

    listed = cfg.fusion_members(f)  # the search's name stands for its trials; a pruned trial is no member
    names = list(members) if listed is None else [n for n in listed if n in members]
    chosen = [(n, members[n]) for n in names]
    if FUSION_METHODS[f.method].kind == "weight":
        def tuned_member(m) -> bool:  # a run's member answers from what it saved, without being read from disk
            saved = getattr(m, "finetuner", None)
            return saved if saved is not None else isinstance(getattr(m, "estimator", m), Finetuner)

        tuned = [(n, m) for n, m in chosen if tuned_member(m)]
        if f.members is None:  # soups want one backbone: the first fine-tuned member's
            first = tuned[0][1].backbone if tuned else None
            tuned = [(n, m) for n, m in tuned if m.backbone == first]
        if len(tuned) < 2 and FUSION_METHODS[f.method].name not in ("wise_ft",):
            raise ConfigError(f"fusions: {f.method} merges weights of fine-tuned members of one backbone, and this "
                              f"config has {len(tuned)} such member(s) among {names}; fix: add members (e.g. a grid "
                              "over random_state) or drop the fusion")
        return [(n, getattr(m, "estimator", m)) for n, m in tuned]
    return chosen


def fit_fusion(run: RunFolder, cfg: Config, f: FusionConfig, members: dict, s: Splits, data_key: str,
               say: Callable):
    """Fit one fusion on the validation rows (bagging and boosting: on the training rows, saved and skipped on
    resume like a member). Returns the fitted fusion."""
    from ..fusion import FUSION_METHODS
    from ..fusion.persist import load_fusion, save_fusion

    name, method = cfg.fusion_name(f), FUSION_METHODS[f.method]
    chosen = _fusion_members(cfg, f, members)
    t0 = time.perf_counter()
    if f.method in TRAINING_FUSIONS:
        folder = run.fusion(name)
        member_keys = [json.loads((run.member(n) / "fit.json").read_text())["key"] for n, _ in chosen]
        key = _digest(f.model_dump(), cfg.task, cfg.task_options, cfg.seed, data_key, member_keys)
        record = folder / "fit.json"
        if _recorded(record, key):
            say(f"fusion {name}: fitted already, loaded from {folder}")
            return load_fusion(folder / "model")
        say(f"fusion {name}: fitting ({f.method} of {chosen[0][0]}'s recipe) ...")
        base = getattr(chosen[0][1], "estimator", chosen[0][1])
        if hasattr(base, "checkpoint_dir"):
            from sklearn.base import clone

            base = clone(base).set_params(checkpoint_dir=str(run.path / "state" / name))
        est = method.build(base, **{"random_state": cfg.seed, **f.params})
        if cfg.executor.kind == "ray" and f.method == "kfold_bagging":  # each fold model a Ray task
            from .executors import fold_map

            est._fold_map = fold_map(run, cfg.executor, name, say)
        est.fit(s.X_train, s.y_train)
        est.fit_time_ = time.perf_counter() - t0
        save_fusion(est, folder / "model")
        shutil.rmtree(folder / "folds", ignore_errors=True)  # Ray fold tasks' copies, now inside the model
        write_json(record, {"key": key, "name": name, "fit_time_s": est.fit_time_})
        faults.point("fusion")
        return load_fusion(folder / "model")
    say(f"fusion {name}: fitting {f.method} on the validation rows ...")
    opts = dict(f.params)
    if method.kind == "output":
        opts.setdefault("prefit", True)
        if f.method == "ensemble_selection" and cfg.task == "ctr":
            opts.setdefault("metric", "roc_auc")
    est = method.build(chosen, **opts)
    faults.point("fusion")
    try:
        est.fit(s.X_val, s.y_val)
    except ValueError as e:
        raise ConfigError(f"fusions: {name} ({f.method}) could not be fitted on the {len(s.X_val)} validation rows "
                          f"({' '.join(str(e).split())[:200]}); fix: hold out more validation rows "
                          "(data.validation_fraction, data.validation) or drop this fusion") from None
    est.fit_time_ = time.perf_counter() - t0
    run.log({"event": "fusion", "fusion": name, "method": f.method, "fit_time_s": est.fit_time_,
             "weights": getattr(est, "weights_", {})})
    return est


def fit_run(cfg: Config, *, say: Callable[[str], None] = print, refit: bool = True) -> RunResult:
    """Run a config into its output folder; a rerun of the same config resumes where the last one stopped.
    ``refit=False`` (``tunefuse report``): every member must be fitted already; nothing is trained."""
    from ..fusion.members import cached

    run = RunFolder(cfg.output)
    with run.lock():
        run.clean_temp()
        if run.run_file.exists():
            meta = run.read_run()
            say(f"resuming the run in {run.path} (started {meta.get('started', '?')})")
        else:
            meta = {"format": RUN_FORMAT, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        task = task_entry(cfg)
        s = load_data(cfg)
        say(f"data: {s.source or cfg.data.train}; {s.sizes()}")
        data_key = _digest(s.X_train, s.y_train, s.X_val, s.y_val)
        doc = cfg.model_dump(mode="json")
        if cfg.auto is not None and "fusions" not in cfg.model_fields_set:
            doc.pop("fusions")  # not given: the auto preset's defaults, when `tunefuse report` reads it back too
        atomic_write(run.config_file, yaml.safe_dump(doc, sort_keys=False))
        meta = {k: v for k, v in meta.items() if k not in ("chosen", "finished")}  # until this run decides again
        write_json(run.run_file, {**meta, "status": "running", "versions": versions(), "data_key": data_key,
                                  "sizes": s.sizes()})
        run.log({"event": "start", "data": s.sizes()})
        if cfg.auto is not None:  # the preset's chosen backbones become members like the listed ones
            from .auto import DEFAULT_FUSIONS, choose

            chosen = choose(run, cfg, task, s, data_key, say, refit)
            given = "fusions" in cfg.model_fields_set  # `fusions: []` turns the preset's defaults off
            fusions = cfg.fusions if given else [FusionConfig(method=f) for f in DEFAULT_FUSIONS
                                                 if len(cfg.expanded_members()) + len(chosen) >= 2]
            cfg = cfg.model_copy(update={"members": cfg.members + chosen, "fusions": fusions})
        from .executors import fit_members, ray_session

        session = ray_session()  # one Ray cluster (when the executor is ray) for members, trials and bag folds
        session.__enter__()
        try:
            members = fit_members(run, cfg, cfg.expanded_members(), task, s, data_key, say, refit)
            if cfg.search is not None:  # the search's finished trials join the members
                from .search import run_search

                members.update(run_search(run, cfg, task, s, data_key, say, refit))
            if cfg.auto is not None:
                from .auto import record_fit_times

                record_fit_times(run, members)
            members = dict(cached(list(members.items())))  # each member predicts each split once
            fusions = {cfg.fusion_name(f): fit_fusion(run, cfg, f, members, s, data_key, say) for f in cfg.fusions}
        finally:
            session.__exit__(None, None, None)
        from .evaluate import evaluate_run

        board, verdict, extras = evaluate_run(run, cfg, task, members, fusions, s, say)
        write_json(run.run_file, {**meta, "status": "done", "versions": versions(), "data_key": data_key,
                                  "sizes": s.sizes(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                  "chosen": verdict.chosen})
        run.log({"event": "done", "chosen": verdict.chosen})
    return RunResult(run, board, verdict, {**members, **fusions}, s)


def dry_run(cfg: Config) -> str:
    """What ``fit`` would do, without fitting: members, fusions, data sizes, the run folder and what it holds."""
    task = task_entry(cfg)
    s = load_data(cfg)
    run = RunFolder(cfg.output)
    lines = [f"task: {task.name}", f"data: {s.source or cfg.data.train}; {s.sizes()}", f"output: {run.path}"]
    data_key = _digest(s.X_train, s.y_train, s.X_val, s.y_val)
    for m in cfg.expanded_members():
        done = _recorded(run.member(m.name) / "fit.json", member_key(cfg, m, data_key))
        state = (run.path / "state" / m.name).exists()
        what = "fitted (skipped)" if done else "interrupted (resumes from its training state)" if state else "to fit"
        lines.append(f"member {m.name}: {m.backbone} {m.strategy} {m.params or ''} -> {what}")
    if cfg.auto is not None:
        a = cfg.auto
        lines.append(f"auto: rank {a.candidates or 'the installed backbones of the task'} by {a.rank_by} on at most "
                     f"{a.max_rows} training rows, then fine-tune ({a.strategy}) the best {a.top_k} whose estimated "
                     f"fit time fits {a.budget_s:.0f} s")
    if cfg.search is not None:
        sc = cfg.search
        table = run.path / "search.csv"
        done = max(0, len(table.read_text().splitlines()) - 1) if table.is_file() else 0
        lines.append(f"search {sc.name}: {sc.n_trials} trials of {sc.backbone} {sc.strategy} {sc.params or ''} over "
                     f"{sc.space} ({sc.sampler}, pruner {sc.pruner}); {done} trial(s) in {run.path / 'search.csv'}")
    if cfg.executor.kind == "ray":
        ex = cfg.executor
        lines.append(f"executor: ray at {ex.address or 'a local cluster started for the run'}; each member, fold and "
                     f"trial a task of {ex.cpus_per_member:g} CPU, {ex.gpus_per_member:g} GPU, {ex.retries} retries")
    for f in cfg.fusions:
        lines.append(f"fusion {cfg.fusion_name(f)}: {f.method} over {f.members or 'all members'}")
    if cfg.auto is not None and "fusions" not in cfg.model_fields_set:  # `fusions: []` turns the defaults off
        from .auto import DEFAULT_FUSIONS

        lines.append(f"fusions: {', '.join(DEFAULT_FUSIONS)} over all members (the auto preset's default)")
    return "\n".join(lines)

