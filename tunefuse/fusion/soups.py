"""Weight-space fusion of fitted Finetuners: one model's inference cost for an ensemble's accuracy.

``WeightFusion`` is the estimator face of the pure functions in :mod:`tunefuse.fusion.weights`: it checks that the
members can be fused, picks what the method leaves open (greedy order, WiSE-FT's alpha, the task-arithmetic scale)
on held-out data, and returns a Finetuner carrying the fused weights.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from . import weights as W
from .members import check_fitted_members, check_members

METHODS = ("uniform_soup", "greedy_soup", "wise_ft", "task_arithmetic", "ties", "dare")
ALPHAS = tuple(np.round(np.linspace(0, 1, 11), 2))  # WiSE-FT's grid (Wortsman et al., 2022 use the same 0.1 steps)


def state_of(member) -> dict[str, torch.Tensor]:
    """A fitted Finetuner's weights as a state dict (tensors shared, not copied: the fusions never mutate)."""
    return member.model_.state_dict()


def with_state(template, state: dict[str, torch.Tensor]):
    """A copy of the fitted Finetuner ``template`` carrying the weights ``state``."""
    model = template.model_
    template.model_ = None  # do not deep-copy the template's weights only to overwrite them
    try:
        out = copy.deepcopy(template)
    finally:
        template.model_ = model
    out.model_ = copy.deepcopy(model)
    out.model_.load_state_dict(state)
    out.frozen_backbone_ = False  # new weights: predict through the model, not the pretrained feature cache
    return out


def pretrained_state(member) -> dict[str, torch.Tensor]:
    """The backbone's pretrained weights (θ0), without the head: the start every member was fine-tuned from."""
    from ..finetuner import head_module

    model = member._build(len(member.classes_))[0]
    head = head_module(model)[0]
    return {k: v for k, v in model.state_dict().items() if not k.startswith(head + ".")}


def check_fusable(members) -> None:
    """Weight-space fusion needs one backbone, one architecture and one label set: name who breaks it and why."""
    names = [n for n, _ in members]
    for (n, m) in members:
        if not hasattr(m, "model_") or not hasattr(m, "backbone"):
            raise ValueError(f"member {n!r} ({type(m).__name__}) has no fine-tuned weights to average; weight-space "
                             "fusion takes fitted Finetuners only: use output-space fusion (Voting, Stacking) for it")
    first_name, first = members[0]
    for n, m in members[1:]:
        if getattr(m, "pooling_", None) != getattr(first, "pooling_", None):
            raise ValueError(f"members {first_name!r} and {n!r} read different pooled features ({first.pooling_!r} "
                             f"vs {m.pooling_!r}); their heads cannot be averaged: refit them with one pooling, or "
                             "use output-space fusion (Voting, Stacking)")
        if m.backbone != first.backbone or m.config_overrides != first.config_overrides:
            raise ValueError(f"members {first_name!r} and {n!r} start from different backbones ({first.backbone!r} "
                             f"vs {m.backbone!r}); weights of different pretrained starts cannot be averaged: use "
                             "output-space fusion (Voting, Stacking) for them")
    W.check_compatible([state_of(m) for _, m in members], names)


class WeightFusion(ClassifierMixin, BaseEstimator):
    """Fuse fitted Finetuners in weight space; ``fit(X_val, y_val)`` picks what the method leaves open.

    Methods: ``uniform_soup`` and ``greedy_soup`` (Wortsman et al., 2022, Model soups), ``wise_ft`` (Wortsman et al.,
    2022, Robust fine-tuning of zero-shot models: the best member interpolated towards θ0, alpha chosen on
    validation), ``task_arithmetic`` (Ilharco et al., 2023), ``ties`` (Yadav et al., 2023) and ``dare`` (Yu et al.,
    2024), whose merge scale is chosen on validation. Members are always prefit: fit only takes held-out data.

    >>> # soup = WeightFusion([("a", ft_a), ("b", ft_b)], method="greedy_soup").fit(X_val, y_val)
    """

    def __init__(self, members, *, method: str = "greedy_soup", density: float = 0.5, seed: int = 0):
        self.members = members
        self.method = method
        self.density = density  # share of each task vector TIES/DARE keep
        self.seed = seed

    def fit(self, X, y, sample_weight=None):
        t0 = time.perf_counter()
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {list(METHODS)}; fix: pick one, e.g. "
                             "'greedy_soup'")
        members = check_members(self.members)
        self.classes_ = check_fitted_members(members)
        check_fusable(members)
        y = np.asarray(y)
        template = members[0][1]
        states = [state_of(m) for _, m in members]
        names = [n for n, _ in members]

        def score(state) -> float:
            return float(with_state(template, state).score(X, y, sample_weight))

        chosen = list(range(len(members)))
        self.params_: dict[str, Any] = {}
        if self.method == "uniform_soup":
            fused = W.uniform(states)
        elif self.method == "greedy_soup":
            fused, chosen = W.greedy_soup(states, score, names=names)
        elif self.method == "wise_ft":
            best = int(np.argmax([m.score(X, y, sample_weight) for _, m in members]))
            base = pretrained_state(template)
            scores = {a: score(W.interpolate(base, states[best], a)) for a in ALPHAS}
            alpha = max(scores, key=lambda a: (scores[a], a))  # ties go to the larger alpha (closer to fine-tuned)
            fused, chosen, self.params_ = W.interpolate(base, states[best], alpha), [best], {"alpha": alpha}
        else:
            base = pretrained_state(template)
            method = {"task_arithmetic": "sum", "ties": "ties", "dare": "dare"}[self.method]
            k = len(states)
            scales = sorted({round(s / k, 4) for s in (1, k / 2, k)} | {1.0})  # 1/k is the uniform soup for "sum"
            merged = {s: W.task_arithmetic(base, states, scale=s, method=method, density=self.density,
                                           seed=self.seed) for s in scales}
            scores = {s: score(st) for s, st in merged.items()}
            scale = max(scores, key=lambda s: (scores[s], -s))
            fused, self.params_ = merged[scale], {"scale": scale, "density": self.density}
        self.fused_ = with_state(template, fused)
        # the soup's backbone is the pretrained one only if no member trained it (then cached features stay valid)
        self.fused_.frozen_backbone_ = all(m.frozen_backbone_ for _, m in members)
        self.members_ = members
        self.weights_ = {n: (chosen.count(i) / len(chosen) if i in chosen else 0.0) for i, n in enumerate(names)}
        self.fit_time_ = time.perf_counter() - t0
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "fused_")
        return self.fused_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        return self.fused_.predict(X)

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
    template.model_.load_state_dict(W.uniform_from_files(list(paths), weights))
    template.frozen_backbone_ = False  # new weights: predict through the model, not the pretrained feature cache
    return template
