"""Pieces the benchmark scripts share: the fallback model and the PyTorch RNN-step baseline."""

from __future__ import annotations

import time
from typing import Sequence

import torch

from spikegpt_deploy.model import SpikeGPT, SpikeGPTConfig


def random_firing_model(vocab_size: int, layers: int = 4, width: int = 128) -> SpikeGPT:
    """A seeded random model of the shipped shape whose LIFs fire (LIF-feeding weights x 8), for
    when no trained model is at hand: its cost is a trained model's, its firing rates are not."""
    torch.manual_seed(0)
    model = SpikeGPT(SpikeGPTConfig(vocab_size, layers, width)).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.att.output.weight.mul_(8)
            block.ffn.value.weight.mul_(8)
    return model


@torch.no_grad()
def rnn_step_seconds(model: SpikeGPT, ids: Sequence[int]) -> float:
    """Wall time of plain RNN-mode inference over ``ids`` from the zero state."""
    state = model.init_state(1)
    tokens = torch.as_tensor(list(map(int, ids)), dtype=torch.int64)
    start = time.perf_counter()
    for t in range(len(tokens)):
        _, state = model.step(tokens[t:t + 1], state)
    return time.perf_counter() - start
