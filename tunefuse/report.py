"""A report folder with the pictures people would rather look at than read: learning curves, leaderboard,
calibration. Written atomically (temp folder, then rename)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .checkpoint import atomic_folder


def write_report(path, board: pd.DataFrame, histories: dict[str, list[dict]],
                 probas: dict[str, np.ndarray], y_test: np.ndarray, classes: np.ndarray) -> Path:
    """Write ``leaderboard.csv``, ``leaderboard.png``, ``learning_curves.png`` and ``calibration.png`` into ``path``.

    ``probas`` maps model names to test-set probabilities (the binary calibration plot uses the last class).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed (CI, servers)
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    with atomic_folder(path) as tmp:
        board.to_csv(tmp / "leaderboard.csv", index=False)

        fig, ax = plt.subplots(figsize=(7, 0.35 * len(board) + 1.2))
        order = board.sort_values("test_score")
        colors = ["tab:orange" if k != "member" else "tab:blue" for k in order["kind"]]
        ax.barh(order["model"], order["test_score"], color=colors)
        lo = max(0.0, float(order["test_score"].min()) - 0.02)
        ax.set_xlim(lo, min(1.0, float(order["test_score"].max()) + 0.01))
        ax.set_xlabel("test accuracy (blue: members, orange: fusions)")
        ax.set_title("Leaderboard")
        fig.tight_layout()
        fig.savefig(tmp / "leaderboard.png", dpi=110)
        plt.close(fig)

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for name, hist in histories.items():
            # probe records are points of an L2 grid solved by L-BFGS, not epochs: the curves show epochs only
            hist = [h for h in hist if h.get("stage") != "probe"]
            if not hist:
                continue
            steps = np.arange(1, len(hist) + 1)
            a1.plot(steps, [h["train_loss"] for h in hist], marker="o", label=name)
            if any("val_score" in h for h in hist):
                a2.plot(steps, [h.get("val_score", np.nan) for h in hist], marker="o", label=name)
        a1.set(title="training loss per epoch", xlabel="epoch (fine-tuning stages)", ylabel="loss")
        a2.set(title="validation accuracy per epoch", xlabel="epoch (fine-tuning stages)", ylabel="accuracy")
        a1.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(tmp / "learning_curves.png", dpi=110)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(4.8, 4.4))
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
        positive = np.asarray(y_test) == classes[-1]
        for name, p in probas.items():
            frac, mean = calibration_curve(positive, p[:, -1], n_bins=10, strategy="quantile")
            ax.plot(mean, frac, marker=".", label=name)
        ax.set(title=f"calibration (class {classes[-1]!r})", xlabel="predicted probability",
               ylabel="observed frequency")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(tmp / "calibration.png", dpi=110)
        plt.close(fig)
    return Path(path)
