"""Output-space fusion: combine the predicted probabilities of several fitted members.

Every class here is a scikit-learn classifier over ``[(name, estimator)]`` members (see
:mod:`tunefuse.fusion.members`), so a fine-tuned transformer and a TF-IDF pipeline can be fused,
cloned, grid-searched and stacked alike. Where scikit-learn already has the meta-estimator we wrap
it; only ensemble selection, fitted voting weights and k-fold bagging are written here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.ensemble import AdaBoostClassifier, BaggingClassifier, StackingClassifier, VotingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
from sklearn.utils import _safe_indexing
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_consistent_length, check_is_fitted, has_fit_parameter

from . import structured as S
from .members import check_fitted_members, check_members, member_proba

_EPS = 1e-15  # clip probabilities before log, as sklearn's log_loss does


def _fit(est: Any, X: Any, y: np.ndarray, sample_weight: np.ndarray | None, **fit_params: Any) -> Any:
    # Only pass sample_weight when given: many estimators (e.g. Pipeline) do not accept the keyword.
    if sample_weight is not None:
        fit_params["sample_weight"] = sample_weight
    return est.fit(X, y, **fit_params)


def _check_choice(param: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{param}={value!r} is not valid: choose one of {list(choices)}")


def _check_fraction(value: Any) -> None:
    if not (isinstance(value, float) and 0.0 < value < 1.0):
        raise ValueError(f"validation_fraction={value!r} is not valid: pass a float in (0, 1), e.g. 0.2")


def _check_positive_int(param: str, value: Any) -> None:
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{param}={value!r} is not valid: pass an integer >= 1")


def _check_same_classes(y: np.ndarray, classes: np.ndarray) -> None:
    if not np.array_equal(np.unique(y), np.unique(classes)):
        raise ValueError(
            f"y passed to fit has classes {list(np.unique(y))} but the members were fitted on {list(classes)}: "
            "pass held-out data that contains every class the members know"
        )


def _prepare(members: Any, X: Any, y: Any, sample_weight: Any, *, prefit: bool, holdout: float | None,
             random_state: Any = None) -> tuple[list, np.ndarray, Any, np.ndarray, np.ndarray | None]:
    """Return fitted members, their classes, and the data (X, y, sample_weight) to fit the combiner on.

    prefit=True: members are used as they are and all of X, y is validation data. prefit="oof": members are
    cross-fitted on X, y and the combiner reads their out-of-fold predictions (:func:`_holdout_proba`).
    Otherwise clones are fitted on all rows (holdout=None) or on a stratified split that keeps a ``holdout``
    fraction out.
    """
    _check_choice("prefit", prefit, (False, True, "oof"))
    members = check_members(members)
    y = np.asarray(y)
    check_classification_targets(y)
    check_consistent_length(X, y)
    sw = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
    if prefit:
        classes = check_fitted_members(members)
        _check_same_classes(y, classes)
        return members, classes, X, y, sw
    if holdout is None:
        fitted = [(name, _fit(clone(est), X, y, sw)) for name, est in members]
        return fitted, check_fitted_members(fitted), X, y, sw
    _check_fraction(holdout)
    tr, va = train_test_split(np.arange(len(y)), test_size=holdout, stratify=y, random_state=random_state)
    # Members stay trained on the training part: refitting them on all rows would change the very
    # predictions the combiner was fitted on (and double the cost of a fine-tuned member).
    fitted = [(name, _fit(clone(est), _safe_indexing(X, tr), y[tr], None if sw is None else sw[tr]))
              for name, est in members]
    return fitted, check_fitted_members(fitted), _safe_indexing(X, va), y[va], None if sw is None else sw[va]


def _holdout_proba(prefit: Any, members: list, X: Any, y: np.ndarray) -> np.ndarray:
    """(n_members, n_samples, n_classes) predictions the combiner may be fitted on: held-out ones.

    prefit="oof": the members' own out-of-fold predictions (``oof_proba_`` of k-fold bags fitted on exactly
    these rows: AutoGluon's stacking on bagged models). Otherwise the members predict X, which they never saw.
    """
    if prefit != "oof":
        return member_proba(members, X)
    missing = [n for n, e in members if getattr(e, "oof_proba_", None) is None]
    if missing:
        raise ValueError(f"prefit='oof' needs cross-fitted members, but {missing} have no oof_proba_: fit them as "
                         "Bagging(estimator, mode='kfold') on the rows passed here, or use prefit=True with rows "
                         "the members never saw")
    wrong = {n: len(e.oof_proba_) for n, e in members if len(e.oof_proba_) != len(y)}
    if wrong:
        raise ValueError(f"prefit='oof': members {sorted(wrong)} hold out-of-fold predictions for "
                         f"{sorted(set(wrong.values()))} rows but fit got {len(y)}: pass the very rows the k-fold "
                         "members were fitted on")
    return np.stack([np.asarray(e.oof_proba_, dtype=float) for _, e in members])


def _cross_fit_weights(fit_weights: Callable, P: np.ndarray, y_idx: np.ndarray, sw: np.ndarray | None,
                       apply: np.ndarray | None = None, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of a weighted average whose weights are fitted: weights fitted on k-1 folds of
    the rows, applied to the k-th, so the combiner's validation score is as honest as its members' (hand-written:
    sklearn cross-validates estimators, not a function of prediction matrices)."""
    Q = P if apply is None else apply  # what the weights average (hard voting: one-hot votes)
    out = np.zeros_like(Q[0])
    folds = StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y_idx)), y_idx)
    for tr, te in folds:
        w = fit_weights(P[:, tr], y_idx[tr], None if sw is None else sw[tr])
        out[te] = np.tensordot(w, Q[:, te], axes=1)
    return out


def _encode(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Column index of each label in ``classes`` (which need not be sorted)."""
    order = np.argsort(classes)
    return order[np.searchsorted(classes, y, sorter=order)]


def _proba_loss(proba: np.ndarray, y_idx: np.ndarray, sw: np.ndarray | None) -> float:
    return float(np.average(-np.log(np.clip(proba[np.arange(len(y_idx)), y_idx], _EPS, None)), weights=sw))


def _classifiers_only(what: str, task) -> None:
    if task is not None:
        raise ValueError(f"{what} combines class-probability rows; {task.name} members have none: fix: fuse them "
                         "with Voting(weights='fit'), EnsembleSelection or Bagging(mode='kfold')")


def _is_structured(fusion) -> bool:
    return fusion.__dict__.get("task_") is not None


class _Fusion(ClassifierMixin, BaseEstimator):
    """Shared predict for the fusions: the class with the highest fused probability; for NER/QA members, the task's
    decoding of the fused scores (see :mod:`tunefuse.fusion.structured`)."""

    def predict(self, X: Any) -> np.ndarray:
        if _is_structured(self):
            X = self.task_.check_X(X)
            return self.task_.decode(X, self.predict_scores(X), self.labels_)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    @available_if(lambda self: not _is_structured(self))
    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self._proba(X)

    def predict_scores(self, X: Any):
        """The fused scores: class probabilities, or per-word tag probabilities (NER), span candidates (QA)."""
        check_is_fitted(self)
        if not _is_structured(self):
            return self._proba(X)
        used = [(n, e) for n, e in self.members_ if self.weights_[n] > 0]  # unused members cost no forward pass
        return self.task_.fuse(S.member_scores(used, X), [self.weights_[n] for n, _ in used])

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        if _is_structured(self):
            X = self.task_.check_X(X)
            return self.task_.metric(self.task_.check_y(y, X), self.predict(X))
        return super().score(X, y, sample_weight)

    def _fit_structured(self, task, members, X, y, *, select: str | None, weights=None, n_iter: int = 50
                        ) -> "_Fusion":
        """Voting/EnsembleSelection over NER or QA members: weights given, uniform, fitted on the validation
        log-likelihood of the truth (``select="loglik"``: per word, per question) or selected greedily on the task
        metric (``select="metric"``)."""
        start = time.perf_counter()
        _check_choice("prefit", self.prefit, (False, True, "oof"))
        X = task.check_X(X)
        y = task.check_y(y, X)
        if self.prefit is False:  # clones fitted on the rows given (a held-out part when weights are selected)
            if select:
                tr, va = train_test_split(np.arange(len(X)), test_size=self.validation_fraction,
                                          random_state=self.random_state)
                take = lambda v, idx: [v[i] for i in idx]  # noqa: E731
                members = [(n, clone(e).fit(take(X, tr), take(y, tr))) for n, e in members]
                X, y = take(X, va), take(y, va)
            else:
                members = [(n, clone(e).fit(X, y)) for n, e in members]
        labels = S.check_labels(members)
        if self.prefit == "oof":
            missing = [n for n, e in members if getattr(e, "oof_scores_", None) is None]
            if missing:
                raise ValueError(f"prefit='oof' needs cross-fitted members, but {missing} have no oof_scores_: fit "
                                 "them as Bagging(estimator, mode='kfold') on the rows passed here")
            P = [e.oof_scores_ for _, e in members]
        else:
            P = S.member_scores(members, X) if select else None
        if select == "metric":
            w, self.val_score_, self.scores_ = S.select(task, P, X, y, labels, n_iter)
        elif select == "loglik":  # the classifiers' simplex fit, on each row's probability of its truth
            truth = np.stack([task.truth_proba(X, p, y, labels) for p in P])
            w = _fit_simplex_weights(np.stack([1 - truth, truth], -1), np.ones(truth.shape[1], dtype=int), None)
        else:
            w = np.full(len(members), 1.0 / len(members)) if weights is None else weights
        self.task_, self.labels_, self.members_ = task, labels, members
        self.weights_ = {n: float(v) for (n, _), v in zip(members, w)}
        self.fit_time_ = time.perf_counter() - start
        return self


class Voting(_Fusion):
    """Hard or soft (weighted) voting over members; ``weights="fit"`` fits the weights on held-out data.

    Kittler et al., "On combining classifiers", IEEE TPAMI 1998. Fitted weights minimise validation
    log-loss over the simplex (non-negative linear stacking, Breiman, "Stacked regressions", 1996).
    ``prefit=True``: members are fitted and ``fit`` gets rows they never saw; ``prefit="oof"``: members are
    k-fold bags fitted on the rows ``fit`` gets, and the weights are fitted on their out-of-fold predictions.

    >>> from sklearn.datasets import load_iris
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.naive_bayes import GaussianNB
    >>> X, y = load_iris(return_X_y=True)
    >>> v = Voting([("lr", LogisticRegression(max_iter=500)), ("nb", GaussianNB())], weights="fit").fit(X, y)
    >>> sorted(v.weights_)
    ['lr', 'nb']
    """

    def __init__(self, members, *, voting="soft", weights=None, prefit=False, validation_fraction=0.2,
                 random_state=0):
        self.members = members
        self.voting = voting
        self.weights = weights
        self.prefit = prefit
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def _check_weights(self, n: int) -> np.ndarray | None:
        w = self.weights
        if w is None or (isinstance(w, str) and w == "fit"):
            return None
        try:
            w = np.asarray(w, dtype=float)
        except (TypeError, ValueError) as e:
            raise ValueError(f"weights={self.weights!r} is not valid: pass None, 'fit' or {n} numbers") from e
        if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(
                f"weights={self.weights!r} is not valid: pass None (uniform), 'fit', or {n} non-negative "
                "numbers with a positive sum, one per member"
            )
        return w / w.sum()

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "Voting":
        start = time.perf_counter()
        _check_choice("voting", self.voting, ("hard", "soft"))
        task = S.task_of(check_members(self.members, required=("fit",)))
        if task is not None:  # NER / QA members: the task's own averaging, weights picked on its metric
            if self.voting == "hard":
                raise ValueError(f"voting='hard' applies to classifiers; {task.name} members vote soft: fix: pass "
                                 "voting='soft'")
            members = check_members(self.members, required=("fit", "predict_scores"))
            fit_w = isinstance(self.weights, str) and self.weights == "fit"
            return self._fit_structured(task, members, X, y, select="loglik" if fit_w else None,
                                        weights=None if fit_w else self._check_weights(len(members)))
        members = check_members(self.members)
        w = self._check_weights(len(members))
        fit_weights = w is None and self.weights is not None  # weights="fit"
        fitted, classes, X_c, y_c, sw = _prepare(
            members, X, y, sample_weight, prefit=self.prefit,
            holdout=self.validation_fraction if fit_weights and not self.prefit else None,
            random_state=self.random_state)
        P = _holdout_proba(self.prefit, fitted, X_c, y_c) if fit_weights or self.prefit == "oof" else None
        y_idx = _encode(y_c, classes)
        if fit_weights:
            w = _fit_simplex_weights(P, y_idx, sw)
        elif w is None:
            w = np.full(len(fitted), 1.0 / len(fitted))
        if self.prefit == "oof":  # the fusion's own out-of-fold predictions: its weights refitted per fold
            votes = np.eye(P.shape[2])[P.argmax(2)] if self.voting == "hard" else P
            self.oof_proba_ = _cross_fit_weights(_fit_simplex_weights if fit_weights else (lambda *_: w),
                                                 P, y_idx, sw, apply=votes, seed=self.random_state)
        # Members are fitted above on the original labels (sklearn's VotingClassifier would refit them
        # on encoded labels), so each stays usable alone; frozen, they just get averaged here.
        self.ensemble_ = VotingClassifier([(n, FrozenEstimator(e)) for n, e in fitted], voting=self.voting,
                                          weights=list(w)).fit(X_c, y_c)
        self.members_ = fitted
        self.classes_ = classes
        self.weights_ = {n: float(v) for (n, _), v in zip(fitted, w)}
        self.fit_time_ = time.perf_counter() - start
        return self

    def _proba(self, X: Any) -> np.ndarray:
        if self.voting == "soft":
            return self.ensemble_.predict_proba(X)
        # sklearn's hard voting has no predict_proba; weighted vote shares are its probabilistic reading.
        votes = _encode(np.asarray(self.ensemble_.transform(X)), self.classes_)  # (n_samples, n_members)
        w = np.array([self.weights_[n] for n, _ in self.members_])
        out = np.zeros((votes.shape[0], len(self.classes_)))
        for j in range(votes.shape[1]):
            out[np.arange(votes.shape[0]), votes[:, j]] += w[j]
        return out


def _fit_simplex_weights(P: np.ndarray, y_idx: np.ndarray, sw: np.ndarray | None) -> np.ndarray:
    """Weights on the simplex minimising the log-loss of ``sum_m w_m P[m]`` (hand-written: sklearn lacks it)."""
    p_true = P[:, np.arange(len(y_idx)), y_idx]  # (n_members, n_samples)
    sw = np.ones(len(y_idx)) if sw is None else sw
    sw = sw / sw.sum()

    def loss_grad(w):
        p = np.clip(w @ p_true, _EPS, None)
        return -(sw @ np.log(p)), -(p_true / p) @ sw

    m = len(P)
    # SLSQP because the simplex is just bounds plus one equality constraint, and it can reach exact
    # zeros for useless members (a softmax parametrisation only approaches them).
    res = minimize(loss_grad, np.full(m, 1.0 / m), jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * m,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(m)}])
    w = np.clip(res.x, 0.0, None)
    return w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)


class EnsembleSelection(_Fusion):
    """Greedy forward ensemble selection with replacement on validation predictions.

    Caruana et al., "Ensemble selection from libraries of models", ICML 2004. Hand-written:
    scikit-learn has no equivalent. ``prefit="oof"`` selects on the out-of-fold predictions of k-fold
    bagged members (AutoGluon's final layer) and keeps the selection's own ``oof_proba_``.

    >>> from sklearn.datasets import load_iris
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.naive_bayes import GaussianNB
    >>> X, y = load_iris(return_X_y=True)
    >>> es = EnsembleSelection([("lr", LogisticRegression(max_iter=500)), ("nb", GaussianNB())]).fit(X, y)
    >>> round(sum(es.weights_.values()), 6)
    1.0
    """

    def __init__(self, members, *, n_iter=50, metric="log_loss", prefit=False, validation_fraction=0.2,
                 random_state=0):
        self.members = members
        self.n_iter = n_iter
        self.metric = metric
        self.prefit = prefit
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "EnsembleSelection":
        start = time.perf_counter()
        _check_positive_int("n_iter", self.n_iter)
        _check_choice("metric", self.metric, ("log_loss", "accuracy", "roc_auc"))
        task = S.task_of(check_members(self.members, required=("fit",)))
        if task is not None:  # NER / QA members: selection on the task's metric (entity F1, SQuAD F1)
            members = check_members(self.members, required=("fit", "predict_scores"))
            return self._fit_structured(task, members, X, y, select="metric", n_iter=self.n_iter)
        if self.metric == "roc_auc" and y is not None and len(np.unique(np.asarray(y))) != 2:  # before any fit
            raise ValueError(f"metric='roc_auc' ranks two classes, but y has {len(np.unique(np.asarray(y)))}; fix: "
                             "pass metric='log_loss' or 'accuracy'")
        fitted, classes, X_va, y_va, sw = _prepare(
            self.members, X, y, sample_weight, prefit=self.prefit,
            holdout=None if self.prefit else self.validation_fraction, random_state=self.random_state)
        if self.metric == "roc_auc" and len(classes) != 2:
            raise ValueError(f"metric='roc_auc' ranks two classes, but the members know {len(classes)}; fix: pass "
                             "metric='log_loss' or 'accuracy'")
        P, y_idx = _holdout_proba(self.prefit, fitted, X_va, y_va), _encode(y_va, classes)
        w, best, self.scores_ = self._select(P, y_idx, sw)
        if self.prefit == "oof":  # the fusion's own out-of-fold predictions: selection rerun per fold
            self.oof_proba_ = _cross_fit_weights(lambda *a: self._select(*a)[0], P, y_idx, sw, seed=self.random_state)
        self.members_ = fitted
        self.classes_ = classes
        self.weights_ = {n: float(v) for (n, _), v in zip(fitted, w)}
        self.val_score_ = float(best)
        self.ensemble_ = None
        self.fit_time_ = time.perf_counter() - start
        return self

    def _select(self, P: np.ndarray, y_idx: np.ndarray, sw: np.ndarray | None) -> tuple[np.ndarray, float, list]:
        def score(proba):  # higher is better
            if self.metric == "accuracy":
                return float(np.average(proba.argmax(1) == y_idx, weights=sw))
            if self.metric == "roc_auc":  # CTR: rank quality of the click probability
                return float(roc_auc_score(y_idx, proba[:, 1], sample_weight=sw))
            return -_proba_loss(proba, y_idx, sw)

        counts, total = np.zeros(len(P)), np.zeros_like(P[0])
        best_counts, best, scores = None, -np.inf, []
        for it in range(1, self.n_iter + 1):
            # Add (with replacement) the member whose addition gives the best averaged prediction;
            # ties go to the earlier member, which keeps the result deterministic.
            cand = [score((total + P[m]) / it) for m in range(len(P))]
            m = int(np.argmax(cand))
            counts[m] += 1
            total += P[m]
            scores.append(cand[m])
            # Keep the best ensemble seen, as Caruana et al. do, so the result is never worse on
            # validation than the best single member (iteration 1).
            if cand[m] > best:
                best, best_counts = cand[m], counts.copy()
        return best_counts / best_counts.sum(), best, scores

    def _proba(self, X: Any) -> np.ndarray:
        # Skip zero-weight members: predicting with an unused fine-tuned model would be wasted time.
        used = [(n, e) for n, e in self.members_ if self.weights_[n] > 0]
        w = np.array([self.weights_[n] for n, _ in used])
        return np.tensordot(w / w.sum(), member_proba(used, X), axes=1)


def _as_2d(X: Any) -> Any:
    # BaggingClassifier needs 2-D input: a 1-D list of texts becomes one text column, and so do images (arrays
    # (N, H, W[, C]), a list of arrays, paths or PIL images): one object cell an image, which as_images unwraps.
    if isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.ndim >= 3):
        col = np.empty((len(X), 1), dtype=object)
        for i, x in enumerate(X):
            col[i, 0] = x
        return col
    return np.asarray(X, dtype=object).reshape(-1, 1) if np.ndim(X) == 1 else X


def _aligned_proba(est: Any, X: Any, classes: np.ndarray) -> np.ndarray:
    # A fold model may have seen fewer classes; put its columns where the full class list has them.
    p = est.predict_proba(X)
    out = np.zeros((p.shape[0], len(classes)))
    out[:, _encode(np.asarray(est.classes_), classes)] = p
    return out


def _fit_fold(estimator, X, y, sw, classes, held_out: bool, i: int, tr, te):
    """One fold model of k-fold bagging, fitted on the other folds, and its probabilities on its held-out fold."""
    X_te = _safe_indexing(X, te)
    val = {"X_val": X_te, "y_val": y[te]} if held_out else {}  # early stopping on the held-out fold
    est = _fit(clone(estimator), _safe_indexing(X, tr), y[tr], None if sw is None else sw[tr], **val)
    return est, _aligned_proba(est, X_te, classes)


class Bagging(_Fusion):
    """Bagging of one estimator: bootstrap (sklearn ``BaggingClassifier``) or k-fold (AutoGluon-style).

    Breiman, "Bagging predictors", Machine Learning 1996; k-fold bagging: Erickson et al.,
    "AutoGluon-Tabular", 2020. In "kfold" mode each fold model is fitted on the other folds; its
    predictions on the held-out fold fill ``oof_proba_`` and ``oof_score_`` (accuracy), and
    prediction averages the fold models. The estimator must accept a 1-column 2-D array of texts.
    With ``fold_validation=True`` an estimator whose ``fit`` takes ``X_val``/``y_val`` (a Finetuner) gets
    the held-out fold for early stopping, as AutoGluon does, so every fold model trains on all its k-1 folds;
    the out-of-fold scores then carry that (mild) selection.

    >>> from sklearn.datasets import load_iris
    >>> from sklearn.naive_bayes import GaussianNB
    >>> X, y = load_iris(return_X_y=True)
    >>> Bagging(GaussianNB(), mode="kfold", n_splits=3).fit(X, y).oof_proba_.shape
    (150, 3)
    """

    def __init__(self, estimator, *, n_estimators=5, mode="bootstrap", n_splits=5, fold_validation=True,
                 random_state=0):
        self.estimator = estimator
        self.n_estimators = n_estimators
        self.mode = mode
        self.n_splits = n_splits
        self.fold_validation = fold_validation
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "Bagging":
        start = time.perf_counter()
        _check_choice("mode", self.mode, ("bootstrap", "kfold"))
        if self.mode == "bootstrap" and hasattr(X, "columns") and len(X.columns) > 1:
            raise ValueError("mode='bootstrap' hands the rows to sklearn's BaggingClassifier, which turns a "
                             "DataFrame into an array without its column names (a CTR table needs them); fix: pass "
                             "mode='kfold'")
        task = getattr(self.estimator, "task_", None)
        if task is not None and not task.is_classifier:
            return self._fit_structured_bag(task, X, y, start)
        check_members([("estimator", self.estimator)], param="estimator")
        X, y = _as_2d(X), np.asarray(y)
        check_classification_targets(y)
        check_consistent_length(X, y)
        self.classes_ = np.unique(y)
        if self.mode == "bootstrap":
            _check_positive_int("n_estimators", self.n_estimators)
            self.ensemble_ = BaggingClassifier(self.estimator, n_estimators=self.n_estimators, bootstrap=True,
                                               random_state=self.random_state).fit(X, y, sample_weight)
            self.members_ = [(f"bag{i}", e) for i, e in enumerate(self.ensemble_.estimators_)]
        else:  # k-fold bagging, hand-written: sklearn has no out-of-fold bagging
            _check_positive_int("n_splits", self.n_splits)
            if self.n_splits < 2:
                raise ValueError(f"n_splits={self.n_splits!r} is not valid: k-fold bagging needs n_splits >= 2")
            sw = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
            folds = StratifiedKFold(self.n_splits, shuffle=True, random_state=self.random_state).split(
                np.zeros(len(y)), y)
            self.oof_proba_, self.members_ = np.zeros((len(y), len(self.classes_))), []
            held_out = bool(self.fold_validation) and has_fit_parameter(self.estimator, "X_val")
            jobs = [(i, tr, te) for i, (tr, te) in enumerate(folds)]
            fit_fold = partial(_fit_fold, self.estimator, X, y, sw, self.classes_, held_out)
            # _fold_map(fit_fold, jobs) -> [(fold model, its held-out probabilities)]: in order here; as Ray tasks
            # under the ray executor (set by tunefuse.runs.experiment: tunefuse.runs.executors.fold_map)
            fold_map = getattr(self, "_fold_map", None)
            fitted = fold_map(fit_fold, jobs) if fold_map is not None else [fit_fold(*j) for j in jobs]
            for (i, _, te), (est, proba) in zip(jobs, fitted):
                self.oof_proba_[te] = proba
                self.members_.append((f"fold{i}", est))
            self.oof_score_ = float(accuracy_score(y, self.classes_[self.oof_proba_.argmax(1)], sample_weight=sw))
            self.ensemble_ = None
        self.weights_ = {n: 1.0 / len(self.members_) for n, _ in self.members_}
        self.fit_time_ = time.perf_counter() - start
        return self

    def _fit_structured_bag(self, task, X, y, start) -> "Bagging":
        """k-fold bagging of a NER / QA Finetuner: fold models, their out-of-fold scores (``oof_scores_``) and the
        out-of-fold metric (``oof_score_``); prediction averages the fold models through the task's ``fuse``."""
        if self.mode != "kfold":
            raise ValueError(f"mode={self.mode!r}: {task.name} members bag in mode='kfold' (out-of-fold scores for "
                             "stacking and selection); fix: pass mode='kfold'")
        _check_positive_int("n_splits", self.n_splits)
        if self.n_splits < 2:
            raise ValueError(f"n_splits={self.n_splits!r} is not valid: k-fold bagging needs n_splits >= 2")
        X = task.check_X(X)
        y = task.check_y(y, X)
        self.members_, self.oof_scores_ = S.kfold_bag(self.estimator, X, y, n_splits=self.n_splits,
                                                      random_state=self.random_state,
                                                      fold_validation=bool(self.fold_validation))
        self.task_, self.labels_ = task, S.check_labels(self.members_)
        self.oof_score_ = float(task.metric(y, task.decode(X, self.oof_scores_, self.labels_)))
        self.weights_ = {n: 1.0 / len(self.members_) for n, _ in self.members_}
        self.ensemble_ = None
        self.fit_time_ = time.perf_counter() - start
        return self

    def _proba(self, X: Any) -> np.ndarray:
        X = _as_2d(X)
        if self.ensemble_ is not None:
            return self.ensemble_.predict_proba(X)
        return np.mean([_aligned_proba(e, X, self.classes_) for _, e in self.members_], axis=0)


class Boosting(_Fusion):
    """Multi-class AdaBoost (SAMME) over one estimator, via sklearn ``AdaBoostClassifier``.

    Zhu et al., "Multi-class AdaBoost", Statistics and Its Interface 2009. The estimator's ``fit`` must
    accept ``sample_weight`` (a Finetuner does; a Pipeline does not). ``weights_`` are the normalised
    weights of the boosting rounds actually fitted (AdaBoost stops early on a perfect round).

    >>> from sklearn.datasets import load_iris
    >>> from sklearn.tree import DecisionTreeClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> Boosting(DecisionTreeClassifier(max_depth=1), n_estimators=3).fit(X, y).score(X, y) > 0.6
    True
    """

    def __init__(self, estimator, *, n_estimators=5, learning_rate=1.0, random_state=0):
        self.estimator = estimator
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "Boosting":
        start = time.perf_counter()
        _classifiers_only("Boosting", S.task_of([("estimator", self.estimator)]))
        check_members([("estimator", self.estimator)], param="estimator")
        _check_positive_int("n_estimators", self.n_estimators)
        if not has_fit_parameter(self.estimator, "sample_weight"):
            raise TypeError(
                f"estimator={type(self.estimator).__name__} cannot be boosted: its fit has no sample_weight "
                "parameter; pass an estimator that accepts it (a Finetuner, LogisticRegression, a tree)"
            )
        self.ensemble_ = AdaBoostClassifier(self.estimator, n_estimators=self.n_estimators,
                                            learning_rate=self.learning_rate,
                                            random_state=self.random_state).fit(X, y, sample_weight)
        self.members_ = [(f"round{i}", e) for i, e in enumerate(self.ensemble_.estimators_)]
        w = self.ensemble_.estimator_weights_[: len(self.members_)]
        self.weights_ = {n: float(v / w.sum()) for (n, _), v in zip(self.members_, w)}
        self.classes_ = self.ensemble_.classes_
        self.fit_time_ = time.perf_counter() - start
        return self

    def _proba(self, X: Any) -> np.ndarray:
        return self.ensemble_.predict_proba(X)


def _is_numeric(X: Any) -> bool:
    if hasattr(X, "dtypes"):  # DataFrame
        return all(getattr(d, "kind", "O") in "biufc" for d in X.dtypes)
    if hasattr(X, "tocsr"):  # scipy sparse
        return True
    return np.asarray(X).dtype.kind in "biufc"


class Stacking(_Fusion):
    """Stacking: a meta-learner on the members' out-of-fold probabilities (sklearn ``StackingClassifier``).

    Wolpert, "Stacked generalization", Neural Networks 1992. With ``prefit=True`` the members are used
    frozen and the meta-learner is trained on their predictions on the data given to ``fit``, which
    must then be held-out data the members never saw. With ``prefit="oof"`` the members are k-fold bags
    (:class:`Bagging` ``mode="kfold"``) fitted on the rows given to ``fit``, and the meta-learner is trained
    on their out-of-fold predictions: every labelled row trains the members and the meta-learner alike
    (AutoGluon's multi-layer stacking, Erickson et al., 2020). ``oof_proba_`` then holds the stack's own
    out-of-fold predictions (meta-learner cross-validated with ``cv`` folds).

    >>> from sklearn.datasets import load_iris
    >>> from sklearn.naive_bayes import GaussianNB
    >>> from sklearn.tree import DecisionTreeClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> Stacking([("nb", GaussianNB()), ("tree", DecisionTreeClassifier())], cv=3).fit(X, y).score(X, y) > 0.9
    True
    """

    def __init__(self, members, *, final_estimator=None, cv=5, passthrough=False, prefit=False, random_state=0):
        self.members = members
        self.final_estimator = final_estimator
        self.cv = cv
        self.passthrough = passthrough
        self.prefit = prefit
        self.random_state = random_state  # shuffles the meta-learner's folds with prefit="oof"

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "Stacking":
        start = time.perf_counter()
        _classifiers_only("Stacking", S.task_of(check_members(self.members, required=("fit",))))
        members = check_members(self.members)
        if self.passthrough and not _is_numeric(X):
            raise ValueError(
                "passthrough=True appends the raw features to the meta-features, but X is not numeric: keep "
                "passthrough=False or pass a final_estimator that can handle raw text"
            )
        final = LogisticRegression(max_iter=1000) if self.final_estimator is None else self.final_estimator
        if self.prefit == "oof":
            return self._fit_oof(members, X, y, sample_weight, clone(final), start)
        _check_choice("prefit", self.prefit, (False, True, "oof"))
        if self.prefit:
            _check_same_classes(np.asarray(y), check_fitted_members(members))
            members = [(n, FrozenEstimator(e)) for n, e in members]
        # The meta-learner is trained on out-of-fold predictions (cv folds): a flexible member's
        # in-sample probabilities are overconfident, so a meta-learner fitted on them would over-trust it.
        self.ensemble_ = StackingClassifier(members, final_estimator=final, cv=self.cv,
                                            stack_method="predict_proba", passthrough=self.passthrough)
        self.ensemble_.fit(X, y, **({} if sample_weight is None else {"sample_weight": sample_weight}))
        self.members_ = [(n, e.estimator if isinstance(e, FrozenEstimator) else e)
                         for (n, _), e in zip(members, self.ensemble_.estimators_)]
        self.classes_ = self.ensemble_.classes_
        self.weights_ = self._member_weights()
        self.fit_time_ = time.perf_counter() - start
        return self

    def _fit_oof(self, members, X, y, sample_weight, final, start) -> "Stacking":
        # Hand-written: StackingClassifier computes its own out-of-fold predictions by refitting the members;
        # here they exist already (the k-fold bags), so only the meta-learner is fitted, as sklearn would.
        members, _, X, y, sw = _prepare(members, X, y, sample_weight, prefit="oof", holdout=None)
        meta = self._meta_features(_holdout_proba("oof", members, X, y), X)
        kw = {} if sw is None else {"sample_weight": sw}
        cv = self.cv if self.cv is not None else 5
        cv = StratifiedKFold(cv, shuffle=True, random_state=self.random_state) if isinstance(cv, (int, np.integer)) \
            else cv
        oof = cross_val_predict(clone(final), meta, y, cv=cv, method="predict_proba", params=kw)
        self.final_estimator_ = final.fit(meta, y, **kw)
        self.ensemble_ = None
        self.members_ = members
        self.classes_ = np.asarray(self.final_estimator_.classes_)
        self.oof_proba_ = oof
        self.weights_ = self._member_weights()
        self.fit_time_ = time.perf_counter() - start
        return self

    def _meta_features(self, P: np.ndarray, X: Any) -> np.ndarray:
        # As sklearn's StackingClassifier: one column per class, the redundant first one dropped when binary.
        P = P[:, :, 1:] if P.shape[2] == 2 else P
        meta = np.concatenate(list(P), axis=1)
        if self.passthrough:
            raw = X.toarray() if hasattr(X, "toarray") else np.asarray(X, dtype=float)
            meta = np.hstack([meta, raw.reshape(len(meta), -1)])
        return meta

    def _member_weights(self) -> dict[str, float]:
        # weights_ = the meta-learner's mean absolute coefficient over each member's meta-feature
        # columns, normalised to sum 1 (sklearn drops one redundant column per member when binary).
        meta = self.final_estimator_ if self.ensemble_ is None else self.ensemble_.final_estimator_
        meta = meta.steps[-1][1] if hasattr(meta, "steps") else meta  # a Pipeline: read its last step
        imp = getattr(meta, "coef_", None)
        imp = np.abs(np.atleast_2d(imp)).mean(0) if imp is not None else getattr(meta, "feature_importances_", None)
        names = [n for n, _ in self.members_]
        if imp is None or np.sum(imp) <= 0:  # no coefficients or importances to read: report uniform
            return {n: 1.0 / len(names) for n in names}
        width = 1 if len(self.classes_) == 2 else len(self.classes_)
        per = np.array([np.mean(imp[i * width:(i + 1) * width]) for i in range(len(names))])
        per = per / per.sum() if per.sum() > 0 else np.full(len(names), 1.0 / len(names))
        return {n: float(v) for n, v in zip(names, per)}

    def _proba(self, X: Any) -> np.ndarray:
        if self.ensemble_ is None:  # prefit="oof": the members' predictions through the meta-learner
            return self.final_estimator_.predict_proba(self._meta_features(member_proba(self.members_, X), X))
        return self.ensemble_.predict_proba(X)


@dataclass(frozen=True)
class FusionMethod:
    """A registered fusion method: ``build(members, **opts)`` returns an unfitted estimator."""

    name: str
    build: Callable[..., Any]
    kind: str
    paper: str
    url: str


OUTPUT_METHODS: dict[str, FusionMethod] = {}


def _register(method: FusionMethod) -> None:
    if method.name in OUTPUT_METHODS:
        raise ValueError(f"fusion method {method.name!r} is already registered: pick another name")
    OUTPUT_METHODS[method.name] = method


def _first(members_or_estimator: Any) -> Any:
    # Bagging and boosting take one base estimator: given a members list they use the first member's.
    if isinstance(members_or_estimator, (list, tuple)):
        return check_members(members_or_estimator)[0][1]
    return members_or_estimator


_KITTLER = ("Kittler et al., On combining classifiers, IEEE TPAMI 1998", "https://doi.org/10.1109/34.667881")
_register(FusionMethod("vote_hard", lambda m, **o: Voting(m, voting="hard", **o), "output", *_KITTLER))
_register(FusionMethod("vote_soft", lambda m, **o: Voting(m, voting="soft", **o), "output", *_KITTLER))
_register(FusionMethod("vote_weighted", lambda m, **o: Voting(m, weights="fit", **o), "output",
                       "Breiman, Stacked regressions, Machine Learning 1996", "https://doi.org/10.1007/BF00117832"))
_register(FusionMethod("ensemble_selection", lambda m, **o: EnsembleSelection(m, **o), "output",
                       "Caruana et al., Ensemble selection from libraries of models, ICML 2004",
                       "https://doi.org/10.1145/1015330.1015432"))
_register(FusionMethod("bagging", lambda m, **o: Bagging(_first(m), mode="bootstrap", **o), "output",
                       "Breiman, Bagging predictors, Machine Learning 1996", "https://doi.org/10.1007/BF00058655"))
_register(FusionMethod("kfold_bagging", lambda m, **o: Bagging(_first(m), mode="kfold", **o), "output",
                       "Erickson et al., AutoGluon-Tabular, 2020", "https://arxiv.org/abs/2003.06505"))
_register(FusionMethod("boosting", lambda m, **o: Boosting(_first(m), **o), "output",
                       "Zhu et al., Multi-class AdaBoost, Statistics and Its Interface 2009",
                       "https://doi.org/10.4310/SII.2009.v2.n3.a8"))
_register(FusionMethod("stacking", lambda m, **o: Stacking(m, **o), "output",
                       "Wolpert, Stacked generalization, Neural Networks 1992",
                       "https://doi.org/10.1016/S0893-6080(05)80023-1"))


def get_output_method(name: str) -> FusionMethod:
    """Look up an output-space fusion method by name.

    >>> get_output_method("stacking").paper
    'Wolpert, Stacked generalization, Neural Networks 1992'
    """
    try:
        return OUTPUT_METHODS[name]
    except KeyError as e:
        raise ValueError(f"unknown fusion method {name!r}: choose one of {sorted(OUTPUT_METHODS)}") from e
