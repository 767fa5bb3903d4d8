"""Click-through-rate prediction: a row of ids (user, item, attributes), multi-hot fields, numbers and the user's
history in, the probability of a click out.

A binary classifier over the labels (0, 1): its fusable score is the probability row, so every output fusion,
stacking with a gradient-boosted member, soups and distillation work as for sentence classification. What differs:
inputs are a DataFrame (or a Parquet/CSV path) read through the task's column mapping, the "backbone" is a
behaviour-pretrained start or ``'scratch'`` (tunefuse/ctr), and validation ranks by AUC.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .base import Encoded
from .text_classification import TextClassification


def read_table(X: Any, param: str = "X") -> pd.DataFrame:
    """A DataFrame from a DataFrame, a dict of columns, or a .parquet/.csv/.tsv path; an empty table is an error."""
    if isinstance(X, (str, Path)):
        path = Path(X)
        if not path.is_file():
            raise ValueError(f"{param}={str(X)!r} is not a file; fix: pass a DataFrame or a .parquet/.csv path")
        suffix = "".join(path.suffixes[-2:]) if path.suffix in (".brotli", ".gz") else path.suffix
        readers = {".parquet": pd.read_parquet, ".parquet.brotli": pd.read_parquet, ".csv": pd.read_csv,
                   ".csv.gz": pd.read_csv, ".tsv": lambda p: pd.read_csv(p, sep="\t")}
        if suffix not in readers:
            raise ValueError(f"{param}={str(X)!r}: unknown table format {suffix!r}; valid: {sorted(readers)}")
        try:
            X = readers[suffix](path)
        except Exception as e:  # noqa: BLE001 - an unreadable file is a user error
            raise ValueError(f"{param}={str(X)!r} could not be read ({type(e).__name__}: {str(e)[:120]}); fix: "
                             "check the file") from e
    elif isinstance(X, dict):
        X = pd.DataFrame(X)
    if not isinstance(X, pd.DataFrame):
        raise ValueError(f"{param} is a {type(X).__name__}; the CTR task reads a pandas DataFrame (or a .parquet/.csv "
                         "path) with the task's columns, e.g. tunefuse.ctr.movielens_100k()")
    if len(X) == 0:
        raise ValueError(f"{param} has no rows; fix: pass a non-empty table")
    return X.reset_index(drop=True)


@dataclass(frozen=True)
class CTR(TextClassification):
    """Rows -> P(click). Options are the column mapping and the architecture:

    ``user``, ``item``: id columns; ``categorical``: other id columns (user or item attributes); ``multi_hot``:
    list-valued columns (or strings split on ``sep``), e.g. a movie's genres; ``numeric``: numbers (standardised;
    a missing value becomes the training mean); ``history``: a column of each user's earlier item ids, oldest first
    (``tunefuse.ctr.add_history`` builds it from a log with times, never looking at or after a row's time; an empty
    list is a user without history); ``hash_buckets``: ((column, buckets), ...) hashes those columns instead of
    building a vocabulary; ``min_count``: ids seen fewer times in training share the out-of-vocabulary embedding.
    ``model``: 'deepfm', 'dcn-v2' or 'din' (None: the pretrained start's, or deepfm from scratch); ``embedding_dim``,
    ``hidden``, ``cross_layers``: its sizes (None: the start's, or 16, (128, 64), 2).
    """

    name: str = "ctr"
    auto_model: str = "ctr"
    peft_task_type: str = ""
    head_names: tuple[str, ...] = ("classifier",)
    modality: str = "tabular"
    paper: str = "Guo et al., 2017 (DeepFM); Wang et al., 2021 (DCN V2); Zhou et al., 2018 (DIN)"
    metric_name: str = "roc_auc"
    # CTR networks are trained with Adam at ~1e-3 (DeepFM, DCN V2 papers); LP-FT's second stage moves less
    default_lrs: tuple = (("full", 1e-3), ("lp-ft", 3e-4), ("lora", 3e-3))
    user: str = "user_id"
    item: str = "item_id"
    categorical: tuple[str, ...] = ()
    multi_hot: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    history: str | None = None
    sep: str = "|"
    max_history: int = 50
    hash_buckets: tuple = ()
    min_count: int = 1
    model: str | None = None
    embedding_dim: int | None = None
    hidden: tuple[int, ...] | None = None
    cross_layers: int | None = None

    def __post_init__(self):
        cols = [self.user, self.item, *self.categorical, *self.multi_hot, *self.numeric] + (
            [self.history] if self.history else [])
        dup = sorted({c for c in cols if cols.count(c) > 1})
        if dup:
            raise ValueError(f"CTR columns {dup} are named twice; fix: give each column one role")
        if not (isinstance(self.max_history, int) and self.max_history >= 0):
            raise ValueError(f"max_history={self.max_history!r} is invalid; fix: pass an int >= 0, e.g. 50")
        if not (isinstance(self.min_count, int) and self.min_count >= 1):
            raise ValueError(f"min_count={self.min_count!r} is invalid; fix: pass an int >= 1")
        hashable = [self.user, self.item, *self.categorical, *self.multi_hot]
        for entry in self.hash_buckets:
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and entry[0] in hashable and
                    isinstance(entry[1], int) and entry[1] >= 2):
                raise ValueError(f"hash_buckets entry {entry!r} is invalid; fix: pass ((column, buckets), ...) with "
                                 f"an id or multi-hot column of {hashable} (a history reads its item column's "
                                 "ids) and buckets an int >= 2, e.g. (('user_id', 2**18),)")

    def check_X(self, X: Any, param: str = "X") -> pd.DataFrame:
        return read_table(X, param)

    def check_y(self, y: Any, X, param: str = "y") -> np.ndarray:
        if y is None:
            raise ValueError(f"{param}=None: CTR needs one 0/1 click label per row; fix: pass {param}, e.g. "
                             "(ratings >= 4).astype(int)")
        if isinstance(y, str) and isinstance(X, pd.DataFrame) and y in X.columns:
            y = X[y]
        v = np.asarray(y).ravel()
        if len(v) != len(X):
            raise ValueError(f"{param} has {len(v)} labels for {len(X)} rows; fix: pass one label per row")
        if v.dtype == bool:
            return v.astype(np.int64)
        try:
            f = v.astype(np.float64)
        except (TypeError, ValueError):
            f = np.full(len(v), np.nan)
        bad = ~np.isin(f, (0.0, 1.0))
        if bad.any():
            raise ValueError(f"{param} must be 0/1 clicks; found {sorted(set(map(str, v[bad][:5])))} (rows "
                             f"{np.flatnonzero(bad)[:3].tolist()}); fix: binarise it, e.g. y = (rating >= 4)")
        return f.astype(np.int64)

    def labels(self, y: np.ndarray) -> np.ndarray:
        if len(np.unique(y)) < 2:
            raise ValueError(f"y holds only {np.unique(y).tolist()}: a CTR model needs clicks and non-clicks; check "
                             "the label column and the filtering that produced it")
        return np.array([0, 1])

    def encode(self, encoder, X: pd.DataFrame, max_length: int, *, labels=None, y=None, soft=None,
               template: str | None = None) -> Encoded:
        """One unit per row: the encoder's arrays (ids unseen in training go to the OOV bucket and are counted)."""
        arrays = encoder.transform(X, self, max_length)
        if y is None and soft is None:
            encoder.report_unseen(len(X))  # predict time: say how many ids were unknown
        tensors = {k: torch.as_tensor(v) for k, v in arrays.items()}
        keys = _row_keys(arrays)
        return Encoded(ids=[], example=np.arange(len(X)), extra={"arrays": tensors, "oov": dict(encoder.oov_)},
                       targets=self.targets(len(X), labels, y, soft), cost=np.ones(len(X), dtype=np.int64),
                       keys=keys)

    def collate(self, enc: Encoded, rows: np.ndarray, pad_id: int, train: bool = False) -> tuple[dict, Any]:
        idx = torch.as_tensor(rows)
        inputs = {k: v[idx] for k, v in enc.extra["arrays"].items()}
        return inputs, None if enc.targets is None else enc.targets[idx]

    def logits(self, model, inputs: dict, pooling: str) -> torch.Tensor:
        return model(**inputs)

    def scores_metric(self, y_true, scores, sample_weight=None) -> float:
        """Validation ranks CTR models by AUC (accuracy says little at a 55 % click rate)."""
        from ..ctr.metrics import auc

        return auc(y_true, np.asarray(scores)[:, 1], sample_weight)


def _row_keys(arrays: dict[str, np.ndarray]) -> list[bytes]:
    """One content key a row (the feature cache of the probe): its encoded ids and numbers."""
    parts = [np.ascontiguousarray(arrays[k]).view(np.uint8).reshape(len(arrays[k]), -1) for k in sorted(arrays)]
    shape = repr([(k, arrays[k].shape[1:]) for k in sorted(arrays)]).encode()  # widths differ between calls
    rows = np.concatenate(parts, 1)
    return [shape + r.tobytes() for r in rows]
