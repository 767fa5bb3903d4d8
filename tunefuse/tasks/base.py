"""What every task shares: the ``Task`` protocol, the encoded training units, one label encoder, the losses.

A task says how examples are checked and tokenised into *units* (the rows the loop trains on: a sentence, a window
of a long context), which ``transformers`` head it uses, the loss of one unit, the fusable score of one example,
how scores decode to predictions, the metric, and how several members' scores fuse. The estimator
(:class:`tunefuse.Finetuner`) and the training loop know nothing else about it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100  # target of a position that carries no label (padding, sub-tokens after the first): torch's default


@dataclass
class Encoded:
    """Examples tokenised once into training/inference units.

    ``ids[u]`` are the token ids of unit ``u``, ``example[u]`` the example it came from (a long sentence or context
    gives several units), ``extra`` per-unit lists a task needs again (token types, offsets, word ids) and
    ``targets`` one target per unit (absent at inference). Images have no ids: their pixels are in ``extra``.
    """

    ids: list[list[int]]
    example: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)
    targets: Any = None
    cost: np.ndarray | None = None  # per-unit cost in token-equivalents for batching; None: the token counts
    keys: list[bytes] | None = None  # per-unit content keys of the feature cache; None: from the token ids

    def __len__(self) -> int:
        return len(self.example)

    def lengths(self) -> np.ndarray:
        """What one unit costs a forward pass, in tokens (images: their pixels in token-equivalents)."""
        return self.cost if self.cost is not None else np.array([len(x) for x in self.ids], dtype=np.int64)


class Task(Protocol):
    """The protocol every registered task follows (a frozen dataclass whose fields are its options)."""

    name: str
    auto_model: str  # the transformers class that holds backbone + this head, e.g. "AutoModelForTokenClassification"
    peft_task_type: str  # peft's TaskType for LoRA
    head_names: tuple[str, ...]  # the new modules: no L2-SP anchor, no layer decay, trained alone by the probe
    has_labels: bool  # a label vocabulary (classes, tags) that the head's outputs stand for; QA has none
    is_classifier: bool  # sklearn tags and predict_proba exist only for per-example classification
    modality: str  # "text" (a tokenizer reads the input) or "vision" (an image processor)
    paper: str

    def check_X(self, X: Any, param: str = "X") -> list: ...
    def check_y(self, y: Any, X: list, param: str = "y") -> list: ...
    def labels(self, y: list) -> list[str] | np.ndarray | None: ...
    def fitted(self, y: list) -> "Task": ...  # the entry with the options the training data decide
    def calibrate(self, X: list, y: list, predict_scores) -> "Task": ...  # options tuned on validation after fit
    def encode(self, tokenizer, X: list, max_length: int, *, labels=None, y=None, soft=None,
               template: str | None = None) -> Encoded: ...
    def collate(self, enc: Encoded, rows: np.ndarray, pad_id: int, train: bool = False) -> tuple[dict, Any]: ...
    def logits(self, model, inputs: dict, pooling: str) -> torch.Tensor: ...
    def loss(self, logits: torch.Tensor, targets: Any, label_smoothing: float) -> torch.Tensor: ...
    def probe_problem(self, feats: list[np.ndarray], enc: Encoded) -> tuple[torch.Tensor, Any]: ...
    def scores(self, X: list, enc: Encoded, unit_logits: list[np.ndarray], labels) -> list: ...
    def decode(self, X: list, scores: list, labels) -> list: ...
    def metric(self, y_true: list, y_pred: list) -> float: ...
    def truth_proba(self, X: list, scores: list, y: list, labels) -> np.ndarray: ...  # structured tasks only
    def fuse(self, member_scores: Sequence[list], weights: Sequence[float]) -> list: ...
    # Optional hooks, looked up with hasattr: ``scores_metric(y, scores, sample_weight=None)`` ranks validation
    # epochs and ``score`` on the scores themselves (CTR: AUC) instead of ``metric`` on decoded predictions;
    # ``check_known(y, labels)`` refuses labels unseen in training; ``frozen_modules(model)`` stays frozen in full FT.


def encode_labels(y: Sequence, classes: Sequence, param: str = "y") -> np.ndarray:
    """Index of each label of ``y`` in ``classes`` (in the order given, sorted or not); unseen labels are an error.

    >>> encode_labels(["pos", "neg", "pos"], ["pos", "neg"]).tolist()
    [0, 1, 0]
    """
    index = {c: i for i, c in enumerate(np.asarray(classes).tolist())}
    values = np.asarray(y, dtype=object).ravel().tolist() if not isinstance(y, list) else y
    unseen = sorted({v for v in values if v not in index}, key=str)
    if unseen:
        raise ValueError(f"{param} has labels {unseen[:5]} unseen during fit; known labels are "
                         f"{list(index)[:20]}; fix: drop those rows or refit with them")
    return np.array([index[v] for v in values], dtype=np.int64)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-row cross-entropy of ``logits`` (rows, classes) against hard indices or soft probability rows.

    Hard targets equal to ``IGNORE`` give 0. One function for every task and for the probe, so the fine-tuning loss,
    the probe's objective and distillation's soft targets can never drift apart.
    """
    logits = logits.float()
    if target.dtype.is_floating_point:  # soft targets (distillation): smoothing mixes in the uniform distribution
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / target.shape[-1]
        return -(target * F.log_softmax(logits, -1)).sum(-1)
    return F.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing, ignore_index=IGNORE)


def log_loss(proba: np.ndarray, y_idx: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood of the true classes (rows renormalised, clipped at 1e-15 as sklearn does).

    The one log-loss of the package: validation, probe selection, fusion weights and the leaderboard call it.
    """
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / np.clip(proba.sum(1, keepdims=True), 1e-15, None)
    p = np.clip(proba[np.arange(len(y_idx)), y_idx], 1e-15, 1.0)
    return float(np.average(-np.log(p), weights=sample_weight))


def pad_units(arrays: list[np.ndarray], value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Stack variable-length per-unit arrays (L_u, ...) into (n_units, max L, ...) plus a boolean mask."""
    width = max(len(a) for a in arrays)
    out = np.full((len(arrays), width, *arrays[0].shape[1:]), value, dtype=arrays[0].dtype)
    mask = np.zeros((len(arrays), width), dtype=bool)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
        mask[i, : len(a)] = True
    return out, mask


def check_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """Non-negative member weights with a positive sum, normalised; None is uniform."""
    w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights={weights!r} is not valid: pass {n} non-negative numbers with a positive sum, one "
                         "per member, or None (uniform)")
    return w / w.sum()
