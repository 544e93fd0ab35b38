"""Run an IR on numpy, one token at a time (float32, batch axis first).

This is the reference executor for every transformation: a pass is correct when the interpreter
gives the same outputs before and after it. The op functions are the ops' own definitions
(``spikegpt_deploy.ops``); ``Executor`` takes an op table so that the quantized emulation
(fixed-point chip ops) can reuse the same walk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping

import networkx as nx
import numpy as np

from . import ops
from .errors import ConversionError, DataError
from .ir import IR, Port
from .ops import OpFn, plumbing_ops

Array = np.ndarray
F32 = np.float32
# op -> its float32 numpy function: a live view of the op definitions (``spikegpt_deploy.ops``)
FLOAT_OPS: Mapping[str, OpFn] = ops.FLOAT


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
                         - set(plumbing_ops()))
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

    def run_sequence(self, tokens: Array, spikes_of: tuple[str, ...] = ("LIF", "Heaviside"),
                     peaks: bool = False, keep: tuple[tuple[str, int], ...] = ()
                     ) -> "SequenceResult":
        """Like ``run``, each op once over all tokens where it can be (see ``run_sequence``)."""
        return run_sequence(self, tokens, spikes_of, peaks, keep)


@dataclass
class SequenceResult:
    """``Executor.run_sequence``: logits (B, T, V), spikes (B, T, C) per population, the state
    after the last token, (when asked) max |value| of every float value over all tokens, and the
    values of the ports asked for in ``keep``, (T * B, C) with row t * B + b."""

    logits: Array
    spikes: dict[str, Array]
    state: dict[str, Array]
    peaks: dict[tuple[str, int], float] = field(default_factory=dict)
    values: dict[tuple[str, int], Array] = field(default_factory=dict)


def recurrent_groups(ir: IR) -> list[list[str]]:
    """The IR's nodes in groups, in an order where every group's inputs come from earlier groups
    or from the previous token. A group of one node that is not on a cycle through a state slot
    can be run for all tokens at once; the nodes of a cycle (a LIF and its membrane, WKV and its
    three slots, a fold's shift slot) have to run token by token."""
    g = nx.DiGraph(ir.graph)
    readers: dict[str, list[str]] = {}
    for n in ir.nodes_of("StateIn"):
        readers.setdefault(ir.node(n)["attrs"]["state"], []).append(n)
    for n in ir.nodes_of("StateOut"):
        for reader in readers.get(ir.node(n)["attrs"]["state"], []):
            g.add_edge(n, reader)  # the slot's value crosses to the next token
    comps = list(nx.strongly_connected_components(g))
    cond = nx.condensation(g, comps)
    pos = {n: i for i, n in enumerate(ir.topological())}
    return [sorted(cond.nodes[c]["members"], key=pos.__getitem__)
            for c in nx.lexicographical_topological_sort(
                cond, key=lambda c: min(pos[m] for m in cond.nodes[c]["members"]))]


def _shift_only(ir: IR, group: list[str]) -> bool:
    """A FoldCorrection whose only cycle is its token-shift slot (StateIn as its last input,
    StateOut of its output 1): the shape ``fold_layernorm`` builds (see
    ``ops.norm.fold_correction``)."""
    ops = sorted(ir.node(n)["op"] for n in group)
    if ops != ["FoldCorrection", "StateIn", "StateOut"]:
        return False
    fold, slot_in, slot_out = (next(n for n in group if ir.node(n)["op"] == op)
                               for op in ("FoldCorrection", "StateIn", "StateOut"))
    ins = ir.inputs(fold)
    return (ir.node(fold)["attrs"].get("has_shift") is True and ins[-1].node == slot_in
            and all(p.node != slot_in for p in ins[:-1])
            and ir.inputs(slot_out) == [Port(fold, 1)]
            and ir.consumers(slot_in) == [(fold, len(ins) - 1)])


def run_sequence(ex: "Executor", tokens: Array, spikes_of: tuple[str, ...] = ("LIF", "Heaviside"),
                 peaks: bool = False, keep: tuple[tuple[str, int], ...] = ()
                 ) -> SequenceResult:
    """Run ``ex``'s IR over tokens (B, T) from the zero state, each op once over all tokens.

    The same op table and the same values as ``Executor.run``, token by token only where a state
    slot makes an op depend on its own previous output (see ``recurrent_groups``): the linears
    run as one matrix product over the T x B rows instead of T vector products, so the weights
    are read once. Float sums may differ from ``run`` in the last bit (BLAS orders them
    differently for matrices and vectors). Values are dropped once their last reader ran."""
    ir = ex.ir
    tokens = np.asarray(tokens, dtype=np.int64)
    B, T = tokens.shape
    vocab = int(ir.config["vocab_size"])
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        raise DataError(f"token ids must be in [0, {vocab}), got {tokens.min()}..{tokens.max()}")
    init = ex.init_state(B)
    writer = {ir.node(n)["attrs"]["state"]: ex._inputs[n][0] for n in ir.nodes_of("StateOut")}
    kept = {(str(n), int(p)) for n, p in keep}
    keep = {(n, 0) for n in ex.order if ir.node(n)["op"] in spikes_of}
    keep_all = keep | kept
    left: dict[tuple[str, int], int] = {}
    for n in ex.order:
        for p in ex._inputs[n]:
            left[(p.node, p.port)] = left.get((p.node, p.port), 0) + 1
        if ir.node(n)["op"] == "StateIn" and ir.node(n)["attrs"]["state"] in writer:
            w = writer[ir.node(n)["attrs"]["state"]]
            left[(w.node, w.port)] = left.get((w.node, w.port), 0) + 1
    values: dict[tuple[str, int], Array] = {}
    outputs: dict[str, Array] = {}
    state: dict[str, Array] = {}
    found: dict[tuple[str, int], float] = {}

    def release(key: tuple[str, int]) -> None:
        left[key] -= 1
        if left[key] == 0 and key not in keep_all:
            values.pop(key, None)

    def state_in(n: str, seq: Mapping[tuple[str, int], Array], t: int | None) -> Array:
        slot = ir.node(n)["attrs"]["state"]
        w = writer.get(slot)
        if t is not None:  # inside a cycle: the writer's value of the previous token
            return init[slot] if w is None or t == 0 else seq[(w.node, w.port)][t - 1]
        if w is None:
            return np.concatenate([init[slot]] * T)
        return np.concatenate([init[slot], seq[(w.node, w.port)][: (T - 1) * B]])

    for group in recurrent_groups(ir):
        members = set(group)
        if len(group) == 1 and group[0] not in ir.graph.successors(group[0]):
            n = group[0]
            data = ir.node(n)
            ins = [values[(p.node, p.port)] for p in ex._inputs[n]]
            op = data["op"]
            if op == "Input":
                res: tuple[Array, ...] = (np.ascontiguousarray(tokens.T).reshape(-1),)
            elif op == "StateIn":
                res = (state_in(n, values, None),)
            elif op == "StateOut":
                state[data["attrs"]["state"]] = ins[0][(T - 1) * B:]
                res = ()
            elif op == "Output":
                outputs[data["attrs"]["name"]] = ins[0]
                res = ()
            else:
                res = ex.ops[op](data, ins)
            for port, value in enumerate(res):
                values[(n, port)] = value
        elif _shift_only(ir, group):
            # a fold's token shift: output 1 does not read the slot, output 0 adds it last, so
            # the whole sequence runs at once with the slot's values shifted by one token
            n, slot_in = (next(m for m in group if ir.node(m)["op"] == op)
                          for op in ("FoldCorrection", "StateIn"))
            data = ir.node(n)
            ins = [values[(p.node, p.port)] for p in ex._inputs[n][:-1]]
            slot = ir.node(slot_in)["attrs"]["state"]
            y, nxt = ex.ops["FoldCorrection"](data, ins + [np.zeros_like(
                np.concatenate([init[slot]] * T))])
            prev = np.concatenate([init[slot], nxt[: (T - 1) * B]])
            values[(n, 0)], values[(n, 1)] = (y + prev).astype(F32), nxt
            values[(slot_in, 0)] = prev
            state[slot] = nxt[(T - 1) * B:]
        else:
            per_token: dict[tuple[str, int], list[Array]] = {}
            for t in range(T):
                rows = slice(t * B, (t + 1) * B)
                for n in group:
                    data = ir.node(n)
                    ins = [per_token[(p.node, p.port)][t] if p.node in members
                           else values[(p.node, p.port)][rows] for p in ex._inputs[n]]
                    if data["op"] == "StateIn":
                        res = (state_in(n, per_token, t),)
                    elif data["op"] == "StateOut":
                        if t == T - 1:
                            state[data["attrs"]["state"]] = ins[0]
                        continue
                    else:
                        res = ex.ops[data["op"]](data, ins)
                    for port, value in enumerate(res):
                        per_token.setdefault((n, port), []).append(value)
            for key, seq in per_token.items():
                values[key] = np.concatenate(seq)
        for n in group:
            for port in range(ir.node(n)["n_out"]):
                value = values.get((n, port))
                if peaks and value is not None and value.dtype.kind == "f" and value.size:
                    found[(n, port)] = float(np.max(np.abs(value)))
                if (n, port) not in left and (n, port) not in keep_all:
                    values.pop((n, port), None)
            for p in ex._inputs[n]:
                release((p.node, p.port))
            if ir.node(n)["op"] == "StateIn" and ir.node(n)["attrs"]["state"] in writer:
                w = writer[ir.node(n)["attrs"]["state"]]
                release((w.node, w.port))

    def batch_first(x: Array) -> Array:
        return np.swapaxes(x.reshape(T, B, *x.shape[1:]), 0, 1)

    spikes = {ir.node(n)["module"]: batch_first(values[(n, 0)]) for n in ex.order
              if (n, 0) in keep}
    return SequenceResult(batch_first(outputs["logits"]), spikes, state, found,
                          {k: values[k] for k in kept})


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
