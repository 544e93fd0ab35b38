"""The functions behind the command line (each CLI command is a thin wrapper over one of these)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from .checkpoint import LoadedModel, load_checkpoint
from .data import BPETokenizer, Tokenizer, encode_split, load_corpus
from .errors import CheckpointError, DataError
from .evaluation import EvalResult, evaluate_ids
from .sampling import SamplingOptions, encode_prompt, generate_ids

DEFAULT_MODEL_ENV = "SPIKEGPT_DEPLOY_MODEL"
DEFAULT_MODEL_NAME = "spikegpt-kjv-4x128.pt"


def default_model_path() -> Path:
    """The embedded default model: $SPIKEGPT_DEPLOY_MODEL, else the one shipped in examples/."""
    env = os.environ.get(DEFAULT_MODEL_ENV)
    if env:
        return Path(env)
    candidates = [Path(__file__).resolve().parent.parent / "examples" / DEFAULT_MODEL_NAME,
                  Path.cwd() / "examples" / DEFAULT_MODEL_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no model given and the default {DEFAULT_MODEL_NAME} was not found in "
        f"{', '.join(str(c.parent) for c in candidates)}; pass a model path or set "
        f"{DEFAULT_MODEL_ENV}")


def open_model(path: str | Path | None, tokenizer_path: str | None = None,
               **overrides: Any) -> LoadedModel:
    """Load a model file (or the default), with an optional tokenizers JSON for bare state_dicts."""
    tokenizer: Tokenizer | None = BPETokenizer.from_file(tokenizer_path) if tokenizer_path else None
    loaded = load_checkpoint(path if path is not None else default_model_path(),
                             tokenizer=tokenizer, **overrides)
    return loaded


def require_tokenizer(loaded: LoadedModel) -> Tokenizer:
    if loaded.tokenizer is None:
        raise CheckpointError(f"{loaded.path}: the file has no tokenizer (a bare state_dict); pass "
                              f"--tokenizer with the tokenizers JSON it was trained with, e.g. "
                              f"GPT-NeoX-20B's 20B_tokenizer.json for the official 216M model")
    if loaded.tokenizer.vocab_size > loaded.model.config.vocab_size:
        raise CheckpointError(f"tokenizer has {loaded.tokenizer.vocab_size} tokens but the model "
                              f"only {loaded.model.config.vocab_size}; use the model's tokenizer")
    return loaded.tokenizer


def evaluate(loaded: LoadedModel, data: str, split: str = "valid",
             max_tokens: int | None = None, window_len: int | None = None) -> EvalResult:
    """Bits per token and firing rates of ``loaded`` on the held-out split of ``data``."""
    tokenizer = require_tokenizer(loaded)
    corpus = load_corpus(data)
    ids = encode_split(tokenizer, corpus, split)
    window = window_len or loaded.model.config.ctx_len
    if max_tokens is not None and max_tokens < 1:
        raise DataError(f"--max-tokens must be >= 1, got {max_tokens}")
    if len(ids) < window + 1:
        raise DataError(f"{data} {split} split has {len(ids)} tokens, fewer than one window of "
                        f"{window + 1}; use a longer text or a smaller --window")
    return evaluate_ids(loaded.model, ids, window, max_tokens=max_tokens)


def generate(loaded: LoadedModel, prompt: str, n_tokens: int,
             options: SamplingOptions) -> Iterator[str]:
    """Yield the decoded text of each generated token (RNN mode, streaming)."""
    tokenizer = require_tokenizer(loaded)
    prompt_ids = encode_prompt(tokenizer, prompt)
    for tok in generate_ids(loaded.model, prompt_ids, n_tokens, options):
        yield tokenizer.decode([tok])
