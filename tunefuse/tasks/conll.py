"""CoNLL files, BIO tags, word splitting and entity-level scores for named-entity recognition (no torch here).

Everything works on words and their tags, one list per sentence: ``X = [["Empire", "State", ...], ...]``,
``y = [["B-facility", "I-facility", ...], ...]``. Files in IOB1 or BIOES are converted to BIO (IOB2) on reading, so the
rest of tunefuse only ever sees BIO, and scores follow seqeval's default (non-strict) reading.

>>> X, y = read_conll(["Empire\\tB-facility", "State\\tI-facility", "\\t", "hi\\tO"])
>>> X, y
([['Empire', 'State'], ['hi']], [['B-facility', 'I-facility'], ['O']])
>>> tag_spans(y[0])
[(0, 2, 'facility')]
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

SCHEMES = ("auto", "bio", "iob1", "bioes", "iobes")  # "iobes" is another name for "bioes"
_BIO_FORMS = "'O', 'B-<type>', 'I-<type>'"
# Runs of word characters, or one punctuation character at a time; @user, #tag and URLs stay whole because tweets use
# them as words. A URL keeps its trailing punctuation: WNUT-16 itself tokenises "http://bit.ly/x'" as one word.
_WORD_RE = re.compile(r"https?://\S+|[@#]\w+|\w+|[^\w\s]")


# ---------------------------------------------------------------- input checks shared by every function


def _sentences(tags: Any, param: str, what: str = "tags") -> list[list[str]]:
    """``tags`` as a list of lists of str (tuples and numpy object arrays accepted), or a one-line TypeError."""
    if isinstance(tags, (str, bytes)) or not isinstance(tags, (list, tuple, np.ndarray)):
        raise TypeError(f"{param} must be a list of sentences, each a list of {what}; got {type(tags).__name__}; "
                        f"fix: pass e.g. [['...', '...'], ['...']]")
    out = []
    for i, sent in enumerate(tags):
        if isinstance(sent, (str, bytes)) or not isinstance(sent, (list, tuple, np.ndarray)):
            raise TypeError(f"{param}[{i}]={sent!r} is a {type(sent).__name__}, not a list of {what}; fix: pass one "
                            f"list per sentence (a single sentence s goes in as [s])")
        for j, t in enumerate(sent):
            if not isinstance(t, str):
                raise TypeError(f"{param}[{i}][{j}]={t!r} is a {type(t).__name__}, not a str; fix: pass {what} as "
                                f"strings (map label ids to names first)")
        out.append([str(t) for t in sent])  # str() turns numpy.str_ into plain str
    return out


def _bio_problem(tag: str) -> str | None:
    """Why ``tag`` is not a BIO tag, or None when it is one."""
    if tag == "O":
        return None
    if tag[:2] in ("B-", "I-"):
        return None if tag[2:].strip() else "has an empty entity type"
    if tag[:2] in ("S-", "E-"):
        return "is a BIOES tag"
    return "is not a BIO tag"


def _bio_error(where: str, tag: str, problem: str, how: str = "to_bio(tags, scheme=...)") -> ValueError:
    scheme = "'bioes'" if problem == "is a BIOES tag" else "'iob1' or 'bioes'"
    return ValueError(f"{where}={tag!r} {problem}; valid: {_BIO_FORMS}; fix: convert with {how.replace('...', scheme)}"
                      f", or correct the labels")


def _first_bad_tag(tags: list[list[str]]) -> tuple[int, int, str, str] | None:
    for i, sent in enumerate(tags):
        for j, t in enumerate(sent):
            problem = _bio_problem(t)
            if problem:
                return i, j, t, problem
    return None


def _check_sentence(tags: Any, param: str) -> list[str]:
    """One sentence of BIO tags as a list of str; errors name ``param[j]``."""
    if isinstance(tags, (str, bytes)) or not isinstance(tags, (list, tuple, np.ndarray)):
        raise TypeError(f"{param} must be one sentence's tags as a list of str; got {type(tags).__name__}; "
                        f"fix: pass e.g. ['B-person', 'I-person', 'O']")
    for j, t in enumerate(tags):
        if not isinstance(t, str):
            raise TypeError(f"{param}[{j}]={t!r} is a {type(t).__name__}, not a str; fix: pass tags as strings "
                            f"(map label ids to names first)")
        problem = _bio_problem(t)
        if problem:
            raise _bio_error(f"{param}[{j}]", t, problem)
    return [str(t) for t in tags]


def check_bio(tags: Any, param: str = "y") -> None:
    """Raise unless every tag is 'O', 'B-<type>' or 'I-<type>' (an I- after O is allowed: seqeval starts an entity)."""
    bad = _first_bad_tag(_sentences(tags, param))
    if bad:
        i, j, t, problem = bad
        raise _bio_error(f"{param}[{i}][{j}]", t, problem)


def check_words_tags(X: Any, y: Any = None, param_X: str = "X", param_y: str = "y"
                     ) -> tuple[list[list[str]], list[list[str]] | None]:
    """Validate words ``X`` and optional tags ``y`` (one list per sentence, same lengths); return them as lists.

    Tags are only checked to be strings here, so any tag set works; call ``check_bio`` for NER labels.
    """
    X = _sentences(X, param_X, "words")
    if not X:
        raise ValueError(f"{param_X} has no sentence; fix: pass at least one sentence (a list of words)")
    for i, sent in enumerate(X):
        if not sent:
            raise ValueError(f"{param_X}[{i}] is an empty sentence; fix: drop empty sentences or give them words")
        for j, w in enumerate(sent):
            if not w.strip():  # a blank word would vanish in the tokenizer and shift every later tag by one
                raise ValueError(f"{param_X}[{i}][{j}]={w!r} is an empty or whitespace-only word; fix: remove it "
                                 f"(and its tag), or split raw text with split_words")
    if y is None:
        return X, None
    y = _sentences(y, param_y)
    if len(y) != len(X):
        raise ValueError(f"{param_X} has {len(X)} sentences but {param_y} has {len(y)}; fix: give one tag list per "
                         f"sentence")
    for i, (words, tags) in enumerate(zip(X, y)):
        if len(words) != len(tags):
            raise ValueError(f"sentence {i}: {param_X}[{i}] has {len(words)} words but {param_y}[{i}] has "
                             f"{len(tags)} tags; fix: give exactly one tag per word")
    return X, y


# ---------------------------------------------------------------- tagging schemes


def _split(tag: str) -> tuple[str, str]:
    """('B', 'person') for 'B-person', ('O', '') for 'O'."""
    return (tag, "") if tag == "O" else (tag[:1], tag[2:])


def detect_scheme(tags: Any) -> str:
    """Guess the tagging scheme of ``tags``: 'bioes', 'iob1' or 'bio'.

    Heuristic: any S- or E- tag means 'bioes'. 'iob1' when some I-X opens an entity (after O, another type, or at
    sentence start) and every B-X sits right after an X entity, since IOB1 only uses B- to split two adjacent entities
    of the same type. Anything else, including all-'O' data, is 'bio'.
    """
    tags = _sentences(tags, "tags")
    if any(t[:2] in ("S-", "E-") for sent in tags for t in sent):
        return "bioes"
    i_opens, b_only_between = False, True
    for sent in tags:
        prev_type = ""  # "" stands for O and for the sentence start
        for t in sent:
            prefix, type_ = _split(t)
            if prefix == "I" and type_ != prev_type:
                i_opens = True
            elif prefix == "B" and type_ != prev_type:
                b_only_between = False
            prev_type = type_
    return "iob1" if i_opens and b_only_between else "bio"


def to_bio(tags: Any, scheme: str = "auto") -> list[list[str]]:
    """Convert IOB1 or BIOES tags to BIO (IOB2); a new list, the input is left as is.

    IOB1: an I-X that opens an entity becomes B-X. BIOES: S-X becomes B-X and E-X becomes I-X. 'auto' uses
    ``detect_scheme``.

    >>> to_bio([["I-person", "I-person", "B-person", "O"]], scheme="iob1")
    [['B-person', 'I-person', 'B-person', 'O']]
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not a tagging scheme; valid: {list(SCHEMES)}; fix: pick one, or "
                         f"'auto' to detect it")
    tags = _sentences(tags, "tags")
    if scheme == "auto":
        scheme = detect_scheme(tags)
    if scheme in ("bioes", "iobes"):
        swap = {"S-": "B-", "E-": "I-"}
        return [[swap[t[:2]] + t[2:] if t[:2] in swap else t for t in sent] for sent in tags]
    if scheme == "iob1":
        out = []
        for sent in tags:
            prev_type, new = "", []
            for t in sent:
                prefix, type_ = _split(t)
                new.append("B-" + type_ if prefix == "I" and type_ != prev_type else t)
                prev_type = type_
            out.append(new)
        return out
    return [list(sent) for sent in tags]


def repair_bio(tags: list[str]) -> list[str]:
    """Turn every I-X that does not continue an X entity into B-X (after a per-word argmax); a new list.

    >>> repair_bio(["O", "I-person", "I-person", "I-geo-loc"])
    ['O', 'B-person', 'I-person', 'B-geo-loc']
    """
    prev_type, out = "", []
    for t in _check_sentence(tags, "tags"):
        prefix, type_ = _split(t)
        out.append("B-" + type_ if prefix == "I" and type_ != prev_type else t)
        prev_type = type_
    return out


def tag_spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """Entities of one sentence as ``(first word, last word + 1, type)``, read as seqeval does by default.

    >>> tag_spans(["B-person", "I-person", "O", "I-geo-loc"])
    [(0, 2, 'person'), (3, 4, 'geo-loc')]
    """
    spans: list[tuple[int, int, str]] = []
    for j, t in enumerate(repair_bio(tags)):
        prefix, type_ = _split(t)
        if prefix == "B":
            spans.append((j, j + 1, type_))
        elif prefix == "I":  # after repair, an I- always continues the span just before it
            start, _, _ = spans[-1]
            spans[-1] = (start, j + 1, type_)
    return spans


# ---------------------------------------------------------------- files and raw text


def read_conll(source: str | os.PathLike | Iterable[str], *, word_column: int = 0, tag_column: int = -1,
               scheme: str = "auto") -> tuple[list[list[str]], list[list[str]]]:
    """Read a CoNLL-style file (a path, or an iterable of lines) into words and BIO tags, one list per sentence.

    Columns split on tabs when the line has one, else on whitespace. Blank or whitespace-only lines and
    ``-DOCSTART-`` lines separate sentences. Tags are converted to BIO from ``scheme`` (see ``to_bio``).

    >>> read_conll(["-DOCSTART- -X- O O", "", "EU NNP B-ORG", "rejects VBZ O"])
    ([['EU', 'rejects']], [['B-ORG', 'O']])
    """
    for name, col in (("word_column", word_column), ("tag_column", tag_column)):
        if isinstance(col, bool) or not isinstance(col, int):
            raise TypeError(f"{name}={col!r} must be an int column index (negative counts from the end); fix: pass "
                            f"e.g. {name}={0 if name == 'word_column' else -1}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not a tagging scheme; valid: {list(SCHEMES)}; fix: pick one, or "
                         f"'auto' to detect it")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ValueError(f"source={path!r} is not a file; fix: pass the path of a CoNLL file, or its lines "
                             f"(e.g. text.splitlines())")
        name = path
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    elif isinstance(source, bytes) or not isinstance(source, Iterable):
        raise TypeError(f"source must be a path or an iterable of str lines; got {type(source).__name__}; fix: pass "
                        f"a file path, or text.splitlines()")
    else:
        name, lines = "the given lines", list(source)

    words: list[list[str]] = []
    tags: list[list[str]] = []
    line_of: list[list[int]] = []  # line number of every tag, so a bad tag can be reported where it is in the file
    new_sentence = True
    for n, line in enumerate(lines, start=1):
        if not isinstance(line, str):
            raise TypeError(f"line {n} of {name} is a {type(line).__name__}, not a str; fix: decode the lines first")
        line = line.rstrip("\r\n")
        if not line.strip() or line.startswith("-DOCSTART-"):  # WNUT-16 separates sentences with a lone tab
            new_sentence = True
            continue
        cols = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
        if len(cols) < 2:  # otherwise word_column=0 and tag_column=-1 both read the lone word, as word and as tag
            raise ValueError(f"line {n} of {name} has 1 column but a word and a tag are needed (word_column="
                             f"{word_column}, tag_column={tag_column}): {line!r}; fix: add the tag, or end the "
                             f"sentence with a blank line")
        for param, col in (("word_column", word_column), ("tag_column", tag_column)):
            if not -len(cols) <= col < len(cols):
                raise ValueError(f"line {n} of {name} has {len(cols)} column(s) but {param}={col} asks for column "
                                 f"{col}: {line!r}; fix: correct the line, or pass the right {param}")
        if not cols[word_column]:
            raise ValueError(f"line {n} of {name} has an empty word in column {word_column}: {line!r}; fix: correct "
                             f"the line, or pass the right word_column")
        if new_sentence:
            words.append([])
            tags.append([])
            line_of.append([])
            new_sentence = False
        words[-1].append(cols[word_column])
        tags[-1].append(cols[tag_column])
        line_of[-1].append(n)
    if not words:
        raise ValueError(f"{name} holds no sentence (only blank or -DOCSTART- lines); fix: pass a non-empty CoNLL "
                         f"file")

    tags = to_bio(tags, scheme)
    bad = _first_bad_tag(tags)
    if bad:
        i, j, t, problem = bad
        raise _bio_error(f"line {line_of[i][j]} of {name}: tag (sentence {i}, word {j})", t, problem,
                         how="read_conll(source, scheme=...)")
    return words, tags


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Split raw text into ``(word, start, end)`` with character offsets (``text[start:end] == word``).

    Words are runs of letters/digits/underscores or single punctuation marks; ``@user``, ``#tag`` and URLs stay whole.

    >>> split_words("@bob: see #NYC!")
    [('@bob', 0, 4), (':', 4, 5), ('see', 6, 9), ('#NYC', 10, 14), ('!', 14, 15)]
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}; fix: pass one text at a time as a string")
    return [(m.group(), m.start(), m.end()) for m in _WORD_RE.finditer(text)]


# ---------------------------------------------------------------- scores and splits


def _check_pairs(y_true: Any, y_pred: Any) -> tuple[list[list[str]], list[list[str]]]:
    y_true, y_pred = _sentences(y_true, "y_true"), _sentences(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} sentences but y_pred has {len(y_pred)}; fix: predict one tag "
                         f"list per sentence")
    for i, (t, p) in enumerate(zip(y_true, y_pred)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: y_true[{i}] has {len(t)} tags but y_pred[{i}] has {len(p)}; fix: "
                             f"predict exactly one tag per word")
    check_bio(y_true, "y_true")
    check_bio(y_pred, "y_pred")
    return y_true, y_pred


def ner_scores(y_true: Any, y_pred: Any) -> dict:
    """Entity-level micro precision, recall and F1 (0-1) with seqeval's default mode, and the same per entity type.

    ``n_entities`` counts the gold entities; a type's ``support`` counts its gold entities.

    >>> ner_scores([["B-person", "O"]], [["B-person", "O"]])["f1"]
    1.0
    """
    # imported here: only scoring needs seqeval
    from seqeval.metrics.sequence_labeling import get_entities, precision_recall_fscore_support

    y_true, y_pred = _check_pairs(y_true, y_pred)
    # zero_division=0: a type never predicted (or never present) scores 0 instead of warning on every call
    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    pt, rt, ft, nt = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    # seqeval orders its per-type arrays by sorted type name over gold and predicted entities
    types = sorted({e[0] for e in get_entities(y_true)} | {e[0] for e in get_entities(y_pred)})
    per_type = {k: {"precision": float(a), "recall": float(b), "f1": float(c), "support": int(d)}
                for k, a, b, c, d in zip(types, pt, rt, ft, nt)}
    return {"precision": float(p), "recall": float(r), "f1": float(f), "n_entities": int(n), "per_type": per_type}


def entity_f1(y_true: Any, y_pred: Any) -> float:
    """Entity-level micro F1 (0-1), seqeval's default mode."""
    return ner_scores(y_true, y_pred)["f1"]


def split_sentences(tags: Any, test_size: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test sentence indices, with every entity type in both parts.

    Stratifies on each sentence's rarest entity type ('O' when it has none), so rare types are not all drawn into one
    part; strata of a single sentence are pooled. Raises if some type still ends up on one side only.
    """
    from sklearn.model_selection import train_test_split

    tags = _sentences(tags, "tags")
    check_bio(tags, "tags")
    n = len(tags)
    is_int = isinstance(test_size, int) and not isinstance(test_size, bool)
    if not ((isinstance(test_size, float) and 0 < test_size < 1) or (is_int and 1 <= test_size < n)):
        raise ValueError(f"test_size={test_size!r} must be a fraction in (0, 1) or a sentence count in [1, {n - 1}]; "
                         f"fix: pass e.g. test_size=0.2")
    types = [{s[2] for s in tag_spans(sent)} for sent in tags]
    freq = Counter(t for ts in types for t in ts)  # sentences holding each type
    too_rare = sorted(t for t, c in freq.items() if c < 2)
    if too_rare:
        raise ValueError(f"entity type(s) {too_rare} occur in a single sentence, so they cannot be in both parts; "
                         f"fix: add sentences with them, or map them to another type or 'O'")
    # the rarest type of a sentence (ties broken by name, so the split does not depend on set order)
    strata = [min(ts, key=lambda t: (freq[t], t)) if ts else "O" for ts in types]
    counts = Counter(strata)
    pooled = ["<rare>" if counts[s] < 2 else s for s in strata]  # sklearn needs >= 2 sentences per stratum
    if Counter(pooled)["<rare>"] == 1:  # one pooled sentence is still a stratum of one: join the largest stratum
        pooled = [counts.most_common(1)[0][0] if s == "<rare>" else s for s in pooled]
    try:
        train, test = train_test_split(np.arange(n), test_size=test_size, random_state=seed, stratify=pooled)
    except ValueError as e:
        raise ValueError(f"cannot split {n} sentences into strata of {len(set(pooled))} rarest types with "
                         f"test_size={test_size!r} ({e}); fix: use a larger test_size or more sentences") from e
    in_train = {t for i in train for t in types[i]}
    in_test = {t for i in test for t in types[i]}
    missing = sorted((set(freq) - in_train) | (set(freq) - in_test))
    if missing:
        raise ValueError(f"with seed={seed} and test_size={test_size!r}, entity type(s) {missing} land in only one "
                         f"part; fix: try another seed, a larger test_size, or more sentences with those types")
    return np.sort(train), np.sort(test)
