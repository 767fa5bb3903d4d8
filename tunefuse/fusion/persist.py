"""Save and load members and fusions without pickle.

A member with its own ``save``/``load`` (a :class:`tunefuse.Finetuner`) saves itself; any other
estimator goes through ``skops.io``, which rebuilds objects from a schema and refuses types it does
not trust. A fusion is a folder: ``fusion.json`` (class, parameters, small fitted state),
``arrays.safetensors`` (fitted arrays), ``fitted.skops`` (fitted scikit-learn objects such as a
meta-learner), ``ensemble.skops`` (the fitted scikit-learn meta-estimator
with its members taken out) and ``members/<i>-<name>/`` (one :func:`save_member` folder each).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import skops.io as sio
from safetensors.numpy import load_file, save_file
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.utils import Bunch

from ..checkpoint import atomic_folder, read_json
from .members import Cached

# Beyond skops' own defaults, types from these packages are trusted when they are classes: the code
# already runs in this process, and skops rebuilds instances of a class without calling anything the
# file names. Functions are NOT trusted from them (a function such as numpy.load could be stored as a
# FunctionTransformer's func and called on data at predict time). Everything inside tunefuse itself is
# trusted, classes and functions, since it is this library's own code.
_TRUSTED_CLASS_PACKAGES = ("sklearn", "numpy", "scipy")
_OWN_PACKAGE = "tunefuse"
# The attributes of scikit-learn meta-estimators that hold members; they are saved per member.
_MEMBER_SLOTS = ("estimators", "estimators_", "named_estimators_", "estimator", "estimator_")


def _has_own_persistence(est: Any) -> bool:
    return callable(getattr(est, "save", None)) and isinstance(inspect.getattr_static(type(est), "load", None),
                                                               classmethod)


def _dotted(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _import_dotted(dotted: str) -> Any:
    """Import ``module.QualName`` by trying the longest importable module prefix."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {dotted!r}")


def _import_own(dotted: str, path: Path) -> Any:
    # Only tunefuse's own classes are imported from a name in a file: importing an arbitrary module
    # named by a downloaded folder would run its code.
    if dotted.split(".")[0] != _OWN_PACKAGE:
        raise ValueError(f"{path} names class {dotted!r}, which is not part of tunefuse: refusing to import it; "
                         "only tunefuse classes can be loaded this way")
    try:
        return _import_dotted(dotted)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{path} names class {dotted!r}, which this tunefuse version does not have: "
                         "load it with the tunefuse version that saved it") from e


def _allowed(type_name: str) -> bool:
    top = type_name.split(".")[0]
    if top == _OWN_PACKAGE:
        return True
    if top not in _TRUSTED_CLASS_PACKAGES:
        return False
    try:
        return isinstance(_import_dotted(type_name), type)
    except (ImportError, AttributeError):
        return False


def _skops_load(file: Path, trusted: Iterable[str | type] | None) -> Any:
    extra = {t if isinstance(t, str) else _dotted(t) for t in (trusted or ())}
    untrusted = sio.get_untrusted_types(file=file)
    rejected = [t for t in untrusted if t not in extra and not _allowed(t)]
    if rejected:
        raise ValueError(f"{file} contains types outside tunefuse's allow-list: {rejected}; review them and, if "
                         f"you trust the file's source, pass trusted={rejected!r} to the load function")
    return sio.load(file, trusted=untrusted)


def _read_json(path: Path, name: str, what: str) -> dict:
    return read_json(path / name, f"tunefuse {what}")


MEMBER_FILES = ("member.json", "model", "model.skops")  # what save_member writes (other files may sit beside them)


def member_files(folder: Path) -> list[Path]:
    """The files and folders of a saved member (not the run's records kept beside them)."""
    return [folder / n for n in MEMBER_FILES if (folder / n).exists()]


def save_member(estimator: Any, path: str | os.PathLike) -> Path:
    """Save one fitted member into folder ``path`` (its own ``save`` if it has one, else skops).

    >>> import tempfile
    >>> from sklearn.dummy import DummyClassifier
    >>> d = tempfile.mkdtemp()
    >>> m = load_member(save_member(DummyClassifier().fit([[0], [1]], [0, 1]), f"{d}/m"))
    >>> m.predict([[0]]).tolist()
    [0]
    """
    path = Path(path)
    if isinstance(estimator, Cached) and not estimator.loaded and "saved_folder_" in estimator._known:
        source = Path(estimator.saved_folder_)  # a run's member still on disk: its files, not a reload to save
        with atomic_folder(path) as tmp:
            for f in member_files(source):
                (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
        return path
    estimator = getattr(estimator, "estimator", estimator) if isinstance(estimator, Cached) else estimator
    with atomic_folder(path) as tmp:
        if _has_own_persistence(estimator):
            fmt = "tunefuse"
            estimator.save(tmp / "model")
        elif _is_own_fusion(estimator):  # a fusion as a member (a stack of k-fold bags): its own folder layout
            fmt = "fusion"
            save_fusion(estimator, tmp / "model")
        else:
            fmt = "skops"
            sio.dump(estimator, tmp / "model.skops")
        (tmp / "member.json").write_text(json.dumps({"format": fmt, "class": _dotted(type(estimator))}))
    return path


def load_member(path: str | os.PathLike, *, trusted: Iterable[str | type] | None = None) -> Any:
    """Load a member saved by :func:`save_member`; ``trusted`` adds reviewed type names to the allow-list.

    >>> import tempfile
    >>> from sklearn.dummy import DummyClassifier
    >>> d = tempfile.mkdtemp()
    >>> load_member(save_member(DummyClassifier().fit([[0], [1]], [0, 1]), f"{d}/m")).classes_.tolist()
    [0, 1]
    """
    path = Path(path)
    meta = _read_json(path, "member.json", "member")
    if meta.get("format") == "tunefuse":
        return _import_own(meta["class"], path).load(path / "model")
    if meta.get("format") == "skops":
        return _skops_load(path / "model.skops", trusted)
    if meta.get("format") == "fusion":
        return load_fusion(path / "model", trusted=trusted)
    raise ValueError(f"{path}/member.json has format={meta.get('format')!r}: expected 'tunefuse', 'fusion' or "
                     "'skops'")


def _is_own_fusion(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == _OWN_PACKAGE and hasattr(obj, "members_")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _is_jsonable(value: Any) -> bool:
    try:
        json.dumps(_jsonable(value))
        return True
    except (TypeError, ValueError):
        return False


def save_fusion(fusion: Any, path: str | os.PathLike, *, member_refs: dict[str, Any] | None = None) -> Path:
    """Save a fitted tunefuse fusion into folder ``path``, atomically.

    ``member_refs``: member name -> the folder where :func:`save_member` already saved it (a run folder's
    members/NAME): the fusion stores a relative reference instead of a second copy of its weights.

    >>> import tempfile
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.naive_bayes import GaussianNB
    >>> from tunefuse.fusion.output import Voting
    >>> X, y = load_iris(return_X_y=True)
    >>> v = Voting([("nb", GaussianNB())]).fit(X, y)
    >>> bool((load_fusion(save_fusion(v, tempfile.mkdtemp() + "/v")).predict(X) == v.predict(X)).all())
    True
    """
    path = Path(path)
    cls = type(fusion)
    if not _is_own_fusion(fusion):
        raise TypeError(f"fusion={cls.__name__} is not a fitted tunefuse fusion: fit one from "
                        "tunefuse.fusion.output first, or use save_member for a single model")
    members = fusion.members_
    # members / estimator are restored from the fitted members on load; other parameters go to
    # JSON when they can, else to skops (a CV splitter, a final_estimator).
    params = {k: v for k, v in fusion.get_params(deep=False).items() if k not in ("members", "estimator")}
    meta = {"format": "tunefuse-fusion", "class": _dotted(cls), "member_names": [n for n, _ in members],
            "params": {k: _jsonable(v) for k, v in params.items() if _is_jsonable(v)}, "state": {}}
    other_params = {k: v for k, v in params.items() if not _is_jsonable(v)}
    arrays: dict[str, np.ndarray] = {}
    fitted_objects: dict[str, Any] = {}
    with atomic_folder(path) as tmp:
        for i, (name, est) in enumerate(members):
            if member_refs and name in member_refs:
                ref = os.path.relpath(Path(member_refs[name]).resolve(), path.resolve())
                (tmp / "members").mkdir(exist_ok=True)
                (tmp / "members" / f"{i}-{name}.ref.json").write_text(json.dumps({"path": ref}))
            else:
                save_member(est, tmp / "members" / f"{i}-{name}")
        for key, value in vars(fusion).items():
            if not key.endswith("_") or key.startswith("_") or key in ("members_", "ensemble_"):
                continue
            if key == "classes_":
                meta["classes"] = classes_to_json(value)
            elif key == "task_":  # NER / QA fusions: the task entry and its options, rebuilt from the registry
                meta["task"] = task_to_json(value)
            elif key == "labels_":
                meta["labels"] = None if value is None else _jsonable(list(value))
            elif key == "oof_scores_":  # per-word probabilities (NER) or span candidates (QA) per row
                meta["oof_scores"] = [s.tolist() if isinstance(s, np.ndarray) else s for s in value]
            elif isinstance(value, np.ndarray):
                arrays[key] = np.ascontiguousarray(value)
            elif _is_jsonable(value):
                meta["state"][key] = _jsonable(value)
            elif hasattr(value, "get_params"):  # a fitted scikit-learn object (Stacking's final_estimator_)
                fitted_objects[key] = value
            else:
                raise TypeError(f"cannot save fitted attribute {key}={type(value).__name__} of {cls.__name__}: "
                                "store it as an array, a number, a string, a list, a dict or an estimator")
        if arrays:
            save_file(arrays, str(tmp / "arrays.safetensors"))
        if fitted_objects:
            sio.dump(fitted_objects, tmp / "fitted.skops")
        if other_params:
            sio.dump(other_params, tmp / "params.skops")
        if getattr(fusion, "ensemble_", None) is not None:
            shell = copy.copy(fusion.ensemble_)  # shallow: the fitted object itself is left untouched
            meta["ensemble"] = {"slots": [s for s in _MEMBER_SLOTS if s in vars(shell)],
                                "frozen": [isinstance(e, FrozenEstimator) for e in shell.estimators_]}
            for slot in meta["ensemble"]["slots"]:
                setattr(shell, slot, None)
            sio.dump(shell, tmp / "ensemble.skops")
        (tmp / "fusion.json").write_text(json.dumps(meta, indent=1))
    return path


def classes_to_json(classes: Any) -> dict:
    return {"values": _jsonable(list(classes)), "dtype": np.asarray(classes).dtype.str}


def classes_from_json(doc: dict) -> np.ndarray:
    return np.asarray(doc["values"], dtype=np.dtype(doc["dtype"]))


def task_to_json(task: Any) -> dict:
    """A task entry as its registry name and options (rebuilt by :func:`task_from_json`)."""
    return {"name": task.name, "options": {f.name: _jsonable(getattr(task, f.name)) for f in dataclasses.fields(task)
                                           if f.name != "name"}}


def task_from_json(doc: dict) -> Any:
    from ..tasks import get_task

    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in doc["options"].items()}
    return dataclasses.replace(get_task(doc["name"]), **opts)


def _member_folder(path: Path, i: int, name: str) -> Path:
    """A fusion's i-th member folder: its own copy, or the folder a ``.ref.json`` points to."""
    ref = path / "members" / f"{i}-{name}.ref.json"
    if not ref.is_file():
        return path / "members" / f"{i}-{name}"
    target = (path / json.loads(ref.read_text())["path"]).resolve()
    if not target.is_dir():
        raise ValueError(f"{str(path)!r}: member {name!r} is a reference to {str(target)!r}, which does not exist; "
                         "fix: keep the fusion inside its run folder, or save it without member_refs")
    return target


def load_fusion(path: str | os.PathLike, *, trusted: Iterable[str | type] | None = None) -> Any:
    """Load a fusion saved by :func:`save_fusion`; its ``members`` become the loaded fitted members.

    ``trusted`` adds reviewed type names to the skops allow-list (see :func:`load_member`).

    >>> import tempfile
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.naive_bayes import GaussianNB
    >>> from tunefuse.fusion.output import Stacking
    >>> X, y = load_iris(return_X_y=True)
    >>> s = Stacking([("nb", GaussianNB())], cv=3).fit(X, y)
    >>> type(load_fusion(save_fusion(s, tempfile.mkdtemp() + "/s"))).__name__
    'Stacking'
    """
    path = Path(path)
    meta = _read_json(path, "fusion.json", "fusion")
    if meta.get("format") != "tunefuse-fusion":
        raise ValueError(f"{path}/fusion.json has format={meta.get('format')!r}: expected 'tunefuse-fusion'")
    cls = _import_own(meta["class"], path)
    members = [(name, load_member(_member_folder(path, i, name), trusted=trusted))
               for i, name in enumerate(meta["member_names"])]
    params = dict(meta["params"])
    if (path / "params.skops").is_file():
        params.update(_skops_load(path / "params.skops", trusted))
    member_param = "members" if "members" in inspect.signature(cls).parameters else "estimator"
    # Bagging/boosting: the unfitted template is rebuilt from the first fitted bag (same params).
    params[member_param] = members if member_param == "members" else clone(members[0][1])
    fusion = cls(**params)
    for key, value in meta["state"].items():
        setattr(fusion, key, value)
    if (path / "arrays.safetensors").is_file():
        for key, value in load_file(str(path / "arrays.safetensors")).items():
            setattr(fusion, key, value)
    if (path / "fitted.skops").is_file():
        for key, value in _skops_load(path / "fitted.skops", trusted).items():
            setattr(fusion, key, value)
    if "classes" in meta:
        fusion.classes_ = classes_from_json(meta["classes"])
    if "task" in meta:
        fusion.task_ = task_from_json(meta["task"])
        fusion.labels_ = None if meta.get("labels") is None else np.asarray(meta["labels"])
        if "oof_scores" in meta:
            fusion.oof_scores_ = [{"spans": [tuple(x) for x in s["spans"]], "null": s["null"]} if isinstance(s, dict)
                                  else np.asarray(s) for s in meta["oof_scores"]]
    fusion.members_ = members
    fusion.ensemble_ = None
    if "ensemble" in meta:
        shell = _skops_load(path / "ensemble.skops", trusted)
        ests = [FrozenEstimator(e) if f else e for (_, e), f in zip(members, meta["ensemble"]["frozen"])]
        names = [n for n, _ in members]
        values = {"estimators": list(zip(names, ests)), "estimators_": ests,
                  "named_estimators_": Bunch(**dict(zip(names, ests))),
                  "estimator": params.get("estimator"), "estimator_": params.get("estimator")}
        for slot in meta["ensemble"]["slots"]:
            setattr(shell, slot, values[slot])
        fusion.ensemble_ = shell
    return fusion
