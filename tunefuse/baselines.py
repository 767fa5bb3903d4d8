"""Classical baselines that fuse with the networks: a member any fusion can stack with a fine-tune."""
from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer


def first_column(X):
    """TF-IDF wants a 1-D sequence of texts; tunefuse members take a 1-column table."""
    return np.asarray(X).reshape(len(X), -1)[:, 0]


def tfidf_logreg():
    """The classical baseline: word 1-2-grams, sublinear TF-IDF, logistic regression."""
    return make_pipeline(FunctionTransformer(first_column), TfidfVectorizer(ngram_range=(1, 2), min_df=2,
                                                                            sublinear_tf=True),
                         LogisticRegression(C=10.0, max_iter=2000))
