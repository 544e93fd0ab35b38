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

``QUANT_OPS`` is the interpreter op table of that emulation, derived from the op definitions'
fixed-point forms (``spikegpt_deploy.ops``); ``emulator`` runs it. The fixed-point
Lava simulation has to match it spike for spike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .. import fixed_point as fp
from .. import ops
from ..errors import ConversionError
from ..folded import is_factored, linear_shape, linear_weight
from ..interpreter import Executor, OpFn, SequenceResult
from ..ir import HOST, IR
# the emulation's integer arithmetic lives with the linears' fixed-point forms; kept importable here
from ..ops.linear import (IntegerWeights, graded_input, integer_matmul,  # noqa: F401
                          readout_scale)
from ..threads import thread_map
from .rounding import (ROUNDINGS, ChannelQuantized, gptq_factor, quantize_channels,
                       quantize_folded, rounding_for)

F32 = np.float32
LIF_INPUT_MARGIN = 2.0  # calibrated max |current| x margin must fit the 16-bit a_in


def calibrate(ir: IR, tokens: np.ndarray) -> dict[tuple[str, int], float]:
    """Max |value| of every value over a token sequence (tokens: (B, T)) in float execution."""
    return Executor(ir).run_sequence(tokens, peaks=True).peaks


@dataclass
class CalibrationStats:
    """What quantize takes from the calibration run: the peak |value| of every value, and
    X^T X / samples of the inputs of the chip SpikeLinears (the Hessian of their output error,
    for ``rounding.gptq_round``), keyed by the input port."""

    peaks: dict[tuple[str, int], float]
    grams: dict[tuple[str, int], np.ndarray]


def spike_linear_inputs(ir: IR) -> tuple[tuple[str, int], ...]:
    """The ports the chip SpikeLinears read (spike counts or embedding spikes)."""
    return tuple(sorted({(p.node, p.port) for n in ir.topological()
                         if ir.node(n)["op"] == "SpikeLinear"
                         and ir.node(n).get("placement", HOST) != HOST
                         for p in ir.inputs(n)}))


def calibration_stats(ir: IR, tokens: np.ndarray, grams: bool = True) -> CalibrationStats:
    """One float run over the calibration tokens (B, T): peaks and, if asked, the grams."""
    gram_of = spike_linear_inputs(ir) if grams else ()
    return stats_of_run(Executor(ir).run_sequence(tokens, peaks=True, keep=gram_of), gram_of)


def stats_of_run(run: SequenceResult, gram_of: tuple[tuple[str, int], ...]) -> CalibrationStats:
    """``CalibrationStats`` of a float ``run_sequence`` made with ``peaks=True`` and the ports
    ``gram_of`` kept: X^T X / samples over its T x B rows. The inputs are spike counts, so the
    float64 products and sums are exact integers: the same grams in any order of summation."""
    grams = {}
    for key in gram_of:
        x = run.values[key].astype(np.float64)
        grams[key] = (x.T @ x) / max(x.shape[0], 1)
    return CalibrationStats(run.peaks, grams)


def _scale_bits_for(peak: float) -> int:
    """Largest input_scale_bits b (0..15) with peak * margin < 2**(15 - b)."""
    need = max(peak * LIF_INPUT_MARGIN, 1e-9)
    return int(max(0, min(15, math.floor(15 - math.log2(need)) - 1)))


SCALES = ("channel", "layer")


def needs_grams(rounding: str, weight_bits: int, layer_bits: Mapping[str, int] | None = None,
                scales: str = "channel") -> bool:
    """Whether some chip SpikeLinear will be rounded by GPTQ (so calibration must keep grams)."""
    widths = {int(weight_bits), *(int(b) for b in (layer_bits or {}).values())}
    return scales == "channel" and any(rounding_for(rounding, b) == "gptq" for b in widths)


def quantize(ir: IR, calibration_tokens: np.ndarray, weight_bits: int = 8,
             layer_bits: dict[str, int] | None = None, scales: str = "channel",
             rounding: str = "auto", stats: CalibrationStats | None = None,
             peaks: dict[tuple[str, int], float] | None = None) -> IR:
    """Annotate chip nodes with fixed-point parameters (see the module docstring); new IR.

    ``layer_bits`` gives single chip linears other widths than ``weight_bits``. ``scales``:
    'channel' gives each output channel of a SpikeLinear its own float scale (the host applies
    it to the integer sum it reads), 'layer' one power-of-two exponent per layer; ``rounding``
    'gptq' rounds SpikeLinear weights against their calibration inputs (``rounding.py``),
    'nearest' to the nearest mantissa, 'auto' GPTQ below 8 bits and nearest at 8. The
    per-channel matrices are quantized on all usable cores (``threads.thread_map``).
    ``stats``: a calibration run already made on these
    tokens (``calibration_stats``), so that several quantizations share it; ``peaks``:
    ``calibrate(ir, calibration_tokens)`` when the caller has run it already (enough for
    rounding 'nearest').
    """
    layer_bits = dict(layer_bits or {})
    for name, bits in [("--weight-bits", weight_bits), *layer_bits.items()]:
        if not 2 <= int(bits) <= fp.DENSE_WEIGHT_BITS:
            raise ConversionError(f"{name} {bits}: Lava's Dense holds 2..8-bit weights")
    if scales not in SCALES or rounding not in ROUNDINGS:
        raise ConversionError(f"scales={scales!r}, rounding={rounding!r}: expected one of "
                              f"{SCALES} and one of {ROUNDINGS}")
    out = ir.copy()
    unknown = sorted(set(layer_bits) - {n for n in out.topological()
                                        if out.node(n)["op"] in ("SpikeLinear", "Linear")
                                        and out.node(n).get("placement", HOST) != HOST})
    if unknown:
        raise ConversionError(f"per-layer weight bits for {unknown}: not chip linears")
    grams_needed = needs_grams(rounding, weight_bits, layer_bits, scales)
    if stats is None and peaks is not None and not grams_needed:
        stats = CalibrationStats(peaks, {})
    if stats is None:
        stats = calibration_stats(out, calibration_tokens, grams=grams_needed)
    peaks, grams = stats.peaks, stats.grams
    report: dict[str, dict[str, Any]] = {}
    channel = _quantize_channel_linears(out, weight_bits, layer_bits, rounding, grams) \
        if scales == "channel" else {}
    for n in out.topological():
        d = out.node(n)
        if d.get("placement", HOST) == HOST:
            continue
        bits = int(layer_bits.get(n, weight_bits))
        if d["op"] == "LIF":
            src = out.inputs(n)[0]
            from_chip_linear = out.node(src.node).get("placement", HOST) != HOST
            if from_chip_linear:
                continue  # set by its graded Linear below
            sbits = _scale_bits_for(peaks.get((src.node, src.port), 0.0))
            m = fp.map_lif(sbits)
            d["attrs"] = {**d["attrs"], "input_scale_bits": sbits, "vth_fixed": m.fixed.vth,
                          "du_fixed": m.fixed.du, "dv_fixed": m.fixed.dv, "input": "host_current"}
            report[n] = {"op": "LIF", "input_scale_bits": sbits,
                         "input_peak": peaks.get((src.node, src.port), 0.0),
                         "current_step": 2.0 ** -sbits}
        elif d["op"] == "SpikeLinear" and scales == "channel":
            q = channel[n]
            d["params"]["weight_q"] = q.mantissa.astype(np.int8, copy=False)  # the chip's width
            d["params"]["weight_scale"] = q.scale
            d["attrs"] = {k: v for k, v in d["attrs"].items()
                          if k not in ("weight_exp", "weight_scale")}
            d["attrs"] = {**d["attrs"], "weight_bits": bits, "weight_scales": "channel",
                          "rounding": q.rounding}
            report[n] = {"op": "SpikeLinear", "weight_bits": bits, "scales": "channel",
                         "rounding": q.rounding, "weight_max_abs_error": q.max_abs_error,
                         "weight_rms_error": q.rms_error, "output_mse": q.output_mse}
        elif d["op"] == "SpikeLinear":
            q = fp.quantize_weights(linear_weight(d["params"]), bits, mantissa_dtype=np.int8)
            d["params"]["weight_q"] = q.mantissa  # int8: the chip's width, a quarter of int32
            d["params"].pop("weight_scale", None)
            d["attrs"] = {**d["attrs"], "weight_bits": bits, "weight_exp": q.exponent,
                          "weight_scale": q.scale}
            report[n] = {"op": "SpikeLinear", "weight_bits": bits, "scales": "layer",
                         "rounding": "nearest", "weight_max_abs_error": q.max_abs_error,
                         "weight_rms_error": q.rms_error, "weight_exp": q.exponent}
        elif d["op"] == "Linear":
            report[n] = _quantize_graded_linear(out, n, peaks, bits)
        elif d["op"] not in ("SpikeSum", "StateIn", "StateOut"):
            raise ConversionError(f"node '{n}' ({d['op']}, from {d['module']}): no fixed-point "
                                  f"model for this chip op")
    out.meta["quantization"] = {"weight_bits": weight_bits, "layers": report,
                                "scales": scales, "rounding": rounding,
                                "calibration_tokens": int(np.asarray(calibration_tokens).size)}
    out.passes.append("quantize")
    return out


def _quantize_channel_linears(ir: IR, weight_bits: int, layer_bits: Mapping[str, int],
                              rounding: str, grams: Mapping[tuple[str, int], np.ndarray]
                              ) -> dict[str, ChannelQuantized]:
    """Per-channel quantization of every chip SpikeLinear, the matrices spread over the cores.
    Matrices that read the same input port share one GPTQ factor (computed first)."""
    jobs = []
    for n in ir.topological():
        d = ir.node(n)
        if d["op"] == "SpikeLinear" and d.get("placement", HOST) != HOST:
            src = ir.inputs(n)[0]
            bits = int(layer_bits.get(n, weight_bits))
            jobs.append((n, bits, (src.node, src.port)))
    ports = sorted({port for _, bits, port in jobs
                    if rounding_for(rounding, bits) == "gptq" and port in grams})
    factors = dict(zip(ports, thread_map(lambda p: gptq_factor(grams[p]), ports)))

    def one(job: tuple[str, int, tuple[str, int]]) -> ChannelQuantized:
        n, bits, port = job
        params = ir.node(n)["params"]
        if is_factored(params):
            return quantize_folded(params["source_weight"], params["source_cols"], bits,
                                   grams.get(port), rounding, factors.get(port))
        return quantize_channels(params["weight"], bits, grams.get(port), rounding,
                                 factors.get(port))

    # the widest matrices first, so that no core is left with one big matrix at the end
    sizes = {n: int(np.prod(linear_shape(ir.node(n)["params"]))) for n, _, _ in jobs}
    jobs.sort(key=lambda j: -sizes[j[0]])
    return dict(zip((n for n, _, _ in jobs), thread_map(one, jobs, values=sum(sizes.values()))))


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
# op -> the function the emulation runs: the op's fixed-point form (``spikegpt_deploy.ops``,
# e.g. ``ops.linear.fixed_spike_linear``, ``ops.lif.fixed_lif``), else its float function.
QUANT_OPS: Mapping[str, OpFn] = ops.FIXED


def emulator(ir: IR, keep_weights: bool = True) -> Executor:
    """The quantized emulation of a quantized IR (LIF membranes in Lava's integer v units); its
    integer weights are prepared for BLAS once, on first use (``keep_weights=False``: on every
    use, for a single run over a whole sequence, where each matrix is read once)."""
    return Executor(ir, ops.fixed_ops(cache=IntegerWeights(keep=keep_weights)))
