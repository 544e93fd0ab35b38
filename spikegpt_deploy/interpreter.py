"""Run an IR on numpy, one token at a time (float32, batch axis first).

This is the reference executor for every transformation: a pass is correct when the interpreter
gives the same outputs before and after it. ``Executor`` takes an op table so that the quantized
emulation (fixed-point chip ops) can reuse the same walk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from .errors import ConversionError, DataError
from .ir import IR
from .passes.fold import fold_correction  # kept next to the rewrite it inverts

Array = np.ndarray
OpFn = Callable[[dict[str, Any], list[Array]], tuple[Array, ...]]
F32 = np.float32


def _sigmoid(x: Array) -> Array:
    return (1.0 / (1.0 + np.exp(-x))).astype(F32)


def _layernorm_stats(x: Array, eps: float) -> tuple[Array, Array]:
    mean = x.mean(axis=-1, keepdims=True, dtype=F32)
    var = np.square(x - mean).mean(axis=-1, keepdims=True, dtype=F32)
    return mean.astype(F32), np.sqrt(var + F32(eps)).astype(F32)


def _mean_inv_std(x: Array, eps: float) -> tuple[Array, Array]:
    """LayerNormStats: mean and 1 / sqrt(var + eps), so users multiply instead of divide."""
    mean, std = _layernorm_stats(x, eps)
    return mean, (F32(1) / std).astype(F32)


def _layernorm(n: dict[str, Any], ins: list[Array]) -> tuple[Array]:
    mean, std = _layernorm_stats(ins[0], n["attrs"]["eps"])
    return (((ins[0] - mean) / std) * n["params"]["weight"] + n["params"]["bias"]).astype(F32),


def _wkv(n: dict[str, Any], ins: list[Array]) -> tuple[Array, ...]:
    k, v, aa, bb, pp = ins
    w, u = n["params"]["w"], n["params"]["u"]
    ww = u + k
    p = np.maximum(pp, ww)
    e1, e2 = np.exp(pp - p), np.exp(ww - p)
    wkv = (e1 * aa + e2 * v) / (e1 * bb + e2)
    ww = pp + w
    p = np.maximum(ww, k)
    e1, e2 = np.exp(ww - p), np.exp(k - p)
    return wkv.astype(F32), (e1 * aa + e2 * v).astype(F32), (e1 * bb + e2).astype(F32), \
        p.astype(F32)


def _lif(n: dict[str, Any], ins: list[Array]) -> tuple[Array, Array]:
    x, v = ins
    h = v + (x - v) * F32(1.0 / n["attrs"]["tau"])
    s = (h >= F32(n["attrs"]["threshold"])).astype(F32)
    return s, (h * (F32(1.0) - s)).astype(F32)


def _linear(n: dict[str, Any], ins: list[Array]) -> tuple[Array]:
    return (ins[0] @ n["params"]["weight"].T).astype(F32),


FLOAT_OPS: dict[str, OpFn] = {
    "Embedding": lambda n, i: (n["params"]["weight"][i[0]],),
    "Heaviside": lambda n, i: ((i[0] >= 0).astype(F32),),
    "LayerNorm": _layernorm,
    "TokenShiftMix": lambda n, i: ((i[0] * n["params"]["mix"]
                                    + i[1] * (F32(1) - n["params"]["mix"])).astype(F32),),
    "Linear": _linear,
    "Sigmoid": lambda n, i: (_sigmoid(i[0]),),
    "ReLU": lambda n, i: (np.maximum(i[0], F32(0)),),
    "Square": lambda n, i: ((i[0] * i[0]).astype(F32),),
    "Mul": lambda n, i: ((i[0] * i[1]).astype(F32),),
    "Add": lambda n, i: ((i[0] + i[1]).astype(F32),),
    "Scale": lambda n, i: ((i[0] * F32(n["attrs"]["factor"])).astype(F32),),
    "WKV": _wkv,
    "LIF": _lif,
    "SpikeSum": lambda n, i: (sum(F32(c) * x for c, x in zip(n["attrs"]["coefficients"], i))
                              .astype(F32),),
    "SpikeLinear": _linear,
    "LayerNormStats": lambda n, i: _mean_inv_std(i[0], n["attrs"]["eps"]),
    "FoldCorrection": fold_correction,
}


@dataclass
class StepResult:
    outputs: dict[str, Array]
    state: dict[str, Array]
    values: dict[tuple[str, int], Array] = field(default_factory=dict)


class Executor:
    """Walks an IR in topological order with an op table (float by default)."""

    def __init__(self, ir: IR, ops: Mapping[str, OpFn] | None = None):
        self.ir = ir
        self.ops = dict(FLOAT_OPS if ops is None else ops)
        self.order = ir.topological()
        self._inputs = {n: ir.inputs(n) for n in self.order}
        missing = sorted({ir.node(n)["op"] for n in self.order} - set(self.ops)
                         - {"Input", "Output", "StateIn", "StateOut"})
        if missing:
            raise ConversionError(f"the executor has no implementation of op(s) {missing}")

    def init_state(self, batch_size: int = 1) -> dict[str, Array]:
        state = {}
        for n in self.ir.nodes_of("StateIn"):
            attrs = self.ir.node(n)["attrs"]
            width = int(attrs.get("width", self.ir.config["n_embd"]))
            state[attrs["state"]] = np.full((batch_size, width), attrs["init"], dtype=F32)
        return state

    def step(self, tokens: Array, state: Mapping[str, Array], keep_values: bool = False
             ) -> StepResult:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        vocab = int(self.ir.config["vocab_size"])
        if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
            raise DataError(f"token ids must be in [0, {vocab}), got {tokens.min()}..{tokens.max()}")
        values: dict[tuple[str, int], Array] = {}
        outputs: dict[str, Array] = {}
        new_state: dict[str, Array] = {}
        for n in self.order:
            data = self.ir.node(n)
            op = data["op"]
            ins = [values[(p.node, p.port)] for p in self._inputs[n]]
            if op == "Input":
                res: tuple[Array, ...] = (tokens,)
            elif op == "StateIn":
                res = (np.asarray(state[data["attrs"]["state"]], dtype=F32),)
            elif op == "StateOut":
                new_state[data["attrs"]["state"]] = ins[0]
                continue
            elif op == "Output":
                outputs[data["attrs"]["name"]] = ins[0]
                continue
            else:
                res = self.ops[op](data, ins)
            for port, value in enumerate(res):
                values[(n, port)] = value
        return StepResult(outputs, new_state, values if keep_values else {})

    def steps(self, tokens: Array) -> Iterator[StepResult]:
        """Each step's result (every value kept) over tokens (B, T), from the zero state."""
        tokens = np.asarray(tokens, dtype=np.int64)
        state = self.init_state(tokens.shape[0])
        for t in range(tokens.shape[1]):
            res = self.step(tokens[:, t], state, keep_values=True)
            state = res.state
            yield res

    def run(self, tokens: Array, spikes_of: tuple[str, ...] = ("LIF", "Heaviside")
            ) -> tuple[Array, dict[str, Array]]:
        """tokens (B, T) -> logits (B, T, V) and spikes per population (B, T, C), from zero state."""
        populations = [n for n in self.order if self.ir.node(n)["op"] in spikes_of]
        logits, spikes = [], {self.ir.node(n)["module"]: [] for n in populations}
        for res in self.steps(tokens):
            logits.append(res.outputs["logits"])
            for n in populations:
                spikes[self.ir.node(n)["module"]].append(res.values[(n, 0)])
        return np.stack(logits, 1), {k: np.stack(v, 1) for k, v in spikes.items()}


def annotate_shapes(ir: IR) -> IR:
    """Set shape and dtype on every edge by running one step of batch 1 (returns a new IR)."""
    out = ir.copy()
    ex = Executor(out)
    res = ex.step(np.zeros(1, dtype=np.int64), ex.init_state(1), keep_values=True)
    for u, v, d in out.graph.edges(data=True):
        value = res.values[(u, d["src_port"])]
        d["shape"] = list(value.shape[1:])
        d["dtype"] = str(value.dtype)
    return out
