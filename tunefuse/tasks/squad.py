"""Extractive question answering (SQuAD v1.1 / v2.0): read, split, window, decode, fuse and score.

Everything here is numpy and a Hugging Face *fast* tokenizer: no model. A model's start/end logits per window go
through :func:`window_spans` and :func:`example_candidates` to calibrated span probabilities, members' candidates fuse
with :func:`fuse_candidates`, and :func:`decide` picks the answer text that :func:`squad_scores` grades exactly as the
official evaluation scripts do.
"""
from __future__ import annotations

import collections
import json
import os
import re
import string
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

Span = tuple[int, int, float]  # (char start, char end exclusive, score or probability)
# (start_logits, end_logits, offsets) of one window, as encode_windows and a model give them
Window = tuple[Sequence[float], Sequence[float], Sequence[tuple[int, int] | None]]


@dataclass(frozen=True)
class QAExample:
    """One question about one context; ``answers`` are (text, char start) gold answers, () when unanswerable."""

    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    title: str = ""
    is_impossible: bool = False


# ---------------------------------------------------------------------------------------------------------- reading

def read_squad(source: str | os.PathLike | dict) -> list[QAExample]:
    """Read a SQuAD v1.1 or v2.0 file (or its already parsed dict) into one :class:`QAExample` per question.

    >>> qa = {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}
    >>> doc = {"data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [qa]}]}]}
    >>> read_squad(doc)[0].answers
    (('France', 12),)
    """
    if isinstance(source, dict):
        doc, where = source, "the SQuAD dict"
    elif isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        if not os.path.isfile(where):
            raise ValueError(f"read_squad: source {where!r} is not a file; fix: pass the path of a SQuAD .json file "
                             "or the parsed dict")
        try:
            with open(where, encoding="utf-8") as f:
                doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"read_squad: {where!r} is not valid JSON ({e}); fix: pass a SQuAD v1.1/v2.0 .json "
                             "file") from e
    else:
        raise TypeError(f"read_squad: source must be a path or a dict; got {type(source).__name__}; fix: pass the "
                        "path of a SQuAD .json file or json.load's result")
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list) or not data:
        raise ValueError(f"read_squad: {where} has no non-empty 'data' list of articles (top-level keys: "
                         f"{sorted(doc) if isinstance(doc, dict) else type(doc).__name__}); fix: pass a SQuAD file "
                         "of the form {'data': [{'title': ..., 'paragraphs': [...]}]}")
    examples: list[QAExample] = []
    seen: dict[str, str] = {}  # id -> location, to name both sides of a duplicate
    for i, article in enumerate(data):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise ValueError(f"read_squad: data[{i}] has no 'paragraphs' list; fix: each article must be "
                             "{'title': ..., 'paragraphs': [{'context': ..., 'qas': [...]}]}")
        title = str(article.get("title", ""))
        for j, paragraph in enumerate(article["paragraphs"]):
            loc = f"data[{i}].paragraphs[{j}]"
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(context, str):
                raise ValueError(f"read_squad: {loc} has no 'context' string; fix: give each paragraph a 'context' "
                                 "and a 'qas' list")
            qas = paragraph.get("qas")
            if not isinstance(qas, list) or not qas:
                raise ValueError(f"read_squad: {loc} is a context with no question (qas={qas!r}); fix: add at least "
                                 "one question to its 'qas' list or drop the paragraph")
            for k, qa in enumerate(qas):
                example = _read_question(qa, f"{loc}.qas[{k}]", context, title)
                if example.id in seen:
                    raise ValueError(f"read_squad: {loc}.qas[{k}] repeats id {example.id!r} of {seen[example.id]}; "
                                     "fix: give every question a unique id")
                seen[example.id] = f"{loc}.qas[{k}]"
                examples.append(example)
    if not examples:
        raise ValueError(f"read_squad: {where} holds no question at all ({len(data)} articles, none with a "
                         "paragraph); fix: pass a file with at least one paragraph and question")
    return examples


def _read_question(qa: Any, loc: str, context: str, title: str) -> QAExample:
    """Validate one ``qas`` entry at ``loc``; answer offsets must point at the answer text."""
    if not isinstance(qa, dict):
        raise ValueError(f"read_squad: {loc} is a {type(qa).__name__}, not a question dict; fix: use "
                         "{'id': ..., 'question': ..., 'answers': [...]}")
    qid = qa.get("id")
    if not isinstance(qid, (str, int)) or isinstance(qid, bool) or str(qid) == "":
        raise ValueError(f"read_squad: {loc} has id={qid!r}; fix: give the question a non-empty string id")
    qid = str(qid)
    question = qa.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"read_squad: {loc} (id={qid!r}) has an empty question text ({question!r}); fix: write "
                         "the question or drop the entry")
    is_impossible = qa.get("is_impossible", False)
    if not isinstance(is_impossible, bool):
        raise ValueError(f"read_squad: {loc} (id={qid!r}) has is_impossible={is_impossible!r}; fix: use true or "
                         "false")
    if is_impossible:  # v2.0: 'answers' is [] and 'plausible_answers' are distractors, not gold
        return QAExample(qid, question, context, (), title, True)
    raw = qa.get("answers")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"read_squad: {loc} (id={qid!r}) is answerable but has no answers (answers={raw!r}); fix: "
                         "add {'text': ..., 'answer_start': ...} or set \"is_impossible\": true (SQuAD v2.0)")
    answers = []
    for a, answer in enumerate(raw):
        text = answer.get("text") if isinstance(answer, dict) else None
        start = answer.get("answer_start") if isinstance(answer, dict) else None
        if not isinstance(text, str) or not text or not isinstance(start, int) or isinstance(start, bool):
            raise ValueError(f"read_squad: {loc}.answers[{a}] (id={qid!r}) is {answer!r}; fix: use "
                             "{'text': <non-empty string>, 'answer_start': <int char offset>}")
        found = context[start:start + len(text)] if start >= 0 else ""
        if found != text:
            raise ValueError(f"read_squad: {loc} (id={qid!r}): answer text {text!r} is not at answer_start={start} "
                             f"(the context has {found!r} there); fix: correct answer_start or the text")
        answers.append((text, start))
    return QAExample(qid, question, context, tuple(answers), title, False)


def split_by_article(examples: Sequence[QAExample], *, n_test: int, n_val: int,
                     seed: int = 0) -> tuple[list[QAExample], list[QAExample], list[QAExample]]:
    """Split into (train, val, test) by article title, so no paragraph's questions leak between parts.

    Titles are shuffled with ``seed``; the first ``n_test`` titles test, the next ``n_val`` validate, the rest train.
    Examples keep their order within each part.
    """
    for name, n in (("n_test", n_test), ("n_val", n_val)):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ValueError(f"split_by_article: {name} must be an int >= 0 (a number of articles); got {n!r}")
    titles = list(dict.fromkeys(e.title for e in examples))  # first-appearance order, so the seed alone decides
    if n_test + n_val >= len(titles):
        raise ValueError(f"split_by_article: n_test + n_val = {n_test + n_val} leaves no training article out of "
                         f"{len(titles)} titles; fix: ask for fewer test/val articles (at most {len(titles) - 1} "
                         "together)")
    order = [titles[t] for t in np.random.default_rng(seed).permutation(len(titles))]
    part = {t: 2 for t in order[:n_test]} | {t: 1 for t in order[n_test:n_test + n_val]}
    parts: tuple[list, list, list] = ([], [], [])
    for e in examples:
        parts[part.get(e.title, 0)].append(e)
    return parts


# ------------------------------------------------------------------------------------- official SQuAD evaluation

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (official SQuAD script)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1 of the normalised strings; two empty answers agree (v2.0 no-answer)."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    if not pred or not gold:  # either side is a no-answer: right only when both are
        return float(pred == gold)
    same = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def _gold_texts(example: QAExample) -> list[str]:
    # The v2.0 script drops golds that normalise to nothing; a question left without any is a no-answer: [""]
    return [t for t, _ in example.answers if normalize_answer(t)] or [""]


def _check_predictions(predictions: dict[str, str], examples: Sequence[QAExample], caller: str) -> None:
    if not isinstance(predictions, dict):
        raise TypeError(f"{caller}: predictions must be a dict {{question id: answer text}}; got "
                        f"{type(predictions).__name__}")
    bad = next((k for k, v in predictions.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise TypeError(f"{caller}: predictions[{bad!r}] is {predictions[bad]!r}; fix: predict a string ('' for "
                        "no answer)")
    if not examples:
        raise ValueError(f"{caller}: examples is empty; fix: pass the QAExamples the predictions answer")
    if not any(e.id in predictions for e in examples):
        raise ValueError(f"{caller}: none of the {len(predictions)} prediction ids matches one of the "
                         f"{len(examples)} question ids (e.g. prediction {next(iter(predictions), None)!r} vs "
                         f"question {examples[0].id!r}); fix: key predictions by QAExample.id")


def _per_question(predictions: dict[str, str], examples: Sequence[QAExample]) -> tuple[np.ndarray, np.ndarray]:
    """(exact, f1) per question, max over its gold answers; a missing prediction scores 0 (official script)."""
    exact, f1 = np.zeros(len(examples)), np.zeros(len(examples))
    for i, e in enumerate(examples):
        if e.id in predictions:
            golds = _gold_texts(e)
            exact[i] = max(exact_match_score(predictions[e.id], g) for g in golds)
            f1[i] = max(f1_score(predictions[e.id], g) for g in golds)
    return exact, f1


def squad_scores(predictions: dict[str, str], examples: Sequence[QAExample]) -> dict[str, float]:
    """Official SQuAD exact match and F1 on a 0-1 scale, plus has-answer / no-answer parts when v2.0 questions exist.

    Also ``n`` (questions) and ``missing`` (questions without a prediction, scored 0 like the official script).

    >>> ex = [QAExample("q", "Which tower?", "The Eiffel Tower is in Paris.", (("Eiffel Tower", 4),))]
    >>> squad_scores({"q": "the Eiffel tower"}, ex)["exact_match"]
    1.0
    """
    _check_predictions(predictions, examples, "squad_scores")
    exact, f1 = _per_question(predictions, examples)
    scores: dict[str, float] = {"exact_match": float(exact.mean()), "f1": float(f1.mean()), "n": len(examples),
                                "missing": sum(e.id not in predictions for e in examples)}
    no_ans = np.array([_gold_texts(e) == [""] for e in examples])
    if no_ans.any():
        if (~no_ans).any():
            scores |= {"has_ans_exact": float(exact[~no_ans].mean()), "has_ans_f1": float(f1[~no_ans].mean()),
                       "has_ans_n": int((~no_ans).sum())}
        scores |= {"no_ans_exact": float(exact[no_ans].mean()), "no_ans_f1": float(f1[no_ans].mean()),
                   "no_ans_n": int(no_ans.sum())}
    return scores


def per_question_f1(predictions: dict[str, str], examples: Sequence[QAExample]) -> np.ndarray:
    """F1 of each question in ``examples`` order (missing predictions 0), e.g. for bootstrap intervals."""
    _check_predictions(predictions, examples, "per_question_f1")
    return _per_question(predictions, examples)[1]


# ------------------------------------------------------------------------------------------------------- windows

def encode_windows(tokenizer: Any, examples: Sequence[QAExample], *, max_length: int = 256, stride: int = 64,
                   train: bool = True) -> dict[str, list]:
    """Tokenize (question, context) pairs into overlapping windows of at most ``max_length`` tokens.

    Returns lists with one entry per window: ``input_ids``, ``token_type_ids`` (when the tokenizer makes them),
    ``example`` (index into ``examples``), ``offsets`` ((start, end) char offsets into the context for context tokens,
    None for question and special tokens) and, with ``train``, ``start_positions``/``end_positions``: the token span of
    the first gold answer, or 0 (the CLS position) when the window does not hold all of it or there is none.
    ``stride`` is the number of context tokens that consecutive windows share.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"encode_windows: tokenizer {type(tokenizer).__name__} is not a fast tokenizer; fix: load it "
                        "with AutoTokenizer.from_pretrained(..., use_fast=True) (offsets need one)")
    if not isinstance(max_length, int) or not isinstance(stride, int) or stride < 0 or max_length <= stride:
        raise ValueError(f"encode_windows: need ints 0 <= stride < max_length; got max_length={max_length!r}, "
                         f"stride={stride!r}")
    if not examples:
        raise ValueError("encode_windows: examples is empty; fix: pass at least one QAExample")
    # Context length available per window: a question too long for it leaves no room, and the Rust tokenizer panics
    # (not raises) when the room is not larger than the stride, so check first.
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    q_lengths = [len(ids) for ids in tokenizer([e.question for e in examples], add_special_tokens=False)["input_ids"]]
    for i, n_q in enumerate(q_lengths):
        room = max_length - n_q - n_special
        if room <= stride:
            raise ValueError(f"encode_windows: examples[{i}] (id={examples[i].id!r}): the question takes {n_q} tokens "
                             f"(+{n_special} special), leaving {room} context tokens per window at "
                             f"max_length={max_length}, not more than stride={stride}; fix: raise max_length, lower "
                             "stride or shorten the question")
    # Left-padding tokenizers put the context first (Hugging Face run_qa.py's pad_on_right), so truncate the first
    pad_on_right = tokenizer.padding_side == "right"
    questions, contexts = [e.question for e in examples], [e.context for e in examples]
    enc = tokenizer(questions if pad_on_right else contexts, contexts if pad_on_right else questions,
                    truncation="only_second" if pad_on_right else "only_first", max_length=max_length,
                    stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    ctx_id = 1 if pad_on_right else 0
    out: dict[str, list] = {"input_ids": list(enc["input_ids"]), "example": list(enc["overflow_to_sample_mapping"]),
                            "offsets": []}
    if "token_type_ids" in enc:
        out["token_type_ids"] = list(enc["token_type_ids"])
    if train:
        out["start_positions"], out["end_positions"] = [], []
    for w, offsets in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(w)
        window = [tuple(o) if s == ctx_id else None for o, s in zip(offsets, seq)]
        out["offsets"].append(window)
        if train:
            start, end = _gold_tokens(examples[out["example"][w]], window)
            out["start_positions"].append(start)
            out["end_positions"].append(end)
    return out


def _gold_tokens(example: QAExample, offsets: list[tuple[int, int] | None]) -> tuple[int, int]:
    """Token (start, end) of the first gold answer when the window holds all of it, else (0, 0): the CLS target."""
    if not example.answers:
        return 0, 0
    text, start_char = example.answers[0]
    end_char = start_char + len(text)
    ctx = [t for t, o in enumerate(offsets) if o is not None]
    if not ctx or offsets[ctx[0]][0] > start_char or offsets[ctx[-1]][1] < end_char:
        return 0, 0
    # first token ending after the answer starts, last token starting before it ends
    start = next(t for t in ctx if offsets[t][1] > start_char)
    end = next(t for t in reversed(ctx) if offsets[t][0] < end_char)
    return start, end


# -------------------------------------------------------------------------------------------------- span decoding

def window_spans(start_logits: Sequence[float], end_logits: Sequence[float],
                 offsets: Sequence[tuple[int, int] | None], *, n_best: int = 20,
                 max_answer_length: int = 30) -> list[Span]:
    """Candidate spans of one window as (char start, char end exclusive, start_logit + end_logit), best first.

    The standard search: the top ``n_best`` start tokens times the top ``n_best`` end tokens, skipping tokens outside
    the context, ends before starts and spans longer than ``max_answer_length`` tokens.
    """
    start_logits, end_logits = np.asarray(start_logits, dtype=float), np.asarray(end_logits, dtype=float)
    if start_logits.ndim != 1 or start_logits.shape != end_logits.shape or len(start_logits) != len(offsets):
        raise ValueError(f"window_spans: start_logits {start_logits.shape}, end_logits {end_logits.shape} and "
                         f"offsets ({len(offsets)} tokens) must be 1-D of one length; fix: drop the padding positions "
                         "(logits[:len(offsets)] for right padding)")
    if n_best < 1 or max_answer_length < 1:
        raise ValueError(f"window_spans: n_best={n_best} and max_answer_length={max_answer_length} must be >= 1")
    starts = np.argsort(-start_logits, kind="stable")[:n_best]
    ends = np.argsort(-end_logits, kind="stable")[:n_best]
    spans = []
    for s in starts:
        for e in ends:
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            spans.append((int(offsets[s][0]), int(offsets[e][1]), float(start_logits[s] + end_logits[e])))
    return sorted(spans, key=lambda x: -x[2])


def example_candidates(windows_of_example: Sequence[Window], context: str, *, n_best: int = 20,
                       max_answer_length: int = 30, top_k: int = 20, allow_null: bool = False) -> dict:
    """One question's answer distribution: ``{"spans": [(char start, char end, prob), ...] best first, "null": p}``.

    A span's score is its best start + end logit over the windows; probabilities are a softmax over all candidate
    spans plus, with ``allow_null`` (SQuAD v2.0), the null score: the minimum over windows of the CLS start + end
    logits. Only the ``top_k`` most probable spans are kept, with their probabilities from the full softmax.
    """
    if not windows_of_example:
        raise ValueError("example_candidates: windows_of_example is empty; fix: pass every window of the question "
                         "(encode_windows' 'example' says which)")
    best: dict[tuple[int, int], float] = {}
    null_score = np.inf
    for w, (start_logits, end_logits, offsets) in enumerate(windows_of_example):
        for s, e, score in window_spans(start_logits, end_logits, offsets, n_best=n_best,
                                        max_answer_length=max_answer_length):
            if e > len(context) or s < 0:
                raise ValueError(f"example_candidates: window {w} has a span at chars {s}:{e}, outside the context "
                                 f"of {len(context)} chars; fix: pass the offsets and context of the same example")
            best[(s, e)] = max(score, best.get((s, e), -np.inf))
        # The window most sure there is an answer sets the null score (Hugging Face run_qa.py's min_null_score)
        null_score = min(null_score, float(start_logits[0]) + float(end_logits[0]))
    keys = list(best)
    scores = np.array([best[k] for k in keys] + ([null_score] if allow_null else []), dtype=float)
    if not len(scores):  # no valid span and no null: nothing to distribute
        return {"spans": [], "null": 0.0}
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    spans = sorted(((s, e, float(p)) for (s, e), p in zip(keys, probs)), key=lambda x: (-x[2], x[0], x[1]))
    return {"spans": spans[:top_k], "null": float(probs[-1]) if allow_null else 0.0}


def fuse_candidates(member_candidates: Sequence[dict], weights: Sequence[float] | None = None) -> dict:
    """Weighted average of members' answer distributions over the union of their spans (a missing span counts 0)."""
    if not member_candidates:
        raise ValueError("fuse_candidates: member_candidates is empty; fix: pass one example_candidates dict per "
                         "member")
    if weights is None:
        weights = [1.0] * len(member_candidates)
    w = np.asarray(weights, dtype=float)
    if w.shape != (len(member_candidates),) or (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"fuse_candidates: weights={list(weights)} must be {len(member_candidates)} non-negative "
                         "numbers, one per member, not all 0; fix: pass one weight per member or None for equal")
    w = w / w.sum()
    fused: dict[tuple[int, int], float] = collections.defaultdict(float)
    null = 0.0
    for m, (cand, w_m) in enumerate(zip(member_candidates, w)):
        if not isinstance(cand, dict) or "spans" not in cand or "null" not in cand:
            raise ValueError(f"fuse_candidates: member_candidates[{m}] is not an example_candidates dict "
                             "{'spans': [...], 'null': p}; fix: pass example_candidates' output")
        for s, e, p in cand["spans"]:
            fused[(s, e)] += w_m * p
        null += w_m * cand["null"]
    spans = sorted(((s, e, float(p)) for (s, e), p in fused.items()), key=lambda x: (-x[2], x[0], x[1]))
    return {"spans": spans, "null": float(null)}


def decide(candidates: dict, context: str, *, null_threshold: float = 0.0) -> str:
    """The best span's text, or "" when the null probability beats it by more than ``null_threshold`` (v2.0)."""
    if not candidates["spans"]:
        return ""
    s, e, p = max(candidates["spans"], key=lambda x: x[2])
    return "" if candidates["null"] - p > null_threshold else context[s:e]


def tune_null_threshold(candidates_list: Sequence[dict], examples: Sequence[QAExample]) -> float:
    """The ``null_threshold`` for :func:`decide` that maximises F1 on these (validation) questions.

    The official v2.0 best-threshold search over the differences null prob - best span prob: start from all-null,
    answer questions in increasing difference and keep the best total; ties in the difference move together since no
    threshold separates them. Returns a value below every difference when answering nothing is best.
    """
    if len(candidates_list) != len(examples) or not examples:
        raise ValueError(f"tune_null_threshold: got {len(candidates_list)} candidates for {len(examples)} examples; "
                         "fix: pass one example_candidates dict per example, in order, at least one")
    diffs, gains = [], []
    for cand, ex in zip(candidates_list, examples):
        best = max(cand["spans"], key=lambda x: x[2]) if cand["spans"] else None
        text = ex.context[best[0]:best[1]] if best else ""
        golds = _gold_texts(ex)
        # answering instead of abstaining changes this question's F1 by f1(span) - f1("")
        gains.append(max(f1_score(text, g) for g in golds) - max(f1_score("", g) for g in golds))
        diffs.append(cand["null"] - (best[2] if best else 0.0))
    order = np.argsort(diffs, kind="stable")
    threshold, total, best_total = float(min(diffs)) - 1.0, 0.0, 0.0
    for rank, q in enumerate(order):
        total += gains[q]
        if rank + 1 < len(order) and diffs[order[rank + 1]] == diffs[q]:
            continue
        if total > best_total:
            best_total, threshold = total, float(diffs[q])
    return threshold


# -------------------------------------------------------------------------------- NER as machine reading (MRC-NER)

def entities_to_squad(sentences: Sequence[Sequence[str]], spans: Sequence[Sequence[tuple[int, int, str]]], *,
                      question: str = "Which {type} is mentioned?", types: Sequence[str] | None = None,
                      unanswerable: bool = True, title_prefix: str = "tweet", sentences_per_title: int = 20) -> dict:
    """Turn NER sentences into a SQuAD v2.0 dict: one question per entity type and sentence, the entity the answer.

    ``spans[i]`` are sentence i's entities as (start word, end word exclusive, type). The context is the words joined
    by spaces; the first entity of the asked type is the answer and further ones are extra gold answers. Sentences
    without that type get an unanswerable question (or none when ``unanswerable`` is False). Titles group
    ``sentences_per_title`` sentences into pseudo-articles, so :func:`split_by_article` works.

    >>> d = entities_to_squad([["I", "love", "Paris"]], [[(2, 3, "LOC")]])
    >>> d["data"][0]["paragraphs"][0]["qas"][0]["answers"]
    [{'text': 'Paris', 'answer_start': 7}]
    """
    if len(sentences) != len(spans):
        raise ValueError(f"entities_to_squad: {len(sentences)} sentences but {len(spans)} span lists; fix: pass one "
                         "span list per sentence ([] when it has no entity)")
    if "{type}" not in question:
        raise ValueError(f"entities_to_squad: question={question!r} has no '{{type}}' placeholder, so every type would "
                         "ask the same question; fix: e.g. 'Which {type} is mentioned?'")
    if not isinstance(sentences_per_title, int) or sentences_per_title < 1:
        raise ValueError(f"entities_to_squad: sentences_per_title must be an int >= 1; got {sentences_per_title!r}")
    for i, (words, ents) in enumerate(zip(sentences, spans)):
        if not words:
            raise ValueError(f"entities_to_squad: sentences[{i}] is empty; fix: drop empty sentences first")
        for s, e, t in ents:
            if not (0 <= s < e <= len(words)) or not isinstance(t, str) or not t:
                raise ValueError(f"entities_to_squad: spans[{i}] has {(s, e, t)!r} but sentence {i} has {len(words)} "
                                 "words; fix: use (start word, end word exclusive, type) with 0 <= start < end <= "
                                 "len(words)")
    types = sorted({t for ents in spans for _, _, t in ents}) if types is None else list(types)
    if not types:
        raise ValueError("entities_to_squad: no entity type to ask about (no spans and types=None); fix: pass types")
    articles: list[dict] = []
    for i, (words, ents) in enumerate(zip(sentences, spans)):
        starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])  # char offset of each word in " ".join(words)
        context = " ".join(words)
        qas = []
        for t in types:
            answers = [{"text": " ".join(words[s:e]), "answer_start": int(starts[s])}
                       for s, e, typ in sorted(ents) if typ == t]
            if answers or unanswerable:
                qas.append({"id": f"{title_prefix}{i}-{t}", "question": question.format(type=t), "answers": answers,
                            "is_impossible": not answers})
        if not qas:  # read_squad rejects a context with no question
            continue
        title = f"{title_prefix}-{i // sentences_per_title:04d}"
        if not articles or articles[-1]["title"] != title:
            articles.append({"title": title, "paragraphs": []})
        articles[-1]["paragraphs"].append({"context": context, "qas": qas})
    return {"version": "v2.0", "data": articles}
