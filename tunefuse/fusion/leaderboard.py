"""A leaderboard comparing fitted members and fusions on validation and test data."""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.utils import _safe_indexing

from .. import features
from .members import Cached
from .output import _Fusion
from .persist import save_fusion, save_member

# name -> score(y_true, proba, classes); all are "higher is better" so the table sorts one way.
_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda y, p, c: accuracy_score(y, c[p.argmax(1)]),
    "balanced_accuracy": lambda y, p, c: balanced_accuracy_score(y, c[p.argmax(1)]),
    "f1_macro": lambda y, p, c: f1_score(y, c[p.argmax(1)], average="macro"),
    "neg_log_loss": lambda y, p, c: -log_loss(y, p, labels=c),
    "roc_auc": lambda y, p, c: roc_auc_score(np.asarray(y) == c[-1], p[:, -1]),  # binary: CTR
}
COLUMNS = ["model", "kind", "val_score", "val_se", "val_loss", "test_score", "fit_time_s", "predict_time_s", "size_mb",
           "weights"]


def _standard_error(metric: str, y: np.ndarray, proba: np.ndarray, classes: np.ndarray, value: float) -> float:
    """Standard error of a validation score over its rows: the spread of the per-row values (correct or not; the
    log-loss) over sqrt(n). Balanced accuracy and macro-F1 have no per-row value: their binomial approximation."""
    if metric == "roc_auc":  # Hanley & McNeil (1982): the AUC's standard error from its value and the class counts
        pos = int(np.sum(y == classes[-1]))
        neg = len(y) - pos
        if pos == 0 or neg == 0:
            return math.nan
        q1, q2 = value / (2 - value), 2 * value ** 2 / (1 + value)
        var = (value * (1 - value) + (pos - 1) * (q1 - value ** 2) + (neg - 1) * (q2 - value ** 2)) / (pos * neg)
        return float(math.sqrt(max(var, 0.0)))
    if metric == "accuracy":
        per_row = (classes[proba.argmax(1)] == y).astype(float)
    elif metric == "neg_log_loss" and np.isin(y, classes).all():
        p = np.clip(proba / proba.sum(1, keepdims=True), 1e-15, 1)
        per_row = np.log(p[np.arange(len(y)), np.searchsorted(classes, y)])
    else:
        return math.sqrt(max(value * (1 - value), 0.0) / len(y)) if 0 <= value <= 1 else math.nan
    return float(per_row.std() / math.sqrt(len(y)))


def _is_fusion(model: Any) -> bool:
    return hasattr(model, "weights_")  # every fusion (output, weight space, distillation) reports its weights


def _replayed_s(model: Any) -> float:
    """Seconds that Cached members replayed instead of recomputing (see members.Cached)."""
    members = [m for _, m in getattr(model, "members_", [])] + [model]
    return sum(getattr(m, "replayed_s", 0.0) for m in members)


def _timed_proba(model: Any, X: Any, *, timed: bool = True) -> tuple[np.ndarray, float]:
    if not timed:  # a split whose time is not reported reads the warm feature cache
        return model.predict_proba(X), math.nan
    with features.cold():
        t0, r0 = time.perf_counter(), _replayed_s(model)
        proba = model.predict_proba(X)
        return proba, time.perf_counter() - t0 + _replayed_s(model) - r0


def _log_loss(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    if not np.isin(y, classes).all():  # labels the model never saw: no log-loss (accuracy still counts them wrong)
        return math.nan
    proba = np.clip(proba, 1e-15, 1)
    return float(log_loss(y, proba / proba.sum(1, keepdims=True), labels=classes))  # float32 rows sum to 1 ± 1e-7


def size_mb(model: Any) -> float:
    """The model's size saved: a run's member read from disk knows it (``size_mb_``), others are saved to measure."""
    known = getattr(model, "size_mb_", None)
    if known is not None:
        return float(known)
    return _size_mb(model.estimator if isinstance(model, Cached) else model)


def _size_mb(model: Any) -> float:
    with tempfile.TemporaryDirectory() as d:
        try:
            if isinstance(model, _Fusion):
                out = save_fusion(model, Path(d) / "m")
            elif callable(getattr(model, "save", None)):  # Finetuners, weight-space fusions, students: one model
                out = Path(model.save(Path(d) / "m"))
            else:
                out = save_member(model, Path(d) / "m")
        except Exception as e:  # noqa: BLE001 - a model that cannot be saved still gets a row
            warnings.warn(f"size_mb of {type(model).__name__} is NaN: saving it failed ({e})", stacklevel=3)
            return math.nan
        return sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6


def leaderboard(models: Mapping[str, Any], X_val: Any, y_val: Any, X_test: Any = None, y_test: Any = None, *,
                metric: str = "accuracy", val_proba: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per fitted model (members and fusions alike), best first (see :func:`sort_leaderboard`).

    ``val_se`` is the standard error of ``val_score`` over the validation rows: 400 rows measure an accuracy near 0.9
    to about ±1.5 points, 2,000 out-of-fold rows to ±0.7. ``X_val=None``: the models are cross-fitted on the rows
    labelled ``y_val`` (k-fold bags, fusions with ``prefit="oof"``) and their validation scores are read from their
    out-of-fold ``oof_proba_``.
    ``val_proba``: validation probabilities by model name that replace the model's own, e.g. from
    :func:`cross_val_fusion` for a fusion fitted on the validation rows themselves (its own score there is in-sample).

    >>> from sklearn.datasets import load_iris
    >>> from sklearn.naive_bayes import GaussianNB
    >>> from tunefuse.fusion.output import Voting
    >>> X, y = load_iris(return_X_y=True)
    >>> nb = GaussianNB().fit(X, y)
    >>> leaderboard({"nb": nb, "vote": Voting([("nb", nb)], prefit=True).fit(X, y)}, X, y).shape
    (2, 10)
    """
    if metric not in _METRICS:
        raise ValueError(f"metric={metric!r} is not valid: choose one of {sorted(_METRICS)}")
    if not models:
        raise ValueError("models={} is empty: pass {name: fitted model}, e.g. {'tfidf': pipe, 'vote': fused}")
    if (X_test is None) != (y_test is None):
        raise ValueError("X_test and y_test must be given together: pass both or neither")
    score = _METRICS[metric]
    rows = []
    for name, model in models.items():
        if not callable(getattr(model, "predict_proba", None)):
            raise TypeError(f"models[{name!r}] ({type(model).__name__}) has no predict_proba: pass fitted classifiers")
        classes = np.asarray(model.classes_)
        # One predict_proba per model and split; the last split's call is the one timed.
        # Replayed member predictions (Cached) count at the time they took to compute: the deployment cost.
        # Timed cold: frozen-backbone models (heads, bags of heads) pay their backbone pass, once per call.
        if val_proba is not None and name in val_proba:
            p_val, t_pred = np.asarray(val_proba[name]), math.nan
        elif X_val is None:
            p_val, t_pred = _oof(name, model, len(y_val)), math.nan
        else:
            p_val, t_pred = _timed_proba(model, X_val, timed=X_test is None)
        test_score = math.nan
        if X_test is not None:
            p_test, t_pred = _timed_proba(model, X_test)
            test_score = score(np.asarray(y_test), p_test, classes)
        fused = _is_fusion(model)
        inner = model.estimator if isinstance(model, Cached) and fused else model  # a Cached fusion: what it wraps
        val_score = score(np.asarray(y_val), p_val, classes)
        rows.append({
            "model": name,
            "kind": type(inner).__name__ if fused else "member",
            "val_score": val_score,
            "val_se": _standard_error(metric, np.asarray(y_val), p_val, classes, val_score),
            "val_loss": _log_loss(np.asarray(y_val), p_val, classes),
            "test_score": test_score,
            "fit_time_s": float(getattr(model, "fit_time_", math.nan)),
            "predict_time_s": t_pred,
            "size_mb": size_mb(model),
            "weights": " ".join(f"{k}:{v:.2f}" for k, v in model.weights_.items()) if fused else "",
        })
    df = pd.DataFrame(rows, columns=COLUMNS)
    return sort_leaderboard(df)


def cross_val_fusion(fusion: Any, X: Any, y: Any, *, n_splits: int = 5, random_state: int = 0) -> np.ndarray:
    """Out-of-fold probabilities of a fusion fitted on held-out rows ``X, y``: an honest validation score for it.

    A fusion whose weights, meta-learner, soup order, alpha or merge scale were fitted on the validation rows scores
    in-sample there. Here it is refitted on k-1 folds of those rows, its fitted members kept as they are, and
    predicts the k-th (hand-written: ``sklearn.model_selection.cross_val_predict`` would clone, i.e. unfit, the
    members). Costs k refits of the fusion, not of its members.

    >>> from sklearn.datasets import load_iris
    >>> from sklearn.naive_bayes import GaussianNB
    >>> from tunefuse.fusion.output import Voting
    >>> X, y = load_iris(return_X_y=True)
    >>> nb = GaussianNB().fit(X[::2], y[::2])
    >>> cross_val_fusion(Voting([("nb", nb)], weights="fit", prefit=True), X[1::2], y[1::2], n_splits=3).shape
    (75, 3)

    For NER and QA fusions (members with a ``task_``) it returns the out-of-fold fused scores (per-word tag
    probabilities, span candidates), one per row; ``fusion.task_.metric`` of their decoding is the honest score.
    """
    task = _task_of_params(fusion)
    if task is not None:
        X = task.check_X(X)
        y = task.check_y(y, X)
        scores: list = [None] * len(X)
        for tr, te in KFold(n_splits, shuffle=True, random_state=random_state).split(np.zeros(len(X))):
            f = type(fusion)(**fusion.get_params(deep=False)).fit([X[i] for i in tr], [y[i] for i in tr])
            for i, s in zip(te, f.predict_scores([X[i] for i in te])):
                scores[i] = s
        return scores
    y = np.asarray(y)
    out = None
    for tr, te in StratifiedKFold(n_splits, shuffle=True, random_state=random_state).split(np.zeros(len(y)), y):
        f = type(fusion)(**fusion.get_params(deep=False)).fit(_safe_indexing(X, tr), y[tr])
        p = np.asarray(f.predict_proba(_safe_indexing(X, te)))
        out = np.zeros((len(y), p.shape[1])) if out is None else out
        out[te] = p
    return out


def _task_of_params(fusion: Any):
    """The NER / QA task of an unfitted fusion's members (None for classifiers)."""
    from .structured import task_of

    members = fusion.get_params(deep=False).get("members")
    return task_of(members) if members else None


def _oof(name: str, model: Any, n: int) -> np.ndarray:
    oof = getattr(model, "oof_proba_", None)
    if oof is None or len(oof) != n:
        got = "none" if oof is None else f"{len(oof)} rows"
        raise ValueError(f"X_val=None reads out-of-fold predictions, but models[{name!r}] has {got} for the {n} "
                         "rows of y_val: pass X_val, or only models cross-fitted on those rows (Bagging(mode='kfold'), "
                         "fusions with prefit='oof')")
    return np.asarray(oof)


def sort_leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """Best first by the validation score's lower bound ``val_score - val_se``, then lower validation log-loss.

    Rows may be scored on different numbers of rows: a fusion fitted on 400 held-out rows is cross-fitted over those
    400, one over k-fold bags is scored out-of-fold on every labelled row. Ranked by the raw score, the maximum over
    many candidates goes to the noisiest estimates (bench/fusion_quality.py as of commit f1fbe87: TIES, 0.9100 on
    400 rows, outranked a weighted vote at 0.9085 on 2,000 rows and scored 0.8988 against its 0.9028 on test); one
    standard error off each score puts them on a common, pessimistic footing. Rows scored on the same number of rows
    keep the order of their scores (accuracy above 0.5). A few hundred rows give accuracy in coarse steps, so many
    rows tie; the log-loss (a proper scoring rule) separates them.
    """
    se = df["val_se"].fillna(0.0) if "val_se" in df else 0.0
    key = (df["val_score"] - se).round(12)  # round: equal scores and errors must tie exactly
    return (df.assign(_lower=key).sort_values(["_lower", "val_loss"], ascending=[False, True], kind="stable")
            .drop(columns="_lower").reset_index(drop=True))


def format_leaderboard(df: pd.DataFrame) -> str:
    """Render a leaderboard as a fixed-width text table (numbers right-aligned, NaN as '-').

    >>> print(format_leaderboard(pd.DataFrame({"model": ["a"], "val_score": [0.5]})))
    model  val_score
    a         0.5000
    """
    digits = {"size_mb": 2, "fit_time_s": 3, "predict_time_s": 3, "val_loss": 4}

    def cell(col: str, v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "-" if math.isnan(v) else f"{v:.{digits.get(col, 4)}f}"
        return str(v)

    cols = [[col] + [cell(col, v) for v in df[col]] for col in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[col]) for col in df.columns]
    widths = [max(len(s) for s in c) for c in cols]
    lines = []
    for r in range(len(df) + 1):
        parts = [(c[r].rjust(w) if num else c[r].ljust(w)) for c, w, num in zip(cols, widths, numeric)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
