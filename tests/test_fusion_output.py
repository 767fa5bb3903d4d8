"""Output-space fusion: every registered method on text and numeric data, persistence, leaderboard, errors."""

import json
import sys
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.compose import make_column_transformer
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import GaussianNB, MultinomialNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import threadpool_limits

from tunefuse.fusion.leaderboard import (COLUMNS, cross_val_fusion, format_leaderboard, leaderboard,
                                        sort_leaderboard)
from tunefuse.fusion.members import check_members, member_proba
from tunefuse.fusion.output import (OUTPUT_METHODS, Bagging, Boosting, EnsembleSelection, Stacking, Voting,
                                    get_output_method)
from tunefuse.fusion.persist import load_fusion, load_member, save_fusion, save_member

TOPICS = {
    "food": "recipe oven flavour sauce chef dinner spice bake taste kitchen".split(),
    "sport": "goal match team score coach league player stadium referee season".split(),
    "tech": "software chip laptop code server network device update battery cloud".split(),
}
NOISE = "the a of and to in is it that was for on with as at by this today really very".split()


@pytest.fixture(autouse=True)
def _one_thread():
    # BLAS threads fighting over two shared cores make tiny fits 20x slower.
    with threadpool_limits(limits=1):
        yield


class TextLR(ClassifierMixin, BaseEstimator):
    """Stand-in for a Finetuner: a 1-column text array in, sample_weight accepted, fit_time_ recorded."""

    def __init__(self, C=1.0):
        self.C = C

    def fit(self, X, y, sample_weight=None):
        start = time.perf_counter()
        self.pipe_ = make_pipeline(TfidfVectorizer(), LogisticRegression(C=self.C))
        self.pipe_.fit(np.asarray(X, dtype=object).ravel(), y, logisticregression__sample_weight=sample_weight)
        self.classes_ = self.pipe_.classes_
        self.fit_time_ = time.perf_counter() - start
        return self

    def predict_proba(self, X):
        return self.pipe_.predict_proba(np.asarray(X, dtype=object).ravel())

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(1)]


TRUSTED = [f"{__name__}.TextLR"]  # the stand-in lives in this test module, so loads must trust it explicitly


class Memorizer(ClassifierMixin, BaseEstimator):
    """Predicts the label of rows it was trained on (by id in column 0) and the prior elsewhere: shows leakage."""

    def fit(self, X, y, sample_weight=None):
        self.classes_, counts = np.unique(y, return_counts=True)
        self.prior_ = counts / counts.sum()
        self.seen_ = dict(zip(np.asarray(X)[:, 0].tolist(), np.searchsorted(self.classes_, y).tolist()))
        self.sample_weight_ = sample_weight
        return self

    def predict_proba(self, X):
        out = np.tile(self.prior_, (len(X), 1))
        for i, row in enumerate(np.asarray(X)[:, 0].tolist()):
            if row in self.seen_:
                out[i] = np.eye(len(self.classes_))[self.seen_[row]]
        return out

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(1)]


def text_pipe(final=None, ngram=(1, 1)):
    return make_pipeline(make_column_transformer((TfidfVectorizer(ngram_range=ngram), 0)),
                         final if final is not None else LogisticRegression(C=10.0))


def make_text(n=300, seed=0):
    """Sentences of two topic words among six noise words; 15% of rows use a random topic's words."""
    rng = np.random.default_rng(seed)
    labels = np.array(sorted(TOPICS))[np.arange(n) % len(TOPICS)]
    rows = []
    for label in labels:
        topic = label if rng.random() > 0.15 else sorted(TOPICS)[rng.integers(len(TOPICS))]
        words = list(rng.choice(TOPICS[topic], 2)) + list(rng.choice(NOISE, 6))
        rng.shuffle(words)
        rows.append(" ".join(words))
    return np.array(rows, dtype=object).reshape(-1, 1), labels


@pytest.fixture(scope="module")
def text_data():
    return make_text()


def dataset(kind):
    if kind == "text":
        X, y = make_text()
        members = [("textlr", TextLR(C=10.0)), ("nb", text_pipe(MultinomialNB())),
                   ("lr_weak", text_pipe(LogisticRegression(C=0.05), ngram=(1, 2)))]
        return X, y, members
    X, y = load_iris(return_X_y=True)
    members = [("lr", LogisticRegression(max_iter=1000)), ("nb", GaussianNB()),
               ("tree", DecisionTreeClassifier(max_depth=2, random_state=0))]
    return X, np.array(["setosa", "versicolor", "virginica"])[y], members


@pytest.mark.parametrize("kind", ["text", "iris"])
@pytest.mark.parametrize("method", sorted(OUTPUT_METHODS))
def test_method_fits_predicts_clones_and_round_trips(method, kind, tmp_path):
    X, y, members = dataset(kind)
    fused = get_output_method(method).build(members).fit(X, y)
    proba = fused.predict_proba(X)
    assert proba.shape == (len(y), 3)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert set(fused.predict(X)) <= set(y)
    assert fused.score(X, y) > 0.7
    assert fused.fit_time_ > 0
    assert len(fused.weights_) == len(fused.members_)
    assert sum(fused.weights_.values()) == pytest.approx(1.0)
    if method not in ("bagging", "kfold_bagging", "boosting"):
        assert list(fused.weights_) == [name for name, _ in members]
    unfitted = clone(fused)
    assert not hasattr(unfitted, "classes_") and unfitted.get_params().keys() == fused.get_params().keys()
    loaded = load_fusion(save_fusion(fused, tmp_path / "fused"), trusted=TRUSTED)
    assert type(loaded) is type(fused) and loaded.weights_ == fused.weights_
    np.testing.assert_allclose(loaded.predict_proba(X), proba)
    np.testing.assert_array_equal(loaded.predict(X), fused.predict(X))


def test_registry_entries_cite_a_paper():
    for name, method in OUTPUT_METHODS.items():
        assert method.name == name and method.kind == "output" and method.paper and method.url.startswith("https://")


@pytest.mark.parametrize("method", ["vote_weighted", "ensemble_selection"])
def test_fitted_weights_favour_the_better_member(method, text_data):
    X, y = text_data
    fused = get_output_method(method).build([("dummy", DummyClassifier()), ("lr", text_pipe())]).fit(X, y)
    assert fused.weights_["lr"] > 0.8 > fused.weights_["dummy"]


@pytest.mark.parametrize("metric", ["log_loss", "accuracy"])
def test_ensemble_selection_is_not_worse_than_best_member_on_validation(metric, text_data):
    X, y = text_data
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=0.4, stratify=y, random_state=0)
    members = [(n, m.fit(X_tr, y_tr)) for n, m in dataset("text")[2]]
    fused = EnsembleSelection(members, metric=metric, prefit=True, n_iter=20).fit(X_va, y_va)

    def score(p):
        return accuracy_score(y_va, fused.classes_[p.argmax(1)]) if metric == "accuracy" else -log_loss(y_va, p)

    best = max(score(p) for p in member_proba(members, X_va))
    assert score(fused.predict_proba(X_va)) >= best - 1e-9
    assert all(fused.members_[i][1] is m for i, (_, m) in enumerate(members))


def test_prefit_stacking_and_voting_do_not_refit_members(text_data):
    X, y = text_data
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=0.4, stratify=y, random_state=0)
    member = TextLR(C=10.0).fit(X_tr, y_tr)
    fitted_pipe = member.pipe_
    nb = text_pipe(MultinomialNB()).fit(X_tr, y_tr)
    for fused in (Stacking([("t", member), ("nb", nb)], prefit=True, cv=3), Voting([("t", member), ("nb", nb)],
                                                                                   prefit=True, weights="fit")):
        fused.fit(X_va, y_va)
        assert member.pipe_ is fitted_pipe and fused.members_[0][1] is member
        assert fused.score(X_va, y_va) > 0.7


def test_kfold_bagging_out_of_fold_predictions_do_not_leak():
    X, y = np.arange(60).reshape(-1, 1), np.arange(60) % 2
    bag = Bagging(Memorizer(), mode="kfold", n_splits=3).fit(X, y, sample_weight=np.ones(60))
    assert bag.oof_proba_.shape == (60, 2)
    np.testing.assert_allclose(bag.oof_proba_, 0.5)  # only the prior: no row was predicted by a model that saw it
    assert bag.oof_score_ <= 0.6 and bag.score(X, y) == 1.0  # in-sample, every row was seen by 2 of 3 folds
    assert all(len(m.sample_weight_) == len(m.seen_) == 40 for _, m in bag.members_)


class ValFit(TextLR):
    """A TextLR whose fit takes X_val/y_val, as a Finetuner's does (early stopping): records what it got."""

    def fit(self, X, y, sample_weight=None, X_val=None, y_val=None):
        self.val_rows_ = None if X_val is None else len(X_val)
        return super().fit(X, y, sample_weight)


def _cross_fitted(X, y):
    return [("textlr", Bagging(ValFit(C=10.0), mode="kfold", n_splits=3).fit(X, y)),
            ("nb", Bagging(text_pipe(MultinomialNB()), mode="kfold", n_splits=3).fit(X, y)),
            ("weak", Bagging(text_pipe(LogisticRegression(C=0.05)), mode="kfold", n_splits=3).fit(X, y))]


def test_kfold_bagging_hands_each_fold_model_its_held_out_fold(text_data):
    X, y = text_data
    bag = Bagging(ValFit(), mode="kfold", n_splits=3).fit(X, y)
    assert [m.val_rows_ for _, m in bag.members_] == [100, 100, 100]
    bag = Bagging(ValFit(), mode="kfold", n_splits=3, fold_validation=False).fit(X, y)
    assert [m.val_rows_ for _, m in bag.members_] == [None] * 3


@pytest.mark.parametrize("make", [
    lambda m: Stacking(m, prefit="oof"), lambda m: EnsembleSelection(m, prefit="oof"),
    lambda m: Voting(m, weights="fit", prefit="oof"), lambda m: Voting(m, prefit="oof"),
    lambda m: Voting(m, voting="hard", prefit="oof")], ids=["stacking", "selection", "weighted", "soft", "hard"])
def test_fusions_over_kfold_bags_fit_on_out_of_fold_predictions(make, text_data, tmp_path):
    X, y = text_data
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    bags = _cross_fitted(X_tr, y_tr)
    fused = make(bags).fit(X_tr, y_tr)
    assert fused.oof_proba_.shape == (len(y_tr), 3) and np.allclose(fused.oof_proba_.sum(1), 1)
    assert sum(fused.weights_.values()) == pytest.approx(1.0)
    # Honest: the fusion's out-of-fold accuracy is close to its test accuracy, not the in-sample ~1.0.
    oof_acc = accuracy_score(y_tr, fused.classes_[fused.oof_proba_.argmax(1)])
    assert oof_acc < 0.97 and abs(oof_acc - fused.score(X_te, y_te)) < 0.12
    assert fused.score(X_te, y_te) >= max(b.score(X_te, y_te) for _, b in bags) - 0.05
    loaded = load_fusion(save_fusion(fused, tmp_path / "f"), trusted=[ValFit])
    np.testing.assert_allclose(loaded.predict_proba(X_te), fused.predict_proba(X_te))
    board = leaderboard({**dict(bags), "fused": fused}, None, y_tr, X_te, y_te).set_index("model")
    assert board.loc["fused", "val_score"] == pytest.approx(oof_acc)
    assert board.loc["textlr", "val_score"] == pytest.approx(bags[0][1].oof_score_)


def test_out_of_fold_fusion_errors_name_the_fix(text_data):
    X, y = text_data
    bags = _cross_fitted(X, y)
    with pytest.raises(ValueError, match=r"members \['nb', 'textlr', 'weak'\] hold out-of-fold predictions for "
                                         r"\[300\] rows but fit got 100: pass the very rows"):
        Stacking(bags, prefit="oof").fit(X[:100], y[:100])
    with pytest.raises(ValueError, match=r"\['plain'\] have no oof_proba_: fit them as Bagging\(estimator, "
                                         r"mode='kfold'\)"):
        EnsembleSelection(bags + [("plain", _nb().fit(X, y))], prefit="oof").fit(X, y)
    with pytest.raises(ValueError, match=r"prefit='yes' is not valid: choose one of \[False, True, 'oof'\]"):
        Voting(bags, prefit="yes").fit(X, y)
    with pytest.raises(ValueError, match=r"X_val=None reads out-of-fold predictions, but models\['nb'\] has none"):
        leaderboard({"nb": _nb().fit(X, y)}, None, y)


def test_cross_val_fusion_scores_a_validation_fitted_fusion_out_of_sample(text_data):
    X, y = text_data
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=0.5, stratify=y, random_state=0)
    members = [("textlr", TextLR(C=10.0).fit(X_tr, y_tr)), ("nb", _nb().fit(X_tr, y_tr))]
    stack = Stacking(members, prefit=True, final_estimator=DecisionTreeClassifier(random_state=0)).fit(X_va, y_va)
    honest = cross_val_fusion(stack, X_va, y_va)
    assert stack.score(X_va, y_va) == 1.0  # a tree on the validation rows memorises them
    assert accuracy_score(y_va, stack.classes_[honest.argmax(1)]) < 0.97
    assert stack.members_[0][1] is members[0][1] and members[0][1].pipe_ is not None  # members left as they were
    board = leaderboard({"stack": stack}, X_va, y_va, val_proba={"stack": honest})
    assert board.loc[0, "val_score"] == pytest.approx(accuracy_score(y_va, stack.classes_[honest.argmax(1)]))


def test_one_dimensional_text_input(text_data):
    texts, y = list(text_data[0].ravel()), text_data[1]
    for fused in (Bagging(TextLR(C=10.0), n_estimators=2), Bagging(TextLR(C=10.0), mode="kfold", n_splits=3),
                  Voting([("a", TextLR()), ("b", TextLR(C=10.0))], voting="hard")):
        assert fused.fit(texts, y).score(texts[:50], y[:50]) > 0.7


def test_stacking_passthrough_numeric_and_text(text_data):
    X, y = load_breast_cancer(return_X_y=True)
    members = [("nb", GaussianNB()), ("tree", DecisionTreeClassifier(max_depth=2, random_state=0))]
    final = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    fused = Stacking(members, final_estimator=final, passthrough=True, cv=3).fit(X, y)
    assert fused.score(X, y) > 0.9 and sum(fused.weights_.values()) == pytest.approx(1.0)
    assert fused.weights_["nb"] != pytest.approx(0.5)  # read from the pipeline's LogisticRegression, not uniform
    with pytest.raises(ValueError, match="passthrough=True.*not numeric.*passthrough=False"):
        Stacking([("nb", text_pipe(MultinomialNB()))], passthrough=True).fit(*text_data)


def test_member_with_own_save_is_saved_through_it(tmp_path, monkeypatch, text_data):
    """A Finetuner-like member (save + classmethod load, living in tunefuse) is saved by itself, not by skops."""
    module = types.ModuleType("tunefuse._fake_finetuner")

    class FakeFinetuner(TextLR):
        loads = 0

        def save(self, path):
            Path(path).mkdir()
            (Path(path) / "C.json").write_text(json.dumps(self.C))
            sio.dump(self.pipe_, Path(path) / "pipe.skops")

        @classmethod
        def load(cls, path):
            cls.loads += 1
            model = cls(C=json.loads((Path(path) / "C.json").read_text()))
            model.pipe_ = sio.load(Path(path) / "pipe.skops")
            model.classes_ = model.pipe_.classes_
            return model

    FakeFinetuner.__module__, FakeFinetuner.__qualname__ = module.__name__, "FakeFinetuner"
    module.FakeFinetuner = FakeFinetuner
    monkeypatch.setitem(sys.modules, module.__name__, module)
    X, y = text_data
    fused = Stacking([("ft", FakeFinetuner(C=10.0)), ("nb", text_pipe(MultinomialNB()))], cv=3).fit(X, y)
    path = save_fusion(fused, tmp_path / "stack")
    assert json.loads((path / "members" / "0-ft" / "member.json").read_text())["format"] == "tunefuse"
    assert "FakeFinetuner" not in zipfile.ZipFile(path / "ensemble.skops").read("schema.json").decode()
    loaded = load_fusion(path)
    assert FakeFinetuner.loads == 1
    np.testing.assert_allclose(loaded.predict_proba(X), fused.predict_proba(X))


def test_save_fusion_is_atomic(tmp_path, text_data):
    X, y = text_data
    path = tmp_path / "vote"
    save_fusion(Voting([("nb", text_pipe(MultinomialNB()))]).fit(X, y), path)
    first = load_fusion(path).predict_proba(X)
    save_fusion(Voting([("lr", text_pipe())]).fit(X, y), path)  # replacing an existing folder works
    assert load_fusion(path).weights_ == {"lr": 1.0}

    class FailingSave(TextLR):
        def save(self, path):
            raise OSError("disk full")

        @classmethod
        def load(cls, path):
            raise AssertionError("never reached")

    with pytest.raises(OSError, match="disk full"):
        save_fusion(Voting([("nb", text_pipe(MultinomialNB())), ("bad", FailingSave())]).fit(X, y), path)
    assert load_fusion(path).weights_ == {"lr": 1.0} and not np.allclose(load_fusion(path).predict_proba(X), first)
    assert [p.name for p in tmp_path.iterdir()] == ["vote"]  # no temporary folder left behind


def test_leaderboard_has_one_row_per_model(text_data):
    X, y = text_data
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=0.4, stratify=y, random_state=0)
    members = [("textlr", TextLR(C=10.0).fit(X_tr, y_tr)), ("nb", text_pipe(MultinomialNB()).fit(X_tr, y_tr))]
    models = dict(members, vote=Voting(members, prefit=True).fit(X_va, y_va))
    df = leaderboard(models, X_va[:60], y_va[:60], X_va[60:], y_va[60:])
    assert list(df.columns) == COLUMNS and sorted(df["model"]) == sorted(models)
    assert list(df["val_score"]) == sorted(df["val_score"], reverse=True)
    row = df.set_index("model")
    assert row.loc["vote", "kind"] == "Voting" and row.loc["vote", "weights"] == "textlr:0.50 nb:0.50"
    assert row.loc["nb", "kind"] == "member" and row.loc["nb", "weights"] == ""
    assert np.isnan(row.loc["nb", "fit_time_s"])  # a plain pipeline has no fit_time_
    assert row.loc["textlr", "fit_time_s"] > 0 and (df["size_mb"] > 0).all() and (df["predict_time_s"] > 0).all()
    text = format_leaderboard(df)
    assert text.splitlines()[0].split() == COLUMNS and len(text.splitlines()) == 4
    assert np.isnan(leaderboard(models, X_va, y_va)["test_score"]).all()
    # accuracy's standard error over the 60 validation rows is the binomial one
    acc = row["val_score"]
    np.testing.assert_allclose(row["val_se"], np.sqrt(acc * (1 - acc) / 60))


def test_leaderboard_ranks_by_the_lower_bound_so_few_rows_do_not_win_by_noise():
    board = pd.DataFrame({"model": ["ties_400_rows", "vote_2000_rows", "member_a", "member_b"],
                          "val_score": [0.9100, 0.9085, 0.9050, 0.9050],
                          "val_se": [np.sqrt(0.91 * 0.09 / 400), np.sqrt(0.9085 * 0.0915 / 2000),
                                     np.sqrt(0.905 * 0.095 / 400), np.sqrt(0.905 * 0.095 / 400)],
                          "val_loss": [0.42, 0.23, 0.35, 0.30]})
    assert list(sort_leaderboard(board)["model"]) == ["vote_2000_rows", "ties_400_rows", "member_b", "member_a"]
    # a board without standard errors (written before they existed) sorts by score, ties by log-loss
    assert list(sort_leaderboard(board.drop(columns="val_se"))["model"])[:2] == ["ties_400_rows", "vote_2000_rows"]


def _nb():
    return text_pipe(MultinomialNB())


@pytest.mark.parametrize("make, error, match", [
    (lambda X, y: check_members([]), ValueError, r"members=\[\] is empty.*Finetuner"),
    (lambda X, y: check_members([("a", _nb()), ("a", _nb())]), ValueError, "duplicate name 'a'"),
    (lambda X, y: check_members([_nb()]), TypeError, r"members\[0\]=.*not a \(name: str, estimator\) pair"),
    (lambda X, y: Voting([("svm", LinearSVC())]).fit(X, y), TypeError,
     r"'svm' \(LinearSVC\) has no predict_proba.*SVC\(probability=True\)"),
    (lambda X, y: Voting([("a", _nb()), ("b", _nb())], prefit=True).fit(X, y), ValueError,
     r"members \['a', 'b'\] are not fitted.*prefit=False"),
    (lambda X, y: Stacking([("a", _nb().fit(X, y)), ("b", _nb().fit(X, np.where(y == "tech", "it", y)))],
                           prefit=True).fit(X, y), ValueError, r"'a' and 'b' have different classes_.*same labels"),
    (lambda X, y: Voting([("a", _nb()), ("b", _nb())], weights=[0, 0]).fit(X, y), ValueError,
     r"weights=\[0, 0\] is not valid.*positive sum"),
    (lambda X, y: Voting([("a", _nb()), ("b", _nb())], weights=[1, -1]).fit(X, y), ValueError,
     r"weights=\[1, -1\] is not valid.*non-negative"),
    (lambda X, y: Voting([("a", _nb())], voting="mean").fit(X, y), ValueError, r"voting='mean'.*\['hard', 'soft'\]"),
    (lambda X, y: EnsembleSelection([("a", _nb())], metric="auc").fit(X, y), ValueError, "metric='auc'.*log_loss"),
    (lambda X, y: Bagging(_nb(), mode="jackknife").fit(X, y), ValueError, "mode='jackknife'.*kfold"),
    (lambda X, y: Boosting(_nb()).fit(X, y), TypeError, "Pipeline cannot be boosted.*sample_weight"),
    (lambda X, y: get_output_method("majority"), ValueError, r"unknown fusion method 'majority'.*'stacking'"),
    (lambda X, y: leaderboard({"nb": _nb().fit(X, y)}, X, y, metric="auc"), ValueError, "metric='auc'.*accuracy"),
])
def test_errors_name_the_problem_and_the_fix(make, error, match, text_data):
    with pytest.raises(error, match=match):
        make(*text_data)


def test_loading_refuses_untrusted_and_foreign_content(tmp_path, text_data):
    X, y = text_data
    path = save_fusion(Voting([("textlr", TextLR()), ("nb", _nb())]).fit(X, y), tmp_path / "vote")
    with pytest.raises(ValueError, match=r"outside tunefuse's allow-list: \[.*TextLR'\].*trusted="):
        load_fusion(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty is not a tunefuse fusion folder: fusion.json is missing"):
        load_fusion(tmp_path / "empty")
    with pytest.raises(ValueError, match="empty is not a tunefuse member folder: member.json is missing"):
        load_member(tmp_path / "empty")
    (tmp_path / "empty" / "member.json").write_text(json.dumps({"format": "tunefuse", "class": "os.system"}))
    with pytest.raises(ValueError, match="'os.system', which is not part of tunefuse: refusing"):
        load_member(tmp_path / "empty")
    fn = save_member(make_pipeline(FunctionTransformer(np.load), DummyClassifier()), tmp_path / "fn")
    with pytest.raises(ValueError, match="numpy.*load.*trusted="):  # functions from numpy are not trusted
        load_member(fn)


class Counting(ClassifierMixin, BaseEstimator):
    """A fitted member that counts the rows it is asked to predict."""

    def __init__(self, inner=None):
        self.inner = inner

    def fit(self, X, y):
        self.classes_ = self.inner.classes_
        return self

    def predict_proba(self, X):
        self.rows_asked_ = getattr(self, "rows_asked_", 0) + len(X)
        return self.inner.predict_proba(X)


def test_cached_members_replay_the_rows_of_a_cross_fitted_fusion(text_data):
    """Cross-fitting asks prefit members for k folds of the validation rows: each row is computed once, and the
    folds are assembled from those rows, bit for bit, with the time it took counted again on every replay."""
    from tunefuse.fusion.members import cached

    X, y = text_data
    X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=0.5, stratify=y, random_state=0)
    counts = [Counting(TextLR(C=10.0).fit(X_tr, y_tr)).fit(X_tr, y_tr), Counting(_nb().fit(X_tr, y_tr)).fit(X_tr, y_tr)]
    members = cached([("textlr", counts[0]), ("nb", counts[1])])
    stack = Stacking(members, prefit=True).fit(X_va, y_va)
    honest = cross_val_fusion(stack, X_va, y_va, n_splits=5)
    assert [c.rows_asked_ for c in counts] == [len(X_va)] * 2  # the fit's one pass, none for the 5 folds
    plain = cross_val_fusion(Stacking([("textlr", counts[0].inner), ("nb", counts[1].inner)], prefit=True),
                             X_va, y_va, n_splits=5)
    assert np.array_equal(honest, plain)
    fold = X_va[::3]
    assert np.array_equal(members[0][1].predict_proba(fold), counts[0].inner.predict_proba(fold))
    replayed = members[0][1].replayed_s
    members[0][1].predict_proba(X_va[:10])
    assert members[0][1].replayed_s > replayed and counts[0].rows_asked_ == len(X_va)
    members[0][1].predict_proba(X_tr[:5])  # rows never seen: computed
    assert counts[0].rows_asked_ == len(X_va) + 5
