"""Images in: the inputs a vision user has (files, folders, CSVs of paths, arrays, PIL images), decoded once.

Every image is decoded with Pillow, converted to RGB (grey and RGBA are converted, not refused), resized so its
shorter side is the model's input size and centre-cropped to a square, then kept as a uint8 tensor (3, S, S):
a quarter of the memory of float32, normalised per batch. Decoded images are cached per process (by path, size
and modification time), so every member of an ensemble decodes a file once. Augmentation (torchvision's
transforms v2) runs on the uint8 batch during training only.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CACHE_BYTES = 2 << 30  # decoded-image cache budget (2 GiB of uint8 tensors); the oldest entries leave first
_cache: dict[tuple, torch.Tensor] = {}
_cache_bytes = 0


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "convert")


def as_images(X: Any, param: str = "X") -> list:
    """``X`` as a list of image sources: file paths (str/Path), PIL images, or arrays (H, W), (H, W, C), (C, H, W).

    Accepts a list of those, a numpy array (N, H, W) or (N, H, W, C), a 1-column DataFrame/Series of paths.
    """
    if hasattr(X, "iloc"):  # a DataFrame column or a Series of paths
        if getattr(X, "ndim", 1) == 2:
            if X.shape[1] != 1:
                raise ValueError(f"{param} has {X.shape[1]} columns {list(X.columns)[:5]}; pass one column of image "
                                 "paths, e.g. df[['path']]")
            X = X.iloc[:, 0]
        X = X.tolist()
    if isinstance(X, (str, os.PathLike)):
        hint = "tunefuse.vision.image_folder(path)" if os.path.isdir(X) else "[path]"
        raise TypeError(f"{param}={str(X)!r} is a single path; pass a list of images, e.g. X, y = {hint}")
    if isinstance(X, np.ndarray):
        if X.dtype == object and X.ndim == 2 and X.shape[1] == 1:  # one column of images (sklearn's meta-estimators)
            X = list(X[:, 0])
        elif X.dtype == object:
            X = list(X)
        elif X.ndim in (3, 4):
            X = list(X)
        else:
            raise ValueError(f"{param} is an array of shape {X.shape}; pass (N, H, W) or (N, H, W, C) images")
    if torch.is_tensor(X):
        X = list(X)
    if not isinstance(X, (list, tuple)):
        raise TypeError(f"{param} of type {type(X).__name__} is not a list of images; pass paths, PIL images or "
                        "arrays (N, H, W[, C])")
    if len(X) == 0:
        raise ValueError(f"{param} is empty (0 images); pass at least one image")
    out = []
    for i, x in enumerate(X):
        if isinstance(x, (str, os.PathLike)):
            out.append(str(x))
        elif _is_pil(x):
            out.append(x)
        elif isinstance(x, np.ndarray) or torch.is_tensor(x):
            a = np.asarray(x)
            if a.ndim not in (2, 3) or (a.ndim == 3 and min(a.shape[0], a.shape[-1]) not in (1, 3, 4)):
                raise ValueError(f"{param}[{i}] is an array of shape {a.shape}; pass (H, W), (H, W, C) or (C, H, W) "
                                 "with C in 1, 3, 4")
            out.append(a)
        else:
            raise TypeError(f"{param}[{i}] is {type(x).__name__}, not an image; pass file paths, PIL images or arrays")
    return out


def _channels_first(a: np.ndarray) -> bool:
    return a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4)


def _to_uint8_hwc(a: np.ndarray, where: str) -> np.ndarray:
    if _channels_first(a):
        a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{where} has NaN or infinite pixels; fix: clean the array")
        hi = a.max() if a.size else 0
        a = np.clip(a * 255.0 if hi <= 1.0 else a, 0, 255).round().astype(np.uint8)  # floats in [0, 1] or 0-255
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 4:  # RGBA: composite on white, as image viewers show it
        rgb, alpha = a[..., :3].astype(np.float32), a[..., 3:4].astype(np.float32) / 255.0
        a = (rgb * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    return a


def _open(path: str):
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise ValueError(f"image file {path!r} does not exist; fix: correct the path or drop that row")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
            elif im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"image file {path!r} could not be decoded ({type(e).__name__}: {str(e)[:120]}); it is not "
                         "an image or it is damaged: fix or drop that file") from e


def load_rgb(src, where: str = "image") -> np.ndarray:
    """One image source as a uint8 RGB array (H, W, 3), at its own size."""
    if isinstance(src, str):
        return _to_uint8_hwc(_open(src), f"image file {src!r}")
    if _is_pil(src):
        return _to_uint8_hwc(np.asarray(src.convert("RGBA") if src.mode in ("RGBA", "LA", "P") else
                                        src.convert("RGB")), where)
    return _to_uint8_hwc(np.asarray(src), where)


def resize_square(rgb: np.ndarray, size: int, crop: bool = True) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) uint8: shorter side to ``size`` (antialiased) and centre crop, or (``crop=
    False``, for dense tasks whose outputs map back to every input pixel) the whole image resized to the square."""
    from torchvision.transforms.v2 import functional as TF

    t = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1)  # owned, writable
    if t.shape[1:] != (size, size):
        t = TF.center_crop(TF.resize(t, size, antialias=True), [size, size]) if crop else \
            TF.resize(t, [size, size], antialias=True)
    return t.contiguous()


def decode(src, size: int, where: str = "image", crop: bool = True) -> torch.Tensor:
    """One image source -> (3, size, size) uint8; files are cached per (path, size, crop, mtime)."""
    global _cache_bytes
    key = None
    if isinstance(src, str):
        try:
            st = os.stat(src)
            key = (src, size, crop, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None  # _open names the missing file
        if key is not None and key in _cache:
            return _cache[key]
    out = resize_square(load_rgb(src, where), size, crop)
    if key is not None:
        _cache[key] = out
        _cache_bytes += out.numel()
        while _cache_bytes > CACHE_BYTES and _cache:
            _cache_bytes -= _cache.pop(next(iter(_cache))).numel()
    return out


def clear_cache() -> None:
    global _cache_bytes
    _cache.clear()
    _cache_bytes = 0


@dataclass(frozen=True)
class ImageProcessor:
    """What a vision model expects of its input: size and normalisation; ``__call__`` decodes a list of sources.

    It plays the tokenizer's part in a Finetuner and is saved beside the weights (preprocessor_config.json).
    """

    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop: bool = True  # False: resize the whole image (dense tasks map outputs back to every pixel)
    pad_token_id: int = 0  # the estimator's collate passes it; images have no padding

    def __call__(self, sources: Sequence, param: str = "X") -> torch.Tensor:
        return torch.stack([decode(s, self.size, f"{param}[{i}]", self.crop) for i, s in enumerate(sources)])

    def sizes(self, sources: Sequence, param: str = "X") -> list[tuple[int, int]]:
        """(H, W) of each source at its own size (dense outputs are resized back to it)."""
        out = []
        for i, s in enumerate(sources):
            if isinstance(s, str):
                from PIL import Image

                try:
                    with Image.open(s) as im:
                        out.append((im.height, im.width))
                except OSError:
                    out.append(tuple(load_rgb(s, f"{param}[{i}]").shape[:2]))  # names the bad file
            elif _is_pil(s):
                out.append((s.height, s.width))
            else:
                a = np.asarray(s)
                out.append(tuple(a.shape[1:3] if _channels_first(a) else a.shape[:2]))
        return out

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float32 normalised, channels-last (the faster layout for convolutions on CPU)."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std).view(1, 3, 1, 1) * 255
        return ((pixels.float() - mean) / std).contiguous(memory_format=torch.channels_last)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k != "pad_token_id"}

    def save_pretrained(self, folder) -> None:
        from ..checkpoint import write_json

        write_json(Path(folder) / "preprocessor_config.json", dict(self.to_dict(), processor="tunefuse.image"))

    @classmethod
    def from_dict(cls, d: dict) -> "ImageProcessor":
        return cls(size=int(d["size"]), mean=tuple(d["mean"]), std=tuple(d["std"]), crop=bool(d.get("crop", True)))


def pixel_keys(pixels: torch.Tensor) -> list[bytes]:
    """One content hash per decoded image: the feature cache's key (members share features of equal images)."""
    return [hashlib.blake2b(p.numpy().tobytes(), digest_size=16).digest() for p in pixels]


def augment_batch(pixels: torch.Tensor, hflip: bool = False, vflip: bool = False,
                  scale: tuple[float, float] = (0.8, 1.0), ratio: tuple[float, float] = (0.9, 1.1),
                  jitter: float = 0.2) -> torch.Tensor:
    """The augmentation of :func:`augmenter`, drawn per image but applied to the whole batch in a few tensor ops:
    random resized crop as one ``affine_grid`` + ``grid_sample``, brightness and contrast as per-image factors,
    flips as a per-image mask. uint8 (N, 3, S, S) in, float32 in [0, 255] out; random numbers from torch's global
    generator (seeded by the fit). Written by hand: torchvision's v2 transforms draw one set of parameters per call,
    so per-image draws cost a Python loop (20 ms of a 215 ms MobileNetV2 step of 32 images at 64 px); kornia does
    this but is not a dependency."""
    import torch.nn.functional as F

    n = pixels.shape[0]
    x = pixels.float()
    area = torch.empty(n).uniform_(*scale)
    log_r = torch.empty(n).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])))
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # crop width and height as fractions of the side
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (torch.rand(n) * 2 - 1) * (1 - w)  # crop centre, in grid coordinates [-1, 1], inside the image
    cy = (torch.rand(n) * 2 - 1) * (1 - h)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if jitter:
        bright = torch.empty(n, 1, 1, 1).uniform_(1 - jitter, 1 + jitter)
        contrast = torch.empty(n, 1, 1, 1).uniform_(1 - jitter, 1 + jitter)
        x = (x * bright).clamp_(0, 255)
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean((1, 2)).view(n, 1, 1, 1)
        x = ((x - grey) * contrast + grey).clamp_(0, 255)
    if hflip:
        x = torch.where((torch.rand(n) < 0.5).view(n, 1, 1, 1), x.flip(-1), x)
    if vflip:
        x = torch.where((torch.rand(n) < 0.5).view(n, 1, 1, 1), x.flip(-2), x)
    return x


def augmenter(size: int, hflip: bool, vflip: bool = False):
    """Training augmentation on uint8 (3, S, S) images (torchvision transforms v2): random resized crop (scale
    0.8-1, so digits and objects stay whole), mild colour jitter, and flips only where the data allow them."""
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
             v2.ColorJitter(brightness=0.2, contrast=0.2)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if vflip:
        steps.append(v2.RandomVerticalFlip())
    return v2.Compose(steps)


def image_folder(path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> tuple[list[str], np.ndarray]:
    """(paths, labels) of a folder with one sub-folder a class (torchvision's ImageFolder layout), sorted."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"image folder {str(path)!r} does not exist or is not a folder; fix: pass a folder with one "
                         "sub-folder a class, e.g. photos/cat/1.jpg, photos/dog/2.jpg")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels, empty = [], [], []
    for c in classes:
        files = sorted(str(f) for f in (root / c).rglob("*") if f.suffix.lower() in suffixes and f.is_file())
        if not files:
            empty.append(c)
        paths += files
        labels += [c] * len(files)
    if len(classes) - len(empty) < 2:
        raise ValueError(f"image folder {str(path)!r} has {len(classes) - len(empty)} class sub-folder(s) with images "
                         f"({classes[:5]}); a classifier needs at least 2: put each class's images in its own "
                         "sub-folder")
    return paths, np.array(labels)


def read_image_csv(path, path_column: str = "path", label_column: str | None = "label") -> tuple[list[str], Any]:
    """(paths, labels) from a CSV of image paths (relative paths are taken from the CSV's folder)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CSV {str(path)!r} does not exist; fix: pass the path of a CSV with a {path_column!r} "
                         "column")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"CSV {str(path)!r} has no rows; fix: add one row per image")
    for col in [path_column] + ([label_column] if label_column else []):
        if col not in rows[0]:
            raise ValueError(f"CSV {str(path)!r} has no column {col!r}; its columns are {list(rows[0])}; fix: pass "
                             f"path_column=/label_column= naming the right ones")
    paths = [r[path_column] if os.path.isabs(r[path_column]) else str(path.parent / r[path_column]) for r in rows]
    return paths, (np.array([r[label_column] for r in rows]) if label_column else None)
