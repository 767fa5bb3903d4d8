"""Distillation: one student trained on a fused teacher's soft labels, so the gain ships at one model's cost."""
from __future__ import annotations

import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ..data import as_labels, as_texts


class Distillation(ClassifierMixin, BaseEstimator):
    """Train ``student`` (an unfitted Finetuner) on ``teacher``'s (a fitted ensemble's) probabilities.

    Hinton et al., 2015, Distilling the knowledge in a neural network. Targets are
    ``alpha·onehot(y) + (1-alpha)·softmax(log p_teacher / T)`` on labelled rows and the tempered teacher alone on
    ``X_unlabeled`` (extra in-domain text, often the cheapest way to transfer more of the teacher).

    >>> # student = Distillation(stack, Finetuner("minilm-l6"), X_unlabeled=more_texts).fit(X, y)
    """

    def __init__(self, teacher, student, *, alpha: float = 0.0, temperature: float = 1.0, X_unlabeled=None):
        self.teacher = teacher
        self.student = student
        self.alpha = alpha  # weight of the hard labels; 0 trusts the teacher fully (it saw these labels itself)
        self.temperature = temperature  # >1 softens the teacher: more of its 'dark knowledge' in the targets
        self.X_unlabeled = X_unlabeled

    def fit(self, X, y=None, sample_weight=None, X_val=None, y_val=None):
        t0 = time.perf_counter()
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha={self.alpha!r} is invalid; fix: pass a float in [0, 1]")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature!r} is invalid; fix: pass a float > 0, e.g. 2.0")
        check_is_fitted(self.teacher)
        task = getattr(self.teacher, "task_", None)
        if task is not None and not task.is_classifier:
            return self._fit_structured(task, X, X_val, y_val, t0)
        student_task = getattr(self.student, "task_", None)
        read = student_task.check_X if student_task is not None else as_texts  # texts, or a CTR task's table
        texts = read(X)
        y = as_labels(y, len(texts))
        classes = np.asarray(self.teacher.classes_)
        unseen = sorted(set(y.tolist()) - set(classes.tolist()), key=str)
        if unseen:
            raise ValueError(f"y has labels {unseen[:5]} the teacher never saw (its classes_ are "
                             f"{classes.tolist()}); fix: refit the teacher with them")
        extra = read(self.X_unlabeled, "X_unlabeled") if self.X_unlabeled is not None else []
        if isinstance(texts, list):
            all_texts = texts + extra
        else:  # DataFrames (CTR rows)
            import pandas as pd

            all_texts = texts if len(extra) == 0 else pd.concat([texts, extra], ignore_index=True)
        p = np.clip(self.teacher.predict_proba(all_texts), 1e-12, 1)
        p = p ** (1 / self.temperature)
        p /= p.sum(1, keepdims=True)
        onehot = (y[:, None] == classes[None, :]).astype(np.float32)
        p[: len(texts)] = self.alpha * onehot + (1 - self.alpha) * p[: len(texts)]
        self.student_ = clone(self.student).fit_soft(all_texts, p, classes, X_val=X_val, y_val=y_val)
        self.classes_ = classes
        self.weights_ = {"student": 1.0}
        self.fit_time_ = time.perf_counter() - t0
        return self

    def _fit_structured(self, task, X, X_val, y_val, t0) -> "Distillation":
        """NER / QA: the student fits the teacher's fused scores (per-word tag probabilities, span distributions)."""
        if self.alpha != 0 or self.temperature != 1:
            raise ValueError(f"alpha={self.alpha!r}, temperature={self.temperature!r}: {task.name} students learn the "
                             "teacher's scores as they are; fix: pass alpha=0 and temperature=1")
        X = task.check_X(X)
        extra = task.check_X(self.X_unlabeled, "X_unlabeled") if self.X_unlabeled is not None else []
        all_X = list(X) + list(extra)
        labels = getattr(self.teacher, "labels_", None)
        self.student_ = clone(self.student).fit_soft(all_X, self.teacher.predict_scores(all_X), classes=labels,
                                                     X_val=X_val, y_val=y_val)
        self.task_, self.labels_ = task, labels
        self.weights_ = {"student": 1.0}
        self.fit_time_ = time.perf_counter() - t0
        return self

    @available_if(lambda self: getattr(self, "task_", None) is None)
    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "student_")
        return self.student_.predict_proba(X)

    def predict_scores(self, X):
        check_is_fitted(self, "student_")
        return self.student_.predict_scores(X)

    def predict(self, X) -> np.ndarray:
        return self.student_.predict(X)

    def score(self, X, y=None, sample_weight=None) -> float:
        check_is_fitted(self, "student_")
        return self.student_.score(X, y, sample_weight)

    def save(self, path):
        """The student is a plain Finetuner checkpoint: it loads with ``Finetuner.load``."""
        check_is_fitted(self, "student_")
        return self.student_.save(path)
