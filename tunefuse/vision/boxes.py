"""Boxes: checked targets, Pascal-VOC and COCO readers, tiles of large images, and box merging.

A target is what torchvision's detectors take: ``{"boxes": (k, 4) float (x1, y1, x2, y2) in pixels, "labels": (k,)}``.
Large images (aerial, medical) are cut into overlapping tiles for training and predicted tile by tile (sliced
inference, as SAHI does); the tiles' boxes are merged back with :func:`merge_tiles`. Members' boxes fuse with
:func:`fuse_boxes` (weighted boxes fusion, NMS or soft-NMS from the ``ensemble-boxes`` package).
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np

FUSIONS = ("wbf", "nms", "soft-nms")
# pixels a box may pass its image's border before it is an error (VOC's 1-based xmax may equal the width)
EDGE_TOLERANCE = 1.0


def as_targets(y: Any, sizes: Sequence[tuple[int, int]], param: str = "y", names: Sequence[str] | None = None
               ) -> list[dict]:
    """One checked target per image: boxes (k, 4) float32 inside the image, labels (k,) as given.

    Each entry of ``y`` is a dict with ``boxes`` (and ``labels``; absent: every box is ``"object"``) or a bare (k, 4)
    array. ``names`` (the image files, when known) make errors say which file a bad box belongs to.
    """
    if y is None:
        raise ValueError(f"{param}=None: detection needs one target per image, {{'boxes': (k, 4) array of x1, y1, x2, "
                         f"y2, 'labels': (k,)}}; fix: pass {param}, e.g. from tunefuse.vision.read_voc")
    targets = [y] if isinstance(y, dict) else list(y)
    if len(targets) != len(sizes):
        raise ValueError(f"X has {len(sizes)} images but {param} has {len(targets)} targets; pass one per image")
    out = []
    for i, (t, (h, w)) in enumerate(zip(targets, sizes)):
        where = f"{param}[{i}]" + (f" (image {names[i]!r})" if names is not None and isinstance(names[i], str) else "")
        if isinstance(t, dict):
            if "boxes" not in t:
                raise ValueError(f"{where} has keys {sorted(t)}; fix: pass {{'boxes': (k, 4), 'labels': (k,)}}")
            boxes, labels = t["boxes"], t.get("labels")
        else:
            boxes, labels = t, None
        try:
            b = np.asarray(boxes, dtype=np.float64)
            shape = str(b.shape)
        except (TypeError, ValueError):  # ragged rows
            b, shape = np.zeros((0, 3)), f"ragged (rows of {sorted({len(r) for r in boxes})} numbers)"
        if b.size == 0 and b.ndim <= 2 and (b.ndim < 2 or b.shape[-1] in (0, 4)):
            b = np.zeros((0, 4))
        if b.ndim != 2 or b.shape[1] != 4 or not np.isfinite(b).all():
            raise ValueError(f"{where}: boxes have shape {shape}; fix: pass a (k, 4) array of finite "
                             "x1, y1, x2, y2 pixel coordinates")
        if len(b) and b.max() <= 1.0 and min(h, w) > 16:
            raise ValueError(f"{where}: every box lies in [0, 1] on a {w} x {h} image: they look normalised; fix: "
                             "multiply x by the width and y by the height to get pixels")
        lab = np.array(["object"] * len(b), dtype=object) if labels is None else np.asarray(labels, dtype=object)
        if lab.shape != (len(b),):
            raise ValueError(f"{where} has {len(b)} boxes but labels of shape {lab.shape}; pass one label per box")
        bad = np.flatnonzero((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))
        if len(bad):
            raise ValueError(f"{where}: box {bad[0]} {b[bad[0]].tolist()} has x2 <= x1 or y2 <= y1; fix: pass "
                             "(x1, y1, x2, y2) with x2 > x1 and y2 > y1 (convert COCO's x, y, width, height first)")
        t = EDGE_TOLERANCE
        out_of = np.flatnonzero((b[:, 0] < -t) | (b[:, 1] < -t) | (b[:, 2] > w + t) | (b[:, 3] > h + t))
        if len(out_of):
            raise ValueError(f"{where}: box {out_of[0]} {b[out_of[0]].tolist()} lies outside its {w} x {h} image; "
                             "fix: check the coordinates are pixels of this image (not normalised, not of a resized "
                             "copy), or drop the box")
        b = np.clip(b, 0, [w, h, w, h])
        out.append({"boxes": b.astype(np.float32), "labels": lab})
    return out


def read_voc(xml_path, image: str | None = None, label_map: dict | None = None) -> tuple[str, dict]:
    """(image path, target) of a Pascal-VOC annotation file. ``label_map`` renames classes (e.g. {'Dead': 'tree'});
    the image is ``image`` or the file the XML names, beside it."""
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as e:
        raise ValueError(f"annotation file {str(xml_path)!r} could not be read as Pascal-VOC XML ({e}); fix the "
                         "file or drop it") from e
    boxes, labels = [], []
    for k, obj in enumerate(root.iter("object")):
        box = obj.find("bndbox")
        try:
            boxes.append([float(box.find(c).text) for c in ("xmin", "ymin", "xmax", "ymax")])
        except (AttributeError, TypeError, ValueError) as e:
            raise ValueError(f"{str(xml_path)!r}: object {k} has no complete <bndbox> (xmin, ymin, xmax, ymax); fix "
                             "the file") from e
        name = (obj.findtext("name") or "object").strip()
        labels.append((label_map or {}).get(name, name))
    if image is None:
        fname = root.findtext("filename")
        image = str(xml_path.with_name(fname)) if fname else str(xml_path.with_suffix(".png"))
    return image, {"boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4), "labels": np.array(labels, dtype=object)}


def read_coco(json_path, image_root=None, masks: bool = False) -> tuple[list[str], list]:
    """(image paths, targets) of a COCO annotation file: boxes (x, y, w, h converted to x1, y1, x2, y2) labelled with
    category names. ``masks=True`` returns per-image semantic masks instead (category id per pixel, 0 background),
    rasterised from the polygons (run-length masks need ``faster-coco-eval`` or ``pycocotools``)."""
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text())
        images, cats = data["images"], {c["id"]: c["name"] for c in data["categories"]}
        anns = data.get("annotations", [])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{str(json_path)!r} is not a COCO annotation file ({type(e).__name__}: {e}); it needs "
                         "'images', 'categories' and 'annotations'") from e
    root = Path(image_root) if image_root is not None else json_path.parent
    by_image: dict = {im["id"]: [] for im in images}
    for a in anns:
        if a.get("image_id") not in by_image:
            raise ValueError(f"{str(json_path)!r}: annotation {a.get('id')} points at image_id {a.get('image_id')!r} "
                             "which is not in 'images'; fix the file")
        by_image[a["image_id"]].append(a)
    paths, targets = [], []
    for im in images:
        paths.append(str(root / im["file_name"]))
        rows = [a for a in by_image[im["id"]] if not a.get("iscrowd", 0) or masks]
        if masks:
            targets.append(_coco_mask(rows, int(im["height"]), int(im["width"]), str(json_path)))
            continue
        unknown = sorted({a.get("category_id") for a in rows} - set(cats))
        if unknown:
            raise ValueError(f"{str(json_path)!r}: annotations use category ids {unknown[:5]} that 'categories' does "
                             f"not list (it has {sorted(cats)[:10]}); fix the file")
        b = np.array([a["bbox"] for a in rows], dtype=np.float32).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        targets.append({"boxes": b, "labels": np.array([cats[a["category_id"]] for a in rows], dtype=object)})
    return paths, targets


def _coco_mask(anns: list, h: int, w: int, where: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    out = np.zeros((h, w), np.int64)
    for a in sorted(anns, key=lambda a: -a.get("area", 0)):  # small objects drawn last stay visible
        seg = a.get("segmentation")
        if isinstance(seg, list):
            canvas = Image.new("L", (w, h), 0)
            draw = ImageDraw.Draw(canvas)
            for poly in seg:
                draw.polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly) - 1, 2)], fill=1)
            m = np.asarray(canvas, dtype=bool)
        elif isinstance(seg, dict):
            try:
                from faster_coco_eval.core import mask as mask_utils
            except ImportError as e:
                raise ValueError(f"{where}: run-length masks need faster-coco-eval; fix: pip install "
                                 "faster-coco-eval") from e
            rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg.get("counts"), list) else seg
            m = mask_utils.decode(rle).astype(bool)
        else:
            continue
        out[m] = int(a["category_id"])
    return out


def tiles(h: int, w: int, size: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Windows (x0, y0, x1, y1) of side ``size`` covering an h x w image with ``overlap`` (fraction of the side)
    between neighbours; the last window of a row or column is flush with the border. A smaller image is one window."""
    step = max(1, int(round(size * (1 - overlap))))

    def starts(n: int) -> list[int]:
        if n <= size:
            return [0]
        s = list(range(0, n - size, step))
        return s + [n - size]

    return [(x, y, min(x + size, w), min(y + size, h)) for y in starts(h) for x in starts(w)]


def crop_target(target: dict, window: tuple[int, int, int, int], min_visible: float = 0.5) -> dict:
    """The boxes of ``target`` inside ``window``, clipped, in the window's coordinates: a box cut by the border is
    kept when at least ``min_visible`` of its area is inside."""
    x0, y0, x1, y1 = window
    b = np.asarray(target["boxes"], dtype=np.float32)
    c = np.clip(b, [x0, y0, x0, y0], [x1, y1, x1, y1])
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inside = (c[:, 2] - c[:, 0]).clip(0) * (c[:, 3] - c[:, 1]).clip(0)
    keep = inside >= min_visible * np.maximum(area, 1e-9)
    return {"boxes": (c[keep] - [x0, y0, x0, y0]).astype(np.float32), "labels": np.asarray(target["labels"])[keep]}


def _overlaps(box: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection of ``box`` (4,) with each of ``others`` (k, 4), and the two areas."""
    lt, rb = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return np.prod(np.clip(rb - lt, 0, None), axis=1), area(box), area(others)


def _ios(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over the smaller of the two areas."""
    inter, a, b = _overlaps(box, others)
    return inter / np.maximum(np.minimum(a, b), 1e-9)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    inter, a, b = _overlaps(box, others)
    return inter / np.maximum(a + b - inter, 1e-9)


def merge_tiles(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, tile: np.ndarray,
                threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Merge the detections of overlapping tiles: (kept indices, their boxes). Greedy by score, a box absorbs every
    lower-scored box of the same class *from another tile* whose intersection over the smaller box exceeds
    ``threshold``, and grows to their union: a crown cut by one tile's border is a part of the whole crown the next
    tile sees (low IoU, the part inside the whole), and the union restores the whole. Boxes of one tile are left as
    the model's own NMS kept them. SAHI's greedy merge; written by hand because torchvision's NMS only knows IoU and
    suppresses rather than merges. Memory O(n), one pass per kept box."""
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4), np.float32)
    order = np.argsort(-np.asarray(scores), kind="stable")
    b = np.asarray(boxes, dtype=np.float32)[order].copy()
    lab, til = np.asarray(labels)[order], np.asarray(tile)[order]
    alive = np.ones(n, dtype=bool)
    kept, out = [], []
    for i in range(n):
        if not alive[i]:
            continue
        alive[i] = False
        rest = np.flatnonzero(alive)
        match = rest[(lab[rest] == lab[i]) & (til[rest] != til[i])]
        if len(match):
            match = match[_ios(b[i], b[match]) > threshold]
        box = b[i].copy()
        if len(match):
            box[:2] = np.minimum(box[:2], b[match, :2].min(0))
            box[2:] = np.maximum(box[2:], b[match, 2:].max(0))
            alive[match] = False
        kept.append(order[i])
        out.append(box)
    return np.asarray(kept, dtype=np.int64), np.stack(out).astype(np.float32)


def soft_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float = 0.5,
             min_score: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear soft-NMS (Bodla et al., 2017): per class, the best box stays and each box overlapping it by IoU >= ``iou``
    has its score multiplied by (1 - IoU); boxes below ``min_score`` are dropped. Returns the decayed scores. Written
    by hand because ensemble-boxes 1.0.9's ``soft_nms`` returns the undecayed scores (so it suppresses nothing)."""
    boxes, scores, labels = np.asarray(boxes, np.float64), np.asarray(scores, np.float64).copy(), np.asarray(labels)
    keep_b, keep_s, keep_l = [], [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        b, s = boxes[idx], scores[idx]
        while len(s):
            i = int(np.argmax(s))
            keep_b.append(b[i])
            keep_s.append(s[i])
            keep_l.append(c)
            b, s = np.delete(b, i, 0), np.delete(s, i)
            if not len(s):
                break
            o = _iou(keep_b[-1], b)
            s = np.where(o >= iou, s * (1 - o), s)
            b, s = b[s >= min_score], s[s >= min_score]
    if not keep_b:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=labels.dtype)
    return np.stack(keep_b), np.asarray(keep_s), np.asarray(keep_l)


def fuse_boxes(per_member: Sequence[dict], weights: Sequence[float], size: tuple[int, int], method: str = "wbf",
               iou: float = 0.55, skip: float = 0.0) -> dict:
    """Fuse several members' detections of one image: weighted boxes fusion (Solovyev et al., 2021, with
    ``ensemble-boxes``'s implementation: coordinates normalised to [0, 1]), NMS of the pooled boxes (its ``nms``), or
    linear soft-NMS of the pooled boxes (:func:`soft_nms`). Members of weight 0 take no part; pooled boxes carry
    their score times their member's weight over the largest weight. Sorted by score."""
    from ensemble_boxes import nms, weighted_boxes_fusion

    h, w = size
    scale = np.array([w, h, w, h], dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    boxes = [np.clip(np.asarray(d["boxes"], dtype=np.float64).reshape(-1, 4) / scale, 0, 1) for d in per_member]
    scores = [np.asarray(d["scores"], dtype=np.float64) for d in per_member]
    labels = [np.asarray(d["labels"], dtype=np.int64) for d in per_member]
    used = [i for i, b in enumerate(boxes) if len(b) and weights[i] > 0]
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
             "labels": np.zeros(0, np.int64), "size": tuple(size)}
    if not used:
        return empty
    args = ([boxes[i] for i in used], [scores[i] for i in used], [labels[i] for i in used])
    wts = [float(weights[i]) for i in used]
    if method == "wbf":
        b, s, lab = weighted_boxes_fusion(*args, weights=wts, iou_thr=iou, skip_box_thr=skip)
        s = s * sum(wts) / float(weights.sum())  # members that saw no box at all still vote "no box"
    elif method == "nms":
        b, s, lab = nms(*args, weights=wts, iou_thr=iou)
    elif method == "soft-nms":
        top = max(wts)
        b, s, lab = soft_nms(np.concatenate(args[0]), np.concatenate([sc * wt / top for sc, wt in zip(args[1], wts)]),
                             np.concatenate(args[2]), iou, min_score=max(skip, 1e-3))
    else:
        raise ValueError(f"box_fusion={method!r} is not one of {list(FUSIONS)}")
    order = np.argsort(-np.asarray(s), kind="stable")
    return {"boxes": (np.asarray(b).reshape(-1, 4)[order] * scale).astype(np.float32),
            "scores": np.asarray(s)[order].astype(np.float32), "labels": np.asarray(lab)[order].astype(np.int64),
            "size": tuple(size)}


def deepforest_data() -> Path:
    """The folder of tree-crown images with Pascal-VOC boxes that ships in ``deepforest`` (found without importing
    the package, whose import needs pytorch-lightning)."""
    import importlib.util

    spec = importlib.util.find_spec("deepforest")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the tree-crown data needs the deepforest package; fix: pip install --no-deps "
                         "deepforest==2.1.0 (requirements/assets.txt)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def tree_crowns() -> tuple[tuple[list, list], tuple[list, list], tuple[list, list]]:
    """deepforest's tree-crown images as ((train paths, targets), (validation ...), (test ...)): one 2299 x 2472
    training image (574 boxes), two validation images of other sites (98 boxes; "Alive"/"Dead" read as "Tree") and
    one 1249 x 1035 test image (279 boxes)."""
    d = deepforest_data()
    tree = {"Alive": "Tree", "Dead": "Tree"}
    tr = [read_voc(d / "2019_YELL_2_528000_4978000_image_crop2.xml")]
    va = [read_voc(d / "OSBS_029.xml"), read_voc(d / "SOAP_061.xml", label_map=tree)]
    te = [read_voc(d / "2019_YELL_2_541000_4977000_image_crop.xml")]
    unzip = lambda pairs: ([p for p, _ in pairs], [t for _, t in pairs])  # noqa: E731
    return unzip(tr), unzip(va), unzip(te)


def image_size_of(path: str) -> tuple[int, int]:
    from PIL import Image

    if not os.path.isfile(path):
        raise ValueError(f"image file {path!r} does not exist; fix: correct the path")
    with Image.open(path) as im:
        return im.height, im.width
