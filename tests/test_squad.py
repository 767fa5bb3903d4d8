"""SQuAD reading, official scoring, windows, span decoding, fusion and the NER -> SQuAD builder, on hand-made data."""
import copy
import json
import math

import numpy as np
import pytest

from tunefuse.tasks.squad import (QAExample, decide, encode_windows, entities_to_squad, exact_match_score,
                                  example_candidates, f1_score, fuse_candidates, normalize_answer, per_question_f1,
                                  read_squad, split_by_article, squad_scores, tune_null_threshold, window_spans)

CTX = "The Eiffel Tower is in Paris."  # "Eiffel Tower" at 4, "Paris" at 23


def squad_doc() -> dict:
    """A valid two-question SQuAD v1.1 dict; tests break one thing at a time."""
    return {"version": "1.1", "data": [{"title": "Paris", "paragraphs": [{"context": CTX, "qas": [
        {"id": "q1", "question": "Where is the tower?", "answers": [{"text": "Paris", "answer_start": 23}]},
        {"id": "q2", "question": "Which tower?", "answers": [{"text": "Eiffel Tower", "answer_start": 4},
                                                            {"text": "The Eiffel Tower", "answer_start": 0}]},
    ]}]}]}


# ------------------------------------------------------------------------------------------------- official scores

def test_normalize_answer():
    assert normalize_answer("An apple, the PEAR  and a fig.") == "apple pear and fig"
    assert normalize_answer("The Eiffel-Tower!") == "eiffeltower"  # punctuation goes before the articles


def test_exact_match_and_f1_hand_computed():
    assert exact_match_score("the Eiffel tower", "Eiffel Tower") == 1.0
    assert exact_match_score("tower in Paris", "Eiffel Tower") == 0.0
    assert f1_score("tower in Paris", "Eiffel Tower") == pytest.approx(0.4)  # P = 1/3, R = 1/2
    assert f1_score("", "Eiffel Tower") == 0.0
    assert f1_score("", "") == 1.0  # v2.0: agreeing on no answer
    assert f1_score("tower tower", "tower") == pytest.approx(2 * 0.5 * 1 / 1.5)  # Counter clips repeats


def test_squad_scores_max_over_golds_v2_and_missing():
    golds = (("Eiffel Tower", 4), ("tower in Paris", 11))
    examples = [QAExample("a", "Which tower?", CTX, golds),
                QAExample("b", "Who built it?", CTX, (), is_impossible=True),
                QAExample("c", "Which tower?", CTX, (("Eiffel Tower", 4),)),
                QAExample("d", "When?", CTX, (), is_impossible=True)]
    # a: F1 = max(0.4, 2/3) = 2/3; b: no-answer predicted empty = 1; c: missing = 0; d: answered a no-answer = 0
    s = squad_scores({"a": "tower in France", "b": "", "d": "Paris", "zzz": "ignored"}, examples)
    assert s["exact_match"] == pytest.approx(1 / 4)
    assert s["f1"] == pytest.approx((2 / 3 + 1) / 4)
    assert s["has_ans_f1"] == pytest.approx(1 / 3) and s["no_ans_f1"] == pytest.approx(0.5)
    assert (s["n"], s["missing"], s["has_ans_n"], s["no_ans_n"]) == (4, 1, 2, 2)
    np.testing.assert_allclose(per_question_f1({"a": "tower in France", "b": ""}, examples), [2 / 3, 1, 0, 0])
    assert "no_ans_f1" not in squad_scores({"c": "eiffel tower"}, examples[2:3])


def test_squad_scores_errors():
    ex = [QAExample("q1", "Where?", CTX, (("Paris", 23),))]
    with pytest.raises(ValueError, match=r"none of the 1 prediction ids.*'Q1'.*'q1'.*fix: key predictions by"):
        squad_scores({"Q1": "Paris"}, ex)
    with pytest.raises(TypeError, match=r"predictions\['q1'\] is None; fix: predict a string"):
        squad_scores({"q1": None}, ex)


# --------------------------------------------------------------------------------------------------------- reading

def test_read_squad_v1_dict_and_file(tmp_path):
    examples = read_squad(squad_doc())
    assert examples[0] == QAExample("q1", "Where is the tower?", CTX, (("Paris", 23),), "Paris", False)
    assert examples[1].answers == (("Eiffel Tower", 4), ("The Eiffel Tower", 0))
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad_doc()))
    assert read_squad(path) == read_squad(str(path)) == examples
    assert squad_scores({"q1": "paris", "q2": "the eiffel tower."}, examples)["exact_match"] == 1.0


def test_read_squad_v2():
    doc = squad_doc()
    doc["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "q3", "question": "Who painted it?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Eiffel", "answer_start": 4}]})
    ex = read_squad(doc)[2]
    assert (ex.answers, ex.is_impossible) == ((), True)


def _qa(doc: dict, k: int = 0) -> dict:
    return doc["data"][0]["paragraphs"][0]["qas"][k]


BREAKS = [  # (name, how to break the valid doc, the message it must give)
    ("empty", lambda d: d.clear(), r"no non-empty 'data' list.*fix: pass a SQuAD file"),
    ("no data", lambda d: d.update(data=[]), r"no non-empty 'data' list"),
    ("no question", lambda d: d["data"][0].update(paragraphs=[]), r"no question at all.*fix: pass a file with"),
    ("context, no question", lambda d: d["data"][0]["paragraphs"][0].update(qas=[]),
     r"data\[0\]\.paragraphs\[0\] is a context with no question.*fix: add at least one question"),
    ("empty question", lambda d: _qa(d, 1).update(question="  "),
     r"data\[0\]\.paragraphs\[0\]\.qas\[1\] \(id='q2'\) has an empty question text.*fix: write the question"),
    ("no answers", lambda d: _qa(d).update(answers=[]),
     r"qas\[0\] \(id='q1'\) is answerable but has no answers.*fix: add .*is_impossible"),
    ("bad offset", lambda d: _qa(d)["answers"][0].update(answer_start=22),
     r"data\[0\]\.paragraphs\[0\]\.qas\[0\] \(id='q1'\): answer text 'Paris' is not at answer_start=22 "
     r"\(the context has ' Pari' there\); fix: correct answer_start or the text"),
    ("duplicate id", lambda d: _qa(d, 1).update(id="q1"),
     r"qas\[1\] repeats id 'q1' of data\[0\]\.paragraphs\[0\]\.qas\[0\]; fix: give every question a unique id"),
]


@pytest.mark.parametrize("name,brk,message", BREAKS, ids=[b[0] for b in BREAKS])
def test_read_squad_errors(name, brk, message):
    doc = copy.deepcopy(squad_doc())
    brk(doc)
    with pytest.raises(ValueError, match=message):
        read_squad(doc)


def test_read_squad_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.json' is not a file; fix: pass the path"):
        read_squad(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json' is not valid JSON .*line 1.*fix: pass a SQuAD"):
        read_squad(bad)
    with pytest.raises(TypeError, match=r"source must be a path or a dict; got int"):
        read_squad(3)


# ----------------------------------------------------------------------------------------------------------- split

def _articles(n_titles: int, per_title: int = 2) -> list[QAExample]:
    return [QAExample(f"t{t}q{q}", "Where?", CTX, (("Paris", 23),), title=f"T{t}")
            for t in range(n_titles) for q in range(per_title)]


def test_split_by_article_disjoint_deterministic():
    examples = _articles(48)  # XQuAD's shape: 48 articles
    train, val, test = split_by_article(examples, n_test=12, n_val=4, seed=0)
    titles = [{e.title for e in part} for part in (train, val, test)]
    assert [len(t) for t in titles] == [32, 4, 12]
    assert not (titles[0] & titles[1] or titles[0] & titles[2] or titles[1] & titles[2])
    assert len(train) + len(val) + len(test) == len(examples)
    assert split_by_article(examples, n_test=12, n_val=4, seed=0) == (train, val, test)
    assert split_by_article(examples, n_test=12, n_val=4, seed=1)[2] != test
    assert train == [e for e in examples if e.title in titles[0]]  # order kept within a part
    with pytest.raises(ValueError, match=r"n_test \+ n_val = 48 leaves no training article out of 48 titles"):
        split_by_article(examples, n_test=40, n_val=8)


# --------------------------------------------------------------------------------------------------------- windows

@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from tunefuse.backbones import resolve_backbone
    return AutoTokenizer.from_pretrained(resolve_backbone("minilm-l6")[0])


def _long_examples() -> list[QAExample]:
    facts = [f"Room {k} keeps the {w} key." for k, w in enumerate(
        ["amber", "brass", "cobalt", "dusty", "ebony", "frosty", "golden", "hazel", "ivory", "jade", "khaki",
         "lemon", "maple", "navy", "olive", "pearl", "quartz", "ruby", "silver", "topaz"])]
    context = " ".join(facts)
    examples = []
    for k in (0, 9, 19):
        text = facts[k].split(" keeps the ")[1].removesuffix(".")
        examples.append(QAExample(f"room{k}", f"Which key does room {k} keep?", context,
                                  ((text, context.index(text)),)))
    examples.append(QAExample("none", "Which key opens the vault?", context, (), is_impossible=True))
    return examples


def test_encode_windows_offsets_and_gold_positions(tokenizer):
    examples = _long_examples()
    enc = encode_windows(tokenizer, examples, max_length=48, stride=16)
    n = len(enc["input_ids"])
    assert all(len(enc[k]) == n for k in ("token_type_ids", "example", "offsets", "start_positions",
                                          "end_positions"))
    counts = np.bincount(enc["example"], minlength=len(examples))
    assert (counts >= 4).all() and all(len(ids) <= 48 for ids in enc["input_ids"])
    found = set()
    for w in range(n):
        ex, offsets = examples[enc["example"][w]], enc["offsets"][w]
        ctx = [o for o in offsets if o is not None]
        assert offsets[0] is None and offsets[-1] is None  # CLS and SEP are not context
        s, e = enc["start_positions"][w], enc["end_positions"][w]
        inside = bool(ex.answers) and ctx[0][0] <= ex.answers[0][1] and ex.answers[0][1] + len(ex.answers[0][0]) \
            <= ctx[-1][1]
        if inside:
            assert 0 < s <= e
            assert normalize_answer(ex.context[offsets[s][0]:offsets[e][1]]) == normalize_answer(ex.answers[0][0])
            found.add(ex.id)
        else:
            assert (s, e) == (0, 0)
    assert found == {"room0", "room9", "room19"}
    # consecutive windows of one example share exactly `stride` context tokens
    for w in range(n - 1):
        if enc["example"][w] == enc["example"][w + 1]:
            ctx_ids = [[i for i, o in zip(enc["input_ids"][v], enc["offsets"][v]) if o is not None] for v in (w, w + 1)]
            assert ctx_ids[0][-16:] == ctx_ids[1][:16]
    assert "start_positions" not in encode_windows(tokenizer, examples, max_length=48, stride=16, train=False)


def test_encode_windows_question_too_long(tokenizer):
    ex = [QAExample("long", "why " * 60 + "?", CTX, (("Paris", 23),))]
    with pytest.raises(ValueError, match=r"examples\[0\] \(id='long'\): the question takes 61 tokens.*fix: raise "
                                         r"max_length"):
        encode_windows(tokenizer, ex, max_length=48, stride=16)


# ---------------------------------------------------------------------------------------------------- span decoding

def test_window_spans_exact():
    offsets = [None, None, (0, 3), (4, 9), (10, 15), None]
    start = [5.0, 0.0, 1.0, 3.0, 0.0, 9.0]  # the best start and end logits sit on non-context tokens: skipped
    end = [5.0, 0.0, 0.0, 1.0, 4.0, 9.0]
    spans = window_spans(start, end, offsets)
    assert spans[0] == (4, 15, 7.0)
    assert sorted(spans) == sorted([(4, 15, 7.0), (0, 15, 5.0), (4, 9, 4.0), (10, 15, 4.0), (0, 9, 2.0), (0, 3, 1.0)])
    assert sorted(window_spans(start, end, offsets, max_answer_length=1)) == [(0, 3, 1.0), (4, 9, 4.0), (10, 15, 4.0)]
    with pytest.raises(ValueError, match=r"offsets \(5 tokens\) must be 1-D of one length; fix: drop the padding"):
        window_spans(start, end, offsets[:5])


def _two_windows():
    context = "Paris hosts games"  # Paris 0:5, hosts 6:11, games 12:17
    a = ([1.0, 2.0, 0.0, -5.0], [0.5, 0.0, 2.0, -5.0], [None, (0, 5), (6, 11), None])  # null 1.5
    b = ([0.0, 1.0, 3.0, -5.0], [0.0, 1.5, 1.0, -5.0], [None, (6, 11), (12, 17), None])  # null 0.0
    return context, [a, b]


def test_example_candidates_union_softmax_and_null():
    context, windows = _two_windows()
    # best score per span over both windows: (0,11) 4, (12,17) 4, (6,11) max(2, 2.5), (0,5) 2, (6,17) 2
    z = 2 * math.exp(4) + math.exp(2.5) + 2 * math.exp(2)
    got = example_candidates(windows, context)
    assert [(s, e) for s, e, _ in got["spans"]] == [(0, 11), (12, 17), (6, 11), (0, 5), (6, 17)]
    assert [p for *_, p in got["spans"]] == pytest.approx([math.exp(4) / z] * 2 + [math.exp(2.5) / z]
                                                          + [math.exp(2) / z] * 2)
    assert got["null"] == 0.0
    with_null = example_candidates(windows, context, allow_null=True, top_k=2)  # null = min(1.5, 0.0) = 0.0
    assert len(with_null["spans"]) == 2
    assert with_null["spans"][0][2] == pytest.approx(math.exp(4) / (z + 1))
    assert with_null["null"] == pytest.approx(1 / (z + 1))
    with pytest.raises(ValueError, match=r"window 1 has a span at chars 12:17, outside the context of 11 chars"):
        example_candidates(windows, "Paris hosts")


def test_fuse_candidates_exact():
    m1 = {"spans": [(0, 5, 0.6), (6, 11, 0.3)], "null": 0.1}
    m2 = {"spans": [(6, 11, 0.5), (12, 17, 0.2)], "null": 0.3}
    fused = fuse_candidates([m1, m2])
    assert [(s, e) for s, e, _ in fused["spans"]] == [(6, 11), (0, 5), (12, 17)]
    assert [p for *_, p in fused["spans"]] == pytest.approx([0.4, 0.3, 0.1]) and fused["null"] == pytest.approx(0.2)
    weighted = fuse_candidates([m1, m2], weights=[3, 1])  # normalised to 0.75 / 0.25
    assert weighted["spans"] == [(0, 5, pytest.approx(0.45)), (6, 11, pytest.approx(0.35)),
                                 (12, 17, pytest.approx(0.05))]
    assert weighted["null"] == pytest.approx(0.15)
    for bad in ([1.0], [1.0, -1.0], [0.0, 0.0]):
        with pytest.raises(ValueError, match=r"must be 2 non-negative numbers, one per member"):
            fuse_candidates([m1, m2], weights=bad)


def test_decide_and_tune_null_threshold():
    context = "Paris hosts games"
    cand = {"spans": [(6, 11, 0.4), (0, 5, 0.3)], "null": 0.5}
    assert decide(cand, context) == ""  # null beats the best span by 0.1 > 0
    assert decide(cand, context, null_threshold=0.2) == "hosts"
    assert decide({"spans": [], "null": 0.0}, context) == ""
    examples = [QAExample("q1", "What?", context, (("hosts", 6),)),
                QAExample("q2", "Who?", context, (), is_impossible=True),
                QAExample("q3", "What?", context, (("games", 12),)),
                QAExample("q4", "Where?", context, (("Paris", 0),))]
    cands = [{"spans": [(6, 11, 0.4)], "null": 0.5},  # diff 0.1, right when answered: +1
             {"spans": [(0, 5, 0.2)], "null": 0.7},   # diff 0.5, a no-answer: answering costs 1
             {"spans": [(0, 5, 0.3)], "null": 0.6},   # diff 0.3, wrong span: +0
             {"spans": [(0, 5, 0.6)], "null": 0.1}]   # diff -0.5, right: +1
    threshold = tune_null_threshold(cands, examples)
    assert threshold == pytest.approx(0.1)
    preds = {e.id: decide(c, context, null_threshold=threshold) for c, e in zip(cands, examples)}
    assert preds == {"q1": "hosts", "q2": "", "q3": "", "q4": "Paris"}
    best = squad_scores(preds, examples)["f1"]
    assert best == pytest.approx(0.75)
    for t in np.linspace(-1, 1, 41):
        assert squad_scores({e.id: decide(c, context, null_threshold=t) for c, e in zip(cands, examples)},
                            examples)["f1"] <= best + 1e-12
    # equal differences move together: answering both (+1 - 1) is no better than answering neither
    tie = tune_null_threshold([cands[0], {"spans": [(0, 5, 0.4)], "null": 0.5}], examples[:2])
    assert tie < 0.1 and decide(cands[0], context, null_threshold=tie) == ""


# -------------------------------------------------------------------------------------------------- NER -> SQuAD

TWEETS = [["@user", "loving", "New", "York", "with", "Alice", "!"],
          ["Bob", "and", "Carol", "went", "home"],
          ["nothing", "here", "lol"]]
TWEET_SPANS = [[(2, 4, "LOC"), (5, 6, "PER")], [(0, 1, "PER"), (2, 3, "PER")], []]


def test_entities_to_squad_round_trips_through_read_squad():
    doc = entities_to_squad(TWEETS, TWEET_SPANS)
    examples = read_squad(json.loads(json.dumps(doc)))
    by_id = {e.id: e for e in examples}
    assert len(examples) == 6 and sum(e.is_impossible for e in examples) == 3
    assert by_id["tweet0-LOC"].context == "@user loving New York with Alice !"
    assert by_id["tweet0-LOC"].question == "Which LOC is mentioned?"
    assert by_id["tweet0-LOC"].answers == (("New York", 13),)
    assert by_id["tweet0-PER"].answers == (("Alice", 27),)
    assert by_id["tweet1-PER"].answers == (("Bob", 0), ("Carol", 8))  # first entity, then the extra golds
    assert by_id["tweet1-LOC"].is_impossible and by_id["tweet2-PER"].answers == ()
    assert {e.title for e in examples} == {"tweet-0000"}
    assert squad_scores({"tweet1-PER": "Carol", "tweet2-LOC": ""}, examples)["exact_match"] == pytest.approx(2 / 6)

    answerable = read_squad(entities_to_squad(TWEETS, TWEET_SPANS, unanswerable=False, types=["PER"]))
    assert [e.id for e in answerable] == ["tweet0-PER", "tweet1-PER"]  # the tweet without a PER is dropped

    many = read_squad(entities_to_squad(TWEETS * 15, TWEET_SPANS * 15))  # 45 tweets: pseudo-articles of 20
    assert sorted({e.title for e in many}) == ["tweet-0000", "tweet-0001", "tweet-0002"]
    train, val, test = split_by_article(many, n_test=1, n_val=1)
    assert len({e.title for e in train}) == 1 and {e.title for e in test}.isdisjoint(e.title for e in train)


def test_entities_to_squad_errors():
    with pytest.raises(ValueError, match=r"spans\[0\] has \(2, 9, 'LOC'\) but sentence 0 has 7 words"):
        entities_to_squad(TWEETS[:1], [[(2, 9, "LOC")]])
    with pytest.raises(ValueError, match=r"3 sentences but 2 span lists"):
        entities_to_squad(TWEETS, TWEET_SPANS[:2])
    with pytest.raises(ValueError, match=r"has no '\{type\}' placeholder"):
        entities_to_squad(TWEETS, TWEET_SPANS, question="Who?")
