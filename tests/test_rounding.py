"""The fast paths of quantize against their direct formulas: GPTQ's output error from its own
residuals, a factor shared by the matrices that read the same inputs, the grams of the one
sequence run, and the integer products that leave out inputs that never spiked."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_tiny_model
from converters.torch_capture import capture_ir
from hw_profiles import load_profile
from spikegpt_deploy.interpreter import Executor
from spikegpt_deploy.partition import partition
from spikegpt_deploy.passes.fold import fold_layernorm
from spikegpt_deploy.passes.quantize import (IntegerWeights, calibration_stats, integer_matmul,
                                             spike_linear_inputs)
from spikegpt_deploy.errors import ConversionError
from spikegpt_deploy.folded import fold_weight
from spikegpt_deploy.passes.rounding import (gptq_factor, gptq_round, quantize_channels,
                                             quantize_folded)


def _gram(rng: np.random.Generator, n_in: int, dead: int) -> np.ndarray:
    x = (rng.random((40, n_in)) < 0.4) * rng.integers(1, 4, size=(40, n_in))
    x[:, :dead] = 0  # inputs that never fire
    return (x.T @ x / len(x)).astype(np.float64)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dead", [0, 7])
def test_gptq_output_error_matches_the_gram(bits: int, dead: int) -> None:
    rng = np.random.default_rng(bits + dead)
    w = rng.standard_normal((70, 300)).astype(np.float32)
    gram = _gram(rng, 300, dead)
    q = quantize_channels(w, bits, gram, "gptq")
    err = w.astype(np.float64) - q.mantissa * q.scale[:, None]
    direct = float(np.einsum("oi,ij,oj->", err, gram, err) / w.shape[0])
    assert q.rounding == "gptq"
    assert q.output_mse == pytest.approx(direct, rel=1e-6, abs=1e-12)
    assert np.all(q.mantissa[:, :dead] == 0)
    nearest = quantize_channels(w, bits, gram, "nearest")
    assert q.output_mse <= nearest.output_mse


def test_shared_factor_gives_the_same_mantissas() -> None:
    rng = np.random.default_rng(3)
    gram = _gram(rng, 200, 5)
    factor = gptq_factor(gram)
    for rows in (1, 33, 300):
        w = rng.standard_normal((rows, 200))
        scale = np.abs(w).max(axis=1) / 127
        assert np.array_equal(gptq_round(w, scale, 8, gram),
                              gptq_round(w, scale, 8, factor=factor))
    silent = np.zeros((200, 200))
    assert not np.any(gptq_round(w, scale, 8, silent))  # nothing fired: every weight is zero


def test_integer_matmul_sparse_inputs_are_exact() -> None:
    rng = np.random.default_rng(5)
    w = rng.integers(-127, 128, size=(50, 96)).astype(np.int8)
    x = np.zeros((9, 96))
    x[:, [3, 40, 41]] = rng.integers(0, 6, size=(9, 3))
    for cache in (None, IntegerWeights(), IntegerWeights(keep=False)):
        got = integer_matmul(x, w, cache)
        assert np.array_equal(got, x.astype(np.int64) @ w.astype(np.int64).T)
        assert not np.any(integer_matmul(np.zeros((2, 96)), w, cache))


def test_grams_of_the_sequence_run_equal_the_token_by_token_sums() -> None:
    model = make_tiny_model("RWKV", seed=1, n_layer=2, n_embd=32, vocab_size=40)
    ir = partition(fold_layernorm(capture_ir(model)), load_profile("loihi2"))
    tokens = np.random.default_rng(2).integers(0, 40, size=(2, 24))
    stats = calibration_stats(ir, tokens)
    ports = spike_linear_inputs(ir)
    assert ports and set(stats.grams) == set(ports)
    acc = {k: 0.0 for k in ports}
    for res in Executor(ir).steps(tokens):
        for k in ports:
            x = res.values[k].astype(np.float64)
            acc[k] = acc[k] + x.T @ x
    for k in ports:  # integer spike counts: the same sums in any order
        assert np.array_equal(stats.grams[k], acc[k] / tokens.size), k


@pytest.mark.parametrize("bits, rounding", [(8, "auto"), (8, "nearest"), (4, "auto"),
                                            (6, "nearest"), (8, "gptq")])
def test_quantize_folded_equals_quantizing_the_folded_matrix(bits: int, rounding: str) -> None:
    """The chunked path (8 bits, nearest, no gram) never builds the folded matrix and gives
    exactly what quantizing fold_weight's matrix gives; the other cases take that path."""
    rng = np.random.default_rng(bits)
    source = rng.standard_normal((301, 70)).astype(np.float32)
    source[7] = 0.0                                    # an all-zero row: scale 1
    cols = rng.standard_normal((2, 70))
    x = rng.integers(0, 3, size=(50, 70)).astype(np.float64)
    gram = (x.T @ x) / len(x) if rounding == "gptq" else None
    got = quantize_folded(source, cols, bits, gram, rounding)
    want = quantize_channels(fold_weight(source, cols), bits, gram, rounding)
    assert got.rounding == want.rounding
    assert np.array_equal(got.mantissa, want.mantissa) and got.mantissa.dtype == np.int8
    assert np.array_equal(got.scale, want.scale)
    assert (got.max_abs_error, got.rms_error) == pytest.approx(
        (want.max_abs_error, want.rms_error), rel=1e-12)
    with pytest.raises(ConversionError, match="not finite"):
        quantize_folded(np.full((3, 4), 3e38, np.float32), np.full((1, 4), 10.0), 8)
    bad = source.copy()
    bad[5, 3] = np.nan
    with pytest.raises(ConversionError, match="not finite"):
        quantize_folded(bad, cols, 8)
