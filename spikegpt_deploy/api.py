"""The functions behind the command line (each CLI command is a thin wrapper over one of these)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from .checkpoint import LoadedModel, load_checkpoint
from .data import BPETokenizer, Tokenizer, encode_split, load_corpus
from .errors import BundleError, CheckpointError, DataError
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
    if max_tokens is not None and max_tokens < window:
        raise DataError(f"--max-tokens {max_tokens} is less than one window of {window} tokens; "
                        f"pass --max-tokens {window} or more")
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


def default_bundle_dir(model_path: Path, target: str) -> Path:
    """Next to the model: ``<model stem>.<target>.bundle``."""
    return model_path.with_name(f"{model_path.stem}.{Path(target).stem}.bundle")


def convert(model: str | Path | None, out_dir: str | Path | None, force: bool = False,
            **options: Any) -> tuple[Path, dict[str, Any]]:
    """Run the conversion pipeline and write the bundle; returns its path and manifest."""
    from .bundle import refuse_existing, verify_bundle, write_bundle
    from .convert import ConvertOptions, run_pipeline

    source = Path(model) if model is not None else default_model_path()
    opts = ConvertOptions(**options)
    out = Path(out_dir) if out_dir is not None else default_bundle_dir(source, opts.target)
    refuse_existing(out, force)  # fail before the work, not after it
    ctx = run_pipeline(source, opts)
    path = write_bundle(ctx, out, force=force)
    return path, verify_bundle(path)


def inspect_bundle(path: str | Path) -> dict[str, Any]:
    """The bundle's summary: partition, crossings per token, resources, quantization error."""
    from .bundle import verify_bundle

    manifest = verify_bundle(path)
    # The manifest is not covered by a hash: a damaged one must still fail as a BundleError.
    try:
        crossings = manifest.get("crossings", [])
        per_direction: dict[str, dict[str, float]] = {}
        for c in crossings:
            d = per_direction.setdefault(c["direction"], {"values": 0, "max_messages": 0,
                                                          "max_bytes": 0.0})
            d["values"] += 1
            d["max_messages"] += c["width"]
            d["max_bytes"] += c["width"] * c["bits_per_element"] / 8
        layers = manifest.get("quantization", {}).get("layers", {})
        return {
            "bundle": str(path), "source_model": manifest["source_model"],
            "config": manifest["config"], "target": manifest["target"],
            "policy": manifest["policy"], "passes": manifest["passes"],
            "partition": manifest["partition"],
            "crossings_per_token": per_direction, "resources": manifest["resources"],
            "quantization": layers, "equivalence": manifest.get("equivalence"),
            "spike_driven_linears": sorted(k for k, v in manifest.get("fold_report", {}).items()
                                           if v.get("spike_driven")),
            "files": sorted(manifest["files"]),
        }
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise BundleError(f"{Path(path) / 'manifest.json'}: malformed manifest "
                          f"({type(exc).__name__}: {exc}); re-run convert") from None
