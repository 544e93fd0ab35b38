"""Fan-out statistics of a chip weight matrix, computed once per matrix and process.

``count_ops`` needs, per chip linear, the non-zero weights of every input column. They depend
only on the matrix, which the IR never changes in place (a pass that changes a weight stores a
new array), so a process that counts several token shards of one IR (a Ray worker) computes
them once. Entries are keyed by the array's identity and dropped when the array is freed, so
the cache never keeps a model's weights alive.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FanOut:
    """``column_nnz[i]``: non-zero weights in input column i (weights are [out, in])."""

    column_nnz: np.ndarray
    nnz: int
    dense: bool          # every weight is non-zero: each input event reaches every output


_CACHE: dict[int, tuple[weakref.ref, FanOut]] = {}


def fan_out(weight: np.ndarray) -> FanOut:
    """The ``FanOut`` of ``weight`` (an ndarray), from the cache when this array was seen."""
    key = id(weight)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is weight:
        return hit[1]
    column_nnz = np.count_nonzero(weight, axis=0).astype(np.int64)
    nnz = int(column_nnz.sum())
    stats = FanOut(column_nnz, nnz, nnz == weight.size)
    try:
        ref = weakref.ref(weight, lambda _, k=key: _forget(k))
    except TypeError:          # not weak-referenceable (a view of a foreign buffer): no cache
        return stats
    _CACHE[key] = (ref, stats)
    return stats


def _forget(key: int) -> None:
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is None:
        del _CACHE[key]
