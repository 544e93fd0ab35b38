"""Shared fixtures: seeded tiny SpikeGPT models whose LIF populations actually fire.

The repository root goes first on sys.path: lava's wheels install a top-level ``tests`` package
into site-packages, and the checkout (not an installed copy) is what these tests are about.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) in sys.path:
    sys.path.remove(str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT))

import random  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from spikegpt_deploy.checkpoint import load_checkpoint, save_model  # noqa: E402
from spikegpt_deploy.data import CharTokenizer  # noqa: E402
from spikegpt_deploy.model import SpikeGPT, SpikeGPTConfig  # noqa: E402

_EXE = Path(sys.executable).with_name("spikegpt-deploy")  # the installed console script
CLI = [str(_EXE)] if _EXE.is_file() else [sys.executable, "-m", "spikegpt_deploy.cli"]

# The CPUs are shared (and possibly busy): several intra-op threads fighting over two cores make
# tiny models 20x slower than a single thread does.
torch.set_num_threads(1)

# Default init gives LIF inputs well below the threshold of 1 in a 16-32 wide model, so nothing
# fires and spike-equality tests would be vacuous. Scaling the projections that feed the LIFs
# gives firing rates of roughly 0.1-0.4 per population (checked in test_model).
FIRING_SCALE = 32.0

TINY_VOCAB = 13


def lif_feeding_linears(model: SpikeGPT) -> list[torch.nn.Linear]:
    """The Linears whose outputs are LIF inputs: att.output (or ffnPre.value) and ffn.value."""
    out = []
    for block in model.blocks:
        out.append(block.ffnPre.value if hasattr(block, "ffnPre") else block.att.output)
        out.append(block.ffn.value)
    return out


def make_tiny_model(model_type: str = "RWKV", seed: int = 0, n_layer: int = 3, n_embd: int = 16,
                    vocab_size: int = TINY_VOCAB, scale: float = FIRING_SCALE,
                    **config: object) -> SpikeGPT:
    """A seeded tiny SpikeGPT in eval mode with its LIF-feeding weights scaled by ``scale``."""
    torch.manual_seed(seed)
    model = SpikeGPT(SpikeGPTConfig(vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd,
                                    model_type=model_type, **config))  # type: ignore[arg-type]
    with torch.no_grad():
        for linear in lif_feeding_linears(model):
            linear.weight.mul_(scale)
    return model.eval()


def save_char_model(path: Path, text: str, seed: int) -> Path:
    """A seeded 2-layer, 32-wide tiny model with ``text``'s character tokenizer, saved at path
    (the model the simulation tests convert and run)."""
    tok = CharTokenizer.from_text(text)
    save_model(make_tiny_model(n_layer=2, n_embd=32, vocab_size=tok.vocab_size, seed=seed),
               path, tok)
    return path


@torch.no_grad()
def pytorch_reference(model_path: Path, tokens: list[int]) -> tuple[np.ndarray, dict]:
    """The PyTorch RNN step over ``tokens``: logits (T, V) and spikes per population (T, width)."""
    model = load_checkpoint(model_path).model
    state, logits = model.init_state(1), []
    with model.record_spikes() as rec:
        for t in tokens:
            out, state = model.step(torch.tensor([t]), state)
            logits.append(out[0].numpy())
    return np.stack(logits), {k: v[0].numpy() for k, v in rec.spikes().items()}


def randomize_(model: SpikeGPT, seed: int = 0) -> SpikeGPT:
    """Give every parameter non-trivial random values (not the structured init), in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "time_mix" in name:
                p.copy_(torch.rand(p.shape, generator=gen))
            elif name.endswith("time_decay"):
                p.copy_(torch.randn(p.shape, generator=gen) * 1.5 - 1.0)
            elif name.endswith("time_first"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif ".ln" in name or name.startswith("ln_out"):
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
    return model


def random_text(n_chars: int = 20_000, seed: int = 0) -> str:
    """Deterministic, varied, word-like English-ish text (lines of sentences with punctuation)."""
    rng = random.Random(seed)
    words = ("the and of to in that he shall unto his lord for they be is with not all thou "
             "thy was which him them were said have from my me will as but are upon when this "
             "house king people land city water fire stone bread light river mountain north "
             "seven twelve forty quickly slowly brightly Jacob Israel Moses David Zion").split()
    lines, size = [], 0
    while size < n_chars:
        n = rng.randint(4, 14)
        sentence = " ".join(rng.choice(words) for _ in range(n))
        sentence = sentence[0].upper() + sentence[1:]
        line = f"{rng.randint(1, 40)}:{rng.randint(1, 30)} {sentence}{rng.choice('.,;:!?')}"
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)[:n_chars] + "\n"


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., SpikeGPT]:
    """Factory: ``tiny_model(model_type='RWKV', seed=0, n_layer=3, n_embd=16, **config)``."""
    return make_tiny_model


@pytest.fixture(params=["RWKV", "RWKV-ffnPre"])
def model_type(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture()
def text_file(tmp_path: Path) -> Path:
    """About 20 kB of varied text in a UTF-8 file."""
    path = tmp_path / "corpus.txt"
    path.write_text(random_text(), encoding="utf-8")
    return path
