"""Input validation, one-time tokenisation and length-aware batching."""
from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
import torch


def as_texts(X: Any, param: str = "X") -> list[str]:
    """Return ``X`` as a list of str: a list, a 1-D array, a 1-column 2-D array or DataFrame, or a Series."""
    if hasattr(X, "iloc") and getattr(X, "ndim", 1) == 2:  # DataFrame: keep the column name for the message
        if X.shape[1] != 1:
            raise ValueError(f"{param} has {X.shape[1]} columns {list(X.columns)[:5]}; pass one text column, "
                             f"e.g. df[['review']]")
        X = X.iloc[:, 0]
    if isinstance(X, str):
        raise TypeError(f"{param} is a single str; pass a list of texts, e.g. [{X[:20]!r}]")
    try:
        arr = np.asarray(X, dtype=object)
    except Exception as e:
        raise TypeError(f"{param} of type {type(X).__name__} is not array-like; pass a list of str") from e
    if arr.ndim == 2:
        if arr.shape[1] != 1:
            raise ValueError(f"{param} has shape {arr.shape}; pass a 1-column 2-D array or a 1-D list of texts")
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{param} has shape {arr.shape}; pass a 1-D list or a 1-column 2-D array of texts")
    if len(arr) == 0:
        raise ValueError(f"{param} is empty (0 rows); pass at least one text")
    for i, x in enumerate(arr):
        if not isinstance(x, str):
            raise TypeError(f"{param}[{i}] is {type(x).__name__} {x!r}, not str; texts must be str: drop or fill "
                            f"missing rows first, e.g. df.dropna(subset=['text'])")
    return arr.tolist()


def as_labels(y: Any, n: int, param: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{param} has shape {y.shape}; pass one label per row (a 1-D array)")
    if len(y) != n:
        raise ValueError(f"X has {n} rows but {param} has {len(y)}; pass one label per text")
    bad = [i for i, v in enumerate(y) if v is None or (isinstance(v, numbers.Real) and np.isnan(v))]
    if bad:
        raise ValueError(f"{param} has {len(bad)} missing label(s) (None/NaN) at rows {bad[:5]}; drop those rows")
    return y


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Tokenise once, without padding: padding happens per micro-batch so no step pays for the longest text."""
    return tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)["input_ids"]


def collate(ids: list[list[int]], pad_id: int, type_ids: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Pad one batch to its longest unit (dynamic padding); ``type_ids``: segment ids of sentence pairs (QA)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, x in enumerate(ids):
        input_ids[r, : len(x)] = torch.tensor(x)
        mask[r, : len(x)] = 1
    out = {"input_ids": input_ids, "attention_mask": mask}
    if type_ids is not None:
        out["token_type_ids"] = torch.zeros((len(ids), width), dtype=torch.long)
        for r, t in enumerate(type_ids):
            out["token_type_ids"][r, : len(t)] = torch.tensor(t)
    return out


def split_by_length(lengths: np.ndarray, overhead: int) -> list[np.ndarray]:
    """Cut one batch into micro-batches that minimise padded tokens + a fixed cost per micro-batch.

    The batch's rows stay those the random sampler drew, so the gradient (accumulated over micro-batches) is the
    random batch's gradient: length grouping across batches is faster still but costs accuracy in a short fine-tune
    (bench/finetune_speed.py). Exact dynamic programme over the sorted lengths; written by hand because no library
    offers it. ``overhead`` is the per-forward fixed cost in token-equivalents (kernel launches, Python).
    """
    order = np.argsort(lengths, kind="stable")
    s = lengths[order]
    n = len(s)
    if n == 0 or s[0] == s[-1]:  # equal lengths (CTR rows, images): nothing to save, one forward
        return [np.arange(n)]
    best = np.full(n + 1, np.inf)
    best[0], cut = 0.0, np.zeros(n + 1, dtype=int)
    for j in range(1, n + 1):  # best[j]: cheapest split of the j shortest rows; a chunk i..j-1 pads to s[j-1]
        for i in range(j):
            c = best[i] + (j - i) * s[j - 1] + overhead
            if c < best[j]:
                best[j], cut[j] = c, i
    chunks, j = [], n
    while j > 0:
        chunks.append(order[cut[j]:j])
        j = cut[j]
    return chunks[::-1]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The data order of one epoch, a pure function of (seed, epoch), so a resumed run replays it exactly."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def predict_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Length-sorted batches for inference (order does not matter there): each holds about ``max_tokens`` tokens."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        width = lengths[order[start]]
        end = start + 1
        while end < len(order) and (end - start + 1) * max(width, lengths[order[end]]) <= max_tokens:
            width = max(width, lengths[order[end]])
            end += 1
        batches.append(order[start:end])
        start = end
    return batches
