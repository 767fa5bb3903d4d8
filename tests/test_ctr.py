"""CTR: the task on a tiny real MovieLens-100k log × architectures × strategies × fusions; unseen ids; bad inputs."""
import warnings

import numpy as np
import pandas as pd
import pytest

import tunefuse
from tunefuse import Finetuner
from tunefuse.ctr import (MOVIELENS_COLUMNS, FeatureEncoder, TabularModel, UnseenIdsWarning, add_history, auc,
                          calibration, gauc, label_sample, movielens_100k, ranking_at_k, time_split)
from tunefuse.fusion import Bagging, Distillation, EnsembleSelection, Stacking, Voting, WeightFusion
from tunefuse.tasks import get_task
from tunefuse.tasks.ctr import CTR

pytestmark = pytest.mark.filterwarnings("ignore::tunefuse.ctr.UnseenIdsWarning")
TASK = CTR(**MOVIELENS_COLUMNS, hidden=(32,), embedding_dim=8)
FIT = dict(task=TASK, epochs=2, batch_size=128, verbose=0)


@pytest.fixture(scope="module")
def log():
    """The real MovieLens-100k log of 60 users, split per user by time (about 5,000 rows)."""
    df = movielens_100k()
    users = np.sort(df.user_id.unique())[:60]
    return time_split(df[df.user_id.isin(users)].reset_index(drop=True))


@pytest.fixture(scope="module")
def fitted(log):
    tr, va = log["train"], log["val"]
    return Finetuner("scratch", **FIT).fit(tr, tr.click, X_val=va, y_val=va.click)


@pytest.fixture(scope="module")
def pretrained(log, tmp_path_factory):
    out = tmp_path_factory.mktemp("ctr") / "pretrained"
    log_rows = log["train"].drop(columns=["rating", "click"])
    return tunefuse.pretrain(log_rows, task=TASK, out=out, X_val=log["val"], epochs=2, verbose=0)


def test_registry_and_options():
    assert get_task("ctr").name == "ctr" and get_task("click-through-rate").name == "ctr"
    with pytest.raises(ValueError, match="named twice"):
        CTR(user="u", item="u")
    with pytest.raises(ValueError, match="hash_buckets"):
        CTR(user="u", item="i", hash_buckets=(("nope", 8),))
    with pytest.raises(ValueError, match="max_history"):
        CTR(max_history=-1)


def test_time_split_is_per_user_and_in_time(log):
    tr, va, te = log["train"], log["val"], log["test"]
    for u in tr.user_id.unique()[:10]:
        t_tr, t_va, t_te = (d[d.user_id == u].timestamp for d in (tr, va, te))
        assert t_tr.max() <= t_te.min() and (len(t_va) == 0 or t_va.max() <= t_te.min())
    n = len(tr) + len(va) + len(te)
    assert 0.17 < len(te) / n < 0.21 and 0.07 < len(va) / n < 0.11
    assert set(te.user_id) <= set(tr.user_id)  # every test user has training rows (the reason for the split)
    a, b = label_sample(1000, 0.05, 3), label_sample(1000, 0.05, 3)
    assert len(a) == 50 and np.array_equal(a, b) and not np.array_equal(a, label_sample(1000, 0.05, 4))


def test_history_never_looks_at_or_after_the_row():
    X = pd.DataFrame({"u": [1, 1, 1, 2, 1], "i": ["a", "b", "c", "d", "e"], "t": [1, 2, 2, 1, 5]})
    h = add_history(X, user="u", item="i", time="t", max_len=2)["history"].tolist()
    assert h == [[], ["a"], ["a"], [], ["b", "c"]]  # ties (t=2) do not see each other; the last 2 only


def test_encoder_vocab_oov_hashing_and_json(log):
    tr, te = log["train"], log["test"]
    enc = FeatureEncoder.fit(tr, TASK)
    new = te.head(20).assign(user_id=10**6, genres=[["Drama", "no-such-genre"]] * 20)
    arrays = enc.transform(new, TASK, 50)
    assert (arrays["ids"][:, 0] == 1).all() and enc.oov_["user_id"] == 20 and enc.oov_["genres"] == 20
    assert arrays["numeric"].shape == (20, 2) and np.isfinite(arrays["numeric"]).all()
    lengths = np.array([min(len(h), 50) for h in new["history"]])
    hist = arrays["history"]
    assert hist.shape[1] == lengths.max() and (hist > 0).sum(1).tolist() == lengths.tolist()
    short = int(np.argmin(lengths))  # right-aligned: padding on the left, the most recent item last
    assert (hist[short, : hist.shape[1] - lengths[short]] == 0).all() and (hist[short, hist.shape[1] - lengths[short]:]
                                                                            > 0).all()
    again = FeatureEncoder.from_dict(enc.to_dict()).transform(new, TASK, 50)
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)
    hashed = CTR(**MOVIELENS_COLUMNS, hash_buckets=(("user_id", 64),))
    h_enc = FeatureEncoder.fit(tr, hashed)
    ids = h_enc.transform(new, hashed, 50)["ids"][:, 0]
    assert h_enc["user_id"].size == 66 and (ids >= 2).all() and len(set(ids)) == 1 and "user_id" not in {
        k for k, v in h_enc.oov_.items() if v}
    hashed_items = CTR(**MOVIELENS_COLUMNS, hash_buckets=(("item_id", 256),))  # the history hashes with them
    hi = FeatureEncoder.fit(tr, hashed_items).transform(new, hashed_items, 50)
    assert (hi["history"][hist > 0] >= 2).all() and (hi["history"][hist == 0] == 0).all()
    as_strings = new.assign(genres="Drama|no-such-genre")
    assert np.array_equal(enc.transform(as_strings, TASK, 50)["multi:genres"], arrays["multi:genres"])


@pytest.mark.parametrize("model", ["deepfm", pytest.param("dcn-v2", marks=pytest.mark.slow),
                                   pytest.param("din", marks=pytest.mark.slow)])
def test_architectures_learn_and_reproduce(log, model):
    tr, va, te = log["train"], log["val"], log["test"]
    task = CTR(**MOVIELENS_COLUMNS, model=model, hidden=(32,), embedding_dim=8)
    a = Finetuner("scratch", task=task, epochs=3, batch_size=128, verbose=0).fit(tr, tr.click, X_val=va,
                                                                                  y_val=va.click)
    b = Finetuner("scratch", task=task, epochs=3, batch_size=128, verbose=0).fit(tr, tr.click, X_val=va,
                                                                                  y_val=va.click)
    p = a.predict_proba(te)
    assert p.shape == (len(te), 2) and np.allclose(p.sum(1), 1) and np.array_equal(p, b.predict_proba(te))
    assert a.score(te, te.click) > 0.6  # AUC well above chance on 60 users
    # early stopping ranks epochs by validation AUC and keeps the best one
    assert max(h["val_score"] for h in a.history_) == pytest.approx(auc(va.click, a.predict_proba(va)[:, 1]))


def test_unseen_ids_warn_and_predict(fitted, log):
    te = log["test"].head(30).assign(user_id=-5, item_id=-7, occupation="astronaut")
    with pytest.warns(UnseenIdsWarning, match="user_id: 30"):
        p = fitted.predict_proba(te)
    assert np.isfinite(p).all()
    assert fitted.tokenizer_.oov_["item_id"] == 30
    empty = log["test"].head(5).assign(history=[[]] * 5)  # a user without history: a documented default
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnseenIdsWarning)
        assert np.isfinite(fitted.predict_proba(empty)).all()


def test_bad_inputs_have_clear_errors(log):
    tr = log["train"].head(300)
    clf = Finetuner("scratch", **FIT)
    with pytest.raises(ValueError, match="no column 'user_id'"):
        clf.fit(tr.drop(columns=["user_id"]), tr.click)
    with pytest.raises(ValueError, match="0/1 clicks"):
        clf.fit(tr, tr.rating)
    with pytest.raises(ValueError, match="non-numbers"):
        clf.fit(tr.assign(age=tr.age.astype(str).where(tr.index > 3, "old")), tr.click)
    with pytest.raises(ValueError, match="missing ids"):
        clf.fit(tr.assign(item_id=tr.item_id.where(tr.index > 2)), tr.click)
    with pytest.raises(ValueError, match="no rows"):
        clf.fit(tr.head(0), tr.click.head(0))
    with pytest.raises(ValueError, match="DataFrame"):
        clf.fit(["a", "b"], [0, 1])
    with pytest.raises(ValueError, match="not a CTR start"):
        Finetuner("minilm-l6", **FIT).fit(tr, tr.click)
    with pytest.raises(ValueError, match="lora"):
        Finetuner("scratch", strategy="lora", **FIT).fit(tr, tr.click)
    with pytest.raises(ValueError, match="only"):
        clf.fit(tr, np.ones(len(tr), dtype=int))
    nan_age = tr.assign(age=tr.age.astype(float).where(tr.index > 3))  # missing numbers: the training mean
    assert Finetuner("scratch", **dict(FIT, epochs=1)).fit(nan_age, tr.click).predict_proba(nan_age).shape == (300, 2)


def test_reads_parquet_and_csv_paths(fitted, log, tmp_path):
    te = log["test"].head(50)
    te.to_parquet(tmp_path / "rows.parquet")  # lists (genres, history) survive Parquet
    assert np.allclose(fitted.predict_proba(str(tmp_path / "rows.parquet")), fitted.predict_proba(te))
    # CSV holds no lists: multi-hot and history columns as strings separated by the task's sep ("|")
    csv = te.assign(genres=te.genres.str.join("|"), history=["|".join(map(str, h)) for h in te.history])
    csv.to_csv(tmp_path / "rows.csv", index=False)
    assert np.allclose(fitted.predict_proba(tmp_path / "rows.csv"), fitted.predict_proba(te))
    (tmp_path / "rows.xlsx").touch()
    with pytest.raises(ValueError, match="unknown table format"):
        fitted.predict_proba(tmp_path / "rows.xlsx")
    with pytest.raises(ValueError, match="is not a file"):
        fitted.predict_proba(tmp_path / "missing.csv")


def test_save_load_roundtrip(fitted, log, tmp_path):
    te, tr = log["test"], log["train"]
    options = CTR(**MOVIELENS_COLUMNS, model="dcn-v2", hash_buckets=(("zip", 4),), min_count=2, max_history=7,
                  hidden=(16,), embedding_dim=4)
    m = Finetuner("scratch", task=options, epochs=1, batch_size=256, verbose=0).fit(tr, tr.click)
    m.save(tmp_path / "options")
    again = Finetuner.load(tmp_path / "options")
    assert again.task_ == m.task_ and again.max_length_ == 7
    assert np.allclose(again.predict_proba(te), m.predict_proba(te), atol=1e-6)
    fitted.save(tmp_path / "m")
    assert not list(tmp_path.glob("m/*.bin")) and (tmp_path / "m" / "features.json").is_file()
    back = Finetuner.load(tmp_path / "m", task="ctr")
    assert np.allclose(back.predict_proba(te), fitted.predict_proba(te), atol=1e-6)
    with pytest.raises(ValueError, match="holds a 'ctr' model"):
        Finetuner.load(tmp_path / "m", task="text-classification")


def test_pretrain_then_every_strategy(pretrained, log):
    tr, va, te = log["train"], log["val"], log["test"]
    meta = tunefuse.ctr.pretrain.read_meta(pretrained)
    assert {"hr@10", "ndcg@10"} <= set(meta["history"][0]) and meta["log_rows"] == len(tr)
    sample = tr.iloc[label_sample(len(tr), 0.2, 0)]
    for kw in (dict(strategy="full"), dict(strategy="head"), dict(strategy="lp-ft"),
               dict(strategy="full", freeze_embeddings=True)):
        clf = Finetuner(str(pretrained), **FIT, **kw).fit(sample, sample.click, X_val=va, y_val=va.click)
        assert clf.score(te, te.click) > 0.55, kw
        if kw.get("freeze_embeddings"):  # the embeddings stayed the pretrained ones
            from tunefuse.ctr.models import load_saved

            pre_model, _ = load_saved(pretrained)
            table = lambda model, name: model.embeddings["vectors"][model.tables.index(name)].weight.detach()  # noqa
            for name in ("user_id", "item_id"):
                assert np.array_equal(table(clf.model_, name).numpy(), table(pre_model, name).numpy())
            assert not np.array_equal(table(clf.model_, "gender").numpy(), table(pre_model, "gender").numpy())
    with pytest.raises(ValueError, match="backbone='scratch' has none"):
        Finetuner("scratch", freeze_embeddings=True, **FIT).fit(sample, sample.click)
    with pytest.raises(ValueError, match="pretrained on the columns"):
        Finetuner(str(pretrained), task=CTR(user="user_id", item="item_id"), verbose=0).fit(sample, sample.click)
    with pytest.raises(ValueError, match="user first"):  # same names, another role
        swapped = CTR(**dict(MOVIELENS_COLUMNS, categorical=("gender", "occupation"), numeric=("age", "year", "zip")))
        Finetuner(str(pretrained), task=swapped, verbose=0).fit(sample, sample.click)
    with pytest.raises(ValueError, match="embedding_dim=8, not 32"):
        Finetuner(str(pretrained), task=CTR(**MOVIELENS_COLUMNS, embedding_dim=32), verbose=0).fit(sample,
                                                                                                  sample.click)
    with pytest.raises(ValueError, match="model='deepfm', not 'din'"):
        Finetuner(str(pretrained), task=CTR(**MOVIELENS_COLUMNS, model="din"), verbose=0).fit(sample, sample.click)


def test_stack_a_deepfm_with_gradient_boosting(fitted, log):
    tr, va, te = log["train"], log["val"], log["test"]
    members = [("deepfm", fitted), ("hgb", TabularModel("hgb", task=TASK).fit(tr, tr.click))]
    y = te.click.to_numpy()
    for fusion in (Stacking(members, prefit=True), Voting(members, weights="fit", prefit=True),
                   EnsembleSelection(members, metric="roc_auc", prefit=True)):
        p = fusion.fit(va, va.click).predict_proba(te)[:, 1]
        assert auc(y, p) > 0.6, type(fusion).__name__
    with pytest.raises(ValueError, match="metric='roc_auc' ranks two classes"):
        EnsembleSelection(members, metric="roc_auc", prefit=True).fit(va, np.arange(len(va)) % 3)


@pytest.mark.slow
def test_soup_bag_and_distill_ctr_members(pretrained, log):
    tr, va, te = log["train"], log["val"], log["test"]
    a = Finetuner(str(pretrained), **FIT, random_state=0).fit(tr, tr.click, X_val=va, y_val=va.click)
    b = Finetuner(str(pretrained), **FIT, random_state=1).fit(tr, tr.click, X_val=va, y_val=va.click)
    y = te.click.to_numpy()
    soup = WeightFusion([("a", a), ("b", b)], method="uniform_soup").fit(va, va.click)  # one pretrained start
    assert auc(y, soup.predict_proba(te)[:, 1]) > 0.6
    bag = Bagging(TabularModel("lr", task=TASK), mode="kfold", n_splits=3).fit(tr, tr.click)
    assert bag.predict_proba(te).shape == (len(te), 2)
    with pytest.raises(ValueError, match="mode='kfold'"):
        Bagging(TabularModel("lr", task=TASK)).fit(tr, tr.click)
    student = Distillation(soup, Finetuner("scratch", **FIT)).fit(tr, tr.click, X_val=va, y_val=va.click)
    assert auc(y, student.predict_proba(te)[:, 1]) > 0.6
    half = len(tr) // 2  # from scratch, each member's vocabulary is its own rows': their weights do not line up
    c = Finetuner("scratch", **FIT).fit(tr.iloc[:half], tr.click.iloc[:half])
    d = Finetuner("scratch", **FIT).fit(tr.iloc[half:], tr.click.iloc[half:])
    with pytest.raises(ValueError, match="different tokenizers"):
        WeightFusion([("c", c), ("d", d)], method="uniform_soup").fit(va, va.click)


def test_tabular_members(log):
    tr, te = log["train"], log["test"]
    for kind in ("lr", "hgb"):
        m = TabularModel(kind, task=TASK).fit(tr, tr.click)
        assert m.score(te, te.click) > 0.6 and m.predict(te).shape == (len(te),)
    with pytest.raises(ValueError, match="kind='svm'"):
        TabularModel("svm", task=TASK).fit(tr, tr.click)


def test_metrics_by_hand():
    y, p = np.array([0, 1, 0, 1, 1, 0]), np.array([0.1, 0.9, 0.8, 0.3, 0.7, 0.2])
    assert auc(y, p) == pytest.approx(7 / 9)
    # bins of 3 by p: mean 0.2 vs 1/3 clicked, mean 0.8 vs 2/3: ECE 2/15 either side
    cal = calibration(y, p, bins=2)
    assert cal["ece"] == pytest.approx(2 / 15) and cal["count"].tolist() == [3, 3]
    assert cal["ratio"] == pytest.approx(p.mean() / y.mean())
    # user 1 (4 rows): positives 0.9, 0.3 vs negatives 0.1, 0.8 -> 3/4; user 2 (2 rows): 0; user 3: one class, out
    yg = np.array([0, 1, 0, 1, 1, 0, 1, 1])
    pg = np.array([0.1, 0.9, 0.8, 0.3, 0.2, 0.7, 0.5, 0.5])
    assert gauc(yg, pg, np.array([1, 1, 1, 1, 2, 2, 3, 3])) == pytest.approx((4 * 0.75 + 2 * 0.0) / 6)
    negatives = np.array([[1.0] * 20, [2.0] * 20, [2.0] + [1.0] * 19])
    r = ranking_at_k(np.array([5.0, 1.0, 2.0]), negatives, k=10)  # ranks 0, 20, 1 (a tie counts against)
    assert r["hr@10"] == pytest.approx(2 / 3) and r["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3)) / 3)
