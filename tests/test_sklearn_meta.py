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


def test_cross_val_score_with_full_finetuning(data):
    X, y, _, _ = data
    scores = cross_val_score(Finetuner(epochs=1, **TINY), X, y, cv=2)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))


def test_stacking(data):
    X, y, Xt, yt = data
    stack = StackingClassifier([("a", head(random_state=0)), ("b", head(random_state=1, probe_l2=1e-2))],
                               final_estimator=LogisticRegression(), cv=2).fit(X, y)
    assert stack.predict_proba(Xt).shape == (len(Xt), 2)
    assert 0 <= stack.score(Xt, yt) <= 1


def test_voting(data):
    X, y, Xt, _ = data
    vote = VotingClassifier([("a", head(random_state=0)), ("b", head(random_state=1))], voting="soft").fit(X, y)
    assert vote.predict_proba(Xt).shape == (len(Xt), 2)


def test_bagging(data):
    X, y, Xt, _ = data
    bag = BaggingClassifier(head(), n_estimators=2, random_state=0).fit(X, y)
    assert set(bag.predict(Xt)) <= {0, 1}
    assert len(bag.estimators_) == 2


def test_adaboost_uses_sample_weight(data):
    X, y, Xt, _ = data
    boost = AdaBoostClassifier(head(), n_estimators=2, random_state=0).fit(X, y)
    assert 1 <= len(boost.estimators_) <= 2
    assert boost.predict(Xt).shape == (len(Xt),)
