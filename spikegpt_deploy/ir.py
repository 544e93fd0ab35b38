"""The per-token intermediate representation (IR): a networkx multigraph of ops.

One IR describes one RNN step of SpikeGPT: token id and state in, logits and state out. Shapes are
per sample (the batch axis is implicit and leading at run time).

Node attributes:
    op       op type (see ``spikegpt_deploy.ops``), named after the source (LIF, Linear, WKV, ...)
    module   the source module path in the PyTorch model, e.g. ``blocks.0.att.key``
    params   dict name -> numpy array (weights; never mutated in place: passes copy)
    attrs    dict of plain values (eps, factor, state name, ...)
    n_out    number of outputs
    placement / reason   set by the partitioner ('loihi2' | 'host', and why)
Edge attributes (u -> v, one edge per consumed value):
    src_port, dst_port   which output of u feeds which input of v
    shape, dtype         per-sample shape and dtype of the value
    value_class          'index' | 'binary' | 'integer' | 'float' (see ``infer_value_classes``)

State that crosses tokens is explicit: a ``StateIn`` node per state slot (attrs ``state``, the slot
name such as ``lif1_v.0``) and a ``StateOut`` node that consumes the slot's next value.
"""

from __future__ import annotations

import copy
import heapq
from dataclasses import dataclass
from typing import Any, Iterator

import networkx as nx
import numpy as np

from . import ops
from .errors import ConversionError

HOST = "host"  # the placement of host nodes; chip nodes are placed on the target's name

# op -> (number of inputs or None for variadic, number of outputs, one-line semantics): a live
# view of the op definitions (``spikegpt_deploy.ops``), where every op is defined once
OPS = ops.ARITY


@dataclass(frozen=True)
class Port:
    """One output of a node: ``node`` id and ``port`` index."""

    node: str
    port: int = 0


class IR:
    """A per-token SpikeGPT graph with its model config; see the module docstring."""

    def __init__(self, config: dict[str, Any], graph: nx.MultiDiGraph | None = None,
                 passes: list[str] | None = None):
        self.config = dict(config)
        self.graph = graph if graph is not None else nx.MultiDiGraph()
        self.passes = list(passes or [])

    # ---- building -------------------------------------------------------------------------
    def add_node(self, node_id: str, op: str, inputs: list[Port] | tuple[Port, ...] = (),
                 module: str = "", params: dict[str, np.ndarray] | None = None,
                 attrs: dict[str, Any] | None = None, n_out: int | None = None) -> str:
        if op not in OPS:
            raise ConversionError(f"IR node '{node_id}': unknown op '{op}'; known ops: "
                                  f"{', '.join(OPS)}")
        arity, outs, _ = OPS[op]
        if arity is not None and len(inputs) != arity:
            raise ConversionError(f"IR node '{node_id}' ({op}, from {module or '?'}): expected "
                                  f"{arity} inputs, got {len(inputs)}")
        if node_id in self.graph:
            raise ConversionError(f"IR node id '{node_id}' is used twice")
        self.graph.add_node(node_id, op=op, module=module, params=dict(params or {}),
                            attrs=dict(attrs or {}), n_out=outs if n_out is None else n_out)
        for i, src in enumerate(inputs):
            self.connect(src, node_id, i)
        return node_id

    def connect(self, src: Port, dst: str, dst_port: int) -> None:
        if src.node not in self.graph:
            raise ConversionError(f"IR edge into '{dst}': source node '{src.node}' does not exist")
        self.graph.add_edge(src.node, dst, src_port=src.port, dst_port=dst_port)

    def unique_id(self, base: str) -> str:
        if base not in self.graph:
            return base
        k = 1
        while f"{base}#{k}" in self.graph:
            k += 1
        return f"{base}#{k}"

    # ---- reading --------------------------------------------------------------------------
    def node(self, node_id: str) -> dict[str, Any]:
        return self.graph.nodes[node_id]

    def inputs(self, node_id: str) -> list[Port]:
        """The node's inputs in port order."""
        return [Port(u, d["src_port"]) for u, _, d in self.in_edges(node_id)]

    def in_edges(self, node_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        """The node's incoming edges (u, v, data) in input-port order."""
        # the adjacency dicts directly: networkx's edge views cost more than the walk itself
        # on these small per-node lists, and every pass asks for them
        edges = [(u, node_id, d) for u, keyed in self.graph._pred.get(node_id, {}).items()
                 for d in keyed.values()]
        edges.sort(key=lambda e: e[2]["dst_port"])
        return edges

    def consumers(self, node_id: str, port: int | None = None) -> list[tuple[str, int]]:
        """(consumer id, its input port) of the node's outputs (or of one output)."""
        return [(v, d["dst_port"]) for v, keyed in self.graph._succ.get(node_id, {}).items()
                for d in keyed.values() if port is None or d["src_port"] == port]

    def topological(self) -> list[str]:
        """Nodes in topological order, the smallest id first among the ready ones (the order of
        ``nx.lexicographical_topological_sort``, on the adjacency dicts: several times faster)."""
        succ, pred = self.graph._succ, self.graph._pred
        indegree = {v: sum(len(keyed) for keyed in p.values()) for v, p in pred.items()}
        ready = [v for v, d in indegree.items() if d == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            node = heapq.heappop(ready)
            order.append(node)
            for child, keyed in succ[node].items():
                indegree[child] -= len(keyed)
                if indegree[child] == 0:
                    heapq.heappush(ready, child)
        if len(order) != len(indegree):
            raise ConversionError("the IR has a cycle within one token; state must cross tokens "
                                  "through StateIn/StateOut nodes")
        return order

    def nodes_of(self, *ops: str) -> Iterator[str]:
        for n, data in self.graph.nodes(data=True):
            if data["op"] in ops:
                yield n

    def state_slots(self) -> list[str]:
        return sorted(self.node(n)["attrs"]["state"] for n in self.nodes_of("StateIn"))

    def state_in(self, slot: str) -> str:
        for n in self.nodes_of("StateIn"):
            if self.node(n)["attrs"]["state"] == slot:
                return n
        raise ConversionError(f"IR has no state slot '{slot}'")

    def state_outs(self, slot: str) -> list[str]:
        """The StateOut node(s) that write the slot's value for the next token."""
        return [n for n in self.nodes_of("StateOut") if self.node(n)["attrs"]["state"] == slot]

    @property
    def meta(self) -> dict[str, Any]:
        """Free-form results of passes (e.g. the fold report), kept with the graph."""
        return self.graph.graph

    def remove_dead(self) -> None:
        """Drop nodes that reach no Output / StateOut, and state slots that nothing reads."""
        while True:
            live = self._live_nodes()
            dead = [n for n in self.graph if n not in live]
            for n in list(self.nodes_of("StateIn")):
                slot = self.node(n)["attrs"]["state"]
                if all(self.node(v)["op"] == "StateOut" and self.node(v)["attrs"]["state"] == slot
                       for v, _ in self.consumers(n)):
                    dead += [n, *self.state_outs(slot)]
            read = {self.node(n)["attrs"]["state"] for n in self.nodes_of("StateIn")}
            dead += [m for m in self.nodes_of("StateOut")
                     if self.node(m)["attrs"]["state"] not in read]
            if not dead:
                return
            self.graph.remove_nodes_from(set(dead))

    def _live_nodes(self) -> set[str]:
        """Outputs, StateOuts and their ancestors: one backward walk from all of them at once
        (not one ``nx.ancestors`` per root, which revisits the shared trunk for every root)."""
        pred = self.graph.pred
        stack = [n for n, d in self.graph.nodes(data=True) if d["op"] in ("Output", "StateOut")]
        live = set(stack)
        while stack:
            for u in pred[stack.pop()]:
                if u not in live:
                    live.add(u)
                    stack.append(u)
        return live

    def copy(self) -> "IR":
        """A copy for a pass to change: passes are copy-on-write and never mutate their input.

        Node and edge attribute dicts are copied; parameter arrays are shared, because nothing
        writes into an array in place (a pass that changes a weight stores a new array).
        """
        g = nx.MultiDiGraph()
        g.graph.update(_copy_plain(self.graph.graph))
        g.add_nodes_from((n, {**_copy_plain({k: v for k, v in d.items() if k != "params"}),
                              "params": dict(d["params"])})
                         for n, d in self.graph.nodes(data=True))
        g.add_edges_from((u, v, k, _copy_plain(d))
                         for u, v, k, d in self.graph.edges(keys=True, data=True))
        return IR(_copy_plain(self.config), g, list(self.passes))

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, data in self.graph.nodes(data=True):
            counts[data["op"]] = counts.get(data["op"], 0) + 1
        return dict(sorted(counts.items()))

    def num_parameters(self) -> int:
        return int(sum(p.size for _, d in self.graph.nodes(data=True) for p in d["params"].values()))


def infer_value_classes(ir: IR) -> IR:
    """Annotate every edge with its value class, shape and dtype (returns a new IR).

    Each op's ``classes`` facet (``spikegpt_deploy.ops``) gives them: binary: Heaviside and LIF
    spike outputs; integer: sums of binary/integer values (and SpikeSum); index: token ids;
    float: everything else. A Linear fed by a binary or integer edge is spike-driven; spec 2.9
    notes that before the LayerNorm fold none is.
    """
    return annotate_value_classes(ir.copy())


def annotate_value_classes(out: IR) -> IR:
    """``infer_value_classes`` on ``out`` itself (for a pass that already owns a copy)."""
    classes: dict[tuple[str, int], str] = {}
    for n in out.topological():
        data = out.node(n)
        op = data["op"]
        ins = [classes.get((p.node, p.port), "float") for p in out.inputs(n)]
        classes_of = ops.op_def(op).classes
        res = (classes_of(ins, data["attrs"]) if classes_of is not None
               else ["float"] * data["n_out"])
        for port, cls in enumerate(res):
            classes[(n, port)] = cls
    for u, v, key, d in out.graph.edges(keys=True, data=True):
        d["value_class"] = classes.get((u, d["src_port"]), "float")
    return out


_PLAIN_SCALARS = (str, int, float, bool, type(None), np.generic)


def _copy_plain(value: Any) -> Any:
    """A deep copy of the plain values IR attributes hold (dicts, lists, tuples, scalars),
    several times faster than ``copy.deepcopy``; anything else goes to ``copy.deepcopy``."""
    kind = type(value)
    if kind is dict:
        return {k: _copy_plain(v) for k, v in value.items()}
    if kind is list:
        return [_copy_plain(v) for v in value]
    if kind is tuple:
        return tuple(_copy_plain(v) for v in value)
    if isinstance(value, _PLAIN_SCALARS):
        return value
    return copy.deepcopy(value)
