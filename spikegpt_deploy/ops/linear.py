"""Linear (float input) and SpikeLinear (spike or spike-count input, made by fold_layernorm).

Both compute y = x @ weight.T in float. On the chip (see ``passes/quantize.py`` for what the
quantizer stores):
- SpikeLinear: signed weight mantissas ``weight_q``; its inputs are binary spikes or integer
  spike counts, so the chip's accumulation is exact and the host multiplies the integer sum by
  the readout scale (one per layer or one per output channel).
- Linear under policy graded: its float input is sent as ``graded_bits`` graded spikes; either
  the host reads the integer sum ('host_readout'), or the Dense output is the integer current of
  the LIF it feeds ('lif_current'), bit for bit as Lava's Dense computes it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import fixed_point as fp
from ..errors import ConversionError
from ..folded import is_factored, linear_weight
from ..threads import thread_map
from .registry import ChipNeeds, NirForm, OpDef, register

F32 = np.float32
EXACT_FLOAT64 = 2.0 ** 53  # every integer of smaller magnitude is a float64, and so are the sums
EXACT_FLOAT32 = 2.0 ** 24


def linear(n: dict[str, Any], ins: list[np.ndarray]) -> tuple[np.ndarray]:
    p = n["params"]
    if is_factored(p):  # [W diag(c0); W diag(c1)] x = [W (c0 x); W (c1 x)]: no folded matrix
        x, W = ins[0], p["source_weight"]
        return np.concatenate([(x * c).astype(F32) @ W.T for c in p["source_cols"]],
                              axis=-1).astype(F32, copy=False),
    return (ins[0] @ p["weight"].T).astype(F32),


def graded_input(x: np.ndarray, input_step: float, graded_bits: int) -> np.ndarray:
    """Host values x as the signed ``graded_bits`` graded spikes of a chip Linear (int32)."""
    qmax = 2 ** (int(graded_bits) - 1) - 1
    return np.clip(np.rint(x / input_step), -qmax, qmax).astype(np.int32)


class IntegerWeights:
    """Float32 copies (transposed) and largest |row| sums of integer weight matrices, made once
    per matrix: what ``integer_matmul`` needs on every token. ``keep=False``: nothing is kept,
    and ``integer_matmul`` goes through each matrix in row blocks instead (a run over a whole
    sequence uses each matrix once, so a copy of every matrix would only add to the peak
    memory)."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self._by_id: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}

    def get(self, w: np.ndarray) -> tuple[np.ndarray, float]:
        hit = self._by_id.get(id(w))
        if hit is None or hit[0] is not w:  # the array itself is kept, so its id stays unique
            w = np.asarray(w)
            step = max(1, (1 << 20) // max(1, w.shape[-1]))  # row blocks: no int64 copy of w
            row_sum = max((float(np.abs(w[i:i + step].astype(np.int64)).sum(axis=1).max())
                           for i in range(0, len(w), step)), default=0.0) if w.size else 0.0
            hit = (w, np.ascontiguousarray(w.T, dtype=np.float32), row_sum)
            self._by_id[id(w)] = hit
        return hit[1], hit[2]


def integer_matmul(x: np.ndarray, w: np.ndarray, cache: IntegerWeights | None = None
                   ) -> np.ndarray:
    """x (B, in) @ w.T (w: out, in) for integer-valued x and w, exactly, as an int64 array.

    With every |partial sum| bounded by |x|max times the largest row sum of |w|, the product runs
    as a float32 BLAS product when that bound is below 2**24 and as a float64 one below 2**53:
    every product and partial sum is then an exactly representable integer, whatever the order
    of summation, so the result equals the int64 product (which is used beyond that; numpy's
    integer matmul has no BLAS and is 10-40x slower). Inputs that are zero in every row (spikes
    are sparse) add exact zeros, so they are left out of the product.

    Without a cache that keeps the weights (a run over a whole sequence reads each matrix once),
    w goes through in row blocks, each converted, bounded and multiplied on its own while it is
    in cache: no float copy of the whole matrix is made.
    """
    x = np.asarray(x)
    w_in = np.asarray(w)
    if not x.size or not np.any(x):
        return np.zeros((x.shape[0], w_in.shape[0]), np.int64)
    used = np.flatnonzero(np.any(x != 0, axis=0))
    sparse = used.size < 0.5 * x.shape[1]
    if cache is None or not cache.keep:
        return _blockwise_integer_matmul(x[:, used] if sparse else x, w_in,
                                         used if sparse else None)
    w32t, row_sum = cache.get(w_in)
    bound = float(np.max(np.abs(x))) * row_sum
    xs, wt = (x[:, used], w32t[used]) if sparse else (x, w32t)
    if bound < EXACT_FLOAT32:
        return (xs.astype(np.float32) @ wt).astype(np.int64)
    if bound < EXACT_FLOAT64:  # from w itself: its float32 copy is exact only below 2**24
        ws = w_in[:, used] if sparse else w_in
        return (xs.astype(np.float64) @ ws.T.astype(np.float64)).astype(np.int64)
    return x.astype(np.int64) @ w_in.astype(np.int64).T


_BLOCK_VALUES = 1 << 18  # weights per row block of the one-pass product (1 MB as float32)


def _blockwise_integer_matmul(xs: np.ndarray, w: np.ndarray, used: np.ndarray | None
                              ) -> np.ndarray:
    """``integer_matmul`` without a weight cache: xs are x's used columns (``used``; None: all).
    Each row block of w picks its exact regime from its own largest row sum, or at once from
    w's integer type when that already bounds every sum below 2**24 (int8 weights and spike
    counts); the blocks are spread over the cores."""
    x_max = float(np.max(np.abs(xs)))
    x32 = xs.astype(np.float32)
    out = np.empty((xs.shape[0], w.shape[0]), np.int64)
    step = max(1, _BLOCK_VALUES // max(1, xs.shape[1]))
    w_max = float(max(abs(np.iinfo(w.dtype).min), np.iinfo(w.dtype).max)) \
        if w.dtype.kind in "iu" else math.inf
    by_type = x_max * w_max * xs.shape[1] < EXACT_FLOAT32

    def block(r0: int) -> None:
        rows = w[r0:r0 + step] if used is None else w[r0:r0 + step, used]
        bound = 0.0 if by_type or not rows.size else \
            x_max * float(np.abs(rows.astype(np.int64)).sum(axis=1).max())
        if bound < EXACT_FLOAT32:
            np.matmul(x32, rows.astype(np.float32).T, out=out[:, r0:r0 + step],
                      casting="unsafe")
        elif bound < EXACT_FLOAT64:
            out[:, r0:r0 + step] = xs.astype(np.float64) @ rows.astype(np.float64).T
        else:
            out[:, r0:r0 + step] = xs.astype(np.int64) @ rows.astype(np.int64).T

    thread_map(block, range(0, w.shape[0], step), values=w.shape[0] * xs.shape[1])
    return out


def readout_scale(n: dict) -> float | np.ndarray:
    """What the host multiplies a chip linear's integer sum by: one float for the layer, or one
    per output channel (``params['weight_scale']``, shape (out,)) when the quantizer gave each
    output channel its own scale."""
    if "weight_scale" in n["params"]:
        return np.asarray(n["params"]["weight_scale"], dtype=np.float64)
    return float(n["attrs"]["weight_scale"])


def fixed_spike_linear(n: dict, ins: list[np.ndarray], cache: IntegerWeights | None = None
                       ) -> tuple[np.ndarray]:
    if "weight_q" not in n["params"]:
        return linear(n, ins)
    acc = integer_matmul(np.rint(ins[0]), n["params"]["weight_q"], cache)
    return (acc * readout_scale(n)).astype(F32),


def fixed_linear(n: dict, ins: list[np.ndarray], cache: IntegerWeights | None = None
                 ) -> tuple[np.ndarray]:
    a = n["attrs"]
    if "weight_q" not in n["params"]:
        return linear(n, ins)
    xq = graded_input(ins[0], a["input_step"], a["graded_bits"])
    if a["output"] == "host_readout":
        acc = integer_matmul(xq, n["params"]["weight_q"], cache)
        return (acc * (readout_scale(n) * a["input_step"])).astype(F32),
    w_eff = fp.dense_effective_weights(n["params"]["weight_lava"], int(a["weight_bits"]))
    out = np.stack([fp.dense_fixed_step(w_eff, a["weight_exp_lava"], row) for row in xq])
    return out.astype(F32),  # integer a_in for the LIF, held exactly in float32


def chip_weight(ir: Any, node_id: str) -> tuple[np.ndarray, str]:
    """The (out, in) float weight a chip SpikeLinear / Linear applies, and 'float' or
    'dequantized'. Quantized: weight_q * weight_scale; a chip Linear that feeds a LIF directly
    (output 'lif_current') has weight_scale = 2**weight_exp / (2**b * input_step), b the LIF's
    input_scale_bits (passes/quantize.py)."""
    node = ir.node(node_id)
    p, a = node["params"], node["attrs"]
    if "weight_q" not in p:
        return np.asarray(linear_weight(p), F32), "float"
    if "weight_scale" in p:    # one scale per output channel
        scale = np.asarray(p["weight_scale"], np.float64)[:, None]
    elif "weight_scale" in a:
        scale = float(a["weight_scale"])
    elif a.get("output") == "lif_current":
        readers = ir.consumers(node_id)
        if len(readers) != 1 or ir.node(readers[0][0])["op"] != "LIF":
            raise ConversionError(f"NIR export: chip Linear '{node_id}' is marked 'lif_current' "
                                  f"but feeds {readers}, not exactly one LIF")
        bits = int(ir.node(readers[0][0])["attrs"]["input_scale_bits"])
        scale = 2.0 ** int(a["weight_exp"]) / (2.0 ** bits * float(a["input_step"]))
    else:
        raise ConversionError(f"NIR export: quantized node '{node_id}' has weight_q but no "
                              "weight_scale; re-run the quantize pass")
    return (np.asarray(p["weight_q"], np.float64) * scale).astype(F32), "dequantized"


def _linear_nir(ir: Any, node_id: str, width: int, dt_s: float) -> tuple[dict[str, Any], str]:
    weight, kind = chip_weight(ir, node_id)
    return {"weight": weight}, kind


def _linear_onnx(b: Any, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    weight_t = np.ascontiguousarray(np.asarray(linear_weight(n["params"]), dtype=F32).T)
    return [b.one("MatMul", [ins[0], b.const(weight_t, f"{nid}.weight_t")], nid)]


def _linear_cost(n: int, shape: Any, attrs: Any) -> dict[str, int]:
    return {"mac": int(np.prod(shape))}


register(OpDef(
    "Linear", 1, 1, "y = weight @ x (weight [out, in], no bias)",
    run=linear, fixed=fixed_linear, cost=_linear_cost,
    chip=ChipNeeds("Linear", "float-input linear fed by {graded_bits}-bit graded spikes "
                   "(policy graded)", policy="graded",
                   host_reason="linear on a float input that fold_layernorm did not make "
                               "spike-driven"),
    onnx=_linear_onnx, nir=NirForm("Linear", _linear_nir)))
register(OpDef(
    "SpikeLinear", 1, 1, "y = weight @ x on spike / spike-count input (the folded linears)",
    run=linear, fixed=fixed_spike_linear, cost=_linear_cost,
    chip=ChipNeeds("Linear", "spike-driven linear: accumulates {inputs} spikes",
                   checks_input_classes=True),
    onnx=_linear_onnx, nir=NirForm("Linear", _linear_nir)))
