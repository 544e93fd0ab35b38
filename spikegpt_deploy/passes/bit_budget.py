"""A quality budget picks the weight bits of each chip SpikeLinear (``convert --quality-budget``).

Goal: the fewest cores, then the least synaptic memory, for a quantization cost (fixed-point
bits per token minus the float IR's, on the calibration windows) of at most the budget.

1. Quantize every chip SpikeLinear at every width 2..8 once (per-channel scales and the chosen
   rounding, ``rounding.quantize_channels``), and note each width's cores and memory
   (``resources.Capacity``) and its output error on the calibration inputs (``output_mse``).
2. Sensitivity: the mix with only layer n at ``PROBE_BITS`` (the others at 8) is run on the
   calibration windows; the KL divergence of its next-token distribution from the all-8-bit
   one is layer n's measured sensitivity. Layer n at b bits is predicted to cost that KL times
   output_mse(b) / output_mse(PROBE_BITS) (a small output perturbation moves the loss in
   proportion to its energy).
3. Greedy: from all 8 bits, repeatedly take the narrowing (layer, fewer bits) with the most
   cores (then memory) saved per predicted cost, while the all-8 cost plus the predicted costs
   stay within the budget.
4. Check: the chosen mix is run; while its measured cost exceeds the budget, the last
   narrowings are undone. While the measured cost uses less than half the budget, the
   predictions are divided by 3 and the greedy runs again (a new mix is kept only if its
   measured cost is within the budget).

The calibration windows are split: the even ones calibrate ranges and Hessians (GPTQ fits
them), the odd ones measure every cost, so that the measured cost is out of sample, as the
held-out text will be. The measured cost is what the plan reports; the cost on held-out text is
for ``evaluate BUNDLE`` to show.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ConversionError
from ..folded import linear_weight
from ..interpreter import Executor
from ..ir import HOST, IR
from ..resources import Capacity
from .quantize import CalibrationStats, calibration_stats, emulator, quantize
from .rounding import ChannelQuantized, quantize_channels

log = logging.getLogger(__name__)

BIT_CHOICES = tuple(range(2, 9))
PROBE_BITS = 3
REPLANS = 4     # at most this many re-plans with predictions divided by 3 each time


@dataclass
class BitPlan:
    """The chosen bits per chip SpikeLinear and what they were chosen from."""

    budget_bits_per_token: float
    bits: dict[str, int]
    float_bits_per_token: float            # the float IR on the calibration windows
    all8_cost_bits_per_token: float        # every chip linear at 8 bits
    measured_cost_bits_per_token: float    # the chosen mix, measured
    predicted_cost_bits_per_token: float
    cores: int                             # of the chip SpikeLinears (other chip layers aside)
    synaptic_memory_bytes: int
    calibration_tokens: int
    evaluations: int
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log2_probs(executor: Executor, x: np.ndarray) -> np.ndarray:
    """log2 softmax of the logits, (B, T, V) float32, windows x (B, T) from the zero state."""
    state = executor.init_state(x.shape[0])
    out = []
    for t in range(x.shape[1]):
        res = executor.step(x[:, t], state)
        state = res.state
        z = res.outputs["logits"].astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        logp = (z - np.log(np.exp(z).sum(-1, keepdims=True))) / math.log(2)
        out.append(logp.astype(np.float32))
    return np.stack(out, 1)


def _cost(logp: np.ndarray, y: np.ndarray) -> float:
    return float(-np.take_along_axis(logp, y[..., None], -1).mean())


def _with_bits(base: IR, options: dict[str, dict[int, ChannelQuantized]], mix: dict[str, int]
               ) -> IR:
    ir = base.copy()
    for n, bits in mix.items():
        q, d = options[n][bits], ir.node(n)
        d["params"]["weight_q"], d["params"]["weight_scale"] = q.mantissa, q.scale
        d["attrs"] = {**d["attrs"], "weight_bits": bits, "rounding": q.rounding}
    return ir


def plan_bits(ir: IR, x: np.ndarray, y: np.ndarray, budget: float, capacity: Capacity,
              rounding: str = "auto", stats: CalibrationStats | None = None
              ) -> tuple[IR, BitPlan]:
    """Choose bits per chip SpikeLinear for a partitioned IR (see the module docstring); returns
    the quantized IR and the plan. x, y: calibration windows and their next tokens (B, T)."""
    if not budget > 0:
        raise ConversionError(f"--quality-budget {budget}: expected a positive number of bits "
                              "per token")
    if x.shape[0] >= 2:  # fit on the even windows, measure on the odd ones (out of sample)
        x_fit, (x, y) = x[0::2], (x[1::2], y[1::2])
    else:
        x_fit = x
    stats = stats or calibration_stats(ir, x_fit, grams=rounding != "nearest")
    base = quantize(ir, x_fit, 8, scales="channel", rounding=rounding, stats=stats)
    nodes = [n for n in base.topological() if base.node(n)["op"] == "SpikeLinear"
             and base.node(n).get("placement", HOST) != HOST]
    options: dict[str, dict[int, ChannelQuantized]] = {}
    fit: dict[str, dict[int, tuple[int, int]]] = {}
    for n in nodes:
        w, src = linear_weight(base.node(n)["params"]), base.inputs(n)[0]
        gram = stats.grams.get((src.node, src.port))
        options[n] = {b: quantize_channels(w, b, gram, rounding) for b in BIT_CHOICES}
        fit[n] = {b: capacity.cores(w.shape[0], w.shape[1], int(np.count_nonzero(q.mantissa)),
                                    b)[:2] for b, q in options[n].items()}
    float_cost = _cost(_log2_probs(Executor(ir), x), y)  # on the measuring windows
    all8 = {n: 8 for n in nodes}
    logp8 = _log2_probs(emulator(_with_bits(base, options, all8)), x)
    all8_cost = _cost(logp8, y) - float_cost
    p8 = np.exp2(logp8.astype(np.float64))
    evaluations = 2
    sens: dict[str, float] = {}
    for n in nodes:
        logp = _log2_probs(emulator(_with_bits(base, options, {**all8, n: PROBE_BITS})), x)
        sens[n] = float(np.mean(np.sum(p8 * (logp8 - logp), -1)))
        evaluations += 1
        log.info("quality budget: %s at %d bits: KL %.5f bits", n, PROBE_BITS, sens[n])

    scale = [1.0]  # predictions x scale: lowered while the measured cost leaves room

    def predicted(n: str, b: int) -> float:
        mse = options[n][b].output_mse or 0.0
        ref = options[n][PROBE_BITS].output_mse or 0.0
        return 0.0 if b == 8 else scale[0] * max(sens[n], 0.0) * (mse / ref if ref > 0 else 1.0)

    def greedy(limit: float) -> list[tuple[str, int, int]]:
        bits, total, moves = dict(all8), all8_cost, []
        mem_core = capacity.synaptic_memory_per_core_bytes
        while True:
            best, best_ratio = None, -1.0
            for n in nodes:
                c0, m0 = fit[n][bits[n]]
                for b in BIT_CHOICES:
                    if b >= bits[n]:
                        continue
                    c1, m1 = fit[n][b]
                    gain = (c0 - c1) * mem_core + (m0 - m1)
                    extra = predicted(n, b) - predicted(n, bits[n])
                    if gain <= 0 or total + extra > limit:
                        continue
                    ratio = gain / max(extra, 1e-12)
                    if ratio > best_ratio:
                        best, best_ratio = (n, b, extra), ratio
            if best is None:
                return moves
            n, b, extra = best
            moves.append((n, bits[n], b))
            bits[n], total = b, total + extra

    def measure(moves: list[tuple[str, int, int]]) -> tuple[dict[str, int], float]:
        bits = dict(all8)
        for n, _, b in moves:
            bits[n] = b
        logp = _log2_probs(emulator(_with_bits(base, options, bits)), x)
        return bits, _cost(logp, y) - float_cost

    moves = greedy(budget)
    bits, cost = measure(moves)
    evaluations += 1
    while cost > budget and moves:    # undo the last narrowings, a quarter at a time
        moves = moves[: len(moves) - max(1, len(moves) // 4)]
        bits, cost = measure(moves)
        evaluations += 1
    if cost > budget:
        raise ConversionError(f"--quality-budget {budget}: every chip linear at 8 bits already "
                              f"costs {cost:.4f} bits per token on the calibration text; raise the "
                              "budget")
    # The KL sensitivities overestimate what a narrowing costs in cross-entropy; while the
    # measured cost uses less than half the budget, trust the predictions less and plan again,
    # keeping a new plan only if its measured cost is within the budget.
    for _ in range(REPLANS):
        if cost >= budget / 2:
            break
        scale[0] /= 3.0
        bits2, cost2 = measure(greedy(budget))
        evaluations += 1
        if cost2 > budget:
            scale[0] *= 3.0
            break
        bits, cost = bits2, cost2
    pred = all8_cost + sum(predicted(n, b) for n, b in bits.items())  # at the final scale
    layers = {n: {"bits": bits[n], "kl_at_probe_bits": sens[n],
                  "predicted_cost": predicted(n, bits[n]), "cores": fit[n][bits[n]][0],
                  "synaptic_memory_bytes": fit[n][bits[n]][1]} for n in nodes}
    plan = BitPlan(budget, bits, float_cost, all8_cost, cost, pred,
                   sum(v["cores"] for v in layers.values()),
                   sum(v["synaptic_memory_bytes"] for v in layers.values()),
                   int(x.size + (x_fit.size if x_fit is not x else 0)), evaluations, layers)
    out = quantize(ir, x_fit, 8, layer_bits=bits, scales="channel", rounding=rounding,
                   stats=stats)
    out.meta["quantization"]["budget"] = {k: v for k, v in plan.to_dict().items()
                                          if k != "layers"}
    for n, entry in layers.items():
        out.meta["quantization"]["layers"][n].update(
            predicted_cost=entry["predicted_cost"], kl_at_probe_bits=entry["kl_at_probe_bits"])
    return out, plan
