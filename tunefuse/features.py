"""A process-wide cache of frozen-backbone features, keyed by backbone and text.

Members that share a frozen backbone (head-only members, a bag of heads, the probe stage of LP-FT) compute each
text's features once. Bounded: the oldest backbone's entries go first when the cache holds too many vectors.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Callable, Hashable, Iterator, Sequence

import numpy as np

MAX_VECTORS = 500_000  # ~0.8 GB of 384-d float32 vectors (one per text, or per token for token and span tasks)
_CACHE: "OrderedDict[Hashable, dict[str, np.ndarray]]" = OrderedDict()
stats = {"computed": 0, "reused": 0}  # read by tests and bench/fusion_cost.py to show the sharing


def cached(key: Hashable, units: Sequence[Hashable], compute: Callable[[list], list[np.ndarray]]) -> list[np.ndarray]:
    """The features of each unit (a text's token ids, a window): computed for the missing ones only, in order."""
    table = _CACHE.setdefault(key, {})
    _CACHE.move_to_end(key)
    missing = list(dict.fromkeys(t for t in units if t not in table))
    if missing:
        table.update(zip(missing, compute(missing)))
    stats["computed"] += len(missing)
    stats["reused"] += len(units) - len(missing)
    while sum(sum(len(v) for v in t.values()) for t in _CACHE.values()) > MAX_VECTORS and len(_CACHE) > 1:
        _CACHE.popitem(last=False)
    return [table[t] for t in units]


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
