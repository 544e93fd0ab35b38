"""Held-out evaluation: bits per character and firing rate per LIF population."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


@torch.no_grad()
def evaluate_ids(model: SpikeGPT, ids: np.ndarray, window_len: int, batch_size: int = 16,
                 max_tokens: int | None = None) -> EvalResult:
    """Cross-entropy over non-overlapping windows of ``window_len + 1`` tokens.

    Each window starts from the zero state, exactly as in training, and runs in parallel mode.
    Firing rates are spikes / (tokens x neurons) per population over every evaluated token.
    """
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    n_windows = (len(ids) - 1) // window_len
    if n_windows < 1:
        raise ValueError(f"need at least {window_len + 1} tokens to evaluate, got {len(ids)}")
    ids_t = torch.from_numpy(np.ascontiguousarray(ids[: n_windows * window_len + 1]))
    total_nats, total_tokens = 0.0, 0
    spike_sums: dict[str, float] = {}
    spike_counts: dict[str, int] = {}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n_windows, batch_size):
            rows = range(start, min(start + batch_size, n_windows))
            x = torch.stack([ids_t[r * window_len:(r + 1) * window_len] for r in rows])
            y = torch.stack([ids_t[r * window_len + 1:(r + 1) * window_len + 1] for r in rows])
            with model.record_spikes() as rec:
                logits = model(x)
            total_nats += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                          reduction="sum").item()
            total_tokens += y.numel()
            for name, s in rec.spikes().items():
                spike_sums[name] = spike_sums.get(name, 0.0) + float(s.sum())
                spike_counts[name] = spike_counts.get(name, 0) + s.numel()
    finally:
        model.train(was_training)
    rates = {name: spike_sums[name] / spike_counts[name] for name in spike_sums}
    return EvalResult(total_nats / total_tokens / math.log(2), total_tokens, n_windows,
                      window_len, rates)
