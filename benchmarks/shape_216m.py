"""The official 216M shape for the benchmarks: random weights in the official key layout, a
word-level tokenizer of its vocabulary size, and its bundle, built once and reused.

    python benchmarks/shape_216m.py DIR     # writes DIR/{216m.pth,words.json,216m.bundle}

Converting the 216M shape takes minutes and about 10 GB: run it under
``flock /tmp/spikegpt-216m.lock``; a bundle already in DIR is reused.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPE_216M = {"vocab_size": 50277, "n_layer": 18, "n_embd": 768}


def word_tokenizer_json(vocab_size: int, text: str) -> str:
    """A `tokenizers` word-level tokenizer: the words of ``text`` by frequency, padded with
    placeholder words to ``vocab_size`` entries (the 216M's vocabulary size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    counts: dict[str, int] = {}
    for w in re.findall(r"\w+|[^\w\s]", text):
        counts[w] = counts.get(w, 0) + 1
    words = ["[UNK]"] + sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - 1]
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    return tok.to_str()


def ensure_216m_bundle(work: Path) -> Path:
    """DIR/216m.bundle, converted from a seeded random 216M-shape checkpoint if not there."""
    import torch

    from spikegpt_deploy import api
    from spikegpt_deploy.checkpoint import save_official_state_dict
    from spikegpt_deploy.data import load_corpus
    from spikegpt_deploy.model import SpikeGPT, SpikeGPTConfig

    import json

    from spikegpt_deploy.bundle import BUNDLE_FORMAT_VERSION

    work.mkdir(parents=True, exist_ok=True)
    bundle = work / "216m.bundle"
    manifest = bundle / "manifest.json"
    if manifest.is_file() and \
            json.loads(manifest.read_text()).get("format_version") == BUNDLE_FORMAT_VERSION:
        return bundle  # built before in this format: reused
    pth, tok = work / "216m.pth", work / "words.json"
    if not tok.is_file():
        tok.write_text(word_tokenizer_json(SHAPE_216M["vocab_size"], load_corpus("kjv").train))
    if not pth.is_file():
        torch.manual_seed(0)
        with torch.no_grad():
            model = SpikeGPT(SpikeGPTConfig(**SHAPE_216M)).eval()
        save_official_state_dict(model, pth)
        del model
    api.convert(pth, bundle, force=True, tokenizer=str(tok), calibration_tokens=64,
                check_tokens=16)
    return bundle


if __name__ == "__main__":
    print(ensure_216m_bundle(Path(sys.argv[1])))
