"""Experiment: how good a linear probe does the bench's SmolLM2-135M member get out of its frozen features?

The bench's SmolLM2 member (``smol_head`` in bench/fusion_quality.py: first 20 layers, mean-pooled over a prompted
review) is a tunefuse probe: L-BFGS with its L2 strength picked on validation log-loss. This computes the same
features for the 2,000 labelled reviews once, then compares, on the same 5 folds, that probe (as the bench's k-fold
bag) with scikit-learn's logistic regression over a grid of C, on raw and on standardised features:

    python bench/experiments/smollm2_probe.py      # ~6 minutes on 2 cores
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import numpy as np  # noqa: E402
from fusion_quality import smol_head  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from tunefuse.datasets import load_reviews  # noqa: E402
from tunefuse.fusion import Bagging  # noqa: E402


def main() -> None:
    X, y, _, _ = load_reviews(2000, 4000)
    y = np.asarray(y)
    # The bag computes the frozen features of all 2,000 rows once (shared cache); its folds are the ones below
    bag = Bagging(smol_head(verbose=0), mode="kfold", n_splits=5, fold_validation=True).fit(X, y)
    features = bag.members_[0][1].features(list(X["text"]))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    print(f"tunefuse probe (L2 on each held-out fold's log-loss), k-fold bag: out-of-fold acc {bag.oof_score_:.4f}")
    print("C        raw     standardised")
    for C in (0.001, 0.003, 0.01, 0.03, 0.1, 1.0):
        raw = (cross_val_predict(LogisticRegression(C=C, max_iter=5000), features, y, cv=folds) == y).mean()
        std = (cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000)), features,
                                 y, cv=folds) == y).mean()
        print(f"{C:<8} {raw:.4f}  {std:.4f}", flush=True)


if __name__ == "__main__":
    main()
