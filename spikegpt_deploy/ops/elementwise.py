"""Element-wise ops, the embedding lookup and the spike-count accumulator.

Every function here is the reference of its op: the float numpy function (float32, batch axis
first), the host cost it is priced at (counted from that function, see profiling/op_costs.py),
and the ONNX translation, written in the same order of operations so that the host ONNX graph
agrees with the numpy reference to float32 rounding. ``b`` is the host-ONNX builder
(``converters.host_onnx``): ``b.one(op_type, inputs, hint, **attrs)``, ``b.const(value, hint)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .registry import ChipNeeds, NirForm, OpDef, Without, register

F32 = np.float32
FLOAT_BYTES = 4

_FLOAT_ON_HOST = Without("a host op: the emulation runs its float function")
_NO_NIR = Without("a host op: not in the chip partition's NIR graph")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(F32)


def _unary(op_type: str) -> Any:
    return lambda b, nid, n, ins: [b.one(op_type, ins, nid)]


def _heaviside_onnx(b: Any, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    fired = b.one("GreaterOrEqual", [ins[0], b.const(F32(0))], nid)
    return [b.one("Cast", [fired], nid, to=b.FLOAT)]


def _token_shift_mix_onnx(b: Any, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    mix = np.asarray(n["params"]["mix"], dtype=F32)
    cur = b.one("Mul", [ins[0], b.const(mix, f"{nid}.mix")], nid)
    prev = b.one("Mul", [ins[1], b.const(F32(1) - mix, f"{nid}.one_minus_mix")], nid)
    return [b.one("Add", [cur, prev], nid)]


def _spike_sum_onnx(b: Any, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    terms = [x if c == 1 else b.one("Mul", [x, b.const(F32(c))], nid)
             for c, x in zip(n["attrs"]["coefficients"], ins)]
    total = terms[0]
    for term in terms[1:]:
        total = b.one("Add", [total, term], nid)
    return [total]


def _spike_sum_cost(n: int, shape: Any, a: Any) -> dict[str, int]:
    coeffs = list(a.get("coefficients", []))
    return {"add": (len(coeffs) - 1) * n, "mul": n * sum(c != 1 for c in coeffs)}


def _spike_sum_nir(ir: Any, node_id: str, width: int, dt_s: float
                   ) -> tuple[dict[str, Any], str]:
    """Ones: the node sums its incoming edges (NIR's fan-in convention); the export adds a
    helper nir.Scale per coefficient other than 1."""
    return {"scale": np.ones(width, F32)}, ""


def _host(name: str, arity: int | None, doc: str, run: Any, cost: Any, onnx: Any,
          why_host: str, classes: Any = None) -> None:
    register(OpDef(name, arity, 1, doc, run=run, fixed=_FLOAT_ON_HOST, cost=cost,
                   chip=Without(why_host), onnx=onnx, nir=_NO_NIR, classes=classes))


_host("Embedding", 1, "y = weight[token]",
      lambda n, i: (n["params"]["weight"][i[0]],),
      # one row of C float32 read from the table
      lambda n, shape, a: {"lookup_byte": FLOAT_BYTES * int(shape[1])},
      lambda b, nid, n, ins: [b.one("Gather", [b.const(n["params"]["weight"], f"{nid}.weight"),
                                               ins[0]], nid, axis=0)],
      "table lookup of the token id")
_host("Heaviside", 1, "y = 1 if x >= 0 else 0 (binary)",
      lambda n, i: ((i[0] >= 0).astype(F32),),
      lambda n, shape, a: {"compare": n}, _heaviside_onnx,
      "threshold of the looked-up embedding row (on the host, beside the lookup)",
      classes=lambda ins, a: ["binary"])
_host("TokenShiftMix", 2, "y = mix * a + (1 - mix) * prev",
      lambda n, i: ((i[0] * n["params"]["mix"] + i[1] * (F32(1) - n["params"]["mix"]))
                    .astype(F32),),
      lambda n, shape, a: {"mul": 2 * n, "add": n},   # (1 - mix) counts as precomputed
      _token_shift_mix_onnx,
      "token-shift mix of float LayerNorm outputs (folded away where a linear reads it)")
_host("Sigmoid", 1, "y = 1 / (1 + exp(-x))", lambda n, i: (_sigmoid(i[0]),),
      lambda n, shape, a: {"sigmoid": n}, _unary("Sigmoid"), "sigmoid needs exp and division")
_host("ReLU", 1, "y = max(x, 0)", lambda n, i: (np.maximum(i[0], F32(0)),),
      lambda n, shape, a: {"max": n}, _unary("Relu"),
      "ReLU of a float vector (part of ReLU squared)")
_host("Square", 1, "y = x * x", lambda n, i: ((i[0] * i[0]).astype(F32),),
      lambda n, shape, a: {"mul": n},
      lambda b, nid, n, ins: [b.one("Mul", [ins[0], ins[0]], nid)],
      "square of a float vector (part of ReLU squared)")
_host("Mul", 2, "y = a * b (elementwise)", lambda n, i: ((i[0] * i[1]).astype(F32),),
      lambda n, shape, a: {"mul": n}, _unary("Mul"),
      "elementwise product of two graded float vectors (gating)")
_host("Add", 2, "y = a + b (elementwise)", lambda n, i: ((i[0] + i[1]).astype(F32),),
      lambda n, shape, a: {"add": n}, _unary("Add"),
      "adds spikes to the float residual stream, which the host needs for LayerNorm statistics",
      # a sum of spikes or spike counts is a spike count
      classes=lambda ins, a: ["integer" if all(c in ("binary", "integer") for c in ins)
                              else "float"])
_host("Scale", 1, "y = factor * x (attrs: factor, a constant)",
      lambda n, i: ((i[0] * F32(n["attrs"]["factor"])).astype(F32),),
      lambda n, shape, a: {"mul": n},
      lambda b, nid, n, ins: [b.one("Mul", [ins[0], b.const(F32(n["attrs"]["factor"]))], nid)],
      "rescaling of the float residual stream")

# Produced by fold_layernorm: the integer count of the spikes of the residual stream.
register(OpDef(
    "SpikeSum", None, 1, "y = sum_j coefficients[j] * x_j: integer spike counts of the stream",
    run=lambda n, i: (sum(F32(c) * x for c, x in zip(n["attrs"]["coefficients"], i))
                      .astype(F32),),
    fixed=Without("integer sums of spikes: the float function is already exact on the chip"),
    cost=_spike_sum_cost,
    chip=ChipNeeds("Accumulate", "integer accumulation of spikes of the residual stream"),
    onnx=_spike_sum_onnx,
    nir=NirForm("Scale", _spike_sum_nir), classes=lambda ins, a: ["integer"]))
