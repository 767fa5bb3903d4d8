"""Fusion of real (tiny) fine-tuned members: weight-space methods, distillation, shared features, save/load."""
import numpy as np
import pytest

from tunefuse import Finetuner, features
from tunefuse.baselines import tfidf_logreg
from tunefuse.fusion import (FUSION_METHODS, Bagging, Distillation, Stacking, Voting, WeightFusion, get_fusion_method,
                             leaderboard, load_fusion, save_fusion, soup_from_checkpoints)
from tunefuse.fusion.soups import METHODS, state_of
from tunefuse.fusion.weights import uniform

from .conftest import TINY


@pytest.fixture(scope="module")
def members(reviews):
    X, y, _, _ = reviews
    specs = [("full_s0", dict(random_state=0)), ("full_s1", dict(random_state=1, lr=8e-5)),
             ("lpft", dict(strategy="lp-ft", random_state=2))]
    return [(n, Finetuner(epochs=1, **TINY, **kw).fit(X, y)) for n, kw in specs]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_weight_method_fuses_into_one_finetuner(members, reviews, method):
    _, _, Xt, yt = reviews
    fused = get_fusion_method(method).build(members).fit(Xt, yt)
    assert isinstance(fused.fused_, Finetuner)
    assert fused.predict_proba(Xt).shape == (len(Xt), 2)
    assert set(fused.weights_) == {n for n, _ in members}
    assert sum(fused.weights_.values()) == pytest.approx(1.0)


def test_uniform_soup_is_the_mean_of_the_weights(members, reviews):
    fused = WeightFusion(members, method="uniform_soup").fit(reviews[2], reviews[3])
    expected = uniform([state_of(m) for _, m in members])
    got = state_of(fused.fused_)
    for k in ("bert.encoder.layer.0.output.dense.weight", "classifier.weight"):
        np.testing.assert_allclose(got[k].numpy(), expected[k].numpy(), rtol=1e-6)
    assert all(state_of(m)["classifier.weight"] is not got["classifier.weight"] for _, m in members)


def test_greedy_soup_never_scores_below_its_best_ingredient(members, reviews):
    _, _, Xt, yt = reviews
    fused = WeightFusion(members, method="greedy_soup").fit(Xt, yt)
    assert fused.fused_.score(Xt, yt) >= max(m.score(Xt, yt) for _, m in members)


def test_soup_streamed_from_checkpoints_equals_in_memory_soup(members, reviews, tmp_path):
    paths = [m.save(tmp_path / n) for n, m in members]
    streamed = soup_from_checkpoints(paths)
    in_memory = WeightFusion(members, method="uniform_soup").fit(reviews[2], reviews[3])
    # bf16 inference: float32 sums in a different order may round a few logits differently
    np.testing.assert_allclose(streamed.predict_proba(reviews[2]), in_memory.predict_proba(reviews[2]), atol=2e-3)


def test_weight_fusion_names_incompatible_members(members, reviews):
    X, y, Xt, yt = reviews
    deeper = Finetuner(strategy="head", **{**TINY, "config_overrides": {"num_hidden_layers": 2}}).fit(X, y)
    with pytest.raises(ValueError, match="members 'full_s0' and 'deep' start from different backbones"):
        WeightFusion(members + [("deep", deeper)]).fit(Xt, yt)
    tfidf = tfidf_logreg().fit(X, y)
    with pytest.raises(ValueError, match="member 'tfidf' .* has no fine-tuned weights.*output-space"):
        WeightFusion(members + [("tfidf", tfidf)]).fit(Xt, yt)
    three = Finetuner(strategy="head", **TINY).fit(X, np.arange(len(y)) % 3)
    with pytest.raises(ValueError, match="classes"):
        WeightFusion(members + [("three", three)]).fit(Xt, yt)
    with pytest.raises(ValueError, match="method='soup' is not one of"):
        WeightFusion(members, method="soup").fit(Xt, yt)


def test_stack_mixes_a_finetuner_with_tfidf(members, reviews):
    _, _, Xt, yt = reviews
    stack = Stacking([members[0], ("tfidf", tfidf_logreg().fit(Xt, yt))], prefit=True).fit(Xt, yt)
    assert set(stack.weights_) == {"full_s0", "tfidf"}
    assert stack.predict_proba(Xt).shape == (len(Xt), 2)


def test_prefit_fusions_save_and_load(members, reviews, tmp_path):
    _, _, Xt, yt = reviews
    vote = Voting(members, weights="fit", prefit=True).fit(Xt, yt)
    loaded = load_fusion(save_fusion(vote, tmp_path / "vote"))
    np.testing.assert_allclose(loaded.predict_proba(Xt), vote.predict_proba(Xt), atol=1e-6)
    assert not list(tmp_path.rglob("*.pkl")) and list(tmp_path.rglob("model.safetensors"))
    soup = WeightFusion(members, method="uniform_soup").fit(Xt, yt)
    reloaded = Finetuner.load(soup.save(tmp_path / "soup"))
    np.testing.assert_array_equal(reloaded.predict_proba(Xt), soup.predict_proba(Xt))


def test_distillation_trains_a_student_on_soft_labels(members, reviews):
    X, y, Xt, _ = reviews
    teacher = Voting(members, prefit=True).fit(Xt, reviews[3])
    student = Distillation(teacher, Finetuner(epochs=1, **TINY), temperature=2.0, X_unlabeled=Xt).fit(X, y)
    assert isinstance(student.student_, Finetuner)
    assert student.predict_proba(Xt).shape == (len(Xt), 2)
    with pytest.raises(ValueError, match="temperature=0 is invalid"):
        Distillation(teacher, Finetuner(**TINY), temperature=0).fit(X, y)
    with pytest.raises(ValueError, match=r"labels \['x'\] the teacher never saw"):
        Distillation(teacher, Finetuner(**TINY)).fit(X[:2], np.array(["x", "x"], dtype=object))


@pytest.mark.slow
def test_bag_of_head_only_members_computes_features_once(reviews):
    X, y, Xt, _ = reviews
    features.clear()
    Bagging(Finetuner(strategy="head", **TINY), n_estimators=5).fit(X, y).predict(Xt)
    # each distinct text goes through the backbone once, whatever the number of bags
    assert features.stats["computed"] == len(set(X["text"])) + len(set(Xt["text"]) - set(X["text"]))
    assert features.stats["reused"] > 4 * len(X) * 0.6


def test_registry_covers_every_method():
    assert set(METHODS) <= set(FUSION_METHODS)
    assert {"stacking", "vote_soft", "ensemble_selection", "boosting"} <= set(FUSION_METHODS)
    with pytest.raises(ValueError, match="unknown; valid"):
        get_fusion_method("nope")


def test_leaderboard_lists_members_and_fusions(members, reviews):
    _, _, Xt, yt = reviews
    models = dict(members)
    models["soup"] = WeightFusion(members, method="uniform_soup").fit(Xt, yt)
    table = leaderboard(models, Xt, yt, Xt, yt)
    assert set(table["model"]) == set(models)
    assert table.loc[table["model"] == "soup", "size_mb"].iloc[0] > 1


def test_leaderboard_times_frozen_backbone_models_cold(reviews):
    X, y, Xt, yt = reviews
    bag = Bagging(Finetuner(strategy="head", **TINY), n_estimators=3).fit(X, y)
    bag.predict(Xt)  # warms the shared feature cache
    before = features.stats["computed"]
    leaderboard({"bag": bag}, Xt, yt, Xt, yt)
    # the timed (test) call paid the backbone pass (once, shared by the 3 heads), not a cache lookup; the untimed
    # validation call read the warm cache
    assert features.stats["computed"] - before == len(set(Xt["text"]))
    after = features.stats["computed"]
    bag.predict(Xt)  # ... and the cache the user had is back
    assert features.stats["computed"] == after


def test_soups_refuse_members_with_different_pooling(reviews):
    X, y, Xt, yt = reviews
    mean = Finetuner(strategy="head", **TINY).fit(X, y)
    native = Finetuner(strategy="head", pooling="native", **TINY).fit(X, y)
    with pytest.raises(ValueError, match=r"members 'a' and 'b' read different pooled features \('mean' vs 'native'\)"):
        WeightFusion([("a", mean), ("b", native)], method="uniform_soup").fit(Xt, yt)
