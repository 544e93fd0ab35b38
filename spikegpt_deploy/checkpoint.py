"""Reading and writing SpikeGPT checkpoints.

Two formats are read, always with ``torch.load(weights_only=True)`` so that no pickled code runs:
- an official SpikeGPT state_dict ``.pth`` (keys and shapes of spec section 3; the config is
  inferred from them), and
- this project's ``model.pt``: ``{"format": "spikegpt-deploy-model", "version": 1, "config": {...},
  "state_dict": {...}, "tokenizer": {...}, "meta": {...}}``.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .data import Tokenizer, tokenizer_from_dict
from .errors import CheckpointError, DeployError
from .model import SpikeGPT, SpikeGPTConfig
from .outputs import write_atomic

MODEL_FORMAT = "spikegpt-deploy-model"
MODEL_FORMAT_VERSION = 1
# Shape-defining fields come from the weights; only these may be overridden at load time.
OVERRIDABLE = ("ctx_len", "binary_embedding", "rescale_every", "spiking")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class LoadedModel:
    """A model with what came with it: tokenizer (None for a bare state_dict), metadata, hash."""

    model: SpikeGPT
    tokenizer: Tokenizer | None
    path: Path
    sha256: str
    source_format: str  # 'spikegpt-deploy' or 'official-state-dict'
    meta: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _torch_load(path: Path) -> Any:
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a model file; pass a .pt/.pth file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled objects other than tensors and plain "
            f"containers, which could run code ({str(exc).splitlines()[0][:160]}). Re-save only "
            f"the state_dict (torch.save(model.state_dict(), path)) from a trusted environment"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure of the (code-free) parser on bytes
        # that are not a checkpoint: KeyError/IndexError/TypeError for a text file, RuntimeError
        # for a broken zip, EOFError, UnicodeDecodeError, ... All mean "not a readable file".
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else 'empty'}); pass a SpikeGPT .pth "
            f"state_dict or a model.pt written by 'spikegpt-deploy train'"
        ) from None


def infer_config(state_dict: Mapping[str, Any], source: str) -> SpikeGPTConfig:
    """Infer vocab, width, depth and model type from an official state_dict's keys and shapes."""
    _require_str_keys(state_dict, "the state_dict", source)
    emb = state_dict.get("emb.weight")
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2:
        found = ", ".join(list(state_dict)[:5]) or "no keys"
        raise CheckpointError(
            f"{source}: not a SpikeGPT checkpoint: expected key 'emb.weight' with shape [V, C], "
            f"found {found}; pass a SpikeGPT .pth state_dict or a model.pt from 'train'")
    layers = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k))}
    if not layers:
        raise CheckpointError(f"{source}: not a SpikeGPT checkpoint: no 'blocks.N.*' keys")
    if len(layers) != max(layers) + 1:  # bounds n_layer by the key count: a stray
        # 'blocks.99999999.x' must not make us build (or even list) 1e8 blocks
        absent = [i for i in range(min(max(layers), 10 ** 6)) if i not in layers][:6]
        raise CheckpointError(f"{source}: keys of block(s) {absent} are missing although "
                              f"'blocks.{max(layers)}.*' is present; the file is incomplete")
    model_type = "RWKV-ffnPre" if "blocks.0.ffnPre.key.weight" in state_dict else "RWKV"
    return _with_source(source, SpikeGPTConfig, vocab_size=int(emb.shape[0]),
                        n_layer=max(layers) + 1, n_embd=int(emb.shape[1]), model_type=model_type)


def _require_str_keys(mapping: Mapping[Any, Any], what: str, source: str) -> None:
    bad = [k for k in mapping if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{source}: {what} has non-string key(s) {bad[:6]!r}; keys must be "
                              f"names such as 'emb.weight'")


def _expected_shapes(config: SpikeGPTConfig) -> "OrderedDict[str, torch.Size]":
    with torch.device("meta"):
        return OrderedDict((k, v.shape) for k, v in SpikeGPT(config).state_dict().items())


def check_state_dict(state_dict: Mapping[str, Any], config: SpikeGPTConfig, source: str
                     ) -> "OrderedDict[str, torch.Tensor]":
    """Validate keys, shapes and values against ``config``; return float32 tensors in model order."""
    _require_str_keys(state_dict, "the state_dict", source)
    expected = _expected_shapes(config)
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    if missing:
        raise CheckpointError(
            f"{source}: missing key(s) {missing[:6]}{' ...' if len(missing) > 6 else ''} for a "
            f"{config.n_layer}-layer {config.model_type} model; the file is incomplete or not "
            f"SpikeGPT")
    if extra:
        raise CheckpointError(
            f"{source}: unexpected key(s) {extra[:6]}{' ...' if len(extra) > 6 else ''}; a SpikeGPT "
            f"{config.model_type} state_dict has exactly {len(expected)} keys (remove the extras, "
            f"e.g. a 'module.' prefix or optimizer entries)")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, shape in expected.items():
        value = state_dict[key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise CheckpointError(f"{source}: key '{key}' must be a float tensor, found "
                                  f"{type(value).__name__}")
        if value.shape != shape:
            # RNN-mode files squeeze time_mix_* to [C]; accept and restore the training shape.
            if key.split(".")[-1].startswith("time_mix") and value.numel() == shape.numel():
                value = value.reshape(shape)
            else:
                raise CheckpointError(f"{source}: key '{key}' has shape {list(value.shape)}, "
                                      f"expected {list(shape)}")
        value = value.detach().to(torch.float32)
        if not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{source}: key '{key}' holds {bad} NaN/Inf value(s); the "
                                  f"checkpoint is corrupt or training diverged")
        out[key] = value
    return out


def _apply_overrides(config: SpikeGPTConfig, overrides: Mapping[str, Any], source: str
                     ) -> SpikeGPTConfig:
    bad = [k for k in overrides if k not in OVERRIDABLE]
    if bad:
        raise CheckpointError(f"{source}: cannot override {bad}: only {list(OVERRIDABLE)} may be "
                              f"changed at load time (the others follow from the weights)")
    return _with_source(source, config.replace, **overrides) if overrides else config


def _with_source(where: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; a CheckpointError from the config's own checks gets the file name prefixed."""
    try:
        return fn(*args, **kwargs)
    except CheckpointError as exc:
        if where in str(exc):
            raise
        raise CheckpointError(f"{where}: {exc}") from None


def load_checkpoint(path: str | Path, tokenizer: Tokenizer | None = None,
                    **config_overrides: Any) -> LoadedModel:
    """Load a model file of either format; see the module docstring."""
    path = Path(path)
    source = str(path)
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state_dict or a model.pt dict, found "
                              f"{type(obj).__name__}")
    meta: dict[str, Any] = {}
    if obj.get("format") == MODEL_FORMAT:
        version = obj.get("version")
        if not isinstance(version, int) or version != MODEL_FORMAT_VERSION:
            raise CheckpointError(f"{source}: model format version {version!r} is not "
                                  f"supported (expected {MODEL_FORMAT_VERSION}); upgrade "
                                  f"spikegpt-deploy or re-train")
        for key in ("config", "state_dict"):
            if not isinstance(obj.get(key), Mapping):
                raise CheckpointError(f"{source}: key '{key}' is missing or not a dict")
        _require_str_keys(obj["config"], "key 'config'", source)
        config = _with_source(source, SpikeGPTConfig.from_dict, dict(obj["config"]),
                              f"{source}: config")
        state_dict = obj["state_dict"]
        # The weights define the shapes; a config that disagrees (e.g. n_layer 10**8) is refused
        # before anything is built from it.
        inferred = infer_config(state_dict, source)
        for name in ("vocab_size", "n_layer", "n_embd", "model_type"):
            if getattr(config, name) != getattr(inferred, name):
                raise CheckpointError(
                    f"{source}: config '{name}' is {getattr(config, name)!r} but the weights have "
                    f"{getattr(inferred, name)!r}; the file is inconsistent")
        if tokenizer is None and obj.get("tokenizer") is not None:
            try:
                tokenizer = tokenizer_from_dict(obj["tokenizer"], source)
            except DeployError as exc:
                raise CheckpointError(str(exc)) from None
        meta_obj = obj.get("meta")
        if meta_obj is not None and not isinstance(meta_obj, Mapping):
            raise CheckpointError(f"{source}: key 'meta' must be a dict, found "
                                  f"{type(meta_obj).__name__}")
        meta = dict(meta_obj or {})
        fmt = "spikegpt-deploy"
    else:
        state_dict = obj
        config = infer_config(state_dict, source)
        fmt = "official-state-dict"
    config = _apply_overrides(config, config_overrides, source)
    tensors = check_state_dict(state_dict, config, source)
    model = SpikeGPT(config)
    model.load_state_dict(tensors)
    model.eval()
    return LoadedModel(model, tokenizer, path, file_sha256(path), fmt, meta)


def load_model(path: str | Path, **config_overrides: Any) -> SpikeGPT:
    """Load a SpikeGPT from an official ``.pth`` state_dict or this project's ``model.pt``.

    ``config_overrides`` may set ctx_len, binary_embedding, rescale_every or spiking. The model
    comes in eval mode, with ``model.tokenizer`` (None for a bare state_dict) attached.
    """
    loaded = load_checkpoint(path, **config_overrides)
    loaded.model.tokenizer = loaded.tokenizer  # type: ignore[attr-defined]
    return loaded.model


def _atomic_torch_save(obj: Any, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot create its folder ({exc.strerror or exc}); "
                              f"choose another path") from None
    write_atomic(path, lambda tmp: torch.save(obj, tmp), error=CheckpointError)


def save_model(model: SpikeGPT, path: str | Path, tokenizer: Tokenizer | None,
               meta: Mapping[str, Any] | None = None) -> None:
    """Write this project's model.pt (config, weights, tokenizer, metadata) atomically."""
    _atomic_torch_save({
        "format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": OrderedDict((k, v.detach().cpu().clone())
                                  for k, v in model.state_dict().items()),
        "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
        "meta": dict(meta or {}),
    }, Path(path))


def save_official_state_dict(model: SpikeGPT, path: str | Path) -> None:
    """Write the bare state_dict in the official SpikeGPT key layout (spec 3.1)."""
    _atomic_torch_save(OrderedDict((k, v.detach().cpu().clone())
                                   for k, v in model.state_dict().items()), Path(path))
