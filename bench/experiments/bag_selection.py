"""Experiment: which extra bags would lift the cross-fitted fusion? Scored on the saved out-of-fold predictions.

Reads the 5-fold bags that ``bench/fusion_quality.py`` saved (their ``oof_proba_`` over the 2,000 labelled reviews),
adds TF-IDF variants fitted here on the same folds, and scores ``EnsembleSelection(prefit="oof")`` over several sets
of bags by its own out-of-fold predictions (its selection rerun on each fold's complement): the score the bench's
validation column shows, without predicting the test rows. Seconds, once the bench has saved its bags.

    python bench/experiments/bag_selection.py [--run-dir runs/bench_fusion_quality]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from sklearn.base import BaseEstimator, ClassifierMixin  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: E402
from sklearn.pipeline import make_pipeline, make_union  # noqa: E402
from sklearn.preprocessing import FunctionTransformer  # noqa: E402

from tunefuse.datasets import load_reviews  # noqa: E402
from tunefuse.demo import first_column, tfidf_logreg  # noqa: E402
from tunefuse.fusion import EnsembleSelection  # noqa: E402


class Saved(ClassifierMixin, BaseEstimator):
    """A cross-fitted member known only by its out-of-fold probabilities (enough for prefit='oof')."""

    def __init__(self, oof=None):
        self.oof = oof

    def fit(self, X, y):
        raise RuntimeError("already fitted: its out-of-fold predictions are all it has")

    def predict_proba(self, X):
        raise RuntimeError("scored out-of-fold only")


def saved(oof: np.ndarray) -> Saved:
    member = Saved(oof)
    member.oof_proba_, member.classes_ = oof, np.array([0, 1])
    return member


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/bench_fusion_quality")
    args = ap.parse_args()
    X, y, _, _ = load_reviews(2000, 4000)
    y = np.asarray(y)
    bag_dirs = sorted(Path(args.run_dir).glob("cv5_train2000_*/cv5_*/arrays.safetensors"))
    if not bag_dirs:
        sys.exit(f"no saved bags under {args.run_dir}: run python bench/fusion_quality.py --members-only first")
    oof = {p.parent.name: load_file(str(p))["oof_proba_"] for p in bag_dirs}
    folds = StratifiedKFold(5, shuffle=True, random_state=0)  # Bagging(mode="kfold")'s folds
    word_char = make_pipeline(FunctionTransformer(first_column), make_union(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)),
        LogisticRegression(C=10.0, max_iter=3000))
    for name, est in (("tfidf", tfidf_logreg()), ("tfidf_word_char", word_char)):
        oof[name] = cross_val_predict(est, X, y, cv=folds, method="predict_proba")
    print("bag                  out-of-fold acc")
    for name, p in oof.items():
        print(f"{name:20s} {(p.argmax(1) == y).mean():.4f}")
    minilm = ["cv5_lpft_lr3e-5", "cv5_full_lr5e-5", "cv5_lora_lr5e-4"]
    sets = {
        "MiniLM bags + TF-IDF": minilm + ["tfidf"],
        "+ SmolLM2 probe": minilm + ["tfidf", "cv5_smol_head"],
        "+ SmolLM2 + second full bag": minilm + ["tfidf", "cv5_smol_head", "cv5_full_lr3e-5"],
        "+ SmolLM2, word+char TF-IDF": minilm + ["tfidf_word_char", "cv5_smol_head"],
    }
    print("\nensemble selection over             out-of-fold acc  log-loss  weights")
    for label, names in sets.items():
        names = [n for n in names if n in oof]
        es = EnsembleSelection([(n, saved(oof[n])) for n in names], prefit="oof").fit(X, y)
        p = es.oof_proba_
        loss = -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean()
        print(f"{label:36s} {(p.argmax(1) == y).mean():.4f}           {loss:.4f}    "
              + " ".join(f"{k}:{v:.2f}" for k, v in es.weights_.items() if v > 0))


if __name__ == "__main__":
    main()
