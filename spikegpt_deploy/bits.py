"""Bits per token: how many bits a model's logits spend on the tokens that actually follow.

One definition for every evaluation (the bundle's numpy references, the Lava simulation), so
that two runs with equal logits report equal figures to the last digit.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

LN2 = float(np.log(2))


def _surprisal_nats(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-ln p(target) per row of logits (..., V), in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=-1))
    picked = np.take_along_axis(z, np.asarray(targets)[..., None], axis=-1)[..., 0]
    return logz - picked


def surprisal_bits(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log2 p(target) per row of logits (..., V); targets has the logits' leading shape."""
    return _surprisal_nats(logits, targets) / LN2


def bits_per_token(logits: np.ndarray, next_ids: Sequence[int]) -> float:
    """Mean -log2 p(next token) of logits (T, V) for the tokens that follow them (at most T)."""
    n = len(next_ids)
    return float(np.mean(_surprisal_nats(np.asarray(logits)[:n], np.asarray(next_ids))) / LN2)
