"""Open a model file: the default model, a checkpoint or a step ONNX export, and the check that
a model has a usable tokenizer. ``api`` exposes these; the profiler and the Ray workers open
models through them without importing ``api``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .checkpoint import LoadedModel, load_checkpoint
from .data import BPETokenizer, Tokenizer
from .errors import CheckpointError

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


def open_model(path: str | Path | None, tokenizer_path: str | Path | None = None,
               **overrides: Any) -> LoadedModel:
    """Load a model file (or the default), with an optional tokenizers JSON for bare state_dicts.

    An exported step ``.onnx`` is read back too (its config is fixed: no overrides)."""
    tokenizer: Tokenizer | None = BPETokenizer.from_file(tokenizer_path) if tokenizer_path else None
    source = Path(path) if path is not None else default_model_path()
    if source.suffix == ".onnx":
        from converters.onnx_import import model_from_onnx

        from .checkpoint import file_sha256
        if overrides:
            raise CheckpointError(f"{source}: config overrides do not apply to an .onnx step "
                                  f"export (its config is fixed at export time)")
        return LoadedModel(model_from_onnx(source), tokenizer, source, file_sha256(source),
                           "onnx-step")
    return load_checkpoint(source, tokenizer=tokenizer, **overrides)


def require_tokenizer(loaded: LoadedModel) -> Tokenizer:
    if loaded.tokenizer is None:
        raise CheckpointError(f"{loaded.path}: the file has no tokenizer (a bare state_dict); pass "
                              f"--tokenizer with the tokenizers JSON it was trained with, e.g. "
                              f"GPT-NeoX-20B's 20B_tokenizer.json for the official 216M model")
    if loaded.tokenizer.vocab_size > loaded.model.config.vocab_size:
        raise CheckpointError(f"tokenizer has {loaded.tokenizer.vocab_size} tokens but the model "
                              f"only {loaded.model.config.vocab_size}; use the model's tokenizer")
    return loaded.tokenizer
