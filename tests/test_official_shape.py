"""The official word-level checkpoints' path at a reduced width: a bare official-layout .pth with
the 216M's vocabulary size (50277) and a word-level `tokenizers` JSON, through the command line
(`--tokenizer`, `convert`, `inspect`, `export`), and the bundle's size against the checkpoint.

The real GPT-NeoX-20B tokenizer is not needed: a word-level tokenizer of 50277 entries is built
here with the `tokenizers` package (nothing is downloaded). 2 x 64 keeps it quick; the head and
the embedding (50277 x 64 each) dominate the weights, as they do not at 18 x 768, where
benchmarks/bench_convert.py measures the same ratio.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from conftest import make_tiny_model, random_text
from spikegpt_deploy.bundle import load_bundle
from spikegpt_deploy.checkpoint import save_official_state_dict

_EXE = Path(sys.executable).with_name("spikegpt-deploy")
VOCAB = 50277
BUNDLE_SIZE_GOAL = 1.5  # bundle bytes / (checkpoint + tokenizer bytes)


def _cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(_EXE), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def word_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("official")
    text = random_text(30_000, seed=11)
    words = sorted(set(text.split()))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    vocab.update({f"w{i}": i for i in range(len(vocab), VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert tok.get_vocab_size() == VOCAB
    tok_path = root / "words.json"
    tok.save(str(tok_path))
    model = make_tiny_model(n_layer=2, n_embd=64, vocab_size=VOCAB, seed=3)
    pth = root / "official-2x64.pth"
    save_official_state_dict(model, pth)
    corpus = root / "text.txt"
    corpus.write_text(text, encoding="utf-8")
    return pth, tok_path, corpus


def test_convert_inspect_export_word_level(word_files: tuple[Path, Path, Path],
                                           tmp_path: Path) -> None:
    pth, tok_path, corpus = word_files
    out = tmp_path / "b.bundle"
    _cli("convert", str(pth), "--tokenizer", str(tok_path), "--calibration", str(corpus),
         "--calibration-tokens", "96", "--check-tokens", "64", "-o", str(out))
    bundle = load_bundle(out)
    assert bundle.manifest["config"]["vocab_size"] == VOCAB
    assert bundle.manifest["source_model"]["format"] == "official-state-dict"
    assert bundle.tokenizer is not None and bundle.tokenizer.vocab_size == VOCAB
    assert bundle.tokenizer.encode("the king") == [bundle.tokenizer.encode("the")[0],
                                                   bundle.tokenizer.encode("king")[0]]
    eq = bundle.manifest["equivalence"]
    assert eq["tokens"] == 64 and eq["check_tokens_source"] == str(corpus)
    assert eq["float_ir_vs_pytorch_max_abs_logit_diff"] < 1e-3
    assert eq["quantized_bits_per_token"] is not None

    # inspect states the chip's weight count and why it exceeds the model's
    shown = _cli("inspect", str(out)).stdout
    info = json.loads(_cli("inspect", str(out), "--json").stdout)
    cw = info["chip_weights"]
    assert f"chip weights: {cw['chip_weight_values']:,} values" in shown
    assert "LayerNorm fold" in shown
    head = cw["per_linear"]["head"]
    assert head["model_shape"] == [VOCAB, 64] and head["factor"] == 2.0
    assert cw["chip_weight_values"] == info["partition"]["loihi2"]["parameters"]
    assert cw["chip_weight_values"] == sum(e["chip_values"] for e in cw["per_linear"].values())
    assert info["resources"]["totals"]["synapses"] <= cw["chip_weight_values"] + sum(
        r["synapses"] for r in info["resources"]["layers"] if r["op"] in ("LIF", "SpikeSum"))

    # the bundle holds each array once: within the goal against checkpoint + tokenizer
    size = sum(p.stat().st_size for p in out.iterdir())
    source = pth.stat().st_size + tok_path.stat().st_size
    assert size <= BUNDLE_SIZE_GOAL * source, (size, source)
    assert {p.name for p in out.iterdir()} == {"manifest.json", "ir.json", "ir_params.npz",
                                              "tokenizer.json", "target.toml"}

    # the interop files on demand
    onnx_path = tmp_path / "host.onnx"
    assert "wrote" in _cli("export", str(out), "--format", "onnx", "-o", str(onnx_path)).stdout
    assert onnx_path.stat().st_size > 0


def test_old_bundle_version_is_refused(word_files: tuple[Path, Path, Path],
                                       tmp_path: Path) -> None:
    pth, tok_path, _ = word_files
    out = tmp_path / "b.bundle"
    _cli("convert", str(pth), "--tokenizer", str(tok_path), "--calibration-tokens", "16",
         "--check-tokens", "8", "-o", str(out))
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    manifest["format_version"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    proc = subprocess.run([str(_EXE), "inspect", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "older spikegpt-deploy" in proc.stderr and "re-run 'spikegpt-deploy convert'" in \
        proc.stderr
