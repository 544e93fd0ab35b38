"""``evaluate BUNDLE``: the bundle's computation on held-out text
(spikegpt_deploy/bundle_evaluation.py).

- fixed: the batched windows give, token for token, what the quantized emulation that convert's
  check uses (``emulator(ir).run``, one window at a time) gives: same greedy tokens, same spikes,
  bits per token to float32 rounding;
- float: the partitioned float program matches the PyTorch model (bits per token to 1e-4,
  identical greedy tokens and firing rates);
- the exact integer matmul equals numpy's int64 product in all three of its regimes;
- the command line: the report, --json, a missing source model, bad options.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_tiny_model, random_text
from spikegpt_deploy import api
from spikegpt_deploy.bundle import load_bundle, write_bundle
from spikegpt_deploy.bundle_evaluation import _Tally, evaluate_ir, run_model_windows, windows_of
from spikegpt_deploy.checkpoint import save_model
from spikegpt_deploy.cli import main
from spikegpt_deploy.convert import ConvertOptions, run_pipeline
from spikegpt_deploy.data import CharTokenizer, encode_split, load_corpus
from spikegpt_deploy.errors import DataError
from spikegpt_deploy.passes.quantize import IntegerWeights, emulator, integer_matmul

WINDOW = 16


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(random_text(20_000, seed=3), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bundle_path(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = corpus_file.read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    model = make_tiny_model("RWKV", seed=1, n_layer=2, n_embd=16, vocab_size=tok.vocab_size,
                            ctx_len=WINDOW)
    root = tmp_path_factory.mktemp("eval")
    save_model(model, root / "model.pt", tok)
    ctx = run_pipeline(root / "model.pt", ConvertOptions(calibration=str(corpus_file),
                                                        calibration_tokens=128, check_tokens=32))
    return write_bundle(ctx, root / "tiny.bundle", emitters=[])


def _windows(bundle: Path, corpus_file: Path, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    b = load_bundle(bundle)
    ids = encode_split(b.tokenizer, load_corpus(str(corpus_file)), "valid")
    return windows_of(ids, WINDOW, max_tokens)


def test_fixed_equals_the_emulation_of_the_convert_check(bundle_path: Path,
                                                         corpus_file: Path) -> None:
    ir = load_bundle(bundle_path).ir
    x, y = _windows(bundle_path, corpus_file, 12 * WINDOW)
    tally, _ = evaluate_ir(ir, "fixed", x, y, batch_size=5)  # batches of 5, 5 and 2 windows
    ref = _Tally()
    for i in range(x.shape[0]):                       # as convert's check: one sequence, B = 1
        logits, spikes = emulator(ir).run(x[i:i + 1])
        ref.add(logits, y[i:i + 1], spikes)
    assert tally.tokens == ref.tokens == 12 * WINDOW
    assert np.array_equal(np.concatenate(tally.argmax), np.concatenate(ref.argmax))
    assert tally.rates() == pytest.approx(ref.rates(), abs=0)
    assert tally.bits_per_token == pytest.approx(ref.bits_per_token, rel=1e-6)
    assert any(0.05 < r < 0.95 for k, r in tally.rates().items() if k != "emb")  # LIFs fire


def test_float_matches_pytorch(bundle_path: Path, corpus_file: Path) -> None:
    result = api.evaluate_bundle(bundle_path, str(corpus_file), "float", max_tokens=20 * WINDOW)
    assert result.source is not None, result.source_missing
    assert result.tokens == 20 * WINDOW and result.windows == 20
    # tolerance: the float IR matches the PyTorch step to ~1e-5 in the logits
    assert abs(result.source.quantization_cost_bits_per_token) < 1e-4
    assert result.source.greedy_agreement == 1.0
    assert all(abs(v) == 0.0 for v in result.source.firing_rate_change.values())
    # and the source figure is what the source model gives on those windows
    model = api.open_model(bundle_path.parent / "model.pt").model
    x, y = _windows(bundle_path, corpus_file, 20 * WINDOW)
    src = _Tally()
    run_model_windows(model, x, y, src)
    assert result.source.bits_per_token == pytest.approx(src.bits_per_token, rel=1e-9)


def test_fixed_against_source(bundle_path: Path, corpus_file: Path) -> None:
    result = api.evaluate_bundle(bundle_path, str(corpus_file), "fixed", max_tokens=20 * WINDOW)
    s = result.source
    assert s is not None
    assert s.quantization_cost_bits_per_token == pytest.approx(
        result.bits_per_token - s.bits_per_token)
    assert 0.5 < s.greedy_agreement <= 1.0
    assert set(s.firing_rate_change) == set(result.firing_rates)
    assert set(result.weight_bits.values()) == {8}
    assert math.isfinite(result.tokens_per_s)


@pytest.mark.parametrize("seed", [0, 1])
def test_integer_matmul_is_exact_in_every_regime(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, size=(40, 64))
    for cache in (IntegerWeights(), None):  # kept weights; one pass in row blocks
        for x_max in (3, 2 ** 20, 2 ** 50):    # float32, float64, int64 regimes
            x = rng.integers(-x_max, x_max + 1, size=(7, 64))
            got = integer_matmul(x, w, cache)
            assert got.dtype == np.int64
            assert np.array_equal(got, x.astype(np.int64) @ w.astype(np.int64).T)
    big = rng.integers(-127, 128, size=(5000, 64)).astype(np.int8)  # several row blocks
    x = rng.integers(0, 4, size=(3, 64))
    assert np.array_equal(integer_matmul(x, big), x @ big.astype(np.int64).T)


def test_cli_report_and_json(bundle_path: Path, corpus_file: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", str(bundle_path), "--data", str(corpus_file),
                               "--max-tokens", str(8 * WINDOW)])
    assert res.exit_code == 0, res.output
    assert "bits per token" in res.output and "quantization cost" in res.output
    assert "greedy token agreement" in res.output and "blocks.1.lif2" in res.output
    res = runner.invoke(main, ["evaluate", str(bundle_path), "--data", str(corpus_file),
                               "--max-tokens", str(8 * WINDOW), "--precision", "float", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["precision"] == "float" and doc["tokens"] == 8 * WINDOW
    assert doc["source"]["greedy_agreement"] == 1.0


def test_missing_source_model_is_said(bundle_path: Path, corpus_file: Path,
                                      tmp_path: Path) -> None:
    import shutil
    moved = tmp_path / "alone.bundle"
    shutil.copytree(bundle_path, moved)
    result = api.evaluate_bundle(moved, str(corpus_file), max_tokens=4 * WINDOW)
    assert result.source is None and "model.pt" in (result.source_missing or "")
    res = CliRunner().invoke(main, ["evaluate", str(moved), "--data", str(corpus_file),
                                    "--max-tokens", str(4 * WINDOW)])
    assert res.exit_code == 0 and "not compared" in res.output and "--model" in res.output


def test_bad_options(bundle_path: Path, corpus_file: Path) -> None:
    with pytest.raises(DataError, match="one window"):
        api.evaluate_bundle(bundle_path, str(corpus_file), max_tokens=WINDOW - 1)
    with pytest.raises(DataError, match="precision"):
        api.evaluate_bundle(bundle_path, str(corpus_file), "double", max_tokens=WINDOW)
    res = CliRunner().invoke(main, ["evaluate", str(bundle_path), "--data", str(corpus_file),
                                    "--model", str(corpus_file)])
    assert res.exit_code == 1 and "sha256" in res.output and "Traceback" not in res.output
