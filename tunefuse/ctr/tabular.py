"""scikit-learn CTR members on the same rows and column mapping as the neural ones: logistic regression on one-hot
ids (the baseline every CTR paper reports) and histogram gradient boosting on target-encoded ids.

A ``TabularModel`` is a scikit-learn classifier over the labels (0, 1): it takes the CTR task's DataFrame, so one
``Stacking`` or ``EnsembleSelection`` fuses a DeepFM ``Finetuner`` with a GBM, and ``Bagging`` clones it per fold.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from ..tasks import get_task
from .features import FeatureEncoder

KINDS = ("lr", "hgb")
LR_CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # inverse L2 strengths LogisticRegressionCV picks from by log-loss


def _one_hot(arrays: dict, encoder: FeatureEncoder) -> sp.csr_matrix:
    """One column per known value of every id and multi-hot field (multi-hot rows sum to 1), then the numbers.
    The history is left to the neural models: a linear model on a bag of earlier items is another baseline."""
    blocks, n = [], len(arrays["ids"])
    ids = [f for f in encoder.fields if f.kind == "id"]
    for j, f in enumerate(ids):
        blocks.append(sp.csr_matrix((np.ones(n), (np.arange(n), arrays["ids"][:, j])), shape=(n, f.size)))
    for f in (f for f in encoder.fields if f.kind == "multi"):
        idx = arrays[f"multi:{f.name}"]
        mask = idx > 0
        w = (mask / np.maximum(mask.sum(1, keepdims=True), 1))[mask]
        rows = np.repeat(np.arange(n), mask.sum(1))
        blocks.append(sp.csr_matrix((w, (rows, idx[mask])), shape=(n, f.size)))
    if "numeric" in arrays:
        blocks.append(sp.csr_matrix(arrays["numeric"].astype(np.float64)))
    return sp.hstack(blocks, format="csr")


def _dense(arrays: dict, encoder: FeatureEncoder) -> tuple[np.ndarray, np.ndarray]:
    """(id codes, other columns): ids for target encoding; multi-hot flags, numbers, history length."""
    cols = []
    for f in (f for f in encoder.fields if f.kind == "multi"):
        idx = arrays[f"multi:{f.name}"]
        flags = np.zeros((len(idx), f.size), dtype=np.float32)
        np.put_along_axis(flags, idx, 1.0, axis=1)
        cols.append(flags[:, 2:])
    if "numeric" in arrays:
        cols.append(arrays["numeric"])
    if "history" in arrays:
        cols.append((arrays["history"] > 0).sum(1, keepdims=True).astype(np.float32))
    other = np.concatenate(cols, 1) if cols else np.zeros((len(arrays["ids"]), 0), np.float32)
    return arrays["ids"], other


def _target_encoder_folds(seed: int) -> dict:
    """Shuffled 5-fold cross-fitting: a splitter from scikit-learn 1.9 on (shuffle/random_state deprecated there)."""
    import sklearn

    if tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 9):
        from sklearn.model_selection import StratifiedKFold

        return {"cv": StratifiedKFold(5, shuffle=True, random_state=seed)}
    return {"cv": 5, "shuffle": True, "random_state": seed}


def _lr_cv_options() -> dict:
    """Pure L2, and the new fitted attributes, where scikit-learn has the options (1.8 warns otherwise)."""
    import inspect

    from sklearn.linear_model import LogisticRegressionCV

    params = inspect.signature(LogisticRegressionCV).parameters
    return {k: v for k, v in (("l1_ratios", (0.0,)), ("use_legacy_attributes", False)) if k in params}


class TabularModel(ClassifierMixin, BaseEstimator):
    """A scikit-learn CTR member: ``kind='lr'`` (``LogisticRegressionCV`` on one-hot ids, L2 picked by 3-fold
    log-loss) or ``'hgb'`` (``HistGradientBoostingClassifier`` on cross-fitted target encodings of the ids, their
    training counts, multi-hot flags, numbers and history length; early stopping on 10 % of the rows), or any classifier
    given as ``estimator`` (it receives the one-hot matrix for kind='lr', the dense one for 'hgb').

    >>> from tunefuse.tasks.ctr import CTR
    >>> TabularModel("lr", task=CTR(user="u", item="i")).kind
    'lr'
    """

    def __init__(self, kind: str = "lr", *, task: Any = "ctr", estimator: Any = None, random_state: int = 0):
        self.kind = kind
        self.task = task
        self.estimator = estimator
        self.random_state = random_state

    @property
    def task_(self):
        return get_task(self.task) if isinstance(self.task, str) else self.task

    def _matrix(self, arrays: dict, fit_y: np.ndarray | None = None):
        if self.kind == "lr":
            return _one_hot(arrays, self.encoder_)
        ids, other = _dense(arrays, self.encoder_)
        if fit_y is not None:  # how often each id occurs in training (an item's popularity, a user's activity)
            self.id_counts_ = [np.bincount(ids[:, j], minlength=f.size).astype(np.float32)
                               for j, f in enumerate(f for f in self.encoder_.fields if f.kind == "id")]
        codes = self.target_encoder_.fit_transform(ids, fit_y) if fit_y is not None else \
            self.target_encoder_.transform(ids)
        counts = np.stack([np.log1p(c[ids[:, j]]) for j, c in enumerate(self.id_counts_)], 1)
        return np.concatenate([codes, counts, other], 1)

    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None) -> "TabularModel":
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.preprocessing import TargetEncoder

        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} is invalid; valid: {list(KINDS)} ('lr': logistic regression on "
                             "one-hot ids, 'hgb': gradient-boosted trees)")
        task = self.task_
        X = task.check_X(X)
        y = task.check_y(y, X)
        self.classes_ = task.labels(y)
        self.encoder_ = FeatureEncoder.fit(X, task)
        arrays = self.encoder_.transform(X, task, task.max_history)
        if self.kind == "hgb":  # cross-fitted: a row's own label never enters its encoding (sklearn's TargetEncoder)
            self.target_encoder_ = TargetEncoder(target_type="binary", **_target_encoder_folds(self.random_state))
        M = self._matrix(arrays, fit_y=y)
        if self.estimator is not None:
            est = clone(self.estimator)
        elif self.kind == "lr":
            est = LogisticRegressionCV(Cs=list(LR_CS), cv=3, scoring="neg_log_loss", max_iter=2000,
                                       **_lr_cv_options())
        else:
            est = HistGradientBoostingClassifier(max_iter=500, learning_rate=0.05, max_leaf_nodes=31,
                                                 early_stopping=True, validation_fraction=0.1, n_iter_no_change=20,
                                                 random_state=self.random_state)
        self.model_ = est.fit(M, y, **({} if sample_weight is None else {"sample_weight": sample_weight}))
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = self.task_.check_X(X)
        arrays = self.encoder_.transform(X, self.task_, self.task_.max_history)
        self.encoder_.report_unseen(len(X))
        return self.model_.predict_proba(self._matrix(arrays))

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]

    def score(self, X, y, sample_weight=None) -> float:
        """AUC, as the neural CTR members score."""
        from .metrics import auc

        return auc(self.task_.check_y(y, self.task_.check_X(X)), self.predict_proba(X)[:, 1])
