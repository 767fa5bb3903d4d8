"""Semantic segmentation: an image in, a class per pixel out (an LR-ASPP head on a pretrained CNN).

Images are resized whole (no crop) to ``image_size`` and masks with them (nearest neighbour); the score of an image
is its per-pixel class-probability map resized back to the image's own size, so members with other input sizes fuse
pixel by pixel. The metric is mean IoU over the classes (confusion matrix over every test pixel).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..vision.images import ImageProcessor, pixel_keys
from .base import IGNORE, Encoded, check_weights, cross_entropy, encode_labels
from .image_classification import PIXELS_PER_TOKEN, ImageClassification


def as_masks(y: Any, n: int, param: str = "y") -> list[np.ndarray]:
    """One integer mask (H, W) per image."""
    if y is None:
        raise ValueError(f"{param}=None: segmentation needs one mask (H, W) of class ids per image; fix: pass {param}")
    masks = list(y) if not (isinstance(y, np.ndarray) and y.ndim == 2) else [y]
    if len(masks) != n:
        raise ValueError(f"X has {n} images but {param} has {len(masks)} masks; pass one mask per image")
    out = []
    for i, m in enumerate(masks):
        a = np.asarray(m)
        if a.ndim != 2 or not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise ValueError(f"{param}[{i}] has shape {a.shape} and dtype {a.dtype}; fix: pass an integer array "
                             "(H, W) of class ids, one per pixel")
        out.append(a.astype(np.int64))
    return out


def confusion(y_true: Sequence[np.ndarray], y_pred: Sequence[np.ndarray], labels) -> np.ndarray:
    """Pixel confusion matrix (true class x predicted class) over every image."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    k = len(labels)

    def index(m: np.ndarray) -> np.ndarray:  # position of each pixel's class in ``labels``, vectorised
        pos = order[np.clip(np.searchsorted(labels, m, sorter=order), 0, k - 1)]
        if not np.array_equal(labels[pos], m):
            raise ValueError(f"a mask holds classes {sorted(set(np.unique(m)) - set(labels.tolist()))[:5]} outside "
                             f"{labels.tolist()[:12]}; fix: pass the label set the masks use")
        return pos

    out = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        t, p = np.asarray(t), np.asarray(p)
        if t.shape != p.shape:
            raise ValueError(f"a predicted mask has shape {p.shape} but its true mask {t.shape}; fix: predict on the "
                             "same images the masks belong to")
        out += np.bincount(index(t.ravel()) * k + index(p.ravel()), minlength=k * k).reshape(k, k)
    return out


def mean_iou(cm: np.ndarray) -> float:
    """Mean over classes present in the truth or the predictions of TP / (TP + FP + FN)."""
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def pixel_accuracy(cm: np.ndarray) -> float:
    return float(np.trace(cm) / max(cm.sum(), 1))


@dataclass(frozen=True)
class ImageSegmentation(ImageClassification):
    """Images -> a class id per pixel. Score of an image: its class-probability map (classes, H, W) at the image's
    size; members fuse by the weighted mean of the maps. ``augment``: brightness/contrast jitter and the flips the
    data allow (``hflip``/``vflip``), applied to image and mask together."""

    name: str = "image-segmentation"
    auto_model: str = "vision-segmentation"
    head_names: tuple[str, ...] = ("head",)
    is_classifier: bool = False
    paper: str = "Howard et al., 2019, Searching for MobileNetV3 (the LR-ASPP segmentation head)"
    vision_model: str = "image-segmenter"
    probe_applies: bool = False  # the LR-ASPP decoder is not a linear head: no head-only or LP-FT strategy
    metric_name: str = "mean IoU"

    def check_y(self, y: Any, X: list, param: str = "y") -> list[np.ndarray]:
        masks = as_masks(y, len(X), param)
        xname = "X_val" if param == "y_val" else "X"
        for i, (m, hw) in enumerate(zip(masks, ImageProcessor().sizes(X, xname))):
            if m.shape != hw:
                raise ValueError(f"{param}[{i}] is a mask of shape {m.shape} but image {xname}[{i}] is {hw}; fix: pass "
                                 "masks of their images' height and width")
        return masks

    def labels(self, y: list[np.ndarray]) -> np.ndarray:
        classes = np.unique(np.concatenate([m.ravel() for m in y]))
        if len(classes) < 2:
            raise ValueError(f"the masks hold a single class {classes.tolist()}; segmentation needs at least 2 (e.g. "
                             "background and object): check the masks")
        return classes

    def check_known(self, y: list[np.ndarray], labels, param: str = "y") -> None:
        encode_labels(np.unique(np.concatenate([m.ravel() for m in y])), labels, param)

    def encode(self, processor, X: list, max_length: int, *, labels=None, y=None, soft=None,
               template: str | None = None) -> Encoded:
        from torchvision.transforms.v2 import functional as TF

        sizes = processor.sizes(X)
        pixels = processor(X)
        targets = None
        if y is not None:
            masks = []
            for i, m in enumerate(y):  # shapes were checked against the images in check_y
                idx = torch.as_tensor(encode_labels(m.ravel(), labels, f"y[{i}]").reshape(m.shape))[None]
                masks.append(TF.resize(idx, [processor.size] * 2, interpolation=TF.InterpolationMode.NEAREST)[0])
            targets = torch.stack(masks)
        elif soft is not None:
            targets = torch.stack([F.interpolate(torch.as_tensor(np.asarray(p, dtype=np.float32))[None],
                                                 size=[processor.size] * 2, mode="bilinear")[0] for p in soft])
        cost = np.full(len(X), max(1, 2 * processor.size ** 2 // PIXELS_PER_TOKEN))  # a decoder: twice a classifier
        return Encoded(ids=[], example=np.arange(len(X)), extra={"pixels": pixels, "processor": processor,
                                                                 "sizes": sizes},
                       targets=targets, cost=cost, keys=pixel_keys(pixels))

    def collate(self, enc: Encoded, rows: np.ndarray, pad_id: int, train: bool = False) -> tuple[dict, Any]:
        idx = torch.as_tensor(rows)
        pixels = enc.extra["pixels"][idx].float()
        targets = None if enc.targets is None else enc.targets[idx]
        if train and self.augment:
            n = len(rows)
            bright = torch.empty(n, 1, 1, 1).uniform_(0.8, 1.2)
            pixels = (pixels * bright).clamp_(0, 255)
            for on, dim in ((self.hflip, -1), (self.vflip, -2)):
                if on:
                    flip = torch.rand(n) < 0.5
                    pixels = torch.where(flip.view(n, 1, 1, 1), pixels.flip(dim), pixels)
                    if targets is not None:
                        shape = (n,) + (1,) * (targets.ndim - 1)
                        targets = torch.where(flip.view(shape), targets.flip(dim), targets)
        return {"pixel_values": enc.extra["processor"].normalize(pixels)}, targets

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        """Per image: the mean cross-entropy of its pixels (soft targets: probability maps, channels first)."""
        n, c, h, w = logits.shape
        flat = logits.permute(0, 2, 3, 1).reshape(-1, c)  # one row a pixel: the shared per-row cross-entropy
        if targets.dtype.is_floating_point:
            return cross_entropy(flat, targets.permute(0, 2, 3, 1).reshape(-1, c), label_smoothing).view(n, h, w).mean(
                (1, 2))
        per_pixel = cross_entropy(flat, targets.reshape(-1), label_smoothing).view(n, h, w)
        valid = (targets != IGNORE).float()
        return (per_pixel * valid).sum((1, 2)) / valid.sum((1, 2)).clamp(min=1)

    def scores(self, X: list, enc: Encoded, unit_logits: list[np.ndarray], labels) -> list[np.ndarray]:
        out = []
        for logits, hw in zip(unit_logits, enc.extra["sizes"]):
            t = torch.as_tensor(logits).float()[None]
            if tuple(t.shape[-2:]) != tuple(hw):
                t = F.interpolate(t, size=list(hw), mode="bilinear", align_corners=False)
            out.append(torch.softmax(t[0], 0).numpy())
        return out

    def decode(self, X: list, scores: list[np.ndarray], labels) -> list[np.ndarray]:
        return [np.asarray(labels)[np.asarray(s).argmax(0)] for s in scores]

    def metric(self, y_true, y_pred) -> float:
        labels = np.unique(np.concatenate([np.asarray(m).ravel() for m in list(y_true) + list(y_pred)]))
        return mean_iou(confusion(y_true, y_pred, labels))

    def truth_proba(self, X: list, scores: list, y: list, labels) -> np.ndarray:
        """Per image, the mean probability of each pixel's true class."""
        out = []
        for s, m in zip(scores, y):
            idx = encode_labels(np.asarray(m).ravel(), labels).reshape(np.shape(m))
            out.append(float(np.take_along_axis(np.asarray(s), idx[None], 0).mean()))
        return np.asarray(out)

    def fuse(self, member_scores: Sequence[list], weights: Sequence[float] | None = None) -> list[np.ndarray]:
        w = check_weights(weights, len(member_scores))
        return [sum(wi * np.asarray(s[i], dtype=np.float32) for wi, s in zip(w, member_scores))
                for i in range(len(member_scores[0]))]
