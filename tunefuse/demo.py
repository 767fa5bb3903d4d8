"""The README's first command: real fine-tunes and their fusion on bundled real data, printed as a leaderboard.

    python -m tunefuse.demo [--train 2000] [--test 4000] [--epochs 2] [--out runs/demo]

Women's E-Commerce reviews (label Rating >= 4): MiniLM-L6 fine-tuned in full and as a linear probe, a TF-IDF +
logistic-regression baseline on the same rows, then stacking, voting, ensemble selection and a greedy soup fitted
on a held-out fifth of the training rows. Prints accuracy and macro-F1 and the leaderboard; writes plots to --out.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from .datasets import load_reviews
from .finetuner import Finetuner


def first_column(X):
    """TF-IDF wants a 1-D sequence of texts; tunefuse members take a 1-column table."""
    return np.asarray(X).reshape(len(X), -1)[:, 0]


def tfidf_logreg():
    """The classical baseline: word 1-2-grams, sublinear TF-IDF, logistic regression."""
    return make_pipeline(FunctionTransformer(first_column), TfidfVectorizer(ngram_range=(1, 2), min_df=2,
                                                                            sublinear_tf=True),
                         LogisticRegression(C=10.0, max_iter=2000))


def main(argv: list[str] | None = None):
    from .fusion import EnsembleSelection, Stacking, Voting, WeightFusion, format_leaderboard, leaderboard
    from .fusion.members import cached
    from .report import write_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=2000, help="labelled training reviews")
    ap.add_argument("--test", type=int, default=4000, help="held-out reviews (the last rows)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N pretrained layers (smoke runs)")
    ap.add_argument("--out", default="runs/demo", help="folder for the leaderboard CSV and the plots")
    args = ap.parse_args(argv)

    X, y, Xt, yt = load_reviews(args.train, args.test)
    tr, va = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    Xtr, ytr, Xva, yva = X.iloc[tr], y[tr], X.iloc[va], y[va]
    print(f"Women's E-Commerce reviews, label Rating>=4: {len(Xtr)} train, {len(Xva)} validation (for early "
          f"stopping and fusion weights), {len(Xt)} test; majority class {max(yt.mean(), 1 - yt.mean()):.4f}")
    overrides = {"num_hidden_layers": args.layers} if args.layers else None
    tuned = {"minilm_full": Finetuner("minilm-l6", "full", epochs=args.epochs, config_overrides=overrides),
             "minilm_head": Finetuner("minilm-l6", "head", config_overrides=overrides)}
    for name, est in tuned.items():
        print(f"fine-tuning {name} ...", flush=True)
        est.fit(Xtr, ytr, X_val=Xva, y_val=yva)
    t0 = time.perf_counter()
    tfidf = tfidf_logreg().fit(Xtr, ytr)
    tfidf.fit_time_ = time.perf_counter() - t0

    members = cached(list(tuned.items()) + [("tfidf_logreg", tfidf)])  # each predicts each split once
    fusions = {"stacking": Stacking(members, prefit=True), "vote_soft": Voting(members, prefit=True),
               "ensemble_selection": EnsembleSelection(members, prefit=True),
               "greedy_soup": WeightFusion(list(tuned.items()), method="greedy_soup")}
    for f in fusions.values():
        f.fit(Xva, yva)
    board = leaderboard({**dict(members), **fusions}, Xva, yva, Xt, yt)
    models = {**dict(members), **fusions}
    probas = {name: models[name].predict_proba(Xt) for name in board["model"]}
    board.insert(4, "test_macro_f1", [f1_score(yt, models[n].classes_[probas[n].argmax(1)], average="macro")
                                      for n in board["model"]])
    print("\n" + format_leaderboard(board))
    best = board.iloc[0]
    member_rows = board[board["kind"] == "member"]
    print(f"\nbest by validation: {best['model']} (test accuracy {best['test_score']:.4f}); best member: "
          f"{member_rows.iloc[0]['model']} ({member_rows.iloc[0]['test_score']:.4f}); TF-IDF + logistic regression: "
          f"{board.set_index('model').loc['tfidf_logreg', 'test_score']:.4f}")
    out = write_report(args.out, board, {n: e.history_ for n, e in tuned.items()}, probas, yt, tuned[
        "minilm_full"].classes_)
    print(f"plots and leaderboard.csv written to {out}/")
    return board


if __name__ == "__main__":
    main()
