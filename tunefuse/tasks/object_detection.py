"""Object detection: an image in, boxes (x1, y1, x2, y2) with labels and scores out (Faster R-CNN on a CNN's FPN).

Images are resized whole to ``image_size`` (boxes with them). With ``tile`` set, images larger than a tile are cut
into overlapping tiles: each tile is one training/inference unit (a crown cut by a tile border is kept, clipped, when
``min_visible`` of it is inside), and a large image is predicted tile by tile and the tiles' boxes merged (sliced
inference). The score of an image is its detections in its own pixels; members fuse by weighted boxes fusion (or NMS,
soft-NMS: ``box_fusion``). The metric is COCO mAP@[.5:.95] (torchmetrics over faster-coco-eval).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from ..vision.boxes import FUSIONS, as_targets, crop_target, fuse_boxes, merge_tiles, tiles
from ..vision.images import ImageProcessor, load_rgb, pixel_keys
from .base import Encoded, check_weights, encode_labels
from .image_classification import PIXELS_PER_TOKEN, ImageClassification

PAD_RGB = (124, 116, 104)  # ImageNet's mean colour: a padded tile margin normalises to about 0
# detections per image the metric reads: a whole aerial image holds hundreds of crowns (COCO's 100 is for photos)
MAX_DETECTIONS = 1000


def mean_average_precision(y_true: Sequence[dict], y_pred: Sequence[dict]) -> dict[str, float]:
    """COCO mAP@[.5:.95], mAP@0.5 and mAP@0.75 of predicted against true boxes (labels compared as values)."""
    from torchmetrics.detection import MeanAveragePrecision

    vocab = {v: i for i, v in enumerate(sorted({str(v) for t in list(y_true) + list(y_pred) for v in t["labels"]}))}

    def rows(targets, with_scores):
        out = []
        for t in targets:
            d = {"boxes": torch.as_tensor(np.asarray(t["boxes"], dtype=np.float32).reshape(-1, 4)),
                 "labels": torch.as_tensor([vocab[str(v)] for v in t["labels"]], dtype=torch.int64)}
            if with_scores:
                d["scores"] = torch.as_tensor(np.asarray(t["scores"], dtype=np.float32))
            out.append(d)
        return out

    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_pred)} predictions for {len(y_true)} images; fix: predict on the images the targets "
                         "belong to")
    m = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval",
                             max_detection_thresholds=[1, 10, MAX_DETECTIONS])
    m.warn_on_many_detections = False  # beyond MAX_DETECTIONS an image's lowest-scored boxes are not read
    m.update(rows(y_pred, True), rows(y_true, False))
    res = m.compute()  # COCO reports -1 where no image has a true box: no truth to find scores 0, not -1
    return {k: max(0.0, float(res[k])) for k in ("map", "map_50", "map_75")}


@dataclass(frozen=True)
class ObjectDetection(ImageClassification):
    """Images -> boxes with labels and scores. ``y``: one {'boxes': (k, 4) x1, y1, x2, y2 pixels, 'labels': (k,)}
    per image. ``tile``: cut larger images into tiles of this side (``tile_overlap`` apart) for training and
    prediction; ``augment``: brightness/contrast jitter and the flips the data allow, boxes flipped with them."""

    name: str = "object-detection"
    auto_model: str = "vision-detection"
    head_names: tuple[str, ...] = ("roi_heads", "rpn", "fpn")
    is_classifier: bool = False
    paper: str = "Ren et al., 2015 (Faster R-CNN); Lin et al., 2017 (feature pyramid networks)"
    vision_model: str = "object-detector"
    probe_applies: bool = False  # a region proposal network and RoI heads: no linear head to probe
    weighted_loss: bool = False  # torchvision's losses are means over sampled anchors of the whole batch
    metric_name: str = "mAP@[.5:.95]"
    # bf16 would round anchors and box coordinates (every 2nd pixel from 256 px on): "auto" keeps detectors in fp32
    bf16_safe: ClassVar[bool] = False
    # AdamW on the whole detector (backbone, new FPN, RPN, RoI heads); tree crowns (bench/tasks_vision.py):
    default_lrs: tuple = (("full", 3e-4), ("lora", 1e-3))
    batchnorm: str = "frozen"  # a batch is a few tiles: statistics stay ImageNet's (Detectron2's FrozenBatchNorm)
    image_size: int | None = None  # None: the tile side, else 512
    tile: int | None = None
    tile_overlap: float = 0.25
    min_visible: float = 0.5
    tile_merge: float = 0.5  # intersection over the smaller box above which two tiles' boxes are one object
    box_fusion: str = "wbf"  # how members' boxes fuse: one of FUSIONS
    box_iou: float = 0.55  # the IoU at which fused boxes are matched (WBF) or suppressed (NMS, soft-NMS)
    # anchor sides in input pixels, one tuple a pyramid level (strides 8, 16, 32, 64)
    anchor_sizes: tuple = ((16, 24), (32, 48), (64, 96), (128, 256))
    detections_per_image: int = 300  # per unit (tile) from the RoI heads
    score_threshold: float = 0.05

    def __post_init__(self):
        checks = [("box_fusion", self.box_fusion in FUSIONS, f"one of {list(FUSIONS)}"),
                  ("box_iou", 0 < self.box_iou < 1, "a float in (0, 1)"),
                  ("tile_overlap", 0 <= self.tile_overlap < 1, "a float in [0, 1)"),
                  ("min_visible", 0 < self.min_visible <= 1, "a float in (0, 1]"),
                  ("tile", self.tile is None or (isinstance(self.tile, int) and self.tile >= 32),
                   "None or an int >= 32 (pixels)")]
        for name, ok, valid in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; fix: pass {valid}")

    @property
    def input_size(self) -> int:
        return self.image_size or self.tile or 512

    def head_options(self) -> dict:
        return {"anchor_sizes": self.anchor_sizes, "detections_per_image": self.detections_per_image,
                "score_threshold": self.score_threshold}

    def check_y(self, y: Any, X: list, param: str = "y") -> list[dict]:
        xname = "X_val" if param == "y_val" else "X"
        return as_targets(y, ImageProcessor().sizes(X, xname), param, names=X)

    def labels(self, y: list[dict]) -> np.ndarray:
        values = [v for t in y for v in t["labels"]]
        if not values:
            raise ValueError("the targets hold no box at all; detection needs boxes to learn from: check the "
                             "annotations")
        return np.unique(np.asarray(values))

    def check_known(self, y: list[dict], labels, param: str = "y") -> None:
        values = [v for t in y for v in t["labels"]]
        if values:
            encode_labels(values, labels, param)

    def windows(self, h: int, w: int) -> list[tuple[int, int, int, int]]:
        return tiles(h, w, self.tile, self.tile_overlap) if self.tile else [(0, 0, w, h)]

    def unit_scale(self, window: tuple[int, int, int, int], side: int) -> list[float]:
        """Network-input pixels per image pixel (x, y, x, y) of a unit: tiles share one scale, an untiled image is
        resized whole to the square."""
        x0, y0, x1, y1 = window
        if self.tile:
            return [side / self.tile] * 4
        return [side / (x1 - x0), side / (y1 - y0)] * 2

    def encode(self, processor, X: list, max_length: int, *, labels=None, y=None, soft=None,
               template: str | None = None) -> Encoded:
        """One unit per tile (per image without ``tile``): decoded, cut, resized once (uint8, in memory)."""
        if soft is not None:
            raise ValueError("detection cannot be distilled from soft targets; fix: fit the student on the fused "
                             "boxes above a score threshold (pseudo-labels), e.g. student.fit(X, [{'boxes': "
                             "p['boxes'][p['scores'] > 0.5], 'labels': p['labels'][p['scores'] > 0.5]} for p in "
                             "fusion.predict(X)])")
        sizes = processor.sizes(X)
        pixels, example, windows, targets = [], [], [], []
        s = processor.size
        for i, (src, (h, w)) in enumerate(zip(X, sizes)):
            wins = self.windows(h, w)
            if not self.tile:
                pixels.append(processor([src]))
            else:  # every tile at one scale: a window smaller than a tile (a small image) is padded, not stretched
                rgb = load_rgb(src, f"X[{i}]")
                crops = []
                for x0, y0, x1, y1 in wins:
                    crop = np.empty((self.tile, self.tile, 3), np.uint8)
                    crop[:] = PAD_RGB
                    crop[: y1 - y0, : x1 - x0] = rgb[y0:y1, x0:x1]
                    crops.append(crop)
                pixels.append(processor(crops))
            for win in wins:
                example.append(i)
                windows.append(win)
                if y is not None:
                    x0, y0, x1, y1 = win
                    t = crop_target(y[i], win, self.min_visible) if self.tile else y[i]
                    scale = np.array(self.unit_scale(win, s), dtype=np.float32)
                    idx = encode_labels(list(t["labels"]), labels, f"y[{i}]")
                    targets.append({"boxes": torch.as_tensor(np.asarray(t["boxes"]) * scale).reshape(-1, 4),
                                    "labels": torch.as_tensor(idx + 1, dtype=torch.int64)})  # 0: background
        pixels = torch.cat(pixels) if pixels else torch.zeros(0, 3, s, s, dtype=torch.uint8)
        cost = np.full(len(example), max(1, 2 * s ** 2 // PIXELS_PER_TOKEN))
        return Encoded(ids=[], example=np.asarray(example, dtype=np.int64),
                       extra={"pixels": pixels, "processor": processor, "sizes": sizes, "windows": windows},
                       targets=targets if y is not None else None, cost=cost, keys=pixel_keys(pixels))

    def collate(self, enc: Encoded, rows: np.ndarray, pad_id: int, train: bool = False) -> tuple[dict, Any]:
        idx = torch.as_tensor(rows)
        pixels = enc.extra["pixels"][idx].float()
        targets = None if enc.targets is None else [dict(enc.targets[r]) for r in rows]
        if train and self.augment:
            n, side = len(rows), pixels.shape[-1]
            bright = torch.empty(n, 1, 1, 1).uniform_(0.8, 1.2)
            contrast = torch.empty(n, 1, 1, 1).uniform_(0.8, 1.2)
            pixels = (pixels * bright).clamp_(0, 255)
            grey = pixels.mean((1, 2, 3), keepdim=True)
            pixels = ((pixels - grey) * contrast + grey).clamp_(0, 255)
            for on, dim, cols in ((self.hflip, -1, (0, 2)), (self.vflip, -2, (1, 3))):
                if not on:
                    continue
                flip = torch.rand(n) < 0.5
                pixels = torch.where(flip.view(n, 1, 1, 1), pixels.flip(dim), pixels)
                for j in np.flatnonzero(flip.numpy()) if targets is not None else []:
                    b = targets[j]["boxes"].clone()
                    b[:, cols[0]], b[:, cols[1]] = side - targets[j]["boxes"][:, cols[1]], \
                        side - targets[j]["boxes"][:, cols[0]]
                    targets[j]["boxes"] = b
        inputs = {"pixel_values": enc.extra["processor"].normalize(pixels)}
        if train and targets is not None:
            inputs["targets"] = targets  # torchvision's detectors take targets in the forward pass
        return inputs, targets

    def logits(self, model, inputs: dict, pooling: str):
        """Training: the sum of the detector's losses. Inference: per unit a (k, 6) array of x1, y1, x2, y2 (input
        pixels), score, label index."""
        out = model(**inputs)
        if isinstance(out, dict):
            return sum(out.values())
        return [torch.cat([d["boxes"], d["scores"][:, None], (d["labels"] - 1)[:, None].float()], 1).float()
                for d in out]

    def loss(self, logits: torch.Tensor, targets: list, label_smoothing: float) -> torch.Tensor:
        """The batch's loss, once per unit: the loop's weighted mean over units gives it back (uniform weights)."""
        return logits.expand(len(targets))

    def scores(self, X: list, enc: Encoded, unit_logits: list[np.ndarray], labels) -> list[dict]:
        """Per image: its detections in its own pixels, tiles merged (boxes, scores, label indices, size)."""
        s = enc.extra["processor"].size
        per_image: list[list] = [[] for _ in X]
        for u, det in enumerate(unit_logits):
            win = enc.extra["windows"][u]
            x0, y0, x1, y1 = win
            d = np.asarray(det, dtype=np.float32).reshape(-1, 6)
            d[:, :4] = d[:, :4] / np.array(self.unit_scale(win, s)) + np.array([x0, y0, x0, y0])
            d[:, :4] = np.clip(d[:, :4], [x0, y0, x0, y0], [x1, y1, x1, y1])  # a padded tile's margin is no image
            per_image[enc.example[u]].append(np.concatenate([d, np.full((len(d), 1), u, np.float32)], 1))
        out = []
        for i, parts in enumerate(per_image):
            d = np.concatenate(parts) if parts else np.zeros((0, 7), np.float32)
            if len(parts) > 1:
                keep, merged = merge_tiles(d[:, :4], d[:, 4], d[:, 5], d[:, 6], self.tile_merge)
                d = d[keep]
                d[:, :4] = merged
            d = d[np.argsort(-d[:, 4], kind="stable"), :6]
            d = d[(d[:, 2] > d[:, 0]) & (d[:, 3] > d[:, 1])]
            out.append({"boxes": d[:, :4], "scores": d[:, 4], "labels": d[:, 5].astype(np.int64),
                        "size": tuple(enc.extra["sizes"][i])})
        return out

    def decode(self, X: list, scores: list[dict], labels) -> list[dict]:
        names = np.asarray(labels)
        return [{"boxes": d["boxes"], "scores": d["scores"], "labels": names[np.asarray(d["labels"], dtype=np.int64)]}
                for d in scores]

    def metric(self, y_true, y_pred) -> float:
        return mean_average_precision(y_true, y_pred)["map"]

    def truth_proba(self, X: list, scores: list, y: list, labels) -> np.ndarray:
        raise ValueError("detections have no per-example probability of the truth, so weights cannot be fitted by "
                         "log-likelihood; fix: use BoxFusion(members) or EnsembleSelection(members), which select "
                         "weights on validation mAP")

    def fuse(self, member_scores: Sequence[list], weights: Sequence[float] | None = None) -> list[dict]:
        w = check_weights(weights, len(member_scores))
        return [fuse_boxes([m[i] for m in member_scores], w, member_scores[0][i]["size"], self.box_fusion,
                           self.box_iou) for i in range(len(member_scores[0]))]

    def flip_scores(self, score: dict, view: str) -> dict:
        """Detections of a flipped view mapped back onto the original image (test-time augmentation)."""
        h, w = score["size"]
        b = np.asarray(score["boxes"], dtype=np.float32).copy()
        if view == "hflip":
            b[:, [0, 2]] = w - b[:, [2, 0]]
        elif view == "vflip":
            b[:, [1, 3]] = h - b[:, [3, 1]]
        return dict(score, boxes=b)
