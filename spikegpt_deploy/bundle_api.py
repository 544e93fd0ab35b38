"""The bundle commands' functions: convert a model into a bundle, inspect, export, simulate in
Lava and evaluate a bundle. ``api`` re-exports every name here (``api.COMMANDS`` maps the
commands to them), so callers use ``api.convert``, ``api.simulate``, ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .checkpoint import load_checkpoint
from .data import encode_split, load_corpus
from .errors import BundleError, CheckpointError, DataError
from .inputs import check_count, check_real
from .outputs import check_output
from .sampling import SamplingOptions

if TYPE_CHECKING:
    from .bundle_evaluation import BundleEvalResult

__all__ = ["SimulationRun", "convert", "default_bundle_dir", "evaluate_bundle",
           "export_bundle", "find_source_model", "inspect_bundle", "simulate"]


def default_bundle_dir(model_path: Path, target: str) -> Path:
    """Next to the model: ``<model stem>.<target>.bundle``."""
    return model_path.with_name(f"{model_path.stem}.{Path(target).stem}.bundle")


def convert(model: str | Path | None, out_dir: str | Path | None, force: bool = False,
            **options: Any) -> tuple[Path, dict[str, Any]]:
    """Run the conversion pipeline and write the bundle; returns its path and manifest.

    ``options`` are the fields of ``convert.ConvertOptions`` (target, policy, weight_bits, ...)."""
    from .bundle import MANIFEST, convert_to_bundle, refuse_existing
    from .convert import ConvertOptions

    from .model_files import default_model_path

    source = Path(model) if model is not None else default_model_path()
    opts = ConvertOptions(**options)
    out = Path(out_dir) if out_dir is not None else default_bundle_dir(source, opts.target)
    check_output(out, "-o/--out", folder=True)  # fail before the work, not after it
    refuse_existing(out, force)
    path, _ = convert_to_bundle(source, opts, out, force=force)
    # the manifest as written (its files were hashed while they were written; a reader of the
    # bundle checks them again with verify_bundle)
    return path, json.loads((path / MANIFEST).read_text(encoding="utf-8"))


def export_bundle(path: str | Path, fmt: str, out: str | Path | None = None,
                  force: bool = False) -> tuple[Path, dict[str, Any]]:
    """Write a bundle's host.onnx, spiking.nir or netx files (``bundle.export_bundle``)."""
    from .bundle import export_bundle as _export
    if out is not None:
        check_output(out, "-o", folder=fmt == "netx")
    return _export(path, fmt, out, force)


def inspect_bundle(path: str | Path) -> dict[str, Any]:
    """The bundle's summary: partition, crossings per token, resources, quantization error,
    and the target profile it carries."""
    from .bundle import bundle_profile, verify_bundle

    manifest = verify_bundle(path)
    target = bundle_profile(path, manifest)
    # The manifest is not covered by a hash: a damaged one must still fail as a BundleError.
    try:
        per_direction: dict[str, dict[str, float]] = {}
        for c in manifest.get("crossings", []):
            d = per_direction.setdefault(c["direction"], {"values": 0, "max_messages": 0,
                                                          "max_bytes": 0.0})
            d["values"] += 1
            d["max_messages"] += c["width"]
            d["max_bytes"] += c["width"] * c["bits_per_element"] / 8
        quant = manifest.get("quantization", {})
        layers = {n: dict(q) for n, q in quant.get("layers", {}).items()}
        for r in manifest["resources"]["layers"]:  # bits, cores and memory beside each layer
            if r["node"] in layers and r["op"] in ("SpikeLinear", "Linear"):
                layers[r["node"]].update(weight_bits=r["weight_bits"], cores=r["cores"],
                                         synaptic_memory_bytes=r["synaptic_memory_bytes"])
        return {
            "bundle": str(path), "source_model": manifest["source_model"],
            "config": manifest["config"], "target": manifest["target"],
            "target_profile": {"name": target.name, "title": target.title,
                               "sha256": target.sha256, "path": str(target.path)},
            "policy": manifest["policy"], "passes": manifest["passes"],
            "partition": manifest["partition"],
            "chip_weights": manifest.get("chip_weights"),
            "crossings_per_token": per_direction, "resources": manifest["resources"],
            "quantization": layers, "quality_budget": quant.get("budget"),
            "quantization_method": {k: quant.get(k) for k in ("weight_bits", "scales", "rounding",
                                                              "calibration_tokens")},
            "equivalence": manifest.get("equivalence"),
            "spike_driven_linears": sorted(k for k, v in manifest.get("fold_report", {}).items()
                                           if v.get("spike_driven")),
            "files": sorted(manifest["files"]),
        }
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise BundleError(f"{Path(path) / 'manifest.json'}: malformed manifest "
                          f"({type(exc).__name__}: {exc}); re-run convert") from None


@dataclass
class SimulationRun:
    """A Lava simulation of a bundle: the run, the generated text, the equivalence summary."""

    result: Any       # simulation.SimulationResult
    text: str
    equivalence: dict[str, Any]

    def to_dict(self, prompt: str) -> dict[str, Any]:
        return {"text": self.text, "prompt": prompt, **self.result.summary(),
                "equivalence": self.equivalence}


def simulate(bundle: str | Path, prompt: str, n_tokens: int, precision: str = "float",
             sampling: SamplingOptions = SamplingOptions(), *, timeout_s: float | None = None,
             host_layout: str = "single",
             on_text: Callable[[int, str, float], None] | None = None,
             network: str | None = None) -> SimulationRun:
    """Generate text from ``prompt`` with the bundle simulated in Lava, compared with the
    bundle's own reference; ``on_text(index, piece, seconds)`` streams each token. network:
    'pipelined' (default) or 'populations' (``simulation.simulate``)."""
    from .simulation import simulate_text

    check_count(n_tokens, "--tokens")
    sampling.validate()
    if timeout_s is not None:
        check_real(timeout_s, "--timeout", 0.0, above=True)
    result, text, eq = simulate_text(bundle, prompt, n_tokens, precision, sampling,
                                     timeout_s=timeout_s, host_layout=host_layout,
                                     on_text=on_text, network=network)
    return SimulationRun(result, text, eq)


def find_source_model(bundle_path: Path, manifest: dict[str, Any],
                      model: str | Path | None = None) -> tuple[Path | None, str | None]:
    """The bundle's source model file (sha256 as recorded in the manifest), or why it is missing.

    ``model`` given: it must be that file. Otherwise the recorded file name is looked for next to
    the bundle, in the working directory and as the default model.
    """
    from .model_files import default_model_path
    from .checkpoint import file_sha256

    src = manifest.get("source_model") or {}
    name, digest = src.get("file"), src.get("sha256")
    if not name or not digest:
        return None, "the bundle's manifest records no source model"
    if model is not None:
        path = Path(model)
        if not path.is_file():
            raise CheckpointError(f"--model {path}: no such file")
        if file_sha256(path) != digest:
            raise BundleError(f"--model {path}: sha256 differs from the bundle's source model "
                              f"{name} ({digest[:12]}...); pass the file the bundle was "
                              f"converted from")
        return path, None
    candidates = [bundle_path.parent / name, Path.cwd() / name]
    try:
        candidates.append(default_model_path())
    except CheckpointError:
        pass
    for path in candidates:
        if path.is_file() and path.name == name and file_sha256(path) == digest:
            return path, None
    return None, (f"source model {name} (sha256 {digest[:12]}...) not found next to the bundle "
                  f"or in the working directory; pass --model PATH to compare with it")


def evaluate_bundle(bundle: str | Path, data: str = "kjv", precision: str = "fixed",
                    split: str = "valid", max_tokens: int | None = None,
                    model: str | Path | None = None, compare: bool = True,
                    backend: str = "numpy", batch_size: int = 256) -> "BundleEvalResult":
    """Bits per token of a bundle's computation on held-out text, beside its source model."""
    from .bundle import load_bundle
    from .bundle_evaluation import (BACKENDS, BundleEvalResult, compare_source, evaluate_ir,
                                    windows_of)

    if backend not in BACKENDS:
        raise DataError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if max_tokens is not None:
        check_count(max_tokens, "--max-tokens", 1, 2**62)
    b = load_bundle(bundle)
    if b.tokenizer is None:
        raise BundleError(f"{bundle}: the bundle has no tokenizer.json; re-run convert with "
                          "--tokenizer")
    window = int(b.ir.config["ctx_len"])
    if max_tokens is not None and max_tokens < window:
        raise DataError(f"--max-tokens {max_tokens} is less than one window of {window} tokens; "
                        f"pass --max-tokens {window} or more")
    ids = encode_split(b.tokenizer, load_corpus(data), split)
    x, y = windows_of(ids, window, max_tokens)
    tally, seconds = evaluate_ir(b.ir, precision, x, y, batch_size)
    bits = {n: int(d["attrs"]["weight_bits"]) for n, d in b.ir.graph.nodes(data=True)
            if "weight_bits" in d["attrs"]} if precision == "fixed" else {}
    result = BundleEvalResult(
        bundle=str(bundle), backend=backend, precision=precision, data=data, split=split,
        bits_per_token=tally.bits_per_token, tokens=tally.tokens, windows=x.shape[0],
        window_len=window, firing_rates=tally.rates(), seconds=seconds, weight_bits=bits)
    if not compare:
        result.source_missing = "comparison not requested"
        return result
    path, why = find_source_model(Path(bundle), b.manifest, model)
    if path is None:
        result.source_missing = why
        return result
    overrides = {k: b.ir.config[k] for k in ("binary_embedding", "rescale_every")
                 if k in b.ir.config}
    if path.suffix == ".onnx":
        from converters.onnx_import import model_from_onnx
        source = model_from_onnx(path)
    else:
        source = load_checkpoint(path, **overrides).model
    result.source = compare_source(source, str(path), x, y, tally)
    return result
