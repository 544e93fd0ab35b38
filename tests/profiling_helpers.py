"""Shared by the profiling tests: the firing scale for width-16 tiny models, the module-scoped
tiny model and token ids that test_profiling_counts and test_profiling_pricing profile, and the
hand-checkable two-layer IR of test_profiling_counts, test_latency and test_placement."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_tiny_model
from hw_profiles import load_profile
from spikegpt_deploy.ir import IR, Port
from spikegpt_deploy.partition import partition

SCALE = 8.0  # x8 on att.output / ffn.value so the LIFs fire in a width-16 model


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model(n_layer=2, n_embd=16, scale=SCALE)


@pytest.fixture(scope="module")
def ids():
    return np.random.RandomState(0).randint(0, 13, 40)


# The hand IR's head weights and a 3-token spike record of its two populations.
W_HAND = np.array([[1, 0, 2, 0], [0, 0, 1, 0], [3, 0, 0, -1]])
SPIKES_HAND = {"emb": np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]]),
               "blocks.0.lif1": np.array([[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])}


def hand_ir(weight: np.ndarray | None = None) -> IR:
    """Layer blocks.0: a LIF fed by the float embedding row (host). Layer head: a SpikeSum of the
    embedding spikes and 2 x the LIF spikes, and a SpikeLinear on it whose sums go to the host."""
    weight = W_HAND if weight is None else weight
    width = weight.shape[1]
    ir = IR({"vocab_size": 5, "n_embd": width, "n_layer": 1, "binary_embedding": True})
    ir.add_node("tokens", "Input", attrs={"name": "tokens"})
    ir.add_node("emb", "Embedding", [Port("tokens")], module="emb",
                params={"weight": np.arange(5 * width, dtype=np.float32).reshape(5, width) - 8})
    ir.add_node("emb.heaviside", "Heaviside", [Port("emb")], module="emb")
    ir.add_node("state_in.lif1_v.0", "StateIn", attrs={"state": "lif1_v.0", "init": 0.0},
                module="blocks.0")
    ir.add_node("blocks.0.lif1", "LIF", [Port("emb"), Port("state_in.lif1_v.0")],
                module="blocks.0.lif1", attrs={"threshold": 1.0, "tau": 2.0})
    ir.add_node("state_out.lif1_v.0", "StateOut", [Port("blocks.0.lif1", 1)],
                attrs={"state": "lif1_v.0"}, module="blocks.0")
    ir.add_node("ln_out.counts", "SpikeSum", [Port("emb.heaviside"), Port("blocks.0.lif1")],
                module="ln_out", attrs={"coefficients": [1, 2]})
    ir.add_node("head.spikes", "SpikeLinear", [Port("ln_out.counts")], module="head",
                params={"weight": weight.astype(np.float32)}, attrs={"source": "stream_counts"})
    ir.add_node("logits", "Output", [Port("head.spikes")], attrs={"name": "logits"})
    return partition(ir, load_profile("loihi2"), "spikes")


W_HAND = np.array([[1, 0, 2, 0], [0, 0, 1, 0], [3, 0, 0, -1]])
SPIKES_HAND = {"emb": np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]]),
               "blocks.0.lif1": np.array([[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])}
