"""Weight-space fusion of fitted Finetuners: one model's inference cost for an ensemble's accuracy.

``WeightFusion`` is the estimator face of the pure functions in :mod:`tunefuse.fusion.weights`: it checks that the
members can be fused, picks what the method leaves open (greedy order, WiSE-FT's alpha, the task-arithmetic scale)
on held-out data, and returns a Finetuner carrying the fused weights.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from . import weights as W
from .members import check_fitted_members, check_members

METHODS = tuple(W.WEIGHT_METHODS)  # every registered weight-space method is reachable by name
ALPHAS = tuple(np.round(np.linspace(0, 1, 11), 2))  # WiSE-FT's grid (Wortsman et al., 2022 use the same 0.1 steps)


def state_of(member) -> dict[str, torch.Tensor]:
    """A fitted Finetuner's weights as a state dict (tensors shared, not copied: the fusions never mutate)."""
    return member.model_.state_dict()


def pretrained_state(member) -> dict[str, torch.Tensor]:
    """The backbone's pretrained weights (θ0), without the head: the start every member was fine-tuned from."""
    model = member.pretrained_model()
    heads = member.task_.head_names
    return {k: v for k, v in model.state_dict().items() if not k.startswith(tuple(h + "." for h in heads))}


def _processor(member) -> dict:
    """What the member's input processing depends on: a tokenizer's vocabulary, an image processor's settings."""
    tok = member.tokenizer_
    return tok.get_vocab() if hasattr(tok, "get_vocab") else tok.to_dict()


def check_fusable(members) -> None:
    """Weight-space fusion needs one backbone, one architecture, one task and one label set: name who breaks it."""
    names = [n for n, _ in members]
    for (n, m) in members:
        if not hasattr(m, "model_") or not hasattr(m, "backbone"):
            raise ValueError(f"member {n!r} ({type(m).__name__}) has no fine-tuned weights to average; weight-space "
                             "fusion takes fitted Finetuners only: use output-space fusion (Voting, Stacking) for it")
    first_name, first = members[0]
    for n, m in members[1:]:
        if m.task_.name != first.task_.name:
            raise ValueError(f"members {first_name!r} and {n!r} solve different tasks ({first.task_.name!r} vs "
                             f"{m.task_.name!r}); their weights cannot be averaged: fuse members of one task")
        a, b = first.labels_, m.labels_
        if (a is None) != (b is None) or (a is not None and list(a) != list(b)):
            raise ValueError(f"members {first_name!r} and {n!r} have different classes (label sets or orders) "
                             f"({None if a is None else list(a)[:6]} vs {None if b is None else list(b)[:6]}); "
                             "averaging their heads would mix labels: refit them on the same labels")
        if getattr(m, "pooling_", None) != getattr(first, "pooling_", None):
            raise ValueError(f"members {first_name!r} and {n!r} read different pooled features ({first.pooling_!r} "
                             f"vs {m.pooling_!r}); their heads cannot be averaged: refit them with one pooling, or "
                             "use output-space fusion (Voting, Stacking)")
        if m.backbone != first.backbone or m.config_overrides != first.config_overrides:
            raise ValueError(f"members {first_name!r} and {n!r} start from different backbones ({first.backbone!r} "
                             f"vs {m.backbone!r}); weights of different pretrained starts cannot be averaged: use "
                             "output-space fusion (Voting, Stacking) for them")
        if _processor(m) != _processor(first):
            raise ValueError(f"members {first_name!r} and {n!r} use different tokenizers or image processors "
                             "(vocabulary, image size, normalisation); their weights cannot be averaged: fuse members "
                             "of one backbone and input size")
    W.check_compatible([state_of(m) for _, m in members], names)


class WeightFusion(ClassifierMixin, BaseEstimator):
    """Fuse fitted Finetuners in weight space; ``fit(X_val, y_val)`` picks what the method leaves open.

    Methods: ``uniform_soup`` and ``greedy_soup`` (Wortsman et al., 2022, Model soups), ``wise_ft`` (Wortsman et al.,
    2022, Robust fine-tuning of zero-shot models: the best member interpolated towards θ0, alpha chosen on
    validation), ``task_arithmetic`` (Ilharco et al., 2023), ``ties`` (Yadav et al., 2023) and ``dare`` (Yu et al.,
    2024), whose merge scale is chosen on validation. Members are always prefit: fit only takes held-out data.

    >>> # soup = WeightFusion([("a", ft_a), ("b", ft_b)], method="greedy_soup").fit(X_val, y_val)
    """

    def __init__(self, members, *, method: str = "greedy_soup", density: float = 0.5, seed: int = 0,
                 bn_images=None):
        self.members = members
        self.method = method
        # Inputs BatchNorm statistics are re-estimated on after a merge (training images; labels are not used).
        # None: the held-out X given to fit. Models without BatchNorm (transformers) ignore it.
        self.bn_images = bn_images
        self.density = density  # share of each task vector TIES/DARE keep
        self.seed = seed

    def fit(self, X, y, sample_weight=None):
        t0 = time.perf_counter()
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {sorted(METHODS)}; fix: pick one, e.g. "
                             "'greedy_soup'")
        members = check_members(self.members, required=("fit",))
        check_fusable(members)
        template = members[0][1]
        if template.task_.is_classifier:
            self.classes_ = check_fitted_members(members)
        self.labels_ = template.labels_
        states = [state_of(m) for _, m in members]
        names = [n for n, _ in members]

        bn_images = X if self.bn_images is None else self.bn_images

        def with_state(state):  # a merged BatchNorm model needs statistics of its own (re-estimated; no labels used)
            model = template.with_weights(state)
            model.recalibrate_batchnorm(bn_images)
            return model

        def score(state) -> float:  # the task's metric: accuracy, entity F1, SQuAD F1
            return float(with_state(state).score(X, y, sample_weight))

        entry = W.get_weight_method(self.method)
        base = pretrained_state(template) if entry.needs_base else None
        chosen, self.params_ = list(range(len(members))), {}
        if entry.search == "greedy":
            merged, chosen = entry.fn(states, score, names=names, **entry.options)
        elif entry.search == "alpha":  # WiSE-FT: the best member interpolated towards θ0
            best = int(np.argmax([m.score(X, y, sample_weight) for _, m in members]))
            scores = {a: score(entry.fn(base, states[best], a)) for a in ALPHAS}
            alpha = max(scores, key=lambda a: (scores[a], a))  # ties go to the larger alpha (closer to fine-tuned)
            merged, chosen, self.params_ = entry.fn(base, states[best], alpha), [best], {"alpha": alpha}
        elif entry.search == "scale":  # task vectors: the merge scale on validation
            k = len(states)
            scales = sorted({round(s / k, 4) for s in (1, k / 2, k)} | {1.0})  # 1/k is the uniform soup for "sum"
            candidates = {s: entry.fn(base, states, scale=s, density=self.density, seed=self.seed, **entry.options)
                          for s in scales}
            scores = {s: score(st) for s, st in candidates.items()}
            scale = max(scores, key=lambda s: (scores[s], -s))
            merged, self.params_ = candidates[scale], {"scale": scale, "density": self.density}
        else:
            merged = entry.fn(states, **entry.options)
        # the soup's backbone is the pretrained one only if no member trained it (then cached features stay valid)
        self.fused_ = template.with_weights(merged, frozen_backbone=all(m.frozen_backbone_ for _, m in members))
        self.fused_.recalibrate_batchnorm(bn_images)
        self.members_ = members
        self.weights_ = {n: (chosen.count(i) / len(chosen) if i in chosen else 0.0) for i, n in enumerate(names)}
        self.fit_time_ = time.perf_counter() - t0
        return self

    @available_if(lambda self: self.fused_.task_.is_classifier if hasattr(self, "fused_") else True)
    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "fused_")
        return self.fused_.predict_proba(X)

    def predict_scores(self, X):
        check_is_fitted(self, "fused_")
        return self.fused_.predict_scores(X)

    def predict(self, X):
        check_is_fitted(self, "fused_")
        return self.fused_.predict(X)

    def score(self, X, y, sample_weight=None) -> float:
        check_is_fitted(self, "fused_")
        return self.fused_.score(X, y, sample_weight)

    @property
    def task_(self):
        return check_members(self.members, required=("fit",))[0][1].task_

    def save(self, path):
        """The fused model is a plain Finetuner checkpoint: it loads with ``Finetuner.load``."""
        check_is_fitted(self, "fused_")
        return self.fused_.save(path)


def soup_from_checkpoints(paths, weights=None):
    """Uniform soup streamed from saved Finetuner folders: peak memory ~2 models whatever ``len(paths)``."""
    from ..finetuner import Finetuner

    if not paths:
        raise ValueError("paths=[] is empty: pass at least one Finetuner checkpoint folder")
    template = Finetuner.load(paths[0])
    # keys and shapes are checked file by file while streaming; a bad file is named in the error
    return template.with_weights(W.uniform_from_files(list(paths), weights))
