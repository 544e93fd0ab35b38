"""``Executor.run_sequence`` (each op once over all tokens) against ``Executor.run`` (token by
token), and the exact integer products of the quantized emulation.

Float: the same ops, so logits agree to float32 rounding (BLAS sums a matrix product in another
order than a vector product) and spikes are identical; the quantized emulation's chip sums are
integers computed exactly either way, so its logits and spikes are identical bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_tiny_model
from converters.torch_capture import capture_ir
from hw_profiles import load_profile
from spikegpt_deploy import fixed_point as fp
from spikegpt_deploy.interpreter import Executor, recurrent_groups
from spikegpt_deploy.partition import partition
from spikegpt_deploy.passes.fold import fold_layernorm
from spikegpt_deploy.passes.quantize import emulator, quantize

VOCAB = 30
LOIHI2 = load_profile("loihi2")


def quantized_ir(model_type: str, policy: str, binary_embedding: bool, rescale_every: int):
    model = make_tiny_model(model_type, seed=2, n_layer=3, n_embd=16, vocab_size=VOCAB,
                            binary_embedding=binary_embedding, rescale_every=rescale_every)
    ir = partition(fold_layernorm(capture_ir(model)), LOIHI2, policy, 6)
    calibration = np.random.default_rng(3).integers(0, VOCAB, size=(1, 64))
    return ir, quantize(ir, calibration, 8)


@pytest.mark.parametrize("model_type,policy,binary_embedding,rescale_every", [
    ("RWKV", "spikes", True, 0), ("RWKV-ffnPre", "spikes", True, 2),
    ("RWKV", "graded", True, 0), ("RWKV", "spikes", False, 2)])
def test_sequence_equals_step_by_step(model_type: str, policy: str, binary_embedding: bool,
                                      rescale_every: int) -> None:
    ir, q = quantized_ir(model_type, policy, binary_embedding, rescale_every)
    tokens = np.random.default_rng(5).integers(0, VOCAB, size=(2, 40))
    for ex, exact in ((Executor(ir), False), (emulator(q), True)):
        logits, spikes = ex.run(tokens)
        seq = ex.run_sequence(tokens)
        assert seq.logits.shape == logits.shape and list(seq.spikes) == list(spikes)
        if exact:
            assert np.array_equal(seq.logits, logits)
        else:
            assert np.max(np.abs(seq.logits - logits)) <= 1e-5
        for k in spikes:
            assert np.array_equal(seq.spikes[k], spikes[k]), k
        # the state after the last token is the step-by-step one
        state = ex.init_state(2)
        for t in range(tokens.shape[1]):
            state = ex.step(tokens[:, t], state).state
        assert set(seq.state) == set(state)
        for k in state:
            # A chip LIF integrates a host-computed float current, quantized to the chip's input
            # resolution: the batched and the per-token host BLAS products may differ in the last
            # float bit, which can move one quantized input by one LSB (2^6 membrane units,
            # halved every token after). Spikes and logits above are still asserted identical.
            tol = 2.0 ** 6 if exact and k.startswith(("lif1_v", "lif2_v")) else 1e-5
            np.testing.assert_allclose(seq.state[k], state[k], atol=tol, rtol=0)


def test_peaks_equal_step_by_step_maxima() -> None:
    ir, _ = quantized_ir("RWKV", "spikes", True, 0)
    tokens = np.random.default_rng(1).integers(0, VOCAB, size=(1, 32))
    peaks: dict = {}
    for res in Executor(ir).steps(tokens):
        for key, value in res.values.items():
            if value.dtype.kind == "f" and value.size:
                peaks[key] = max(peaks.get(key, 0.0), float(np.max(np.abs(value))))
    seq = Executor(ir).run_sequence(tokens, peaks=True).peaks
    assert set(seq) == set(peaks)
    for key, value in peaks.items():
        assert seq[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_only_state_cycles_run_token_by_token() -> None:
    ir, _ = quantized_ir("RWKV", "spikes", True, 0)
    groups = recurrent_groups(ir)
    assert sorted(n for g in groups for n in g) == sorted(ir.graph)
    for g in groups:
        ops = {ir.node(n)["op"] for n in g}
        if len(g) > 1:  # a cycle through a state slot
            assert ops & {"LIF", "WKV", "FoldCorrection"} and "StateIn" in ops
        assert not ops & {"SpikeLinear", "Linear"} or len(g) == 1


@pytest.mark.parametrize("scale", [1, 3, 40, 2 ** 20])
def test_exact_integer_matmul(scale: int) -> None:
    rng = np.random.default_rng(scale)
    w = rng.integers(-127, 128, size=(300, 200)).astype(np.int8)
    x = rng.integers(0, 4, size=(7, 200)) * scale  # float32 bound exceeded for the large scales
    got = fp.exact_integer_matmul(x.astype(np.float32), w)
    want = x.astype(np.int64) @ w.astype(np.int64).T
    assert got.dtype == np.float64 and np.array_equal(got, want.astype(np.float64))
