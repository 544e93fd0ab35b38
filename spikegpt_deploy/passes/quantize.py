"""quantize: chip nodes to Loihi 2 / Lava fixed point, plus the numpy emulation they must match.

What is quantized (only nodes placed on the chip):
- SpikeLinear: weights to signed ``weight_bits`` mantissas with one power-of-two exponent per layer
  (``fixed_point.quantize_weights``). Its inputs are binary spikes or integer spike counts, so the
  chip's accumulation is exact; the host reads the integer sum and multiplies by ``weight_scale``.
- LIF: Lava's bit-accurate LIF (``fixed_point.map_lif``) with a per-population input resolution
  ``input_scale_bits`` chosen from calibration so that the largest input current seen, with a
  margin, fits Lava's 16-bit a_in. Host currents are rounded to 2**-b (``quantize_current``).
- Linear on chip (policy graded): its float input is sent as ``graded_bits`` graded spikes with a
  per-layer scale from calibration; weights are quantized for the LIF's input units and the
  Dense output is the LIF's integer current, bit for bit as Lava's Dense computes it.

``QUANT_OPS`` is the interpreter op table of that emulation; ``emulate`` runs it. The fixed-point
Lava simulation has to match it spike for spike.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import fixed_point as fp
from ..errors import ConversionError
from ..interpreter import FLOAT_OPS, Executor, OpFn
from ..ir import HOST, IR

F32 = np.float32
LIF_INPUT_MARGIN = 2.0  # calibrated max |current| x margin must fit the 16-bit a_in


def calibrate(ir: IR, tokens: np.ndarray) -> dict[tuple[str, int], float]:
    """Max |value| of every value over a token sequence (tokens: (B, T)) in float execution."""
    return Executor(ir).run_sequence(tokens, peaks=True).peaks


def _scale_bits_for(peak: float) -> int:
    """Largest input_scale_bits b (0..15) with peak * margin < 2**(15 - b)."""
    need = max(peak * LIF_INPUT_MARGIN, 1e-9)
    return int(max(0, min(15, math.floor(15 - math.log2(need)) - 1)))


def graded_input(x: np.ndarray, input_step: float, graded_bits: int) -> np.ndarray:
    """Host values x as the signed ``graded_bits`` graded spikes of a chip Linear (int32)."""
    qmax = 2 ** (int(graded_bits) - 1) - 1
    return np.clip(np.rint(x / input_step), -qmax, qmax).astype(np.int32)


def quantize(ir: IR, calibration_tokens: np.ndarray, weight_bits: int = 8,
             peaks: dict[tuple[str, int], float] | None = None) -> IR:
    """Annotate chip nodes with fixed-point parameters (see the module docstring); new IR.

    ``peaks``: ``calibrate(ir, calibration_tokens)`` when the caller has run it already."""
    if not 2 <= weight_bits <= fp.DENSE_WEIGHT_BITS:
        raise ConversionError(f"--weight-bits {weight_bits}: Lava's Dense holds 2..8-bit weights")
    out = ir.copy()
    if peaks is None:
        peaks = calibrate(out, calibration_tokens)
    report: dict[str, dict[str, Any]] = {}
    for n in out.topological():
        d = out.node(n)
        if d.get("placement", HOST) == HOST:
            continue
        if d["op"] == "LIF":
            src = out.inputs(n)[0]
            from_chip_linear = out.node(src.node).get("placement", HOST) != HOST
            if from_chip_linear:
                continue  # set by its graded Linear below
            bits = _scale_bits_for(peaks.get((src.node, src.port), 0.0))
            m = fp.map_lif(bits)
            d["attrs"] = {**d["attrs"], "input_scale_bits": bits, "vth_fixed": m.fixed.vth,
                          "du_fixed": m.fixed.du, "dv_fixed": m.fixed.dv, "input": "host_current"}
            report[n] = {"op": "LIF", "input_scale_bits": bits,
                         "input_peak": peaks.get((src.node, src.port), 0.0),
                         "current_step": 2.0 ** -bits}
        elif d["op"] == "SpikeLinear":
            q = fp.quantize_weights(d["params"]["weight"], weight_bits, mantissa_dtype=np.int8)
            d["params"]["weight_q"] = q.mantissa  # int8: the chip's width, a quarter of int32
            d["attrs"] = {**d["attrs"], "weight_bits": weight_bits, "weight_exp": q.exponent,
                          "weight_scale": q.scale}
            report[n] = {"op": "SpikeLinear", "weight_max_abs_error": q.max_abs_error,
                         "weight_rms_error": q.rms_error, "weight_exp": q.exponent}
        elif d["op"] == "Linear":
            report[n] = _quantize_graded_linear(out, n, peaks, weight_bits)
        elif d["op"] not in ("SpikeSum", "StateIn", "StateOut"):
            raise ConversionError(f"node '{n}' ({d['op']}, from {d['module']}): no fixed-point "
                                  f"model for this chip op")
    out.meta["quantization"] = {"weight_bits": weight_bits, "layers": report,
                                "calibration_tokens": int(np.asarray(calibration_tokens).size)}
    out.passes.append("quantize")
    return out


def _quantize_graded_linear(ir: IR, n: str, peaks: dict, weight_bits: int) -> dict[str, Any]:
    """A chip Linear fed by graded spikes. If it feeds one LIF directly (att.output), the Dense
    output is that LIF's integer current; otherwise (ffn.value, gated on the host afterwards) the
    host reads the integer sum, as for a SpikeLinear."""
    d = ir.node(n)
    src = ir.inputs(n)[0]
    g = int(d["attrs"]["graded_bits"])
    qmax = 2 ** (g - 1) - 1
    in_peak = peaks.get((src.node, src.port), 0.0)
    in_step = (in_peak / qmax) if in_peak > 0 else 1.0       # float units per graded step
    readers = ir.consumers(n)
    entry: dict[str, Any] = {"op": "Linear", "graded_bits": g, "input_peak": in_peak,
                             "input_step": in_step}
    if len(readers) == 1 and ir.node(readers[0][0])["op"] == "LIF":
        lif = readers[0][0]
        bits = _scale_bits_for(peaks.get((n, 0), 0.0))
        m = fp.map_lif(bits)
        q = fp.quantize_weights(d["params"]["weight"], weight_bits,
                                input_scale=m.input_scale * in_step, mantissa_dtype=np.int8)
        kw = q.lava_dense_kwargs()
        d["params"]["weight_lava"] = np.asarray(kw["weights"], dtype=np.int32)
        d["attrs"] = {**d["attrs"], "output": "lif_current",
                      "weight_exp_lava": int(kw["weight_exp"])}
        ir.node(lif)["attrs"] = {**ir.node(lif)["attrs"], "input_scale_bits": bits,
                                 "vth_fixed": m.fixed.vth, "du_fixed": m.fixed.du,
                                 "dv_fixed": m.fixed.dv, "input": "chip_current"}
        entry["lif_input_scale_bits"] = bits
    else:
        q = fp.quantize_weights(d["params"]["weight"], weight_bits, mantissa_dtype=np.int8)
        d["attrs"] = {**d["attrs"], "output": "host_readout", "weight_scale": q.scale}
    d["params"]["weight_q"] = q.mantissa
    d["attrs"] = {**d["attrs"], "weight_bits": weight_bits, "weight_exp": q.exponent,
                  "input_step": in_step}
    entry.update(weight_max_abs_error=q.max_abs_error, weight_rms_error=q.rms_error)
    return entry


# ---- the quantized emulation --------------------------------------------------------------
def _q_spike_linear(n: dict, ins: list[np.ndarray]) -> tuple[np.ndarray]:
    if "weight_q" not in n["params"]:
        return FLOAT_OPS["SpikeLinear"](n, ins)  # type: ignore[return-value]
    acc = fp.exact_integer_matmul(np.rint(ins[0]), n["params"]["weight_q"])
    return (acc * n["attrs"]["weight_scale"]).astype(F32),


def _q_linear(n: dict, ins: list[np.ndarray]) -> tuple[np.ndarray]:
    a = n["attrs"]
    if "weight_q" not in n["params"]:
        return FLOAT_OPS["Linear"](n, ins)  # type: ignore[return-value]
    xq = graded_input(ins[0], a["input_step"], a["graded_bits"])
    if a["output"] == "host_readout":
        acc = fp.exact_integer_matmul(xq, n["params"]["weight_q"])
        return (acc * (a["weight_scale"] * a["input_step"])).astype(F32),
    w_eff = fp.dense_effective_weights(n["params"]["weight_lava"], int(a["weight_bits"]))
    out = np.stack([fp.dense_fixed_step(w_eff, a["weight_exp_lava"], row) for row in xq])
    return out.astype(F32),  # integer a_in for the LIF, held exactly in float32


def _q_lif(n: dict, ins: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    a = n["attrs"]
    if "input_scale_bits" not in a:
        return FLOAT_OPS["LIF"](n, ins)  # type: ignore[return-value]
    x, v = ins
    if a["input"] == "host_current":
        a_in = fp.quantize_current(x, 2.0 ** a["input_scale_bits"], overflow="saturate")
    else:
        a_in = np.rint(x).astype(np.int32)
    params = fp.FixedLifParams(du=a["du_fixed"], dv=a["dv_fixed"], vth=a["vth_fixed"])
    spikes, _, v_new = fp.lif_fixed_step(a_in, np.zeros_like(a_in), np.rint(v).astype(np.int32),
                                         params)
    return spikes.astype(F32), v_new.astype(F32)


QUANT_OPS: dict[str, OpFn] = {**FLOAT_OPS, "SpikeLinear": _q_spike_linear, "Linear": _q_linear,
                              "LIF": _q_lif}


def emulator(ir: IR) -> Executor:
    """The quantized emulation of a quantized IR (LIF membranes in Lava's integer v units)."""
    return Executor(ir, QUANT_OPS)
