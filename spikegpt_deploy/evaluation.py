"""Held-out evaluation: bits per character and firing rate per LIF population."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .model import SpikeGPT


@dataclass
class EvalResult:
    """bits per token (= per character for char models) over ``tokens`` predicted tokens."""

    bits_per_token: float
    tokens: int
    windows: int
    window_len: int
    firing_rates: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"bits_per_token": self.bits_per_token, "tokens": self.tokens,
                "windows": self.windows, "window_len": self.window_len,
                "firing_rates": self.firing_rates}


NATS_SCALE = 2 ** 40   # cross-entropy is summed as integers of 2^-40 nat: exact in any order


@dataclass
class EvalSums:
    """Integer sums over evaluated windows: they add up exactly across shards of the windows."""

    nats_fixed: int = 0                      # sum of per-token nats x NATS_SCALE, each rounded
    tokens: int = 0
    windows: int = 0
    spikes: dict[str, int] = field(default_factory=dict)
    slots: dict[str, int] = field(default_factory=dict)   # neuron x token slots per population

    def __add__(self, other: "EvalSums") -> "EvalSums":
        keys = list(dict.fromkeys([*self.spikes, *other.spikes]))
        return EvalSums(self.nats_fixed + other.nats_fixed, self.tokens + other.tokens,
                        self.windows + other.windows,
                        {k: self.spikes.get(k, 0) + other.spikes.get(k, 0) for k in keys},
                        {k: self.slots.get(k, 0) + other.slots.get(k, 0) for k in keys})

    def result(self, window_len: int) -> EvalResult:
        rates = {name: self.spikes[name] / self.slots[name] for name in self.spikes}
        return EvalResult(self.nats_fixed / NATS_SCALE / self.tokens / math.log(2), self.tokens,
                          self.windows, window_len, rates)


def n_windows(ids: np.ndarray, window_len: int, max_tokens: int | None = None) -> int:
    """Non-overlapping windows of ``window_len + 1`` tokens in ``ids`` (first ``max_tokens``)."""
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    return (len(ids) - 1) // window_len


@torch.no_grad()
def evaluate_windows(model: SpikeGPT, ids: np.ndarray, window_len: int, rows: range,
                     batch_size: int = 16) -> EvalSums:
    """Integer sums of the windows ``rows`` (window r covers ids[r*W : (r+1)*W + 1]), run in
    batches of ``batch_size`` windows from ``rows.start``: the unit a distributed evaluation
    splits (a shard starting at a multiple of ``batch_size`` runs the single-process batches).
    """
    sums = EvalSums()
    was_training = model.training
    model.eval()
    try:
        for start in range(rows.start, rows.stop, batch_size):
            batch = range(start, min(start + batch_size, rows.stop))
            x = torch.stack([torch.from_numpy(np.ascontiguousarray(
                ids[r * window_len:(r + 1) * window_len])) for r in batch])
            y = torch.stack([torch.from_numpy(np.ascontiguousarray(
                ids[r * window_len + 1:(r + 1) * window_len + 1])) for r in batch])
            with model.record_spikes() as rec:
                logits = model(x)
            nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                   reduction="none").double().numpy()
            sums.nats_fixed += int(np.rint(nats * NATS_SCALE).astype(np.int64).sum())
            sums.tokens += y.numel()
            sums.windows += len(batch)
            for name, s in rec.spikes().items():
                sums.spikes[name] = sums.spikes.get(name, 0) + int(s.sum())
                sums.slots[name] = sums.slots.get(name, 0) + s.numel()
    finally:
        model.train(was_training)
    return sums


def evaluate_ids(model: SpikeGPT, ids: np.ndarray, window_len: int, batch_size: int = 16,
                 max_tokens: int | None = None) -> EvalResult:
    """Cross-entropy over non-overlapping windows of ``window_len + 1`` tokens.

    Each window starts from the zero state, exactly as in training, and runs in parallel mode.
    Firing rates are spikes / (tokens x neurons) per population over every evaluated token.
    """
    n = n_windows(ids, window_len, max_tokens)
    if n < 1:
        raise ValueError(f"need at least {window_len + 1} tokens to evaluate, got {len(ids)}")
    return evaluate_windows(model, ids, window_len, range(n), batch_size).result(window_len)


def evaluate_shard(source: Any, ids: np.ndarray, window_len: int, rows: range,
                   batch_size: int = 16) -> EvalSums:
    """One shard of a distributed evaluation: ``evaluate_windows`` on the model that
    ``source`` (a ``distributed.ModelSource``) opens."""
    return evaluate_windows(source.open().model, ids, window_len, rows, batch_size)
