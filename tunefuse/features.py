"""A process-wide cache of frozen-backbone features, keyed by backbone and text.

Members that share a frozen backbone (head-only members, a bag of heads, the probe stage of LP-FT) compute each
text's features once. Bounded: the oldest backbone's entries go first when the cache holds too many vectors.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Callable, Hashable, Iterator, Sequence

import numpy as np

MAX_VECTORS = 500_000  # ~0.8 GB of 384-d float32 vectors; enough for every bundled dataset several times over
_CACHE: "OrderedDict[Hashable, dict[str, np.ndarray]]" = OrderedDict()
stats = {"computed": 0, "reused": 0}  # read by tests and bench/fusion_cost.py to show the sharing


def cached(key: Hashable, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    table = _CACHE.setdefault(key, {})
    _CACHE.move_to_end(key)
    missing = list(dict.fromkeys(t for t in texts if t not in table))
    if missing:
        table.update(zip(missing, compute(missing)))
    stats["computed"] += len(missing)
    stats["reused"] += len(texts) - len(missing)
    while sum(len(t) for t in _CACHE.values()) > MAX_VECTORS and len(_CACHE) > 1:
        _CACHE.popitem(last=False)
    return np.stack([table[t] for t in texts])


def clear() -> None:
    _CACHE.clear()
    stats.update(computed=0, reused=0)


@contextlib.contextmanager
def cold() -> Iterator[None]:
    """Run the block on an empty cache (to time what a fresh process pays), then put the cached features back."""
    saved = OrderedDict(_CACHE)
    _CACHE.clear()
    try:
        yield
    finally:
        _CACHE.clear()
        _CACHE.update(saved)
