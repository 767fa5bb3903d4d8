"""Test-time augmentation: one fitted image model fused with itself over views of each input.

Each view is an invertible or label-preserving change of the image (a flip, a slight zoom); the member scores every
view, dense scores (segmentation maps) are mapped back through the view's inverse, and the task's own ``fuse``
averages them (a detector's boxes: weighted boxes fusion). Views are chosen per dataset: flips only where the task
allows them (``hflip``/``vflip``: trees from above, yes; digits, no), the zoom only for per-image labels (a zoomed
mask would no longer cover the image).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ..vision.images import load_rgb

VIEWS = ("identity", "hflip", "vflip", "zoom")
ZOOM = 0.9  # the centre crop the zoom view keeps (the processor resizes it back)


def _view(img: np.ndarray, view: str) -> np.ndarray:
    if view == "hflip":
        return np.ascontiguousarray(img[:, ::-1])
    if view == "vflip":
        return np.ascontiguousarray(img[::-1])
    if view == "zoom":
        h, w = img.shape[:2]
        dh, dw = int(round(h * (1 - ZOOM) / 2)), int(round(w * (1 - ZOOM) / 2))
        return np.ascontiguousarray(img[dh:h - dh, dw:w - dw])
    return img


def _invert(score: np.ndarray, view: str) -> np.ndarray:
    """A dense score map (classes, H, W) of a flipped view, flipped back onto the original pixels."""
    if view == "hflip":
        return score[..., ::-1]
    if view == "vflip":
        return score[..., ::-1, :]
    return score


def default_views(task) -> tuple[str, ...]:
    views = ["identity"] + [v for v, on in (("hflip", task.hflip), ("vflip", task.vflip)) if on]
    if task.is_classifier:
        views.append("zoom")
    return tuple(views)


class TestTimeAugmentation(ClassifierMixin, BaseEstimator):
    """Average a fitted vision member's scores over ``views`` of each image (None: what the task allows).

    >>> # tta = TestTimeAugmentation(member).fit(X_val, y_val); tta.score(X_test, y_test)
    """

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(self, member, *, views: tuple[str, ...] | None = None):
        self.member = member
        self.views = views

    def fit(self, X=None, y=None):
        """Members are prefit: this checks the member and the views (and takes no data)."""
        t0 = time.perf_counter()
        check_is_fitted(self.member, "model_")
        task = self.member.task_
        if task.modality != "vision":
            raise ValueError(f"test-time augmentation needs an image model; the member solves {task.name!r}: fix: "
                             "fuse text members with Voting or EnsembleSelection")
        views = tuple(self.views) if self.views is not None else default_views(task)
        bad = [v for v in views if v not in VIEWS]
        if bad or not views:
            raise ValueError(f"views={self.views!r} has unknown views {bad}; valid: {list(VIEWS)}")
        if not task.is_classifier and "zoom" in views:
            raise ValueError("views='zoom' changes which pixel is where, so segmentation maps cannot be mapped back; "
                             "fix: use flips only, e.g. views=('identity', 'hflip')")
        self.views_, self.task_, self.labels_ = views, task, self.member.labels_
        if task.is_classifier:
            self.classes_ = self.member.classes_
        self.fit_time_ = time.perf_counter() - t0
        return self

    def predict_scores(self, X: Any):
        check_is_fitted(self, "views_")
        images = [load_rgb(x, f"X[{i}]") for i, x in enumerate(self.task_.check_X(X))]
        per_view = []
        for view in self.views_:
            scores = self.member.predict_scores([_view(img, view) for img in images])
            invert = getattr(self.task_, "flip_scores", _invert)  # a detector's boxes flip back their own way
            per_view.append(scores if self.task_.is_classifier else [invert(s, view) for s in scores])
        return self.task_.fuse(per_view, None)

    @available_if(lambda self: getattr(self.member, "task_", None) is None or self.member.task_.is_classifier)
    def predict_proba(self, X: Any) -> np.ndarray:
        return np.asarray(self.predict_scores(X))

    def predict(self, X: Any):
        X = self.task_.check_X(X)
        return self.task_.decode(X, self.predict_scores(X), self.labels_)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        X = self.task_.check_X(X)
        return float(self.task_.metric(self.task_.check_y(y, X), self.predict(X)))
