"""PyTorch SpikeGPT -> ONNX: the per-token RNN step as a self-describing ONNX model.

The file computes ``SpikeGPT.step_packed``::

    inputs   tokens      int64   [B]              token ids of this step
             state       float32 [7, L, B, C]     packed state, ``SpikeGPTState.names()`` order
    outputs  logits      float32 [B, V]
             next_state  float32 [7, L, B, C]

B is a dynamic dimension named ``batch`` unless ``dynamic_batch=False`` (then it is fixed to
``batch_size``). The LIF and the Heaviside export as ``GreaterOrEqual`` + ``Cast``; WKV as
``Exp``/``Max``/``Div``; LayerNorm as ``LayerNormalization`` (opset 17).

Format (what ``converters.onnx_import.ir_from_onnx`` relies on):

- ``metadata_props``: ``spikegpt_deploy.format`` = ``spikegpt-deploy/step``,
  ``spikegpt_deploy.format_version``, ``spikegpt_deploy.config`` (the ``SpikeGPTConfig`` as
  JSON), ``spikegpt_deploy.state_names`` (JSON list), ``spikegpt_deploy.param_prefix`` and
  ``spikegpt_deploy.batch`` (``dynamic`` or the fixed size).
- Every model parameter is an initializer named ``<prefix><state_dict key>`` holding the raw
  parameter (export runs with constant folding off, so ``time_decay`` is stored raw and
  ``-exp(time_decay)`` is computed in the graph). torch.onnx stores bit-identical parameters once
  and turns the other names into ``Identity`` nodes of the kept initializer; the importer resolves
  those aliases.

The protobuf must stay under 2 GiB (the 216M release, 862 MB of fp32, fits).
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from spikegpt_deploy.errors import ConversionError
from spikegpt_deploy.outputs import write_atomic
from spikegpt_deploy.model import SpikeGPT, SpikeGPTState

log = logging.getLogger(__name__)

OPSET = 17
FORMAT = "spikegpt-deploy/step"
FORMAT_VERSION = "1"
PARAM_PREFIX = "model."
META_FORMAT = "spikegpt_deploy.format"
META_VERSION = "spikegpt_deploy.format_version"
META_CONFIG = "spikegpt_deploy.config"
META_STATE = "spikegpt_deploy.state_names"
META_PREFIX = "spikegpt_deploy.param_prefix"
META_BATCH = "spikegpt_deploy.batch"
INPUT_NAMES = ("tokens", "state")
OUTPUT_NAMES = ("logits", "next_state")
LIF_STATE_NAMES = ("lif1_v", "lif2_v")


class _StepModule(nn.Module):
    """Exposes ``step_packed`` as ``forward``; the model sits under ``model.`` (PARAM_PREFIX)."""

    def __init__(self, model: SpikeGPT):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, packed_state: torch.Tensor):
        return self.model.step_packed(tokens, packed_state)


def export_step_onnx(model: SpikeGPT, path: str | os.PathLike, batch_size: int = 1,
                     dynamic_batch: bool = True) -> Path:
    """Export ``model.step_packed`` to ``path`` (opset 17), check it, and write it atomically.

    batch_size: the batch of the example input used for tracing, and the fixed batch when
    ``dynamic_batch`` is False. Returns the path written. The model is not modified.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConversionError(f"export_step_onnx: batch_size must be a positive integer, "
                              f"found {batch_size!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ConversionError(f"cannot write '{path}': directory '{path.parent}' does not exist")
    config = model.config
    device = model.head.weight.device
    tokens = torch.zeros(batch_size, dtype=torch.int64, device=device)
    state = model.init_state(batch_size).to_tensor()
    dynamic_axes = ({"tokens": {0: "batch"}, "state": {2: "batch"}, "logits": {0: "batch"},
                     "next_state": {2: "batch"}} if dynamic_batch else None)
    buffer = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        # record_spikes: a fresh recorder, so an outer one never sees the tracer's tensors.
        with torch.no_grad(), model.record_spikes(), warnings.catch_warnings():
            # step_packed indexes the state with python ints (fixed L); the tracer's warnings
            # about that are expected.
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(_StepModule(model), (tokens, state), buffer,
                              export_params=True, opset_version=OPSET,
                              do_constant_folding=False, input_names=list(INPUT_NAMES),
                              output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic_axes)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:
        raise ConversionError(f"torch.onnx.export of the SpikeGPT step failed: {exc}") from exc
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buffer.getvalue())
    meta = {META_FORMAT: FORMAT, META_VERSION: FORMAT_VERSION,
            META_CONFIG: json.dumps(config.to_dict(), sort_keys=True),
            META_STATE: json.dumps(list(SpikeGPTState.names())),
            META_PREFIX: PARAM_PREFIX,
            META_BATCH: "dynamic" if dynamic_batch else str(batch_size)}
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = ("SpikeGPT RNN step: (tokens [B] int64, state [7, L, B, C]) -> "
                        "(logits [B, V], next_state [7, L, B, C]); state order "
                        + ", ".join(SpikeGPTState.names()))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionError(f"the exported SpikeGPT step fails onnx.checker: {exc}") from exc
    write_atomically(path, proto.SerializeToString())
    log.info("exported the SpikeGPT step to %s (%d nodes, opset %d)", path,
             len(proto.graph.node), OPSET)
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """``outputs.write_atomic`` with a write error reported as a ConversionError."""
    write_atomic(path, data, error=ConversionError)


# ---- running and checking an exported step ----------------------------------------------------

def ort_session(model: str | os.PathLike | bytes, source: str = "") -> Any:
    """An onnxruntime CPU session (one thread) for an ONNX file or serialized model."""
    try:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
    except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency
        raise ConversionError("running ONNX models needs onnxruntime: pip install onnxruntime"
                              ) from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    errors = tuple(getattr(ort_state, name) for name in (
        "Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotFound",
        "NotImplemented", "RuntimeException", "EPFail", "NoModel"))
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                    providers=["CPUExecutionProvider"])
    except errors as exc:
        raise ConversionError(f"onnxruntime cannot load {source or model!s}: {exc}") from exc


def run_step_onnx(session: Any, tokens: np.ndarray, state: np.ndarray
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run an exported step over tokens (B, T), carrying the packed state from ``state``.

    Returns logits (B, T, V) and the packed state after every token (T arrays (7, L, B, C)).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    state = np.asarray(state, dtype=np.float32)
    logits, states = [], []
    for t in range(tokens.shape[1]):
        out, state = session.run(list(OUTPUT_NAMES),
                                 {"tokens": np.ascontiguousarray(tokens[:, t]), "state": state})
        logits.append(out)
        states.append(state)
    return np.stack(logits, 1), states


def implied_spikes(packed_state: np.ndarray) -> np.ndarray:
    """Spikes of the LIF populations implied by a state after a step: (2, L, B, C) bool.

    A LIF that fired is hard-reset, so its next membrane is exactly 0; one that did not keeps
    H != 0 unless its charge was exactly 0 (v = x = 0), which a trained model never meets.
    """
    names = SpikeGPTState.names()
    return np.stack([np.asarray(packed_state[names.index(n)]) == 0 for n in LIF_STATE_NAMES])


@dataclass(frozen=True)
class StepOnnxCheck:
    """onnxruntime vs ``model.step`` over a token sequence.

    ``max_rel_*`` are max |ort - torch| / (1 + |torch|): scale-free, for large-magnitude state
    such as the WKV numerator of a trained model.
    """

    n_tokens: int
    max_abs_logits_diff: float
    max_abs_state_diff: float
    max_rel_logits_diff: float
    max_rel_state_diff: float
    spikes_equal: bool

    def ok(self, tol: float = 1e-5) -> bool:
        return (self.spikes_equal and self.max_abs_logits_diff <= tol
                and self.max_abs_state_diff <= tol)


def _diffs(ref: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    diff = np.abs(ref - other)
    return float(diff.max()), float((diff / (1 + np.abs(ref))).max())


def verify_step_onnx(model: SpikeGPT, path: str | os.PathLike | bytes, tokens: np.ndarray
                     ) -> StepOnnxCheck:
    """Run ``path`` in onnxruntime and ``model.step`` on tokens (B, T) from the zero state."""
    tokens = np.asarray(tokens, dtype=np.int64)
    session = ort_session(path)
    state = model.init_state(tokens.shape[0])
    ort_logits, ort_states = run_step_onnx(session, tokens, state.to_tensor().numpy())
    worst = np.zeros(4)  # abs logits, rel logits, abs state, rel state
    spikes_equal = True
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            logits, state = model.step(torch.from_numpy(tokens[:, t]), state)
            ref = state.to_tensor().numpy()
            now = _diffs(logits.numpy(), ort_logits[:, t]) + _diffs(ref, ort_states[t])
            worst = np.maximum(worst, now)
            spikes_equal &= bool(np.array_equal(implied_spikes(ref), implied_spikes(ort_states[t])))
    return StepOnnxCheck(int(tokens.shape[1]), float(worst[0]), float(worst[2]), float(worst[1]),
                         float(worst[3]), spikes_equal)
