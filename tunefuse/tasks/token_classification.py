"""Token classification (named-entity recognition): words in, one BIO tag per word out.

Input: pre-split sentences (lists of words) with BIO tags (``tunefuse.tasks.conll.read_conll`` reads CoNLL files,
converting IOB1/BIOES), or raw texts, which are split into words here and whose output is entity spans with character
offsets. The first sub-token of each word carries its label; a sentence longer than the model window is cut into
several units at word boundaries, never truncated. The fusable score of a sentence is one tag-probability row per
*word*, so members with different tokenizers average; after the argmax, BIO repair turns a stray I-X into B-X.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..data import collate
from .base import Task, IGNORE, Encoded, check_weights, cross_entropy
from .conll import check_bio, check_words_tags, entity_f1, repair_bio, split_words, tag_spans


class Words(list):
    """The words of one raw text, remembering the text and each word's character offsets (for entity spans)."""

    def __init__(self, text: str):
        pieces = split_words(text)
        super().__init__(w for w, _, _ in pieces)
        self.text = text
        self.offsets = [(s, e) for _, s, e in pieces]


def _per_unit_mean(values: torch.Tensor, unit: torch.Tensor, n_units: int) -> torch.Tensor:
    """Mean of ``values`` (one per labelled token) over the tokens of each unit: each sentence weighs alike."""
    total = torch.zeros(n_units, dtype=values.dtype, device=values.device).index_add_(0, unit, values)
    count = torch.zeros(n_units, dtype=values.dtype, device=values.device).index_add_(0, unit, torch.ones_like(values))
    return total / count.clamp(min=1)


@dataclass(frozen=True)
class TokenClassification:
    """Words -> BIO tags (NER). Score of one sentence: per-word tag probabilities; members fuse by weighted mean."""

    name: str = "token-classification"
    auto_model: str = "AutoModelForTokenClassification"
    peft_task_type: str = "TOKEN_CLS"
    head_names: tuple[str, ...] = ("classifier", "score")
    has_labels: bool = True  # a label vocabulary (classes, tags) that the head's outputs stand for
    is_classifier: bool = False
    modality: str = "text"
    paper: str = "Devlin et al., 2019 (BERT: NER with the first sub-token's representation)"
    metric_name: str = "entity_f1"

    def check_X(self, X: Any, param: str = "X") -> list:
        if isinstance(X, str):
            raise TypeError(f"{param} is a single str; fix: pass a list of texts or a list of word lists, e.g. "
                            f"[{X[:20]!r}]")
        items = list(X) if not hasattr(X, "iloc") else list(X.iloc[:, 0] if getattr(X, "ndim", 1) == 2 else X)
        if items and all(isinstance(x, str) for x in items):
            out = [Words(t) for t in items]
            empty = [i for i, w in enumerate(out) if not w]
            if empty:
                raise ValueError(f"{param}[{empty[0]}]={items[empty[0]]!r} has no word to tag; fix: drop empty texts")
            return out
        if any(isinstance(x, str) for x in items):
            raise TypeError(f"{param} mixes raw texts and word lists; fix: pass only texts or only lists of words")
        return check_words_tags(items, None, param)[0]

    def check_y(self, y: Any, X: list, param: str = "y") -> list[list[str]]:
        if any(isinstance(x, Words) for x in X):
            raise ValueError(f"{param} needs pre-split words: X holds raw texts, whose word split may not match the "
                             "tags; fix: pass X as lists of words (e.g. from read_conll)")
        _, y = check_words_tags(X, y, "X", param)
        check_bio(y, param)
        return y

    def labels(self, y: list[list[str]]) -> np.ndarray:
        """'O', then B- and I- of every entity type seen, types sorted: one stable order for every member."""
        types = sorted({t[2:] for sent in y for t in sent if t != "O"})
        if not types:
            raise ValueError("y has no entity at all (every tag is 'O'); fix: check the tag column (tag_column=) and "
                             "that the file holds BIO tags")
        return np.array(["O"] + [f"{p}-{t}" for t in types for p in "BI"])

    def fitted(self, y) -> "Task":
        return self  # no option of this task depends on the training data

    def calibrate(self, X: list, y, predict_scores) -> "Task":
        return self  # nothing to tune on validation data after training

    def encode(self, tokenizer, X: list, max_length: int, *, labels=None, y=None, soft=None, template=None
               ) -> Encoded:
        """Sub-tokens of each sentence, cut at word boundaries into units of at most ``max_length`` tokens."""
        words = [list(s) for s in X]
        room = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        index = None if labels is None else {t: i for i, t in enumerate(np.asarray(labels).tolist())}
        if y is not None:
            unknown = sorted({t for s in y for t in s} - set(index))
            if unknown:
                raise ValueError(f"y has tags {unknown[:5]} unseen during fit; known tags are {list(index)}; fix: "
                                 "map them to known tags or 'O', or refit with them")
        if soft is not None:
            self._check_soft(soft, words, index)
        # Cut each sentence at word boundaries into chunks whose sub-tokens fit the window, then tokenise the chunks
        counts = [[len(t) for t in tokenizer(s, add_special_tokens=False)["input_ids"]] for s in words]
        chunks, example, first_word = [], [], []
        for i, c in enumerate(counts):
            start, used = 0, 0
            for j, n in enumerate(c):
                if used + n > room and j > start:
                    chunks.append(words[i][start:j])
                    example.append(i)
                    first_word.append(start)
                    start, used = j, 0
                used += n
            chunks.append(words[i][start:])
            example.append(i)
            first_word.append(start)
        pieces = tokenizer(chunks, is_split_into_words=True, truncation=True, max_length=max_length)
        ids, word_of, targets = list(pieces["input_ids"]), [], []
        for u in range(len(chunks)):
            local = pieces.word_ids(u)
            word_of.append([None if w is None or (j > 0 and local[j - 1] == w) else first_word[u] + w
                            for j, w in enumerate(local)])  # the first sub-token of each word carries its label
            i = example[u]
            if y is not None:
                targets.append([index[y[i][w]] if w is not None else IGNORE for w in word_of[-1]])
            elif soft is not None:
                rows = np.zeros((len(local), len(index)), dtype=np.float32)
                for j, w in enumerate(word_of[-1]):
                    if w is not None:
                        rows[j] = soft[i][w]
                targets.append(rows)
        return Encoded(ids=ids, example=np.asarray(example), extra={"word_of": word_of},
                       targets=targets if (y is not None or soft is not None) else None)

    @staticmethod
    def _check_soft(soft, words, index) -> None:
        if len(soft) != len(words):
            raise ValueError(f"scores has {len(soft)} sentences but X has {len(words)}; fix: pass the teacher's "
                             "predict_scores(X) for the same X")
        for i, (s, w) in enumerate(zip(soft, words)):
            if np.shape(s) != (len(w), len(index)):
                raise ValueError(f"scores[{i}] has shape {np.shape(s)}, expected ({len(w)}, {len(index)}) (words x "
                                 "tags); fix: pass per-word tag probabilities over classes, as predict_scores gives")

    def collate(self, enc: Encoded, rows: np.ndarray, pad_id: int, train: bool = False) -> tuple[dict, Any]:
        inputs = collate([enc.ids[i] for i in rows], pad_id)
        if enc.targets is None:
            return inputs, None
        width = inputs["input_ids"].shape[1]
        first = enc.targets[rows[0]]
        if isinstance(first, np.ndarray):  # soft targets: rows of zeros are ignored positions
            out = torch.zeros((len(rows), width, first.shape[1]))
            for r, i in enumerate(rows):
                out[r, : len(enc.targets[i])] = torch.as_tensor(enc.targets[i])
            return inputs, out
        out = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for r, i in enumerate(rows):
            out[r, : len(enc.targets[i])] = torch.as_tensor(enc.targets[i])
        return inputs, out

    def logits(self, model, inputs: dict, pooling: str) -> torch.Tensor:
        return model(**inputs).logits

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        """Mean cross-entropy over each unit's labelled tokens (first sub-tokens)."""
        mask = targets.sum(-1) > 0 if targets.dtype.is_floating_point else targets != IGNORE
        flat = cross_entropy(logits[mask], targets[mask], label_smoothing)
        unit = torch.arange(len(logits), device=logits.device)[:, None].expand(mask.shape)[mask]
        return _per_unit_mean(flat, unit, len(logits))

    def probe_problem(self, feats: list[np.ndarray], enc: Encoded):
        """The head on each labelled token's features: logistic regression over tokens, averaged per sentence."""
        rows, unit, target = [], [], []
        for u, (f, t) in enumerate(zip(feats, enc.targets)):
            t = np.asarray(t)
            keep = t.sum(-1) > 0 if t.dtype.kind == "f" else t != IGNORE
            rows.append(f[keep])
            unit.append(np.full(int(keep.sum()), u))
            target.append(t[keep])
        x = torch.as_tensor(np.concatenate(rows))
        y = torch.as_tensor(np.concatenate(target))
        unit_t = torch.as_tensor(np.concatenate(unit))

        def unit_loss(out: torch.Tensor, ls: float) -> torch.Tensor:
            return _per_unit_mean(cross_entropy(out, y.to(out.device), ls), unit_t.to(out.device), len(feats))

        return x, unit_loss

    def scores(self, X: list, enc: Encoded, unit_logits: list[np.ndarray], labels) -> list[np.ndarray]:
        """Per-word tag probabilities of each sentence (a word the tokenizer dropped gets 'O')."""
        out = [np.zeros((len(s), len(labels)), dtype=np.float64) for s in X]
        seen = [np.zeros(len(s), dtype=bool) for s in X]
        for u, logits in enumerate(unit_logits):
            i = enc.example[u]
            p = torch.softmax(torch.as_tensor(logits).double(), -1).numpy()
            for j, w in enumerate(enc.extra["word_of"][u]):
                if w is not None:
                    out[i][w], seen[i][w] = p[j], True
        for o, s in zip(out, seen):
            o[~s, 0] = 1.0  # labels[0] is 'O'
        return out

    def decode(self, X: list, scores: list[np.ndarray], labels) -> list:
        """BIO tags per word (argmax, then BIO repair); for raw texts, entity spans with character offsets."""
        labels = np.asarray(labels)
        out = []
        for words, s in zip(X, scores):
            tags = repair_bio(labels[np.asarray(s).argmax(1)].tolist())
            if not isinstance(words, Words):
                out.append(tags)
                continue
            spans = []
            for a, b, kind in tag_spans(tags):
                start, end = words.offsets[a][0], words.offsets[b - 1][1]
                score = float(np.mean(np.asarray(s)[np.arange(a, b), labels.tolist().index(tags[a])]))
                spans.append({"type": kind, "start": start, "end": end, "text": words.text[start:end],
                              "score": score})
            out.append(spans)
        return out

    def metric(self, y_true, y_pred) -> float:
        return entity_f1(y_true, y_pred)

    def truth_proba(self, X: list, scores: list[np.ndarray], y: list[list[str]], labels) -> np.ndarray:
        """The probability each word's score gives its true tag (one row per word): what a fitted vote's weights
        maximise the log-likelihood of."""
        index = {t: i for i, t in enumerate(np.asarray(labels).tolist())}
        return np.concatenate([np.asarray(s)[np.arange(len(t)), [index[v] for v in t]] for s, t in zip(scores, y)])

    def fuse(self, member_scores: Sequence[list], weights: Sequence[float] | None = None) -> list[np.ndarray]:
        """Per-word weighted mean of the members' tag probabilities (members must share one tag order)."""
        w = check_weights(weights, len(member_scores))
        return [sum(wm * np.asarray(s[i], dtype=float) for wm, s in zip(w, member_scores))
                for i in range(len(member_scores[0]))]
