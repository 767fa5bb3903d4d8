"""Fusion of object detectors: their boxes merged by weighted boxes fusion, NMS or soft-NMS.

Weighted boxes fusion (Solovyev et al., 2021, "Weighted boxes fusion: ensembling boxes from different object detection
models") averages the coordinates of matched boxes, weighted by score and member weight, where NMS and soft-NMS keep
one box of each cluster. The member protocol and the structured-fusion machinery are the other tasks'
(:mod:`tunefuse.fusion.structured`); this class only picks the box-merging rule.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from . import structured as S
from .members import check_members
from .output import _Fusion
from ..vision.boxes import FUSIONS


class BoxFusion(_Fusion):
    """Fuse fitted detectors' boxes. ``method``: 'wbf', 'nms' or 'soft-nms'; ``iou_threshold``: the IoU at which
    boxes of different members are one object; ``weights``: None (uniform), one number per member, or 'fit' (greedy
    ensemble selection with replacement on validation mAP, ``n_iter`` rounds). Members are prefit.

    >>> # wbf = BoxFusion([("mnv2", a), ("effnet", b)], weights="fit").fit(X_val, y_val); wbf.predict(X_test)
    """

    def __init__(self, members, *, method: str = "wbf", iou_threshold: float = 0.55, weights=None, n_iter: int = 10):
        self.members = members
        self.method = method
        self.iou_threshold = iou_threshold
        self.weights = weights
        self.n_iter = n_iter

    prefit = True  # _fit_structured reads it: members are fitted detectors

    def fit(self, X: Any, y: Any = None) -> "BoxFusion":
        members = check_members(self.members, required=("fit", "predict_scores"))
        task = S.task_of(members)
        if task is None or not hasattr(task, "box_fusion"):
            raise ValueError(f"BoxFusion fuses object detectors; the members solve "
                             f"{getattr(task, 'name', 'classification')!r}: fix: use Voting or EnsembleSelection")
        if self.method not in FUSIONS:
            raise ValueError(f"method={self.method!r} is not one of {list(FUSIONS)}")
        if not isinstance(self.iou_threshold, float) or not 0 < self.iou_threshold < 1:
            raise ValueError(f"iou_threshold={self.iou_threshold!r} is invalid; fix: pass a float in (0, 1), e.g. 0.55")
        fit_w = isinstance(self.weights, str) and self.weights == "fit"
        weights = None
        if not fit_w and self.weights is not None:
            weights = np.asarray(self.weights, dtype=float)
            if weights.shape != (len(members),) or np.any(weights < 0) or weights.sum() <= 0:
                raise ValueError(f"weights={self.weights!r} is invalid; fix: pass None, 'fit' or {len(members)} "
                                 "non-negative numbers with a positive sum")
            weights = weights / weights.sum()
        task = dataclasses.replace(task, box_fusion=self.method, box_iou=self.iou_threshold)
        return self._fit_structured(task, members, X, y, select="metric" if fit_w else None, weights=weights,
                                    n_iter=self.n_iter)
