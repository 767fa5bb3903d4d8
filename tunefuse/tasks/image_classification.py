"""Image classification: one image in, one class out, on a pretrained CNN (tunefuse/vision).

Scores, decoding, the metric, the probe and output-space fusion are sentence classification's (a class-probability
row per example); what differs is the input: images decoded once into uint8 tensors, augmented during training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..vision.images import as_images, augment_batch, pixel_keys
from .base import Encoded
from .text_classification import TextClassification

# Inference batches hold PREDICT_TOKENS token-equivalents; one image costs (side / 11)^2 of them: 64 px images
# then run 120 a batch, 224 px ones 10 (bench: MobileNetV2 at 64 px is fastest from batch 128 up).
PIXELS_PER_TOKEN = 121


@dataclass(frozen=True)
class ImageClassification(TextClassification):
    """Images -> one label each. ``image_size``: the side images are resized to (None: the backbone's, 224);
    ``augment``: random resized crop (scale 0.8-1) and colour jitter while training; ``hflip``/``vflip``: add flips
    where the data allow them (photos, aerial images; not digits or text)."""

    name: str = "image-classification"
    auto_model: str = "vision"
    peft_task_type: str = ""
    head_names: tuple[str, ...] = ("classifier",)
    modality: str = "vision"
    vision_model: str = "image-classifier"  # the network tunefuse/vision/models.py builds around the backbone
    paper: str = "Kornblith et al., 2019, Do Better ImageNet Models Transfer Better?"
    # stage-2 learning rates when lr=None. Full: CNNs with BatchNorm fine-tune at ~20x a transformer's (mnist_5k,
    # MobileNetV2, 3 epochs of AdamW: 1e-3 gives 0.979 test accuracy, 3e-4 0.959). LP-FT: its BatchNorm statistics
    # stay frozen (see batchnorm), which makes the network fragile: on 300 digits at 32 px one epoch after the probe
    # (0.695) gave 0.73 at 1e-5, 0.675 at 3e-5, 0.555 at 1e-4, 0.21 at 3e-4.
    default_lrs: tuple = (("full", 1e-3), ("lp-ft", 1e-5), ("lora", 3e-3))
    # BatchNorm running statistics while fine-tuning: "auto" keeps them frozen after a probe stage (LP-FT) and
    # updates them otherwise; "train" always updates, "frozen" never (small batches, or data close to ImageNet)
    batchnorm: str = "auto"
    # Keep the backbone's stem (its first convolution and block: generic edge and colour detectors at the highest
    # resolution, where backward passes cost most) frozen in full fine-tuning, as Detectron2's freeze_at does. Off by
    # default: on mnist_5k at 64 px (bench/tasks_vision.py, 5 epochs, seed 0) it cost 0.57 points of test accuracy
    # (0.9803 vs 0.9860, 95 % interval [-1.03, -0.13]) for a 1.02-1.16x faster fit (1.24x a training step).
    freeze_stem: bool = False
    image_size: int | None = None
    augment: bool = True
    hflip: bool = False
    vflip: bool = False

    def check_X(self, X: Any, param: str = "X") -> list:
        return as_images(X, param)

    def check_y(self, y: Any, X: list, param: str = "y") -> np.ndarray:
        if y is None:
            raise ValueError(f"{param}=None: image classification needs one label per image; fix: pass {param}, e.g. "
                             "X, y = tunefuse.vision.image_folder('photos/')")
        return super().check_y(y, X, param)

    def encode(self, processor, X: list, max_length: int, *, labels=None, y=None, soft=None,
               template: str | None = None) -> Encoded:
        """One unit per image: decoded, resized and cropped once (uint8, in memory)."""
        pixels = processor(X)
        cost = np.full(len(X), max(1, processor.size ** 2 // PIXELS_PER_TOKEN))
        return Encoded(ids=[], example=np.arange(len(X)), extra={"pixels": pixels, "processor": processor},
                       targets=self.targets(len(X), labels, y, soft), cost=cost, keys=pixel_keys(pixels))

    def collate(self, enc: Encoded, rows: np.ndarray, pad_id: int, train: bool = False) -> tuple[dict, Any]:
        idx = torch.as_tensor(rows)
        pixels = enc.extra["pixels"][idx]
        if train and self.augment:
            pixels = augment_batch(pixels, self.hflip, self.vflip)
        inputs = {"pixel_values": enc.extra["processor"].normalize(pixels)}
        return inputs, None if enc.targets is None else enc.targets[idx]

    def logits(self, model, inputs: dict, pooling: str) -> torch.Tensor:
        return model(**inputs)

    def frozen_modules(self, model) -> list[str]:
        """Modules a full fine-tune leaves frozen: the backbone's declared stem when ``freeze_stem``."""
        return [f"backbone.{m}" for m in getattr(model.config, "stem", [])] if self.freeze_stem else []
