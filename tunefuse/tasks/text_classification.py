"""Sentence classification (sentiment, topics, intent): one text in, one class out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..data import as_labels, as_texts, collate, tokenize
from .base import Task, Encoded, check_weights, cross_entropy, encode_labels


@dataclass(frozen=True)
class TextClassification:
    """Texts -> one label each. Score of one example: its class-probability row; members fuse by weighted mean."""

    name: str = "text-classification"
    auto_model: str = "AutoModelForSequenceClassification"
    peft_task_type: str = "SEQ_CLS"
    head_names: tuple[str, ...] = ("classifier", "score")  # BERT-style encoders call it classifier; decoders score
    has_labels: bool = True  # a label vocabulary (classes, tags) that the head's outputs stand for
    is_classifier: bool = True
    modality: str = "text"  # what goes in: text (a tokenizer), vision (an image processor)
    paper: str = "Devlin et al., 2019 (BERT: sentence classification from a pooled representation)"
    metric_name: str = "accuracy"

    def check_X(self, X: Any, param: str = "X") -> list[str]:
        return as_texts(X, param)

    def check_y(self, y: Any, X: list, param: str = "y") -> np.ndarray:
        if y is None:
            raise ValueError(f"{param}=None: text classification needs one label per text; fix: pass {param}")
        return as_labels(y, len(X), param)

    def labels(self, y: np.ndarray) -> np.ndarray:
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"y has a single class {classes.tolist()}; a classifier needs at least 2: check the "
                             "label column and the filtering that produced it")
        return classes

    def fitted(self, y) -> "Task":
        return self  # no option of this task depends on the training data

    def calibrate(self, X: list, y, predict_scores) -> "Task":
        return self  # nothing to tune on validation data after training

    def encode(self, tokenizer, X: list[str], max_length: int, *, labels=None, y=None, soft=None,
               template: str | None = None) -> Encoded:
        """One unit per text (long texts are truncated to ``max_length``: the head reads one pooled vector)."""
        texts = X if template is None else [template.format(text=t) for t in X]
        return Encoded(ids=tokenize(tokenizer, texts, max_length), example=np.arange(len(X)),
                       targets=self.targets(len(X), labels, y, soft))

    def targets(self, n: int, labels, y=None, soft=None) -> torch.Tensor | None:
        """Class indices of ``y``, or the soft probability rows ``soft`` (distillation), or None (inference)."""
        if y is not None:
            return torch.as_tensor(encode_labels(y, labels))
        if soft is not None:
            proba = np.asarray(soft, dtype=np.float32)
            if proba.shape != (n, len(labels)) or not np.allclose(proba.sum(1), 1, atol=1e-3):
                raise ValueError(f"proba has shape {proba.shape}; fix: pass one probability row per example over "
                                 f"{len(labels)} classes, each row summing to 1 (e.g. teacher.predict_proba(X))")
            return torch.as_tensor(proba)
        return None

    def collate(self, enc: Encoded, rows: np.ndarray, pad_id: int, train: bool = False) -> tuple[dict, Any]:
        inputs = collate([enc.ids[i] for i in rows], pad_id)
        return inputs, None if enc.targets is None else enc.targets[torch.as_tensor(rows)]

    def logits(self, model, inputs: dict, pooling: str) -> torch.Tensor:
        """The model's logits; with mean pooling the head reads the masked mean of the last hidden states."""
        if pooling != "mean":
            return model(**inputs).logits
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
        hidden = getattr(base, base.base_model_prefix)(**inputs).last_hidden_state.float()  # sum in fp32
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        head = next(getattr(base, n) for n in self.head_names if isinstance(getattr(base, n, None), torch.nn.Module))
        return head(getattr(base, "dropout", torch.nn.Identity())(pooled))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        return cross_entropy(logits, targets, label_smoothing)

    def probe_problem(self, feats: list[np.ndarray], enc: Encoded):
        """The head on one pooled vector per text: multinomial logistic regression."""
        x = torch.as_tensor(np.concatenate(feats))
        return x, lambda out, ls: cross_entropy(out, enc.targets.to(out.device), ls)

    def scores(self, X: list, enc: Encoded, unit_logits: list[np.ndarray], labels) -> np.ndarray:
        logits = torch.as_tensor(np.concatenate(unit_logits)).float()
        return torch.softmax(logits, -1).numpy()

    def decode(self, X: list, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return np.asarray(labels)[np.asarray(scores).argmax(1)]

    def metric(self, y_true, y_pred) -> float:
        return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))

    def fuse(self, member_scores: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
        w = check_weights(weights, len(member_scores))
        return np.tensordot(w, np.stack([np.asarray(s, dtype=float) for s in member_scores]), axes=1)
