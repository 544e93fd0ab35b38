"""ONNX -> IR: accept a SpikeGPT step exported by ``converters.onnx_export`` as converter input.

Design: the file is *rebuilt*, not pattern-matched. The exported step is self-describing (its
metadata holds the ``SpikeGPTConfig``; its initializers are the model parameters under their
state_dict names), so the importer

1. reads and checks the file (``onnx.checker``), its metadata and its graph signature;
2. builds ``SpikeGPT(config)`` and fills it from the initializers: every state_dict key must be
   present with its shape and float32 dtype, either as an initializer or as an ``Identity`` alias
   of one (torch.onnx stores bit-identical parameters once); an initializer that is no parameter
   is refused;
3. optionally (``verify_tokens`` > 0, the default) runs the file in onnxruntime against the
   rebuilt model for a few tokens, so that a graph edited after export (same weights, other
   computation) is refused rather than silently replaced by the reference step;
4. captures the rebuilt model with ``capture_ir`` (torch.fx), the same path a PyTorch model takes.

Pattern-matching the ~300 ONNX nodes back into LIF/WKV/TokenShiftMix ops would duplicate the
capture logic against an exporter-version-dependent node layout; rebuilding is exact (the same
float32 parameters) and needs only the format contract documented in ``onnx_export``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from converters.onnx_export import (FORMAT, FORMAT_VERSION, INPUT_NAMES, META_CONFIG,
                                    META_FORMAT, META_PREFIX, META_STATE, META_VERSION,
                                    OUTPUT_NAMES, verify_step_onnx)
from converters.torch_capture import capture_ir
from spikegpt_deploy.errors import ConversionError, DeployError
from spikegpt_deploy.ir import IR
from spikegpt_deploy.model import SpikeGPT, SpikeGPTConfig, SpikeGPTState

log = logging.getLogger(__name__)

# onnxruntime vs the rebuilt model: max |diff| / (1 + |reference|) over logits and state. float32
# rounding gives ~1e-6; an edited graph gives O(1). (A LIF input within rounding of its threshold
# could flip a spike and fail this check spuriously; with 2 tokens from the zero state that needs
# an input within ~1e-6 of exactly 2.0: pass verify_tokens=0 to skip it.)
VERIFY_TOLERANCE = 1e-4


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file and run ``onnx.checker`` on it; any failure is a ConversionError."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"ONNX file '{path}' does not exist (or is not a file)")
    try:
        proto = onnx.load(str(path))
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise ConversionError(f"'{path}' cannot be read as an ONNX model ({exc}); is it a "
                              f"complete .onnx file?") from exc
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ConversionError(f"'{path}' fails onnx.checker: {exc}") from exc
    return proto


def read_step_config(proto: onnx.ModelProto, source: str) -> tuple[SpikeGPTConfig, str]:
    """The SpikeGPT config and the parameter-name prefix from a step export's metadata."""
    meta = {p.key: p.value for p in proto.metadata_props}
    hint = ("export it with converters.onnx_export.export_step_onnx (spikegpt-deploy only "
            "imports its own step exports)")
    if meta.get(META_FORMAT) != FORMAT:
        found = (f"'{META_FORMAT}' = {meta[META_FORMAT]!r}" if META_FORMAT in meta else
                 f"no '{META_FORMAT}' entry (metadata keys: {sorted(meta) or 'none'})")
        raise ConversionError(f"'{source}' is not a spikegpt-deploy step export: its "
                              f"metadata_props should have '{META_FORMAT}' = {FORMAT!r}, found "
                              f"{found}; {hint}")
    if meta.get(META_VERSION) != FORMAT_VERSION:
        raise ConversionError(f"'{source}': step-export format version {meta.get(META_VERSION)!r}"
                              f" is not supported (this version reads {FORMAT_VERSION!r}); "
                              f"re-export the model with this version of spikegpt-deploy")
    for key in (META_CONFIG, META_STATE, META_PREFIX):
        if key not in meta:
            raise ConversionError(f"'{source}': metadata_props lacks '{key}'; {hint}")
    try:
        config_data = json.loads(meta[META_CONFIG])
        state_names = json.loads(meta[META_STATE])
    except json.JSONDecodeError as exc:
        raise ConversionError(f"'{source}': metadata '{META_CONFIG}' or '{META_STATE}' is not "
                              f"valid JSON ({exc})") from exc
    if not isinstance(config_data, dict):
        raise ConversionError(f"'{source}': metadata '{META_CONFIG}' must be a JSON object, "
                              f"found {type(config_data).__name__}")
    if state_names != list(SpikeGPTState.names()):
        raise ConversionError(f"'{source}': state layout {state_names} differs from this "
                              f"version's {list(SpikeGPTState.names())}; re-export the model")
    try:
        config = SpikeGPTConfig.from_dict(config_data, source=f"'{source}' metadata config")
    except DeployError as exc:
        raise ConversionError(str(exc)) from exc
    return config, meta[META_PREFIX]


def _check_signature(proto: onnx.ModelProto, config: SpikeGPTConfig, source: str) -> None:
    graph = proto.graph
    init_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    found_in = [i.name for i in inputs]
    found_out = [o.name for o in graph.output]
    if found_in != list(INPUT_NAMES) or found_out != list(OUTPUT_NAMES):
        raise ConversionError(f"'{source}': graph inputs {found_in} / outputs {found_out}; a step "
                              f"export has inputs {list(INPUT_NAMES)} and outputs "
                              f"{list(OUTPUT_NAMES)}")
    L, C = config.n_layer, config.n_embd
    expected = {"tokens": (onnx.TensorProto.INT64, [None]),
                "state": (onnx.TensorProto.FLOAT, [len(SpikeGPTState.names()), L, None, C]),
                "logits": (onnx.TensorProto.FLOAT, [None, config.vocab_size]),
                "next_state": (onnx.TensorProto.FLOAT, [len(SpikeGPTState.names()), L, None, C])}
    for value in list(inputs) + list(graph.output):
        ttype = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        elem, shape = expected[value.name]
        ok = ttype.elem_type == elem and len(dims) == len(shape) and all(
            s is None or d is None or d == s for d, s in zip(dims, shape))
        if not ok:
            raise ConversionError(
                f"'{source}': '{value.name}' is {_dtype_name(ttype.elem_type)} "
                f"{['?' if d is None else d for d in dims]}, expected {_dtype_name(elem)} "
                f"{['B' if s is None else s for s in shape]} for the config in the metadata")


def _dtype_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "untyped"


def read_parameters(proto: onnx.ModelProto, prefix: str, source: str) -> dict[str, np.ndarray]:
    """Initializer name -> array, with torch.onnx's ``Identity`` aliases resolved."""
    values = {i.name: i for i in proto.graph.initializer}
    aliases: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type == "Identity" and len(node.input) == 1 \
                and node.output[0].startswith(prefix):
            aliases[node.output[0]] = node.input[0]
    unknown = sorted(n for n in values if not n.startswith(prefix))
    if unknown:
        raise ConversionError(f"'{source}': initializer(s) {unknown[:8]}"
                              f"{' ...' if len(unknown) > 8 else ''} are not model parameters "
                              f"(expected names '{prefix}<state_dict key>'); was the file "
                              f"exported with constant folding or edited after export?")
    params: dict[str, np.ndarray] = {}
    for name in list(values) + list(aliases):
        target, seen = name, set()
        while target in aliases and target not in values:
            if target in seen:
                raise ConversionError(f"'{source}': Identity aliases of '{name}' form a cycle")
            seen.add(target)
            target = aliases[target]
        if target in values:
            params[name[len(prefix):]] = numpy_helper.to_array(values[target])
    return params


def _load_parameters(model: SpikeGPT, params: dict[str, np.ndarray], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in params]
    unknown = sorted(k for k in params if k not in expected)
    if missing or unknown:
        raise ConversionError(
            f"'{source}': the initializers do not match the metadata config "
            f"({model.config.n_layer} layers, {model.config.model_type}): "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unknown {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    bad = [f"{k}: {list(params[k].shape)} {params[k].dtype} (expected {list(v.shape)} float32)"
           for k, v in expected.items()
           if tuple(params[k].shape) != tuple(v.shape) or params[k].dtype != np.float32]
    if bad:
        raise ConversionError(f"'{source}': wrong initializer shape or dtype: {'; '.join(bad[:8])}")
    state = {k: torch.from_numpy(np.array(params[k], dtype=np.float32)) for k in expected}
    model.load_state_dict(state, strict=True)


def model_from_onnx(path: str | os.PathLike, verify_tokens: int = 2) -> SpikeGPT:
    """Rebuild the SpikeGPT model of a step export (see the module docstring), in eval mode."""
    source = str(path)
    proto = load_onnx(path)
    config, prefix = read_step_config(proto, source)
    _check_signature(proto, config, source)
    params = read_parameters(proto, prefix, source)
    model = SpikeGPT(config)
    _load_parameters(model, params, source)
    model.eval()
    if verify_tokens > 0:
        _verify(model, proto, verify_tokens, source)
    return model


def _verify(model: SpikeGPT, proto: onnx.ModelProto, n_tokens: int, source: str) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.config.vocab_size, size=(1, n_tokens))
    check = verify_step_onnx(model, proto.SerializeToString(), tokens)
    if max(check.max_rel_logits_diff, check.max_rel_state_diff) > VERIFY_TOLERANCE:
        raise ConversionError(
            f"'{source}': the graph does not compute the SpikeGPT step of its own parameters "
            f"(over {n_tokens} tokens from the zero state: max relative logits difference "
            f"{check.max_rel_logits_diff:.3g}, state {check.max_rel_state_diff:.3g}, tolerance "
            f"{VERIFY_TOLERANCE}); was it edited after export?")


def ir_from_onnx(path: str | os.PathLike, verify_tokens: int = 2) -> IR:
    """The IR of an ONNX step export: rebuild the model, then ``capture_ir`` (module docstring).

    verify_tokens: how many tokens to run in onnxruntime against the rebuilt model (0 skips it).
    """
    model = model_from_onnx(path, verify_tokens=verify_tokens)
    ir = capture_ir(model)
    ir.passes.insert(0, "onnx_import")
    ir.meta["source"] = {"format": "onnx", "path": str(path)}
    log.info("imported %s: %d IR nodes", path, ir.graph.number_of_nodes())
    return ir
