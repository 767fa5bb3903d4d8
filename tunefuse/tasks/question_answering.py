"""Extractive question answering (SQuAD v1.1 and v2.0): a question and a context in, a span of the context out.

A context longer than the window is split into overlapping windows (``stride`` shared tokens), each a training unit
whose target is the gold span's start and end token, or the first ([CLS]) token when the window does not hold the
answer. Decoding takes the best valid span over the windows (n-best starts × ends, at most ``max_answer_length``
tokens), mapped back to characters through the tokenizer's offsets. The fusable score of one question is its top
candidate spans with probabilities (and the no-answer probability), so members with other tokenizers fuse over the
union of their character spans.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..data import collate
from .base import Encoded, check_weights, cross_entropy
from .squad import (QAExample, decide, encode_windows, example_candidates, f1_score, fuse_candidates,
                    normalize_answer, tune_null_threshold)

_NEG = -1e4  # logit of padding positions: no answer can start or end there


def _as_examples(X: Any, param: str) -> list[QAExample]:
    if hasattr(X, "iloc"):  # a DataFrame with question and context columns (id, title optional)
        missing = [c for c in ("question", "context") if c not in X.columns]
        if missing:
            raise ValueError(f"{param} lacks the column(s) {missing} (it has {list(X.columns)[:8]}); fix: rename the "
                             "columns to 'question' and 'context', e.g. df.rename(columns={'q': 'question'})")
        X = X.to_dict("records")
    if isinstance(X, (str, dict)) or not hasattr(X, "__iter__"):
        raise TypeError(f"{param} of type {type(X).__name__} is not a list of questions; fix: pass read_squad(path), "
                        "a list of QAExample, or a DataFrame with 'question' and 'context' columns")
    out = []
    for i, x in enumerate(X):
        if isinstance(x, dict):
            if not isinstance(x.get("question"), str) or not isinstance(x.get("context"), str):
                raise ValueError(f"{param}[{i}] needs str 'question' and 'context' entries; got keys {sorted(x)}")
            x = QAExample(id=str(x.get("id", i)), question=x["question"], context=x["context"], answers=(),
                          title=str(x.get("title", "")))
        if not isinstance(x, QAExample):
            raise TypeError(f"{param}[{i}] is {type(x).__name__}, not a QAExample or a dict; fix: pass "
                            "read_squad(path)")
        if not x.question.strip():
            raise ValueError(f"{param}[{i}] (id={x.id!r}) has an empty question; fix: drop it or give it a question")
        if not x.context.strip():
            raise ValueError(f"{param}[{i}] (id={x.id!r}) has an empty context; fix: drop it or give it a context")
        out.append(x)
    if not out:
        raise ValueError(f"{param} is empty (0 questions); fix: pass at least one question")
    return out


def _answer(v: Any, example: QAExample, where: str) -> tuple[tuple[str, int], ...]:
    """One example's gold answers as ((text, char start), ...); () is unanswerable."""
    if v is None or v == "" or (isinstance(v, (list, tuple)) and len(v) == 0):
        return ()
    if isinstance(v, str):  # an answer text alone: its first occurrence in the context
        start = example.context.find(v)
        if start < 0:
            raise ValueError(f"{where}={v!r} does not occur in the context of question {example.id!r}; fix: pass the "
                             "exact answer text, or {'text': ..., 'answer_start': ...}")
        return ((v, start),)
    if isinstance(v, dict):
        v = [v]
    out = []
    for a in v:
        text, start = (a.get("text"), a.get("answer_start")) if isinstance(a, dict) else tuple(a)
        if not isinstance(text, str) or not isinstance(start, (int, np.integer)):
            raise ValueError(f"{where}={a!r} is not an answer; fix: pass {{'text': str, 'answer_start': int}}")
        if example.context[start:start + len(text)] != text:
            raise ValueError(f"{where}: answer text {text!r} is not at answer_start={start} of question "
                             f"{example.id!r} (the context has {example.context[start:start + len(text)]!r} there); "
                             "fix: correct answer_start or the text")
        out.append((text, int(start)))
    return tuple(out)


@dataclass(frozen=True)
class QuestionAnswering:
    """(question, context) -> answer span. Score of one question: candidate spans with probabilities."""

    name: str = "question-answering"
    auto_model: str = "AutoModelForQuestionAnswering"
    peft_task_type: str = "QUESTION_ANS"
    head_names: tuple[str, ...] = ("qa_outputs",)
    has_labels: bool = False  # a label vocabulary (classes, tags) that the head's outputs stand for
    is_classifier: bool = False
    modality: str = "text"
    paper: str = "Devlin et al., 2019 (BERT on SQuAD: start and end logits per token)"
    metric_name: str = "squad_f1"
    max_length: int = 256  # covers most SQuAD contexts in one or two windows at half the cost of 384
    stride: int = 64  # context tokens two consecutive windows share, so an answer near a cut is whole in one of them
    n_best: int = 20  # start and end candidates searched per window
    max_answer_length: int = 30  # in tokens
    top_k: int = 20  # candidate spans kept per question: what fusion averages
    allow_null: bool | None = None  # answer "" when no span is likely; None: on when the training data has
    # unanswerable questions (SQuAD v2.0)
    null_threshold: float = 0.0  # how much more likely "no answer" must be than the best span; tuned on validation

    def check_X(self, X: Any, param: str = "X") -> list[QAExample]:
        return _as_examples(X, param)

    def check_y(self, y: Any, X: list[QAExample], param: str = "y") -> list[tuple]:
        """Gold answers: ``None`` takes them from the examples (read_squad fills them); else one entry per question:
        an answer text, ``{'text', 'answer_start'}``, a list of those, or "" / [] for an unanswerable question."""
        if y is None:
            y = [x.answers for x in X]
            if not any(y):
                raise ValueError(f"{param}=None and no question in X has an answer; fix: pass y (answer texts), or "
                                 "examples read with read_squad from annotated data")
            return y
        y = list(y)
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} questions but {param} has {len(y)} answers; fix: one entry per question")
        return [_answer(v, x, f"{param}[{i}]") for i, (v, x) in enumerate(zip(y, X))]

    def labels(self, y: list[tuple]) -> None:
        return None  # no label vocabulary: the head scores positions

    def fitted(self, y: list[tuple]) -> "QuestionAnswering":
        """Options the training data decide: no-answer decoding on for SQuAD v2.0-style data."""
        if self.allow_null is None:
            return dataclasses.replace(self, allow_null=any(len(a) == 0 for a in y))
        return self

    def calibrate(self, X: list[QAExample], y: list[tuple], predict_scores) -> "QuestionAnswering":
        """The no-answer threshold that maximises validation F1 (the official v2.0 search); ``predict_scores(X)``
        is called only when there is a threshold to tune."""
        if not self.allow_null:
            return self
        gold = [dataclasses.replace(x, answers=a, is_impossible=not a) for x, a in zip(X, y)]
        return dataclasses.replace(self, null_threshold=float(tune_null_threshold(predict_scores(X), gold)))

    def encode(self, tokenizer, X: list[QAExample], max_length: int, *, labels=None, y=None, soft=None,
               template=None) -> Encoded:
        examples = X if y is None else [dataclasses.replace(x, answers=a) for x, a in zip(X, y)]
        win = encode_windows(tokenizer, examples, max_length=max_length, stride=self.stride, train=y is not None)
        targets = None
        if y is not None:
            targets = torch.tensor(list(zip(win["start_positions"], win["end_positions"])), dtype=torch.long)
        elif soft is not None:
            targets = [self._soft_window(soft[e], offsets) for e, offsets in zip(win["example"], win["offsets"])]
        extra = {"offsets": win["offsets"]}
        if "token_type_ids" in win:
            extra["type_ids"] = win["token_type_ids"]
        return Encoded(ids=win["input_ids"], example=np.asarray(win["example"]), extra=extra, targets=targets)

    @staticmethod
    def _soft_window(cand: dict, offsets) -> np.ndarray:
        """A teacher's span probabilities as start and end distributions over one window's tokens (distillation);
        spans outside the window and the no-answer mass go to the first token, as hard targets do."""
        out = np.zeros((len(offsets), 2), dtype=np.float32)
        starts = {o[0]: t for t, o in enumerate(offsets) if o is not None}
        ends = {o[1]: t for t, o in enumerate(offsets) if o is not None}
        for s, e, p in cand["spans"]:
            if s in starts and e in ends and ends[e] >= starts[s]:
                out[starts[s], 0] += p
                out[ends[e], 1] += p
            else:
                out[0] += p
        out[0] += cand["null"]
        return out / np.clip(out.sum(0, keepdims=True), 1e-12, None)

    def collate(self, enc: Encoded, rows: np.ndarray, pad_id: int, train: bool = False) -> tuple[dict, Any]:
        types = enc.extra.get("type_ids")
        inputs = collate([enc.ids[i] for i in rows], pad_id, None if types is None else [types[i] for i in rows])
        if enc.targets is None:
            return inputs, None
        if isinstance(enc.targets, torch.Tensor):
            return inputs, enc.targets[torch.as_tensor(rows)]
        out = torch.zeros((len(rows), inputs["input_ids"].shape[1], 2))
        for r, i in enumerate(rows):
            out[r, : len(enc.targets[i])] = torch.as_tensor(enc.targets[i])
        return inputs, out

    def logits(self, model, inputs: dict, pooling: str) -> torch.Tensor:
        """(batch, tokens, 2) start and end logits; padding positions can neither start nor end an answer."""
        out = model(**inputs)
        logits = torch.stack([out.start_logits, out.end_logits], -1).float()
        return logits.masked_fill(inputs["attention_mask"][..., None] == 0, _NEG)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        """Mean of the start and end cross-entropies over each window's positions (BERT's SQuAD loss)."""
        if targets.dtype.is_floating_point:  # soft: (batch, tokens, 2) distributions over positions
            return (cross_entropy(logits[..., 0], targets[..., 0], label_smoothing)
                    + cross_entropy(logits[..., 1], targets[..., 1], label_smoothing)) / 2
        return (cross_entropy(logits[..., 0], targets[:, 0], label_smoothing)
                + cross_entropy(logits[..., 1], targets[:, 1], label_smoothing)) / 2

    def probe_problem(self, feats: list[np.ndarray], enc: Encoded):
        """The start/end head on every token's features, the loss taken per window over its positions."""
        x = torch.as_tensor(np.concatenate(feats))
        lengths = [len(f) for f in feats]
        width = max(lengths)
        index = torch.full((len(feats), width), -1, dtype=torch.long)
        pos = 0
        for u, n in enumerate(lengths):
            index[u, :n] = torch.arange(pos, pos + n)
            pos += n
        pad = index < 0
        targets = enc.targets
        if not isinstance(targets, torch.Tensor):  # soft targets: pad them to the width
            padded = torch.zeros((len(feats), width, 2))
            for u, t in enumerate(targets):
                padded[u, : len(t)] = torch.as_tensor(t)
            targets = padded

        def unit_loss(out: torch.Tensor, ls: float) -> torch.Tensor:
            logits = out[index.clamp(min=0).to(out.device)].masked_fill(pad[..., None].to(out.device), _NEG)
            return self.loss(logits, targets.to(out.device), ls)

        return x, unit_loss

    def scores(self, X: list[QAExample], enc: Encoded, unit_logits: list[np.ndarray], labels) -> list[dict]:
        windows: list[list] = [[] for _ in X]
        for u, logits in enumerate(unit_logits):
            windows[enc.example[u]].append((logits[:, 0], logits[:, 1], enc.extra["offsets"][u]))
        return [example_candidates(w, x.context, n_best=self.n_best, max_answer_length=self.max_answer_length,
                                   top_k=self.top_k, allow_null=bool(self.allow_null)) for w, x in zip(windows, X)]

    def decode(self, X: list[QAExample], scores: list[dict], labels) -> list[str]:
        threshold = self.null_threshold if self.allow_null else np.inf
        return [decide(c, x.context, null_threshold=threshold) for c, x in zip(scores, X)]

    def metric(self, y_true: list[tuple], y_pred: list[str]) -> float:
        """SQuAD F1 on a 0-1 scale: token overlap after normalisation, the max over gold answers."""
        return float(np.mean(self.per_example_f1(y_true, y_pred)))

    def truth_proba(self, X: list[QAExample], scores: list[dict], y: list[tuple], labels) -> np.ndarray:
        """The probability each question's candidates give a gold answer (spans whose normalised text matches one,
        or "no answer" for an unanswerable question): what a fitted vote's weights maximise the log-likelihood of."""
        out = []
        for x, cand, gold in zip(X, scores, y):
            texts = {normalize_answer(t) for t, _ in gold}
            out.append(sum(p for s, e, p in cand["spans"] if normalize_answer(x.context[s:e]) in texts) if texts
                       else cand["null"])
        return np.asarray(out, dtype=float)

    @staticmethod
    def per_example_f1(y_true: list[tuple], y_pred: list[str]) -> np.ndarray:
        out = []
        for gold, pred in zip(y_true, y_pred):
            texts = [t for t, _ in gold if normalize_answer(t)] or [""]  # as the official v2.0 script
            out.append(max(f1_score(pred, t) for t in texts))
        return np.asarray(out)

    def fuse(self, member_scores: Sequence[list], weights: Sequence[float] | None = None) -> list[dict]:
        """Per question, the weighted sum of the members' span probabilities over the union of their spans."""
        w = check_weights(weights, len(member_scores))
        return [fuse_candidates([s[i] for s in member_scores], list(w)) for i in range(len(member_scores[0]))]
