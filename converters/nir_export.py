"""The spiking (chip) partition of a partitioned IR as a NIR graph (``nir.write`` / ``nir.read``).

What is exported (one NIR node per chip node of the IR, named by the IR node id; each op's NIR
node type and parameters are its NIR facet in ``spikegpt_deploy.ops``):

    IR op         NIR node    parameters
    LIF           nir.LIF     tau, r, v_leak, v_threshold, v_reset (mapping below)
    SpikeLinear   nir.Linear  weight (out, in): float, or weight_q * weight_scale when quantized
    Linear        nir.Linear  (chip Linear, policy graded) float or dequantized weight
    SpikeSum      nir.Scale   ones: the node sums its incoming edges (NIR's fan-in convention);
                              a coefficient c != 1 becomes a helper nir.Scale(c) '<id>.term<j>'

Values that cross between host and chip every token become ``nir.Input`` nodes named
``host_to_chip.<producer>`` and ``nir.Output`` nodes named ``chip_to_host.<producer>`` (``:<port>``
appended for a port other than 0). A LIF membrane is the nir.LIF node's own state, so the IR's
membrane state slots (StateIn/StateOut around each LIF) are neither inputs nor outputs.

Host ops are not in NIR: NIR has no exp, division, normalisation, element-wise product, WKV or
table lookup (NIR 1.0 has neuron, linear, convolution, pooling, scale and delay nodes only).
They are listed in ``NirInfo.omitted`` with the partitioner's reason.

LIF mapping and discretisation
------------------------------
SpikeGPT's LIF is discrete (spec 2.7): H_t = V_{t-1} + (X_t - V_{t-1}) / tau_steps (tau_steps =
2), S_t = [H_t >= 1], V_t = H_t (1 - S_t): hard reset to 0 in the same step, no refractory time.

NIR's LIF is continuous: tau dv/dt = (v_leak - v) + R I, z = [v > v_threshold], v <- v_reset
when z. NIR fixes neither the time step nor the order of integration, firing and reset (NIR
issues #137, #138). This export assumes, and states in the graph metadata:

- one token = one step of dt = ``dt_s`` seconds (default 1e-4 s, the dt that NIR's Lava and
  snnTorch bridges assume, NIR PR #164/#165);
- forward Euler: v_t = v_{t-1} + (dt / tau) ((v_leak - v_{t-1}) + R I_t), with I_t the summed
  input of step t (no synaptic delay);
- then fire z_t = [v_t > v_threshold], then reset v_t <- v_reset where z_t, in the same step.

Matching coefficients: dt / tau = 1 / tau_steps and (dt / tau) R = 1 / tau_steps, so
tau = tau_steps * dt (2e-4 s), r = 1, v_leak = 0, v_reset = 0. NIR fires on v > v_threshold,
SpikeGPT on H >= 1; v_threshold is the largest float32 below 1 (1 - 2**-24), so for float32
membranes, as in SpikeGPT, ``v > v_threshold`` is exactly ``v >= 1``. ``simulate_lif`` runs this
discretisation; with float32 arithmetic it reproduces SpikeGPT's LIF bit for bit.

When the IR is quantized, the Linear weights are the dequantized chip weights; the fixed-point
rounding of currents, graded inputs and Dense right-shifts is not expressible in NIR (a float
format) and is listed in ``NirInfo.notes``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spikegpt_deploy import ops
from spikegpt_deploy.errors import ConversionError
from spikegpt_deploy.ir import HOST, IR
from spikegpt_deploy.ops.lif import NIR_DT_S, lif_parameters  # noqa: F401  (public here too)
from spikegpt_deploy.ops.lif import check_dt as _check_dt
from spikegpt_deploy.ops.linear import chip_weight  # noqa: F401  (public here too)

F32 = np.float32
# chip op -> its NIR node type: a live view of the op definitions' NIR facet (``ops``)
CHIP_OPS = ops.NIR_TYPE
LIF_MEMBRANE_PORT = 1  # IR LIF: inputs (x, v), outputs (s, v')


@dataclass(frozen=True)
class OmittedNode:
    """An IR node that is not in the NIR graph, and why."""

    node: str
    op: str
    module: str
    reason: str


@dataclass(frozen=True)
class Crossing:
    """A nir.Input / nir.Output node: a value that crosses between host and chip each token."""

    name: str          # NIR node name
    source: str        # IR node that produces the value
    port: int
    shape: tuple[int, ...]
    value_class: str
    readers: tuple[str, ...]  # IR nodes that read it on the other side


@dataclass
class NirInfo:
    """What ``chip_partition_to_nir`` wrote."""

    path: str
    dt_s: float
    nodes: dict[str, str]                     # NIR node name -> NIR type
    chip_nodes: dict[str, str]                # IR chip node -> NIR node name
    inputs: list[Crossing]
    outputs: list[Crossing]
    edges: list[tuple[str, str]]
    internal_state: list[str]                 # IR state slots held inside nir.LIF nodes
    omitted: list[OmittedNode]
    weights: str                              # 'float' | 'dequantized' | 'none'
    lif_mapping: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require_nir() -> Any:
    try:
        import nir
    except ImportError:
        raise ConversionError("NIR export needs the 'nir' package; install it with "
                              "`pip install nir==1.0.8`") from None
    return nir


# ---------------------------------------------------------------------------- LIF mapping
def simulate_lif(lif: Any, currents: np.ndarray, dt_s: float = NIR_DT_S
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Run a nir.LIF's parameters with this module's discretisation on currents (T, N), from
    v = 0: forward Euler, fire on v > v_threshold, reset in the same step; float32 arithmetic.
    Returns spikes (T, N, bool) and the membrane after each step (T, N, float32)."""
    x = np.asarray(currents, dtype=F32)
    if x.ndim != 2:
        raise ConversionError(f"simulate_lif: expected currents (T, N), got shape {x.shape}")
    a = (F32(dt_s) / np.asarray(lif.tau, F32)).astype(F32)   # dt / tau
    r, v_leak = np.asarray(lif.r, F32), np.asarray(lif.v_leak, F32)
    v_th, v_reset = np.asarray(lif.v_threshold, F32), np.asarray(lif.v_reset, F32)
    v = np.zeros(x.shape[1], F32)
    spikes, trace = np.zeros(x.shape, bool), np.zeros(x.shape, F32)
    for t in range(x.shape[0]):
        v = (v + a * ((v_leak - v) + r * x[t])).astype(F32)
        spikes[t] = v > v_th
        v = np.where(spikes[t], v_reset, v).astype(F32)
        trace[t] = v
    return spikes, trace


# ------------------------------------------------------------------------------- export
def _is_membrane_edge(ir: IR, u: str, v: str, d: dict[str, Any]) -> bool:
    return ((ir.node(v)["op"] == "LIF" and d["dst_port"] == LIF_MEMBRANE_PORT)
            or (ir.node(u)["op"] == "LIF" and d["src_port"] == LIF_MEMBRANE_PORT))


def _membrane_slots(ir: IR) -> set[str]:
    """State nodes (StateIn/StateOut) that only carry LIF membranes."""
    out = set()
    for u, v, d in ir.graph.edges(data=True):
        if _is_membrane_edge(ir, u, v, d):
            for n in (u, v):
                if ir.node(n)["op"] in ("StateIn", "StateOut"):
                    out.add(n)
    return out


def _shape(ir: IR, d: dict[str, Any], where: str) -> tuple[int, ...]:
    if d.get("shape") is None:
        raise ConversionError(f"NIR export: edge {where} has no shape; the IR must come from "
                              "partition() (which annotates shapes)")
    return tuple(int(s) for s in d["shape"])


def _nir_node(nir: Any, ir: IR, n: str, dt_s: float) -> tuple[Any, str]:
    """One chip node as a NIR node (the op's NIR facet, ``spikegpt_deploy.ops``), and 'lif' |
    'float' | 'dequantized' | '' (what its weights are)."""
    d = ir.node(n)
    form = ops.op_def(d["op"]).nir
    if not isinstance(form, ops.NirForm):
        raise ConversionError(f"NIR export: chip node '{n}' ({d['op']}, from {d['module']}) has "
                              f"no NIR equivalent ({form.reason}); NIR expresses the chip ops "
                              f"{sorted(CHIP_OPS)}")
    width = _shape(ir, ir.in_edges(n)[0][2], f"into '{n}'")[0]
    params, kind = form.build(ir, n, width, dt_s)
    return getattr(nir, form.node_type)(**params, metadata={"ir_op": d["op"],
                                                            "module": d["module"]}), kind


def chip_partition_to_nir(ir: IR, path: str | Path, dt_s: float = NIR_DT_S) -> NirInfo:
    """Write the chip partition of a partitioned IR as a NIR graph at ``path`` (``nir.write``);
    never mutates the IR. See the module docstring for the node mapping and the discretisation."""
    nir = _require_nir()
    graph, info = chip_partition_nir_graph(ir, dt_s)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        nir.write(str(path), graph)
    except OSError as exc:
        raise ConversionError(f"NIR export: cannot write {path}: {exc}") from None
    info.path = str(path)
    return info


def chip_partition_nir_graph(ir: IR, dt_s: float = NIR_DT_S) -> tuple[Any, NirInfo]:
    """The NIR graph of the chip partition and its description (``path`` left empty)."""
    nir = _require_nir()
    placements = {n: d.get("placement") for n, d in ir.graph.nodes(data=True)}
    if any(p is None for p in placements.values()):
        raise ConversionError("NIR export: the IR is not partitioned (nodes without placement); "
                              "run partition() first")
    _check_dt(dt_s)
    membrane = _membrane_slots(ir)
    chip = [n for n in ir.topological() if placements[n] != HOST and n not in membrane]
    if not chip:
        raise ConversionError("NIR export: the IR has no chip nodes; nothing spiking to export "
                              "(check the partition policy and target)")
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    kinds: set[str] = set()
    lif_map: dict[str, Any] = {}
    for n in chip:
        nodes[n], kind = _nir_node(nir, ir, n, dt_s)
        if kind == "lif":
            lif_map = {k: float(np.asarray(getattr(nodes[n], k))[0])
                       for k in ("tau", "r", "v_leak", "v_threshold", "v_reset")}
        elif kind:
            kinds.add(kind)
    inputs: dict[tuple[str, int], Crossing] = {}
    outputs: dict[tuple[str, int], Crossing] = {}
    for n in chip:
        d = ir.node(n)
        for j, (u, _, e) in enumerate(ir.in_edges(n)):
            if _is_membrane_edge(ir, u, n, e):
                continue
            src = u
            if placements[u] == HOST:
                key = (u, e["src_port"])
                if key not in inputs:
                    name = f"host_to_chip.{u}" + (f":{key[1]}" if key[1] else "")
                    inputs[key] = Crossing(name, u, key[1], _shape(ir, e, f"{u} -> {n}"),
                                           e.get("value_class", "float"), ())
                    nodes[name] = nir.Input(input_type={"input": np.array(inputs[key].shape)})
                src = inputs[key].name
            elif e["src_port"] != 0:
                raise ConversionError(f"NIR export: chip edge {u}:{e['src_port']} -> {n} reads a "
                                      "second output; only LIF membranes (internal) may do that")
            coeffs = d["attrs"].get("coefficients") if d["op"] == "SpikeSum" else None
            if coeffs is not None and int(coeffs[j]) != 1:
                helper = f"{n}.term{j}"
                width = _shape(ir, e, f"{u} -> {n}")[0]
                nodes[helper] = nir.Scale(scale=np.full(width, coeffs[j], F32),
                                          metadata={"ir_op": "SpikeSum coefficient",
                                                    "module": d["module"]})
                edges += [(src, helper), (helper, n)]
            else:
                edges.append((src, n))
        for _, v, e in ir.graph.out_edges(n, data=True):
            if placements[v] != HOST or _is_membrane_edge(ir, n, v, e):
                continue
            key = (n, e["src_port"])
            if key not in outputs:
                name = f"chip_to_host.{n}" + (f":{key[1]}" if key[1] else "")
                outputs[key] = Crossing(name, n, key[1], _shape(ir, e, f"{n} -> {v}"),
                                        e.get("value_class", "float"), ())
                nodes[name] = nir.Output(output_type={"output": np.array(outputs[key].shape)})
                edges.append((n, name))
    for table, direction in ((inputs, "host_to_chip"), (outputs, "chip_to_host")):
        for key, c in table.items():
            readers = tuple(sorted(v for _, v, e in ir.graph.out_edges(key[0], data=True)
                                   if e["src_port"] == key[1] and
                                   (placements[v] != HOST) == (direction == "host_to_chip")))
            table[key] = Crossing(c.name, c.source, c.port, c.shape, c.value_class, readers)
    if len(set(edges)) != len(edges):
        dup = sorted({e for e in edges if edges.count(e) > 1})
        raise ConversionError(f"NIR export: the chip partition reads the same value twice on "
                              f"edges {dup}; NIR edges carry no multiplicity")
    omitted = [OmittedNode(n, ir.node(n)["op"], ir.node(n)["module"],
                           ir.node(n).get("reason", "host op"))
               for n in ir.topological() if placements[n] == HOST and n not in membrane]
    slots = sorted({ir.node(n)["attrs"]["state"] for n in membrane})
    notes = ["LIF membranes are the nir.LIF nodes' own state (IR state slots "
             f"{', '.join(slots) or 'none'})",
             "NIR sums the edges that enter one node (SpikeSum fan-in)"]
    if "dequantized" in kinds:
        notes.append("weights are dequantized chip weights (mantissa x scale); the chip's "
                     "fixed-point rounding (graded inputs, 2**-b currents, Dense right-shifts, "
                     "integer membranes) has no NIR equivalent and is not represented")
    meta = {"producer": "spikegpt-deploy converters.nir_export",
            "dt_s": float(dt_s), "time_step": "one token per step of dt_s",
            "lif_discretisation": "forward Euler v += dt/tau ((v_leak - v) + r I); fire on "
                                  "v > v_threshold; reset to v_reset in the same step",
            "target": str(ir.meta.get("partition", {}).get("target", "")),
            "policy": str(ir.meta.get("partition", {}).get("policy", ""))}
    try:
        graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)
    except (ValueError, AssertionError, KeyError) as exc:  # nir's own structure/type checks
        raise ConversionError(f"NIR export: nir rejected the chip graph: {exc}") from None
    return graph, NirInfo(path="", dt_s=float(dt_s),
                   nodes={k: type(v).__name__ for k, v in nodes.items()},
                   chip_nodes={n: n for n in chip}, inputs=list(inputs.values()),
                   outputs=list(outputs.values()), edges=list(edges), internal_state=slots,
                   omitted=omitted, weights=(kinds.pop() if len(kinds) == 1 else
                                             "mixed" if kinds else "none"),
                   lif_mapping={**lif_map, "dt_s": float(dt_s)}, notes=notes)
