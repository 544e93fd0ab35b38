"""Fan-out statistics of a chip weight matrix, computed once per matrix and process.

``count_ops`` needs, per chip linear, which outputs an input event reaches: the non-zero
weights. They depend only on the matrix, which the IR never changes in place (a pass that
changes a weight stores a new array), so a process that counts several token shards of one IR (a
Ray worker) computes them once. Entries are keyed by the array's identity and dropped when the
array is freed, so the cache never keeps a model's weights alive.

Folded matrices have few distinct rows of zeros: [A; B] = [W diag(a); W diag(b)] is zero in
the columns where a (or b) is, the same for every row of a half. ``FanOut.patterns`` keeps those
distinct rows, so counting needs (tokens x inputs) work per pattern instead of a pass over the
(outputs x inputs) matrix for every shard.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..folded import is_factored, linear_weight

MAX_PATTERNS = 8   # more distinct rows than this: count with the whole matrix


@dataclass(frozen=True)
class FanOut:
    """``column_nnz[i]``: non-zero weights in input column i (weights are [out, in]).

    ``patterns`` (G, in) bool: the distinct rows of ``weight != 0`` and ``row_pattern`` (out,):
    each output's row among them; both None when there are more than ``MAX_PATTERNS``.
    """

    column_nnz: np.ndarray
    nnz: int
    patterns: np.ndarray | None
    row_pattern: np.ndarray | None

    @property
    def dense(self) -> bool:
        """Every weight is non-zero: each input event reaches every output."""
        return self.patterns is not None and len(self.patterns) == 1 and \
            bool(self.patterns[0].all())


_CACHE: dict[int, tuple[weakref.ref, FanOut]] = {}


def fan_out(weight: np.ndarray) -> FanOut:
    """The ``FanOut`` of ``weight`` (an ndarray), from the cache when this array was seen."""
    return _cached(weight, lambda: _fan_out(weight))


def linear_fan_out(params: dict) -> FanOut:
    """The ``FanOut`` of a linear's matrix (``folded.linear_weight``). A folded SpikeLinear that
    keeps only its factors is keyed by its column factors (an array of its own), so its matrix
    is built once per process, not at every count."""
    if is_factored(params):
        return _cached(params["source_cols"], lambda: _fan_out(linear_weight(params)))
    return fan_out(params["weight"])


def _cached(key_array: np.ndarray, compute: Callable[[], FanOut]) -> FanOut:
    key = id(key_array)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is key_array:
        return hit[1]
    stats = compute()
    try:
        ref = weakref.ref(key_array, lambda _, k=key: _forget(k))
    except TypeError:          # not weak-referenceable (a view of a foreign buffer): no cache
        return stats
    _CACHE[key] = (ref, stats)
    return stats


def _fan_out(weight: np.ndarray) -> FanOut:
    out, width = weight.shape
    column_nnz = np.count_nonzero(weight, axis=0).astype(np.int64)
    nnz = int(column_nnz.sum())
    if nnz == weight.size:     # dense: one pattern, every input
        return FanOut(column_nnz, nnz, np.ones((1, width), bool), np.zeros(out, np.intp))
    patterns: list[np.ndarray] = []
    rows = np.empty(out, np.intp)
    step = max(1, (1 << 22) // max(1, width))
    for start in range(0, out, step):      # row blocks: no full-size temporaries
        block = weight[start:start + step] != 0
        packed = np.packbits(block, axis=1)
        uniq, inverse = np.unique(packed, axis=0, return_inverse=True)
        for j, row in enumerate(uniq):
            pattern = np.unpackbits(row)[:width].astype(bool)
            for k, known in enumerate(patterns):
                if np.array_equal(known, pattern):
                    break
            else:
                k = len(patterns)
                patterns.append(pattern)
                if len(patterns) > MAX_PATTERNS:
                    return FanOut(column_nnz, nnz, None, None)
            rows[start:start + len(block)][inverse.reshape(-1) == j] = k
    return FanOut(column_nnz, nnz, np.stack(patterns), rows)


def _forget(key: int) -> None:
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is None:
        del _CACHE[key]
