"""The member protocol shared by every output-space fusion.

A member is any classifier with ``fit``, ``predict_proba`` and, once fitted, ``classes_``: a
scikit-learn estimator or pipeline, or a :class:`tunefuse.Finetuner`. Ensembles take them as
``[(name, estimator)]`` pairs, like scikit-learn's ``VotingClassifier``.
"""

from __future__ import annotations

import hashlib
import time

from typing import Any, Callable

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

_EXAMPLE = "[('minilm', Finetuner()), ('tfidf', make_pipeline(...))]"


def _short(obj: Any, limit: int = 80) -> str:
    """A one-line repr for error messages (estimator reprs span several lines)."""
    text = " ".join(repr(obj).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_members(members: Any, *, param: str = "members", required: tuple[str, ...] = ("fit", "predict_proba")
                  ) -> list[tuple[str, Any]]:
    """Validate ``[(name, estimator)]`` pairs and return them as a list.

    >>> from sklearn.linear_model import LogisticRegression
    >>> check_members([("lr", LogisticRegression())])
    [('lr', LogisticRegression())]
    """
    if isinstance(members, (str, bytes)) or not hasattr(members, "__iter__"):
        raise TypeError(f"{param}={_short(members)} is not a list: pass (name, estimator) pairs, e.g. {_EXAMPLE}")
    members = list(members)
    if not members:
        raise ValueError(f"{param}=[] is empty: pass at least one (name, estimator) pair, e.g. {_EXAMPLE}")
    seen: set[str] = set()
    for i, item in enumerate(members):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"{param}[{i}]={_short(item)} is not a (name: str, estimator) pair, e.g. {_EXAMPLE}")
        name, est = item
        if name in seen:
            raise ValueError(f"{param} has the duplicate name {name!r}: give every member a unique name")
        seen.add(name)
        missing = [m for m in required if not callable(getattr(est, m, None))]  # (Cached has them: not loaded)
        if missing:
            raise TypeError(
                f"{param} member {name!r} ({type(est).__name__}) has no {' or '.join(missing)}: every member "
                f"needs {' and '.join(required)}; give it {missing[0]}, e.g. SVC(probability=True) for predict_proba"
            )
    return members


def check_fitted_members(members: list[tuple[str, Any]]) -> np.ndarray:
    """Check that every member is fitted on the same labels and return their common ``classes_``.

    >>> from sklearn.dummy import DummyClassifier
    >>> check_fitted_members([("d", DummyClassifier().fit([[0], [1]], [0, 1]))])
    array([0, 1])
    """
    unfitted = []
    for name, est in members:
        try:
            check_is_fitted(est)
        except NotFittedError:
            unfitted.append(name)
    if unfitted:
        raise ValueError(
            f"members {unfitted} are not fitted but prefit=True: fit them first or pass prefit=False"
        )
    (first, ref), *rest = members
    for name, est in rest:
        if not np.array_equal(np.asarray(est.classes_), np.asarray(ref.classes_)):
            raise ValueError(
                f"members {first!r} and {name!r} have different classes_ ({list(ref.classes_)} vs "
                f"{list(est.classes_)}): fit every member on the same labels"
            )
    return np.asarray(ref.classes_)


def member_proba(members: list[tuple[str, Any]], X: Any) -> np.ndarray:
    """Stack the members' ``predict_proba(X)`` into shape (n_members, n_samples, n_classes).

    >>> from sklearn.dummy import DummyClassifier
    >>> member_proba([("d", DummyClassifier().fit([[0], [1]], [0, 1]))], [[0]]).shape
    (1, 1, 2)
    """
    return np.stack([np.asarray(est.predict_proba(X), dtype=float) for _, est in members])


def _digest(X: Any) -> str:
    """A content hash of an input: arrays by their bytes (images), other items by their repr (texts, paths)."""
    h = hashlib.sha1()

    def add(v) -> None:
        if isinstance(v, np.ndarray) and v.dtype != object:
            h.update(f"{v.shape}{v.dtype.str}".encode())
            h.update(np.ascontiguousarray(v).tobytes())
        elif isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.dtype == object):
            h.update(f"[{len(v)}".encode())
            for x in v:
                add(x)
            h.update(b"]")
        elif hasattr(v, "to_numpy") and hasattr(v, "shape"):  # DataFrame, Series
            add(np.asarray(v.to_numpy(), dtype=object))
        else:
            h.update(repr(v).encode())
        h.update(b"\x1f")

    add(X)
    return h.hexdigest()


def _rows(X: Any) -> list | None:
    """The rows of an input, each hashable by :func:`_digest` (None: an input without rows)."""
    if hasattr(X, "to_numpy") and hasattr(X, "shape"):  # DataFrame, Series: a row's values, not its index
        return list(np.asarray(X.to_numpy(), dtype=object))
    if isinstance(X, np.ndarray) and X.ndim >= 1:
        return list(X)
    if isinstance(X, (list, tuple)):
        return list(X)
    return None


def input_keys(X: Any) -> tuple[str, list[str] | None]:
    """The content digest of an input and of each of its rows (None: an input without rows)."""
    rows = _rows(X)
    return _digest(X), None if rows is None else [_digest(r) for r in rows]


def tags_to_json(tags) -> dict:
    """scikit-learn's estimator tags as plain data (rebuilt by :func:`tags_from_json`)."""
    import dataclasses

    return dataclasses.asdict(tags)


def tags_from_json(doc: dict):
    from sklearn.utils import ClassifierTags, InputTags, RegressorTags, Tags, TargetTags, TransformerTags

    nested = {"target_tags": TargetTags, "transformer_tags": TransformerTags, "classifier_tags": ClassifierTags,
              "regressor_tags": RegressorTags, "input_tags": InputTags}
    return Tags(**{k: nested[k](**v) if k in nested and v is not None else v for k, v in doc.items()})


class Cached:
    """A fitted member whose ``predict_proba`` is computed once per distinct row, then replayed.

    Fusing prefit members means asking each member for the same validation and test predictions again and again
    (every fusion, every leaderboard row), and cross-fitting a fusion on the validation rows asks for k subsets of
    them: a fine-tuned transformer would pay a forward pass each time. An input seen whole is replayed as it was;
    an input whose every row was seen (a fold of the validation rows) is assembled from those rows. The time the
    first call took is remembered (per row), and ``replayed_s`` counts it again on every replay, so leaderboards
    still report what a deployment would pay. :meth:`remember` takes predictions computed elsewhere (a Ray worker
    right after the member's fit). Everything else is delegated to the wrapped estimator.

    ``load`` and ``known`` (a run folder's members): the estimator is read from disk only when something needs more
    than its remembered predictions and the ``known`` attributes (``classes_``, ``fit_time_``...; ``"names"``, every
    attribute it has, answers ``hasattr`` without loading), so a driver scoring hundreds of members holds arrays,
    not models.
    """

    def __init__(self, estimator: Any = None, *, load: Callable[[], Any] | None = None,
                 known: dict[str, Any] | None = None):
        if (estimator is None) == (load is None):
            raise TypeError("Cached takes a fitted estimator or a load() that returns one, not both or neither")
        self._estimator, self._load, self._known = estimator, load, dict(known or {})
        self._memo: dict[str, tuple[Any, float]] = {}
        self._by_row: dict[str, dict[str, tuple[Any, float]]] = {}
        self.replayed_s = 0.0

    @property
    def estimator(self) -> Any:
        """The wrapped estimator (read from disk on first use when the member was given as ``load``)."""
        if self._estimator is None:
            self._estimator, self._load = self._load(), None
        return self._estimator

    @property
    def loaded(self) -> bool:
        return self._estimator is not None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") and name in ("_estimator", "_load", "_known", "_memo", "_by_row"):
            raise AttributeError(name)  # not yet set (during unpickling/copy): no recursion
        known = self._known
        if name in known and name != "names":
            return known[name]
        if not self.loaded and "names" in known and name not in known["names"]:
            raise AttributeError(f"{type(self).__name__} member has no attribute {name!r}")
        return getattr(self.estimator, name)

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def __sklearn_tags__(self):
        if self.loaded or "sklearn_tags" not in self._known:
            return self.estimator.__sklearn_tags__()
        return tags_from_json(self._known["sklearn_tags"])

    def fit(self, *args, **kwargs) -> "Cached":
        """Refit the wrapped estimator and forget what it predicted before."""
        self.estimator.fit(*args, **kwargs)
        self._memo.clear()
        self._by_row.clear()
        return self

    def remember(self, kind: str, X: Any, out: Any, seconds: float,
                 keys: tuple[str, list[str] | None] | None = None) -> None:
        """Record ``out`` as this member's ``kind`` output ("proba" or "scores") on ``X``, computed in ``seconds``
        (``keys``: :func:`input_keys` of ``X``, when the caller has them already)."""
        digest, rows = keys or input_keys(X)
        self._memo[kind + digest] = (out, seconds)
        if rows is not None and len(rows) == len(out) > 0:  # row-aligned: every row replayable on its own
            table = self._by_row.setdefault(kind, {})
            for r, o in zip(rows, out):
                table[r] = (o, seconds / len(rows))

    def _replay(self, kind: str, X: Any, compute):
        digest = _digest(X)
        if kind + digest in self._memo:
            out, seconds = self._memo[kind + digest]
            self.replayed_s += seconds
            return out
        rows = _rows(X)
        rows = None if rows is None else [_digest(r) for r in rows]
        table = self._by_row.get(kind)
        if rows and table:
            hits = [table.get(r) for r in rows]
            if all(h is not None for h in hits):
                self.replayed_s += sum(s for _, s in hits)
                outs = [o for o, _ in hits]
                return np.stack(outs) if kind == "proba" else outs
        t0 = time.perf_counter()
        out = compute(X)
        self.remember(kind, X, out, time.perf_counter() - t0, keys=(digest, rows))
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        return self._replay("proba", X, lambda X: np.asarray(self.estimator.predict_proba(X)))

    def predict_scores(self, X: Any):
        """The member's fusable scores (NER tag probabilities, QA spans, boxes), computed once per input."""
        return self._replay("scores", X, self.estimator.predict_scores)

    def predict(self, X: Any):
        task = getattr(self, "task_", None)
        if task is not None and not task.is_classifier:
            X = task.check_X(X)
            return task.decode(X, self.predict_scores(X), self.labels_)
        return np.asarray(self.classes_)[self.predict_proba(X).argmax(1)]


def cached(members: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Wrap each fitted member in :class:`Cached` (already-cached members are kept as they are)."""
    return [(n, m if isinstance(m, Cached) else Cached(m)) for n, m in check_members(members, required=("fit",))]
