"""Finetuner inside scikit-learn's meta-estimators, with X a 1-column 2-D array or DataFrame of text."""
import numpy as np
import pytest
from sklearn.ensemble import AdaBoostClassifier, BaggingClassifier, StackingClassifier, VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from tunefuse import Finetuner

from .conftest import TINY


def head(**kw):
    return Finetuner(strategy="head", **TINY, **kw)


@pytest.fixture(params=["array", "dataframe"])
def data(request, reviews):
    X, y, Xt, yt = reviews
    if request.param == "array":
        return X.to_numpy(), y, Xt.to_numpy(), yt
    return X, y, Xt, yt


@pytest.mark.slow
def test_cross_val_score_with_full_finetuning(data):
    from sklearn.model_selection import StratifiedKFold
    from sklearn.utils import _safe_indexing

    X, y, _, _ = data
    scores = cross_val_score(Finetuner(epochs=1, **TINY), X, y, cv=2)
    tr, te = next(StratifiedKFold(2).split(np.zeros(len(y)), y))  # what cross_val_score does for fold 0
    manual = Finetuner(epochs=1, **TINY).fit(_safe_indexing(X, tr), y[tr]).score(_safe_indexing(X, te), y[te])
    assert scores.shape == (2,) and scores[0] == manual


@pytest.mark.slow
def test_stacking(data):
    X, y, Xt, yt = data
    stack = StackingClassifier([("a", head(random_state=0)), ("b", head(random_state=1, probe_l2=1e-2))],
                               final_estimator=LogisticRegression(), cv=2).fit(X, y)
    assert stack.predict_proba(Xt).shape == (len(Xt), 2)
    assert stack.score(Xt, yt) > max(yt.mean(), 1 - yt.mean())  # beats the majority class


def test_voting(data):
    X, y, Xt, _ = data
    vote = VotingClassifier([("a", head(random_state=0)), ("b", head(random_state=1))], voting="soft").fit(X, y)
    assert vote.predict_proba(Xt).shape == (len(Xt), 2)


@pytest.mark.slow
def test_bagging(data):
    X, y, Xt, _ = data
    bag = BaggingClassifier(head(), n_estimators=2, random_state=0).fit(X, y)
    assert len(bag.estimators_) == 2
    mean = np.mean([e.predict_proba(Xt) for e in bag.estimators_], axis=0)  # bootstrap samples all features here
    np.testing.assert_allclose(bag.predict_proba(Xt), mean, atol=1e-6)


@pytest.mark.slow
def test_adaboost_uses_sample_weight(data):
    X, y, Xt, _ = data
    boost = AdaBoostClassifier(head(), n_estimators=2, random_state=0).fit(X, y)
    assert len(boost.estimators_) == 2 and (boost.estimator_weights_ > 0).all()
    # the same deterministic probe on the same rows: only the re-weighted samples can make round 2 differ
    a, b = (e.predict_proba(Xt) for e in boost.estimators_)
    assert np.abs(a - b).max() > 1e-3
