"""The README's first command: a real fine-tune on bundled real data, printed beside a TF-IDF baseline.

    python -m tunefuse.demo [--train 2000] [--test 4000] [--epochs 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from .datasets import load_reviews
from .finetuner import Finetuner


def first_column(X):
    """TF-IDF wants a 1-D sequence of texts; tunefuse members take a 1-column table."""
    return np.asarray(X).reshape(len(X), -1)[:, 0]


def tfidf_logreg():
    return make_pipeline(FunctionTransformer(first_column), TfidfVectorizer(ngram_range=(1, 2), min_df=2,
                                                                            sublinear_tf=True),
                         LogisticRegression(C=10.0, max_iter=2000))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=2000, help="labelled training reviews")
    ap.add_argument("--test", type=int, default=4000, help="held-out reviews (the last rows)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N pretrained layers (smoke runs)")
    args = ap.parse_args(argv)

    X, y, Xt, yt = load_reviews(args.train, args.test)
    print(f"Women's E-Commerce reviews: {len(X)} train, {len(Xt)} test, label Rating>=4, "
          f"majority class {max(yt.mean(), 1 - yt.mean()):.4f}")
    overrides = {"num_hidden_layers": args.layers} if args.layers else None
    models = {"minilm-l6 full fine-tune": Finetuner("minilm-l6", epochs=args.epochs, config_overrides=overrides),
              "tfidf + logistic regression": tfidf_logreg()}
    rows = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        model.fit(X, y)
        fit_s = time.perf_counter() - t0
        pred = model.predict(Xt)
        rows[name] = {"accuracy": accuracy_score(yt, pred), "macro_f1": f1_score(yt, pred, average="macro"),
                      "fit_s": fit_s}
    print(f"\n{'model':30s} {'accuracy':>9s} {'macro-F1':>9s} {'fit s':>7s}")
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["accuracy"]):
        print(f"{name:30s} {r['accuracy']:9.4f} {r['macro_f1']:9.4f} {r['fit_s']:7.1f}")
    return rows


if __name__ == "__main__":
    main()
