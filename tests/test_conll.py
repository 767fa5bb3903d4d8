"""CoNLL reading, BIO schemes, word splitting, entity scores and sentence splits: exact values, and error messages."""
import random
from pathlib import Path

import numpy as np
import pytest
from seqeval.metrics.sequence_labeling import get_entities

from tunefuse.datasets import load_wnut16
from tunefuse.tasks.conll import (check_bio, check_words_tags, detect_scheme, entity_f1, ner_scores, read_conll,
                                  repair_bio, split_sentences, split_words, tag_spans, to_bio)

CONLL = [
    "-DOCSTART- -X- O",
    "",
    "EU\tNNP\tB-ORG",
    "rejects\tVBZ\tO",
    "German\tJJ\tB-MISC",
    "\t",  # WNUT-16's separator: a line holding a single tab
    "Peter\tNNP\tB-PER",
    "Blackburn\tNNP\tI-PER",
    "",
    "   ",
    "-DOCSTART- -X- O",
    "BRUSSELS NNP B-LOC",  # no tab: columns split on whitespace
    "-DOCSTART- -X- O",  # a DOCSTART right after a word also ends the sentence
    "1996-08-22  CD  O",
]
WORDS = [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["BRUSSELS"], ["1996-08-22"]]
TAGS = [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"], ["O"]]

IOB1 = [["I-PER", "I-PER", "B-PER", "O", "I-LOC"], ["O", "I-ORG", "I-ORG"]]
IOB1_AS_BIO = [["B-PER", "I-PER", "B-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG"]]
BIOES = [["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"], ["B-ORG", "E-ORG"]]
BIOES_AS_BIO = [["B-PER", "O", "B-LOC", "I-LOC", "I-LOC"], ["B-ORG", "I-ORG"]]


# ---------------------------------------------------------------- read_conll


def test_read_conll_lines_docstart_tab_separator_three_columns():
    assert read_conll(CONLL, tag_column=2) == (WORDS, TAGS)
    assert read_conll(CONLL) == (WORDS, TAGS)  # tag_column=-1 is the same column here
    assert read_conll(CONLL, word_column=1, tag_column=2)[0] == [["NNP", "VBZ", "JJ"], ["NNP", "NNP"], ["NNP"], ["CD"]]


def test_read_conll_path_and_pathlike(tmp_path: Path):
    f = tmp_path / "x.conll"
    f.write_text("\r\n".join(CONLL) + "\r\n", encoding="utf-8")  # Windows line ends too
    assert read_conll(f, tag_column=2) == (WORDS, TAGS)
    assert read_conll(str(f), tag_column=2) == (WORDS, TAGS)


def test_read_conll_converts_schemes():
    iob1 = ["Peter I-PER", "Blackburn I-PER", "Jane B-PER", "", "in O", "Paris I-LOC"]
    assert read_conll(iob1) == ([["Peter", "Blackburn", "Jane"], ["in", "Paris"]],
                                [["B-PER", "I-PER", "B-PER"], ["O", "B-LOC"]])
    bioes = ["Peter B-PER", "Blackburn E-PER", "in O", "Paris S-LOC"]
    assert read_conll(bioes)[1] == [["B-PER", "I-PER", "O", "B-LOC"]]
    assert read_conll(bioes, scheme="iobes")[1] == [["B-PER", "I-PER", "O", "B-LOC"]]


@pytest.mark.parametrize("lines, kwargs, match", [
    (["", "-DOCSTART- -X- O", "\t", "  "], {}, r"holds no sentence.*fix"),
    (["EU NNP B-ORG", "rejects VBZ"], {"tag_column": 2}, r"line 2 .*2 column.*tag_column=2 asks for column 2.*"
                                                         r"'rejects VBZ'.*fix"),
    (["EU NNP B-ORG", "rejects"], {}, r"line 2 .*1 column.*'rejects'.*fix: add the tag"),
    (["EU\tB-ORG", "x\tX-ORG"], {}, r"line 2 of the given lines.*'X-ORG' is not a BIO tag.*'O', 'B-<type>'.*"
                                   r"fix: convert with read_conll\(source, scheme='iob1' or 'bioes'\)"),
    (["EU\tS-ORG"], {"scheme": "bio"}, r"line 1 .*'S-ORG' is a BIOES tag.*"
                                       r"fix: convert with read_conll\(source, scheme='bioes'\)"),
    (["\tO"], {}, r"line 1 .*empty word.*fix"),
    (["EU O"], {"scheme": "iob2"}, r"scheme='iob2' is not a tagging scheme; valid: \['auto', 'bio'.*fix"),
])
def test_read_conll_errors(lines, kwargs, match):
    with pytest.raises(ValueError, match=match):
        read_conll(lines, **kwargs)


def test_read_conll_missing_file_and_bad_types(tmp_path: Path):
    with pytest.raises(ValueError, match=r"source=.*nope\.conll' is not a file; fix: pass the path.*splitlines"):
        read_conll(tmp_path / "nope.conll")
    with pytest.raises(TypeError, match=r"word_column='0' must be an int column index.*fix: pass e\.g\. word_column=0"):
        read_conll(CONLL, word_column="0")
    with pytest.raises(TypeError, match=r"source must be a path or an iterable of str lines; got int; fix"):
        read_conll(3)


# ---------------------------------------------------------------- schemes


def test_to_bio_exact():
    assert to_bio(IOB1, scheme="iob1") == IOB1_AS_BIO
    assert to_bio(IOB1) == IOB1_AS_BIO  # auto-detected
    assert to_bio(BIOES, scheme="bioes") == BIOES_AS_BIO
    assert to_bio(BIOES, scheme="iobes") == BIOES_AS_BIO
    assert to_bio(BIOES) == BIOES_AS_BIO
    assert to_bio(TAGS, scheme="bio") == TAGS and to_bio(TAGS) == TAGS
    original = [list(s) for s in IOB1]
    to_bio(IOB1, scheme="iob1")
    assert IOB1 == original  # the input is never modified
    with pytest.raises(ValueError, match=r"scheme='bilou' is not a tagging scheme; valid: \['auto', 'bio', 'iob1', "
                                         r"'bioes', 'iobes'\]; fix"):
        to_bio(TAGS, scheme="bilou")


@pytest.mark.parametrize("tags, scheme", [
    (IOB1, "iob1"),
    (BIOES, "bioes"),
    (TAGS, "bio"),
    ([["O", "O"]], "bio"),
    ([["O", "I-PER", "O", "B-LOC"]], "bio"),  # an I- start next to a B- after O: BIO with a slip, not IOB1
    ([["I-PER", "B-PER"]], "iob1"),
    ([["B-PER", "I-PER", "S-LOC"]], "bioes"),
])
def test_detect_scheme(tags, scheme):
    assert detect_scheme(tags) == scheme


def test_check_bio():
    check_bio(TAGS)
    check_bio([["O", "I-PER", "I-PER"]])  # I- after O: seqeval starts an entity, so it is accepted
    check_bio([[]])
    with pytest.raises(ValueError, match=r"y\[0\]\[1\]='B-' has an empty entity type; valid: 'O', 'B-<type>', "
                                         r"'I-<type>'; fix"):
        check_bio([["O", "B-"]])
    with pytest.raises(ValueError, match=r"labels\[1\]\[0\]='PER' is not a BIO tag.*fix: convert with to_bio"):
        check_bio([["O"], ["PER"]], param="labels")
    with pytest.raises(ValueError, match=r"y\[0\]\[0\]='E-PER' is a BIOES tag.*"
                                         r"fix: convert with to_bio\(tags, scheme='bioes'\)"):
        check_bio([["E-PER"]])
    with pytest.raises(TypeError, match=r"y\[0\]='O' is a str, not a list of tags; fix: .*\[s\]"):
        check_bio(["O", "B-PER"])
    with pytest.raises(TypeError, match=r"y\[0\]\[1\]=3 is a int, not a str; fix: .*map label ids to names"):
        check_bio([["O", 3]])


def test_repair_bio():
    tags = ["O", "I-PER", "I-PER", "I-LOC", "B-LOC", "I-LOC", "O", "I-geo-loc"]
    assert repair_bio(tags) == ["O", "B-PER", "I-PER", "B-LOC", "B-LOC", "I-LOC", "O", "B-geo-loc"]
    assert tags[1] == "I-PER"  # pure
    assert repair_bio(["I-X"]) == ["B-X"]
    assert repair_bio([]) == []
    assert repair_bio(("B-X", "I-X")) == ["B-X", "I-X"]
    with pytest.raises(ValueError, match=r"tags\[1\]='E-PER' is a BIOES tag.*"
                                         r"fix: convert with to_bio\(tags, scheme='bioes'\)"):
        repair_bio(["B-PER", "E-PER"])


def test_tag_spans_exact():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "O", "B-geo-loc"]
    assert tag_spans(tags) == [(0, 2, "PER"), (3, 4, "LOC"), (4, 5, "LOC"), (5, 6, "ORG"), (7, 8, "geo-loc")]
    assert tag_spans(["O", "O"]) == []
    assert tag_spans(["I-A", "I-A", "I-A"]) == [(0, 3, "A")]


def test_tag_spans_matches_seqeval_on_random_tags():
    rng = random.Random(0)
    alphabet = ["O", "B-A", "I-A", "B-B", "I-B", "I-geo-loc"]
    for _ in range(300):
        tags = [rng.choice(alphabet) for _ in range(rng.randint(1, 9))]
        expected = [(start, end + 1, type_) for type_, start, end in get_entities(tags)]
        assert tag_spans(tags) == expected, tags


# ---------------------------------------------------------------- raw text


def test_split_words_tweet_exact():
    text = "@paulwalk loves #NYC!! See https://t.co/ab12, ok? it's 3pm :)"
    words = split_words(text)
    assert words == [
        ("@paulwalk", 0, 9), ("loves", 10, 15), ("#NYC", 16, 20), ("!", 20, 21), ("!", 21, 22), ("See", 23, 26),
        ("https://t.co/ab12,", 27, 45),  # URLs keep trailing punctuation, as WNUT-16's own tokens do
        ("ok", 46, 48), ("?", 48, 49), ("it", 50, 52), ("'", 52, 53), ("s", 53, 54), ("3pm", 55, 58),
        (":", 59, 60), (")", 60, 61),
    ]
    assert all(text[s:e] == w for w, s, e in words)
    assert split_words("") == [] and split_words("  \t ") == []
    with pytest.raises(TypeError, match=r"text must be a str; got list; fix"):
        split_words(["a", "b"])


# ---------------------------------------------------------------- scores


def test_ner_scores_hand_computed():
    y_true = [["B-PER", "I-PER", "O", "B-LOC"]]
    y_pred = [["B-PER", "I-PER", "O", "B-ORG"]]  # PER right, LOC missed, ORG spurious
    s = ner_scores(y_true, y_pred)
    assert (s["precision"], s["recall"], s["f1"], s["n_entities"]) == (0.5, 0.5, 0.5, 2)
    assert s["per_type"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ORG": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
        "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }
    assert entity_f1(y_true, y_pred) == 0.5


def test_ner_scores_three_sentences():
    y_true = [["B-PER", "O"], ["B-LOC", "I-LOC", "O"], ["O"]]
    y_pred = [["B-PER", "O"], ["B-LOC", "O", "B-LOC"], ["B-PER"]]  # 1 of 4 predictions right, 1 of 2 gold found
    s = ner_scores(y_true, y_pred)
    assert s["precision"] == 0.25 and s["recall"] == 0.5 and s["f1"] == pytest.approx(1 / 3)
    assert s["per_type"]["PER"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert s["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_ner_scores_lenient_i_start_and_no_entities():
    assert entity_f1([["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]]) == 1.0  # seqeval's default reading
    s = ner_scores([["O"]], [["O"]])
    assert s == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "n_entities": 0, "per_type": {}}
    assert ner_scores((("B-A",),), np.array([["B-A"]], dtype=object))["f1"] == 1.0  # tuples and arrays accepted


def test_ner_scores_errors():
    with pytest.raises(ValueError, match=r"sentence 1: y_true\[1\] has 1 tags but y_pred\[1\] has 2; fix: predict "
                                         r"exactly one tag per word"):
        ner_scores([["O", "O"], ["O"]], [["O", "O"], ["O", "O"]])
    with pytest.raises(ValueError, match=r"y_true has 2 sentences but y_pred has 1; fix"):
        ner_scores([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match=r"y_pred\[0\]\[0\]='PER' is not a BIO tag.*fix"):
        ner_scores([["O"]], [["PER"]])


# ---------------------------------------------------------------- words and tags


def test_check_words_tags_accepts_and_converts():
    X, y = check_words_tags((("EU", "rejects"), ("hi",)), np.array([["B-ORG", "O"], ["O"]], dtype=object))
    assert (X, y) == ([["EU", "rejects"], ["hi"]], [["B-ORG", "O"], ["O"]])
    assert type(X) is list and type(X[0]) is list and type(y[1]) is list
    assert check_words_tags(WORDS, None) == (WORDS, None)
    assert check_words_tags([np.array(["a", "b"])])[0] == [["a", "b"]]
    assert type(check_words_tags([np.array(["a"])])[0][0][0]) is str  # not numpy.str_


@pytest.mark.parametrize("X, y, exc, match", [
    ([["a", "b"], ["c"]], [["O", "O"], ["O", "O"]], ValueError,
     r"sentence 1: words\[1\] has 1 words but labels\[1\] has 2 tags; fix: give exactly one tag per word"),
    ([["a"], ["b"]], [["O"]], ValueError, r"words has 2 sentences but labels has 1; fix: give one tag list"),
    ([["a"], []], None, ValueError, r"words\[1\] is an empty sentence; fix"),
    ([["a", "  "]], None, ValueError, r"words\[0\]\[1\]='  ' is an empty or whitespace-only word; fix: remove it"),
    ([], None, ValueError, r"words has no sentence; fix"),
    (["EU rejects", "hi"], None, TypeError, r"words\[0\]='EU rejects' is a str, not a list of words; fix"),
    ("EU rejects", None, TypeError, r"words must be a list of sentences, each a list of words; got str; fix"),
    ([["a", 1]], None, TypeError, r"words\[0\]\[1\]=1 is a int, not a str; fix"),
    ([["a"]], [[0]], TypeError, r"labels\[0\]\[0\]=0 is a int, not a str; fix: .*map label ids to names"),
])
def test_check_words_tags_errors(X, y, exc, match):
    with pytest.raises(exc, match=match):
        check_words_tags(X, y, param_X="words", param_y="labels")


# ---------------------------------------------------------------- WNUT-16 and splits

WNUT_TYPES = {"person": 449, "geo-loc": 276, "other": 225, "company": 171, "facility": 104, "product": 97,
              "musicartist": 55, "sportsteam": 51, "tvshow": 34, "movie": 34}


@pytest.fixture(scope="module")
def wnut():
    return load_wnut16()


def test_load_wnut16_counts(wnut):
    X, y = wnut
    assert len(X) == len(y) == 2394
    assert sum(map(len, X)) == 46469 and [len(s) for s in X] == [len(s) for s in y]
    spans = [s for tags in y for s in tag_spans(tags)]
    assert len(spans) == 1496
    assert {t: sum(s[2] == t for s in spans) for t in WNUT_TYPES} == WNUT_TYPES  # 10 types, exact entity counts
    assert {s[2] for s in spans} == set(WNUT_TYPES)
    assert detect_scheme(y) == "bio" and repair_bio(y[0]) == y[0]
    assert X[0][:3] == ["@paulwalk", "It", "'s"]
    assert list(zip(X[0], y[0]))[14:17] == [("Empire", "B-facility"), ("State", "I-facility"),
                                            ("Building", "I-facility")]
    check_words_tags(X, y)
    check_bio(y)


def test_split_sentences_wnut(wnut):
    _, y = wnut
    train, test = split_sentences(y, test_size=0.2, seed=0)
    assert (len(train), len(test)) == (1915, 479)
    assert set(train).isdisjoint(test) and len(set(train) | set(test)) == 2394
    assert list(train) == sorted(train) and train.dtype.kind == "i"
    for part in (train, test):
        assert {s[2] for i in part for s in tag_spans(y[i])} == set(WNUT_TYPES)
    again, _ = split_sentences(y, test_size=0.2, seed=0)
    other, _ = split_sentences(y, test_size=0.2, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_split_sentences_small_and_errors():
    tags = [["B-A"]] * 6 + [["O"]] * 6 + [["B-B", "B-A"]] * 2
    train, test = split_sentences(tags, test_size=0.5, seed=0)
    assert len(test) == 7 and len(train) == 7
    for part in (train, test):
        assert {"A", "B"} <= {s[2] for i in part for s in tag_spans(tags[i])}
    with pytest.raises(ValueError, match=r"entity type\(s\) \['B'\] occur in a single sentence.*fix"):
        split_sentences([["B-A"], ["B-A"], ["B-B"], ["O"]])
    with pytest.raises(ValueError, match=r"test_size=1\.5 must be a fraction in \(0, 1\).*fix: pass e\.g\. "
                                         r"test_size=0\.2"):
        split_sentences(tags, test_size=1.5)
