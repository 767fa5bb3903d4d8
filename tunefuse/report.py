"""Pictures people would rather look at than read: images with their predicted labels, masks, boxes. Each is written
atomically (temp file, then rename); the run report (tunefuse/runs/html.py) embeds them."""
from __future__ import annotations

from pathlib import Path

import numpy as np



def plot_image_predictions(path, images, y_true, y_pred, *, title: str = "", n: int = 24, cols: int = 8,
                           other_pred=None, other_name: str = "") -> Path:
    """A grid of images with their predicted labels (green: right, red: wrong) written to ``path`` (PNG, atomic).

    ``images``: arrays (H, W[, C]) or uint8 tensors (3, H, W). ``other_pred``: a second model's labels (e.g. the best
    member under a fusion), printed under each image, so the cases where the two differ can be looked at.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(images))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.65 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        img = np.asarray(images[i])
        if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
            img = np.moveaxis(img, 0, -1)
        ax.imshow(img.squeeze(), cmap="gray" if img.ndim == 2 or img.shape[-1] == 1 else None)
        ok = y_pred[i] == y_true[i]
        label = f"{y_pred[i]} (true {y_true[i]})" if not ok else f"{y_pred[i]}"
        if other_pred is not None:
            label += f"\n{other_name}: {other_pred[i]}"
        ax.set_title(label, fontsize=7, color="tab:green" if ok else "tab:red")
    return _save_png(fig, path, title)


def plot_masks(path, images, true_masks, pred_masks: dict, *, n: int = 6, title: str = "") -> Path:
    """Rows of image | true mask | each model's predicted mask (one colour a class), written to ``path`` (PNG,
    atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(images))
    cols = 2 + len(pred_masks)
    k = int(max(np.max(true_masks[i]) for i in range(n))) + 1
    k = max([k] + [int(np.max(m[i])) + 1 for m in pred_masks.values() for i in range(n)])
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n + 0.4), squeeze=False)
    for i in range(n):
        panels = [("image", images[i], "gray"), ("truth", true_masks[i], "tab20")]
        panels += [(name, m[i], "tab20") for name, m in pred_masks.items()]
        for j, (name, img, cmap) in enumerate(panels):
            ax = axes[i, j]
            ax.axis("off")
            ax.imshow(np.asarray(img).squeeze(), cmap=cmap, vmin=0 if cmap != "gray" else None,
                      vmax=max(k - 1, 1) if cmap != "gray" else None, interpolation="nearest")
            if i == 0:
                ax.set_title(name, fontsize=7)
    return _save_png(fig, path, title)


def plot_boxes(path, image, truth: dict | None, predictions: dict, *, min_score: float = 0.3, title: str = "",
               window: tuple[int, int, int, int] | None = None) -> Path:
    """One panel a model: the image with its boxes of score >= ``min_score`` (orange) over the true boxes (white),
    written to ``path`` (PNG, atomic). ``window`` (x0, y0, x1, y1) zooms on a part of a large image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .vision.images import load_rgb

    rgb = load_rgb(image)
    x0, y0, x1, y1 = window or (0, 0, rgb.shape[1], rgb.shape[0])
    fig, axes = plt.subplots(1, len(predictions), figsize=(4.2 * len(predictions), 4.4), squeeze=False)
    for ax, (name, pred) in zip(axes[0], predictions.items()):
        ax.imshow(rgb[y0:y1, x0:x1], extent=(x0, x1, y1, y0))
        ax.axis("off")
        for b in ([] if truth is None else np.asarray(truth["boxes"])):
            ax.add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="white", lw=0.8))
        shown = np.asarray(pred["scores"]) >= min_score
        for b in np.asarray(pred["boxes"])[shown]:
            ax.add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="tab:orange", lw=1.0))
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)
        ax.set_title(f"{name}: {int(shown.sum())} boxes (score >= {min_score})", fontsize=8)
    return _save_png(fig, path, title)


def _save_png(fig, path, title: str = "") -> Path:
    """Title, lay out and write ``fig`` to ``path`` atomically (temp file, then rename: never a half-written
    picture), then close it."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
