"""Outside reference: with the LIFs off, our model is RWKV-4, so the maintained ``rwkv`` package
(PyPI 0.8.32, Apache-2.0) must produce the same logits from the same official-layout file.

This checks, against code we did not write: the checkpoint layout, the -exp(time_decay)
transform, token shift, the WKV recurrence, the channel-mix and the state carried across calls.
"""

from __future__ import annotations

import os

# rwkv reads these at import time: no TorchScript, no CUDA kernel, no residual rescaling.
os.environ["RWKV_JIT_ON"] = "0"
os.environ["RWKV_CUDA_ON"] = "0"
os.environ["RWKV_RESCALE_LAYER"] = "0"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import make_tiny_model, randomize_  # noqa: E402
from spikegpt_deploy import load_model  # noqa: E402
from spikegpt_deploy.checkpoint import save_official_state_dict  # noqa: E402
from spikegpt_deploy.model import SpikeGPT  # noqa: E402

# A hard import: rwkv is in the 'test' extra, a missing package must fail, not skip.
import rwkv.model as rwkv_model  # noqa: E402

VOCAB = 23
TOKENS = [3, 17, 0, 22, 5, 5, 9, 14, 1, 20, 8, 11, 2, 19, 6, 13, 7, 16, 4, 21]


def _our_rnn_logits(model: SpikeGPT, tokens: list[int]) -> torch.Tensor:
    state = model.init_state(1)
    out = []
    with torch.no_grad():
        for tok in tokens:
            logits, state = model.step(torch.tensor([tok]), state)
            out.append(logits[0])
    return torch.stack(out)


@pytest.fixture(scope="module", params=[2, 4])
def reference_pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[SpikeGPT, object, Path]:
    n_layer = request.param
    model = make_tiny_model(n_layer=n_layer, n_embd=32, vocab_size=VOCAB, scale=1.0,
                            spiking=False, binary_embedding=False, rescale_every=0)
    randomize_(model, seed=n_layer)
    path = tmp_path_factory.mktemp(f"rwkv{n_layer}") / "tiny.pth"  # rwkv appends '.pth' itself
    save_official_state_dict(model, path)
    ref = rwkv_model.RWKV(model=str(path.with_suffix("")), strategy="cpu fp32", verbose=False)
    assert ref.RESCALE_LAYER == 0 and ref.version == 4
    return model, ref, path


def test_rnn_logits_equal_rwkv_package(reference_pair: tuple) -> None:
    model, ref, path = reference_pair
    # What we compare is the file, as loaded by our loader.
    ours = load_model(path, spiking=False, binary_embedding=False, rescale_every=0)
    got = _our_rnn_logits(ours, TOKENS)
    state = None
    expected = []
    for tok in TOKENS:
        logits, state = ref.forward([tok], state)
        expected.append(logits.float())
    expected = torch.stack(expected)
    assert got.shape == expected.shape == (len(TOKENS), VOCAB)
    assert expected.std() > 0.1  # non-trivial logits
    assert (got - expected).abs().max().item() < 1e-4
    # Our parallel mode agrees too (same model, whole sequence at once).
    with torch.no_grad():
        par = ours(torch.tensor([TOKENS]))[0]
    assert (par - expected).abs().max().item() < 1e-4
    assert torch.equal(ours.state_dict()["head.weight"], model.state_dict()["head.weight"])


def test_sequence_mode_and_state_carry(reference_pair: tuple) -> None:
    """rwkv's sequence mode over a prefix, then single tokens continuing its state."""
    model, ref, _ = reference_pair
    ours = _our_rnn_logits(model, TOKENS)
    logits, state = ref.forward(TOKENS[:12], None)
    assert (ours[11] - logits.float()).abs().max().item() < 1e-4
    for j, tok in enumerate(TOKENS[12:], start=12):
        logits, state = ref.forward([tok], state)
        assert (ours[j] - logits.float()).abs().max().item() < 1e-4, j


def test_comparison_discriminates(reference_pair: tuple) -> None:
    """The LIFs (or the Heaviside embedding) switched on must break the agreement."""
    _, ref, path = reference_pair
    expected, state = [], None
    for tok in TOKENS:
        logits, state = ref.forward([tok], state)
        expected.append(logits.float())
    expected = torch.stack(expected)
    for overrides in ({"spiking": True, "binary_embedding": False},
                      {"spiking": False, "binary_embedding": True}):
        other = load_model(path, rescale_every=0, **overrides)
        assert (_our_rnn_logits(other, TOKENS) - expected).abs().max().item() > 1e-2, overrides
