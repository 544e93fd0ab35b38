"""A bare official-layout .pth with a BPE tokenizer JSON (the official 216M's situation).

The real GPT-NeoX-20B tokenizer is not needed: a small byte-level BPE trained here with the
`tokenizers` package exercises the same path (`--tokenizer FILE`, BPETokenizer).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from conftest import make_tiny_model, random_text
from spikegpt_deploy import api
from spikegpt_deploy.checkpoint import save_official_state_dict
from spikegpt_deploy.sampling import SamplingOptions

_EXE = Path(sys.executable).with_name("spikegpt-deploy")


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bpe")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([random_text(8000, seed=5)], trainer)
    tok_path = root / "bpe.json"
    tok.save(str(tok_path))
    model = make_tiny_model(n_layer=2, n_embd=16, vocab_size=tok.get_vocab_size(), seed=4)
    pth = root / "official.pth"
    save_official_state_dict(model, pth)
    return pth, tok_path


def test_bare_pth_needs_a_tokenizer(bpe_files) -> None:
    pth, _ = bpe_files
    proc = subprocess.run([str(_EXE), "generate", "--model", str(pth), "--prompt", "the king",
                           "--tokens", "4"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "--tokenizer" in proc.stderr and "Traceback" not in proc.stderr


def test_generate_and_convert_with_bpe_tokenizer(bpe_files, tmp_path: Path) -> None:
    pth, tok_path = bpe_files
    loaded = api.open_model(pth, str(tok_path))
    assert loaded.source_format == "official-state-dict"
    text = "".join(api.generate(loaded, "the king of", 12, SamplingOptions(temperature=0)))
    # greedy text is the argmax chain of model.step on the BPE ids
    ids = loaded.tokenizer.encode("the king of")
    state = loaded.model.init_state(1)
    with torch.no_grad():
        for t in ids:
            logits, state = loaded.model.step(torch.tensor([t]), state)
        out = []
        for _ in range(12):
            nxt = int(logits[0].argmax())
            out.append(nxt)
            logits, state = loaded.model.step(torch.tensor([nxt]), state)
    assert text == "".join(loaded.tokenizer.decode([t]) for t in out)  # streamed per token
    proc = subprocess.run([str(_EXE), "convert", str(pth), "--tokenizer", str(tok_path), "-o",
                           str(tmp_path / "b"), "--check-tokens", "16"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "b" / "tokenizer.json").is_file()


def test_profile_takes_the_tokenizer(bpe_files, tmp_path: Path) -> None:
    """profile reads a bare .pth like every other model command: with --tokenizer."""
    from click.testing import CliRunner

    from spikegpt_deploy.cli import main

    pth, tok_path = bpe_files
    text = tmp_path / "text.txt"
    text.write_text(random_text(30000, seed=6), encoding="utf-8")
    result = CliRunner().invoke(main, ["profile", str(pth), "--tokenizer", str(tok_path),
                                       "--data", str(text), "--tokens", "24", "--json",
                                       "-o", str(tmp_path / "prof")])
    assert result.exit_code == 0, result.output
    import json
    doc = json.loads(result.stdout)
    assert doc["meta"]["tokens"] == 24 and (tmp_path / "prof" / "profile.json").is_file()
