"""Rows of a CTR log -> integer arrays: vocabularies with an out-of-vocabulary bucket, feature hashing, multi-hot
fields, standardised numbers and users' histories. JSON in and out (a checkpoint never pickles an encoder).

Index 0 is padding (an empty multi-hot slot, a missing history position), index 1 the out-of-vocabulary bucket every
value unseen in training maps to (counted, and reported by :class:`UnseenIdsWarning` at predict time), 2.. the values
the training rows contain. A hashed field maps every value to ``2 + murmurhash3(value) % buckets``: no vocabulary
to store, no OOV, collisions instead (Weinberger et al., 2009, Feature Hashing for Large Scale Multitask Learning).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PAD, OOV = 0, 1


class UnseenIdsWarning(UserWarning):
    """Ids unseen in training reached a model: they share the out-of-vocabulary embedding (never an error)."""


@dataclass
class Field:
    name: str
    kind: str  # "id" (one value a row), "multi" (a list of values a row), "numeric", "history" (item ids, in time)
    vocab: list[str] = field(default_factory=list)  # the known values, index 2 + position; empty for numeric/hashed
    buckets: int | None = None  # feature hashing instead of a vocabulary
    shares: str | None = None  # a history field reads the item field's vocabulary and embeddings
    mean: float = 0.0  # numeric standardisation, from the training rows
    std: float = 1.0

    @property
    def size(self) -> int:
        """Rows of this field's embedding table (padding and OOV included)."""
        return 2 + (self.buckets if self.buckets else len(self.vocab))


def _column(X: pd.DataFrame, name: str, role: str) -> pd.Series:
    if name not in X.columns:
        raise ValueError(f"X has no column {name!r} (the task's {role} column); columns are {list(X.columns)[:20]}; "
                         f"fix: rename the column or pass the task option, e.g. CTR({role}={list(X.columns)[0]!r})")
    return X[name]


def _id_strings(s: pd.Series, role: str) -> np.ndarray:
    """Ids as strings (1, 1.0 and '1' are one id); missing ids are an error naming the rows."""
    missing = s.isna().to_numpy()
    if missing.any():
        rows = np.flatnonzero(missing)[:5].tolist()
        raise ValueError(f"column {s.name!r} ({role}) has {int(missing.sum())} missing ids (rows {rows}...); fix: "
                         f"drop those rows or fill them, e.g. X[{s.name!r}] = X[{s.name!r}].fillna('unknown') (an "
                         "id never seen in training shares the out-of-vocabulary embedding)")
    if pd.api.types.is_float_dtype(s) and np.all(np.mod(s.to_numpy(), 1) == 0):
        s = s.astype(np.int64)  # a column of ints read with a NaN elsewhere, or from CSV as floats
    return s.astype(str).to_numpy()


def _lists(s: pd.Series, sep: str, role: str) -> list[list]:
    """A multi-hot or history column as lists: lists/tuples/arrays as they are, strings split on ``sep``, a missing
    value or an empty string as an empty list (documented default: no values)."""
    out = []
    for i, v in enumerate(s.tolist()):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append([])
        elif isinstance(v, str):
            out.append([t for t in v.split(sep) if t] if v else [])
        elif isinstance(v, (list, tuple, np.ndarray, pd.Series)):
            out.append(list(v))
        else:
            raise ValueError(f"column {s.name!r} ({role}) row {i} is {v!r}; fix: pass a list of values or a string "
                             f"of values separated by {sep!r}")
    return out


def _strings(values: list) -> np.ndarray:
    flat = pd.Series(values, dtype=object)
    if len(flat) and flat.isna().any():
        raise ValueError("a multi-hot or history list holds a missing value; fix: drop None/NaN from the lists")
    return _id_strings(pd.Series(flat.tolist()), "list value") if len(flat) else np.array([], dtype=str)


def _vocab(values: np.ndarray, min_count: int) -> list[str]:
    uniq, counts = np.unique(values, return_counts=True)
    return uniq[counts >= min_count].tolist()  # sorted: the same rows give the same indices in any order


class FeatureEncoder:
    """The fitted field layout of a CTR task: what :meth:`transform` turns a DataFrame into.

    ``oov_`` after each call: per field, the number of values that were out of vocabulary.
    """

    pad_token_id = PAD  # the estimator's collate reads it; CTR batches need no padding token

    def __init__(self, fields: list[Field]):
        self.fields = fields
        self.oov_: dict[str, int] = {}

    def __getitem__(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, X: pd.DataFrame, task) -> "FeatureEncoder":
        """Vocabularies and numeric statistics of ``task``'s columns on the training rows ``X``."""
        hashed = dict(task.hash_buckets)
        fields = []
        ids = [(task.user, "user"), (task.item, "item")] + [(c, "categorical") for c in task.categorical]
        for name, role in ids:
            values = _id_strings(_column(X, name, role), role)
            fields.append(Field(name, "id", buckets=hashed.get(name)) if name in hashed else
                          Field(name, "id", vocab=_vocab(values, task.min_count)))
        for name in task.multi_hot:
            values = _strings([v for row in _lists(_column(X, name, "multi_hot"), task.sep, "multi_hot")
                               for v in row])
            fields.append(Field(name, "multi", buckets=hashed.get(name)) if name in hashed else
                          Field(name, "multi", vocab=_vocab(values, 1)))
        for name in task.numeric:
            x = _numbers(_column(X, name, "numeric"))
            finite = x[np.isfinite(x)]
            mean = float(finite.mean()) if len(finite) else 0.0
            std = float(finite.std()) if len(finite) > 1 else 1.0
            fields.append(Field(name, "numeric", mean=mean, std=std if std > 0 else 1.0))
        if task.history:
            fields.append(Field(task.history, "history", shares=task.item))
        return cls(fields)

    # ------------------------------------------------------------------ transform
    def _index(self, f: Field, values: np.ndarray) -> np.ndarray:
        if f.buckets:  # hashing: every value has a bucket, nothing is out of vocabulary
            from sklearn.utils import murmurhash3_32

            self.oov_.setdefault(f.name, 0)
            return np.array([2 + murmurhash3_32(v, positive=True) % f.buckets for v in values], dtype=np.int64)
        idx = pd.Index(f.vocab).get_indexer(values) if len(values) else np.array([], dtype=np.int64)
        self.oov_[f.name] = self.oov_.get(f.name, 0) + int((idx < 0).sum())
        return np.where(idx < 0, OOV, idx + 2).astype(np.int64)

    def transform(self, X: pd.DataFrame, task, max_history: int) -> dict[str, np.ndarray]:
        """Arrays of ``X``: ``ids`` (n, id fields), ``multi:<name>`` (n, k) padded, ``numeric`` (n, numeric fields)
        standardised, ``history`` (n, <= max_history) padded with the most recent item last."""
        self.oov_ = {}
        n = len(X)
        out: dict[str, np.ndarray] = {}
        id_fields = [f for f in self.fields if f.kind == "id"]
        roles = {task.user: "user", task.item: "item"}
        out["ids"] = np.stack([self._index(f, _id_strings(_column(X, f.name, roles.get(f.name, "categorical")),
                                                            roles.get(f.name, "categorical"))) for f in id_fields], 1)
        for f in self.fields:
            if f.kind in ("multi", "history"):
                role = "multi_hot" if f.kind == "multi" else "history"
                rows = _lists(_column(X, f.name, role), task.sep, role)
                if f.kind == "history":
                    rows = [r[-max_history:] if max_history else [] for r in rows]
                vocab = self[f.shares] if f.shares else f
                lengths = np.array([len(r) for r in rows], dtype=np.int64)
                before = self.oov_.get(vocab.name, 0)
                flat = self._index(vocab, _strings([v for r in rows for v in r]))
                if f.shares:  # history ids unseen in training: counted under the history's own name
                    self.oov_[f.name], self.oov_[vocab.name] = self.oov_[vocab.name] - before, before
                width = max(1, int(lengths.max()) if n else 1)
                arr = np.zeros((n, width), dtype=np.int64)
                # right-aligned (most recent item last) for history, left-aligned for multi-hot sets
                cols = np.arange(width)[None, :]
                mask = (cols >= width - lengths[:, None]) if f.kind == "history" else cols < lengths[:, None]
                arr[mask] = flat
                out["history" if f.kind == "history" else f"multi:{f.name}"] = arr
        nums = [f for f in self.fields if f.kind == "numeric"]
        if nums:
            cols = []
            for f in nums:
                x = _numbers(_column(X, f.name, "numeric"))
                cols.append(np.where(np.isfinite(x), (x - f.mean) / f.std, 0.0))  # missing: the training mean
            out["numeric"] = np.stack(cols, 1).astype(np.float32)
        return out

    def report_unseen(self, n_rows: int) -> None:
        """Warn once with the per-field counts of out-of-vocabulary values of the last transform (predict time)."""
        seen = {k: v for k, v in self.oov_.items() if v}
        signature = (n_rows, tuple(sorted(seen.items())))
        if seen and signature != getattr(self, "_reported", None):  # once per input, not once per epoch
            self._reported = signature
            parts = ", ".join(f"{k}: {v}" for k, v in seen.items())
            warnings.warn(f"{n_rows} rows: values unseen in training ({parts}) were mapped to the out-of-vocabulary "
                          "embedding; this is expected for new users and items (see encoder.oov_)", UnseenIdsWarning,
                          stacklevel=4)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {"format": "tunefuse.ctr.features/1", "fields": [vars(f) for f in self.fields]}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureEncoder":
        if d.get("format") != "tunefuse.ctr.features/1":
            raise ValueError(f"features.json has format {d.get('format')!r}, expected 'tunefuse.ctr.features/1'; "
                             "fix: save the model again with this version of tunefuse")
        return cls([Field(**f) for f in d["fields"]])

    def save_pretrained(self, folder) -> None:
        (Path(folder) / "features.json").write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, folder) -> "FeatureEncoder":
        return cls.from_dict(json.loads((Path(folder) / "features.json").read_text()))


def _numbers(s: pd.Series) -> np.ndarray:
    """A numeric column as float64; text in it is an error naming the first bad values, NaN is allowed (it becomes
    the training mean after standardisation: a documented default)."""
    x = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(x) & s.notna().to_numpy()
    if bad.any():
        raise ValueError(f"numeric column {s.name!r} holds non-numbers, e.g. {s[bad].head(3).tolist()} (rows "
                         f"{np.flatnonzero(bad)[:3].tolist()}); fix: clean the column, or declare it as categorical")
    return x


def add_history(X: pd.DataFrame, *, user: str, item: str, time: str, log: pd.DataFrame | None = None,
                max_len: int = 50, column: str = "history") -> pd.DataFrame:
    """A copy of ``X`` with ``column``: each row's user's items in ``log`` (default ``X``) with a time strictly
    before the row's, oldest first, the last ``max_len`` of them. Never an event at or after the row's time, so no
    row sees its own or a later interaction. Vectorised per user (searchsorted over their sorted times)."""
    log = X if log is None else log
    for frame, what in ((X, "X"), (log, "log")):
        for c in (user, item, time):
            _column(frame, c, {user: "user", item: "item", time: "time"}[c])
        if frame[time].isna().any():
            raise ValueError(f"{what}[{time!r}] has missing times; fix: drop or fill those rows")
    ev = log[[user, item, time]].sort_values([user, time], kind="stable")
    by_user = {u: (g[time].to_numpy(), g[item].tolist()) for u, g in ev.groupby(user, sort=False)}
    hist: list[Any] = [None] * len(X)
    users, times = X[user].to_numpy(), X[time].to_numpy()
    for u, rows in pd.Series(np.arange(len(X))).groupby(users).groups.items():
        t_log, items = by_user.get(u, (np.array([]), []))
        rows = np.asarray(rows)
        ends = np.searchsorted(t_log, times[rows], side="left")  # events strictly before the row's time
        for r, e in zip(rows, ends):
            hist[r] = items[max(0, e - max_len):e]
    out = X.copy()
    out[column] = hist
    return out
