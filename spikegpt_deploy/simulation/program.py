"""The pipelined network: one chip process and one host process, tokens overlapping in time.

Lava runs every Process as its own OS process and synchronises all of them on every timestep,
so the per-population network (``simulation.plan``) pays per process and per timestep. This
network cuts the deployment in two Lava processes:
- ``ChipCore`` (``simulation/lava/procs/chip_core.py``): every chip population and synapse, updated
  with Lava's own LIF models (``PyLifModelFloat`` / ``PyLifModelBitAcc`` arithmetic) and Lava's
  Dense arithmetic (weights prepared by Lava's weight utilities, a one-timestep synaptic delay);
- ``HostPipe``: the host partition, the interpreter's own ops (``FLOAT_OPS``).
and runs the one schedule (``simulation.schedule``): every timestep, each token in flight does
the work of its phase; teacher-forced tokens enter every ``interval`` timesteps.

Messages per timestep: chip -> host ``syn`` (the Dense readouts due on this timestep, one slice
per chip linear), then per round r host -> chip ``cur_r`` (LIF currents, host spikes, graded
inputs) and chip -> host ``spk_r`` (the spikes of the round's LIFs). A slice belongs to one node
and so to one phase, hence to at most one token per timestep. A Lava step of block prefill
(``schedule.Schedule.units``) sends one message per port and token slot: slot i carries the i-th
token of every unit in flight.

Synapses: the chip linears that read the same populations (one SpikeSum, or one population)
form a group; each population adds its spikes times its coefficient to the group's per-token
spike count when it fires, and the group's stacked weights read the count out on its phase (the
SpikeSum then the SpikeLinear, as the IR computes them; integer sums in fixed precision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import fixed_point as fp
from ..errors import SimulationError
from ..folded import linear_weight
from ..interpreter import Executor
from ..ir import HOST, IR
from ..passes.quantize import readout_scale
from ..sampling import SamplingOptions
from .chip_params import check_membrane_on_chip, graded_input_codec, lif_vars, require_fixed
from .schedule import Schedule, crossing_name, schedule_of, spike_sources

Key = tuple
F32 = np.float32


@dataclass
class Entry:
    """Slice [start, stop) of a message carrying ``key`` of the token on ``phase``."""

    key: Key
    start: int
    stop: int
    phase: int
    codec: tuple = ("float",)


@dataclass
class HostOp:
    node: str
    op: str
    data: dict[str, Any]
    inputs: list[Key]


@dataclass
class LifSpec:
    node: str
    phase: int
    round: int
    width: int
    params: dict[str, Any]              # du, dv, vth, v (Lava's LIF Vars)
    current: Entry | None               # its slice of cur_<round>, or None: fed by a chip Linear
    spikes: Entry                       # its slice of spk_<round>


@dataclass
class SynGroup:
    name: str
    phase: int                          # readout phase
    pops: list[tuple[str, float]]       # population node, coefficient
    weights: np.ndarray                 # stacked rows of its linears (fixed: Lava Dense weights)
    weight_exp: int                     # fixed: Lava Dense weight_exp (0: float)
    weight_bits: int | None             # fixed: Lava Dense num_weight_bits; None: float
    readout: Entry                      # slice of syn (all rows)


@dataclass
class GradedSpec:
    node: str
    phase: int                          # readout phase (input phase + 1)
    input: Entry                        # slice of cur_<round> with the graded input
    round: int
    weights: np.ndarray
    weight_exp: int
    weight_bits: int | None
    to_lif: str | None
    readout: Entry | None


@dataclass
class ChipProgram:
    precision: str
    depth: int
    units: list[tuple[int, int, int]]   # (Lava step, first token, tokens): Schedule.units
    rounds: int
    lifs: list[LifSpec]
    host_pops: list[tuple[Entry, int]]  # host population spikes in cur_<round>
    groups: list[SynGroup]
    graded: list[GradedSpec]
    cur_width: list[int]
    spk_width: list[int]
    syn_width: int


@dataclass
class HostProgram:
    precision: str
    depth: int
    units: list[tuple[int, int, int]]   # (Lava step, first token, tokens): Schedule.units
    rounds: int
    nodes: dict[tuple[int, int], list[HostOp]]      # (phase, round) -> ops in topological order
    syn: list[Entry]
    cur: list[list[Entry]]
    spk: list[list[Entry]]
    cur_width: list[int]
    state_init: dict[str, np.ndarray]
    tokens: list[int]                               # teacher-forced token ids
    n_sample: int                                   # tokens sampled after the forced ones
    logits: Entry                                   # key and phase of the logits
    records: list[tuple[Key, int, str]]             # key, phase, buffer
    traffic: list[tuple[int, Key, int, tuple]]      # crossing index, key, phase, out codec
    sampling: SamplingOptions | None = None
    fault: tuple[int, int] | None = None            # test hook: (token, phase) raises
    widths: dict[str, int] = field(default_factory=dict)


@dataclass
class PipelinePlan:
    schedule: Schedule
    chip: ChipProgram
    host: HostProgram
    populations: dict[str, int]
    crossings: list[str]
    vocab_size: int

    def process_counts(self) -> dict[str, int]:
        return {"HostPipe": 1, "ChipCore": 1}


class _Layout:
    """Allocates slices of one message."""

    def __init__(self) -> None:
        self.width = 0
        self.entries: list[Entry] = []

    def add(self, key: Key, width: int, phase: int, codec: tuple = ("float",)) -> Entry:
        e = Entry(key, self.width, self.width + width, phase, codec)
        self.width += width
        self.entries.append(e)
        return e


def plan_pipeline(ir: IR, precision: str, forced: list[int], n_sample: int,
                  sampling: SamplingOptions | None, fault: tuple[str, int] | None = None,
                  block: int = 1) -> PipelinePlan:
    """The two-process network that feeds ``forced`` and samples ``n_sample`` tokens (all but
    the last fed back: ``len(forced) + n_sample - 1`` tokens cross the network), ``block``
    teacher-forced tokens per Lava step (``Schedule.units``)."""
    fixed = precision == "fixed"
    if "partition" not in ir.passes:
        raise SimulationError("the bundle's IR is not partitioned (passes: "
                              f"{', '.join(ir.passes)}); re-run 'spikegpt-deploy convert'")
    if fixed and "quantize" not in ir.passes:
        raise SimulationError("precision 'fixed' needs a quantized IR (the quantize pass); "
                              "re-run 'spikegpt-deploy convert'")
    sch = schedule_of(ir)
    order = ir.topological()
    host = {n for n in order if ir.node(n).get("placement", HOST) == HOST}
    op = {n: ir.node(n)["op"] for n in order}
    ex = Executor(ir)
    probe = ex.step(np.zeros(1, np.int64), ex.init_state(1), True)
    width = {k: int(np.prod(v.shape[1:])) for k, v in probe.values.items()}
    ph, rd = sch.phase, sch.round
    syn, cur, spk = _Layout(), [_Layout() for _ in range(sch.rounds)], \
        [_Layout() for _ in range(sch.rounds)]

    # ---- LIF populations ----------------------------------------------------------------
    lifs: list[LifSpec] = []
    for n in order:
        if op[n] != "LIF" or n in host:
            continue
        x, _ = ir.inputs(n)
        params, codec = lif_vars(ir, n, fixed)
        w = width[(n, 0)]
        if x.node in host:
            current = cur[rd[n]].add((x.node, x.port), width[(x.node, x.port)], ph[n], codec)
        elif op[x.node] == "Linear":
            current = None
        else:
            raise SimulationError(f"LIF '{n}' reads '{x.node}' ({op[x.node]}) on the chip; the "
                                  "simulator feeds LIFs host currents or a chip Linear")
        check_membrane_on_chip(ir, n, host)
        lifs.append(LifSpec(n, ph[n], rd[n], w, params, current,
                            spk[rd[n]].add((n, 0), w, ph[n])))

    # ---- synapse groups (spike-driven linears) --------------------------------------------
    members: dict[str, list[str]] = {}
    for n in order:
        if op[n] == "SpikeLinear" and n not in host:
            (src,) = ir.inputs(n)
            members.setdefault(src.node, []).append(n)
    groups: list[SynGroup] = []
    host_pops: list[tuple[Entry, int]] = []
    sent_pops: set[str] = set()
    for src, linears in members.items():
        pops = [(p.node, float(c)) for p, c in spike_sources(ir, linears[0])]
        if fixed and any(c != int(c) for _, c in pops):
            raise SimulationError(f"'{src}': spike coefficients {[c for _, c in pops]} are not "
                                  "integers")
        parts, rows, exps, bits = [], [], set(), None
        # a quality budget may give these linears different widths: held at the widest, every
        # integer sum is the same (a b-bit mantissa is also a wider one)
        widest = max(int(ir.node(n)["attrs"].get("weight_bits", 0)) for n in linears)
        for n in linears:
            d = ir.node(n)
            if fixed:
                require_fixed(ir, n, "weight_q", "weight_bits", "weight_scale")
                kw = fp.mantissa_dense_kwargs(d["params"]["weight_q"], widest)
                parts.append(np.asarray(kw["weights"]))
                exps.add((int(kw["weight_exp"]), int(kw["num_weight_bits"])))
                rows.append((n, readout_scale(d)))  # per layer, or per output channel
            else:
                parts.append(np.asarray(linear_weight(d["params"]), dtype=F32))
                rows.append((n, 1.0))
        if len(exps) > 1:
            raise SimulationError(f"linears reading '{src}' use different weight bits")
        weights = np.concatenate(parts)
        phase = max(ph[p] for p, _ in pops) + 1
        readout = syn.add((src, "group"), weights.shape[0], phase)
        r0 = readout.start
        for (n, scale), part in zip(rows, parts):
            syn.entries.append(Entry((n, 0), r0, r0 + part.shape[0], phase,
                                     ("scale", scale) if fixed else ("float",)))
            r0 += part.shape[0]
        exp, bits = exps.pop() if exps else (0, None)
        groups.append(SynGroup(src, phase, pops, weights, exp, bits, readout))
        for p, _ in pops:
            if p in host and p not in sent_pops:
                sent_pops.add(p)
                host_pops.append((cur[rd[p]].add((p, 0), width[(p, 0)], ph[p]), rd[p]))

    # ---- graded chip linears (policy graded) ------------------------------------------------
    graded: list[GradedSpec] = []
    for n in order:
        if op[n] != "Linear" or n in host:
            continue
        a, d = ir.node(n)["attrs"], ir.node(n)
        (x,) = ir.inputs(n)
        cons = sorted({v for v, _ in ir.consumers(n, 0)})
        to_lif = cons[0] if len(cons) == 1 and op[cons[0]] == "LIF" else None
        in_codec = graded_input_codec(ir, n, fixed, to_lif is not None)
        out_codec: tuple = ("float",)
        bits = int(a["weight_bits"]) if fixed else None
        if to_lif and fixed:
            w, exp = d["params"]["weight_lava"].astype(np.int32), int(a["weight_exp_lava"])
        elif to_lif:
            w = linear_weight(d["params"]).astype(np.float64) / float(ir.node(to_lif)["attrs"]["tau"])
            exp = 0
        elif fixed:
            kw = fp.mantissa_dense_kwargs(d["params"]["weight_q"], d["attrs"]["weight_bits"])
            w, exp = np.asarray(kw["weights"]), int(kw["weight_exp"])
            out_codec = ("scale", readout_scale(ir.node(n)) * float(a["input_step"]))
        else:
            w, exp = linear_weight(d["params"]).astype(np.float64), 0
        if x.node not in host:
            raise SimulationError(f"chip Linear '{n}' reads '{x.node}' on the chip; the "
                                  "simulator feeds chip Linears from the host")
        inp = cur[rd[x.node]].add((x.node, x.port), width[(x.node, x.port)], ph[x.node],
                                  in_codec)
        readout = None if to_lif else syn.add((n, 0), width[(n, 0)], ph[n], out_codec)
        graded.append(GradedSpec(n, ph[n], inp, rd[x.node], np.asarray(w), exp, bits, to_lif,
                                 readout))

    # ---- host program ---------------------------------------------------------------------
    nodes: dict[tuple[int, int], list[HostOp]] = {}
    for n in order:
        if n in host:
            d = ir.node(n)
            nodes.setdefault((ph[n], rd[n]), []).append(HostOp(
                n, d["op"], {"op": d["op"], "module": d["module"], "params": d["params"],
                             "attrs": d["attrs"]}, [(p.node, p.port) for p in ir.inputs(n)]))
    state_init = ex.init_state(1)
    host_states = {ir.node(n)["attrs"]["state"] for n in order if op[n] == "StateIn" and n in host}
    (out,) = [n for n in order if op[n] == "Output" and ir.node(n)["attrs"].get("name") == "logits"]
    lk = ir.inputs(out)[0]
    pops: dict[str, int] = {}
    records: list[tuple[Key, int, str]] = [((lk.node, lk.port), ph[out], "logits")]
    for n in order:
        if op[n] in ("LIF", "Heaviside"):
            module = ir.node(n)["module"]
            pops[module] = width[(n, 0)]
            records.append(((n, 0), ph[n], f"spikes:{module}"))
    out_codec_of = {e.key: e.codec for lay in cur for e in lay.entries if e.codec[0] != "float"}
    traffic, names = [], []
    for i, c in enumerate(ir.meta.get("crossings", [])):
        key = (c["source"], int(c["port"]))
        if key[0] not in ph:
            raise SimulationError(f"crossing from '{c['source']}': no such node")
        traffic.append((i, key, ph[key[0]], out_codec_of.get(key, ("float",))))
        names.append(crossing_name(c))
    units = sch.units(len(forced), max(n_sample - 1, 0), block)
    fault_at = None
    if fault is not None:
        if fault[0] != "host":
            raise SimulationError(f"fault hook: no host stage '{fault[0]}' (host)")
        fault_at = (int(fault[1]), 0)
    hp = HostProgram(precision, sch.depth, units, sch.rounds, nodes, syn.entries,
                     [c.entries for c in cur], [s.entries for s in spk], [c.width for c in cur],
                     {k: state_init[k] for k in host_states}, list(forced), n_sample,
                     Entry((lk.node, lk.port), 0, width[(lk.node, lk.port)], ph[out]), records,
                     traffic, sampling, fault_at, {"syn": syn.width})
    cp = ChipProgram(precision, sch.depth, units, sch.rounds, lifs, host_pops, groups, graded,
                     [c.width for c in cur], [s.width for s in spk], syn.width)
    return PipelinePlan(sch, cp, hp, pops, names, int(ir.config["vocab_size"]))
