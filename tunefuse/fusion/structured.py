"""Output-space fusion for tasks whose output is not one class-probability row: NER, extractive QA.

``Voting``, ``EnsembleSelection`` and k-fold ``Bagging`` call these functions when their members solve such a task:
the members' fusable scores (``predict_scores``: per-word tag probabilities, answer-span candidates) are combined by
the task's own ``fuse`` and judged by its ``metric``, so the same three fusions serve every task. Hand-written:
scikit-learn's meta-estimators only know class probabilities.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import KFold
from sklearn.utils.validation import has_fit_parameter


def task_of(members: Sequence[tuple[str, Any]]):
    """The task entry that every member solves, or None when they are plain classifiers."""
    tasks = {n: getattr(m, "task_", None) for n, m in members}
    structured = {n: t for n, t in tasks.items() if t is not None and not t.is_classifier}
    if not structured:
        return None
    if len(structured) != len(tasks) or len({t.name for t in structured.values()}) > 1:
        kinds = {n: getattr(t, "name", "classification") for n, t in tasks.items()}
        raise ValueError(f"members solve different tasks ({kinds}); fix: fuse members of one task")
    return next(iter(structured.values()))


def check_labels(members: Sequence[tuple[str, Any]]) -> Any:
    """Members' scores average position by position only over one label order: check it, return it."""
    (first, ref), *rest = members
    for name, m in rest:
        a, b = getattr(ref, "labels_", None), getattr(m, "labels_", None)
        if (a is None) != (b is None) or (a is not None and list(a) != list(b)):
            la, lb = None if a is None else list(a)[:6], None if b is None else list(b)[:6]
            raise ValueError(f"members {first!r} and {name!r} have different labels ({la} vs {lb}); fix: fit every "
                             "member on the same tag set")
    return getattr(ref, "labels_", None)


def member_scores(members: Sequence[tuple[str, Any]], X: Any) -> list[list]:
    return [m.predict_scores(X) for _, m in members]


def fused_metric(task, scores: list[list], weights: np.ndarray, X: list, y: list, labels) -> float:
    return task.metric(y, task.decode(X, task.fuse(scores, weights), labels))


def select(task, scores: list[list], X: list, y: list, labels, n_iter: int) -> tuple[np.ndarray, float, list]:
    """Caruana et al.'s greedy forward selection with replacement on the task metric (entity F1, SQuAD F1); the best
    ensemble seen is kept, so it is never worse on these rows than the best single member."""
    counts, best_counts, best, trace = np.zeros(len(scores)), None, -np.inf, []
    for _ in range(n_iter):
        cand = []
        for m in range(len(scores)):
            trial = counts.copy()
            trial[m] += 1
            cand.append(fused_metric(task, scores, trial / trial.sum(), X, y, labels))
        m = int(np.argmax(cand))  # ties go to the earlier member: deterministic
        counts[m] += 1
        trace.append(cand[m])
        if cand[m] > best:
            best, best_counts = cand[m], counts.copy()
    return best_counts / best_counts.sum(), float(best), trace


def kfold_bag(estimator: Any, X: list, y: list, *, n_splits: int, random_state: int, fold_validation: bool):
    """Fold models fitted on k-1 folds and their out-of-fold scores (AutoGluon's bagging, for any task)."""
    folds = KFold(n_splits, shuffle=True, random_state=random_state).split(np.zeros(len(X)))
    take = lambda v, idx: None if v is None else [v[i] for i in idx]  # noqa: E731
    oof: list = [None] * len(X)
    members = []
    held_out = fold_validation and has_fit_parameter(estimator, "X_val")
    for i, (tr, te) in enumerate(folds):
        X_te = take(X, te)
        val = {"X_val": X_te, "y_val": take(y, te)} if held_out else {}
        est = clone(estimator).fit(take(X, tr), take(y, tr), **val)
        for j, s in zip(te, est.predict_scores(X_te)):
            oof[j] = s
        members.append((f"fold{i}", est))
    return members, oof
