"""Plan the Lava network of a bundle's IR: processes, ports, and the phase of everything in a token.

Processes (what ``backends/lava_network.py`` instantiates):
- chip, Lava's own ``Dense``: one per host stage that reads spike-driven linears (SpikeLinear
  rows stacked; every population it reads is connected to its ``s_in``: Lava's InPort adds the
  connections, which realises the SpikeSum), and one per chip Linear (policy graded);
- chip, ``GatedLIF`` (Lava's LIF models, updated once per token): one per LIF population;
- host, ``HostStage`` (numpy, the interpreter's ops): ``emb``, ``blocks.{i}``, ``head``, chained
  in that order; values one stage needs from an earlier one ride the chain message.

Phases. Lava processes exchange messages every timestep. A Dense sends the sum of the previous
timestep (a one-step synaptic delay); a LIF and a host stage receive and send within the same
timestep. So the phase (timestep within the token) at which a value is ready is the number of
Dense hops before it: phase(x) = max over inputs of phase(input) + 1 if the input comes out of a
Dense, else + 0. A LIF updates on the phase its input arrives, a host node runs on the phase its
last input arrives. The sampled token needs one more timestep to reach the embedding stage, so
a token takes D = 1 + phase(logits) timesteps: two Dense hops per block (three or four with
policy graded) plus the head's readout, plus the feedback step.

A Dense's readout is phase-multiplexed: its populations fire on distinct phases, the host stage
adds the partial sums arriving on each population's phase + 1 (times the population's
coefficient) into the rows of the SpikeLinears that read that population.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import fixed_point as fp
from .errors import SimulationError
from .interpreter import Executor
from .ir import IR, Port
from .profiling.counts import layer_of
from .sampling import SamplingOptions
from .simulation_stage import TOKEN_KEY, HostNode, InSlot, OutSlot, PortEntry, StageProgram

HOST = "host"
PRECISIONS = ("float", "fixed")
POPULATION_OPS = ("LIF", "Heaviside")


@dataclass
class ChipProcess:
    """A Lava process on the chip side: kind 'Dense' or 'GatedLIF', with its constructor kwargs."""

    name: str
    kind: str
    kwargs: dict[str, Any]
    phase: int = 0


@dataclass
class Connection:
    src: str
    src_port: str
    dst: str
    dst_port: str


@dataclass
class NetworkPlan:
    period: int                                   # D: Lava timesteps per token
    precision: str
    stages: dict[str, StageProgram]               # in chain order
    shapes: dict[str, dict[str, tuple[int, ...]]]  # stage -> used slot -> shape
    chip: list[ChipProcess]
    connections: list[Connection]
    populations: dict[str, int]                   # population (module) name -> neurons
    crossings: list[str]                          # names, in ir.meta['crossings'] order
    critical_path: list[str]                      # why D: the nodes and Dense hops to the logits
    vocab_size: int = 0

    def process_counts(self) -> dict[str, int]:
        counts = {"HostStage": len(self.stages)}
        for p in self.chip:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        return counts


def stage_of(ir: IR, node: str) -> str:
    return "host"
    op = ir.node(node)["op"]
    if op == "Input":
        return "emb"
    if op == "Output":
        return "head"
    layer = layer_of(ir.node(node)["module"])
    if layer == "other":
        raise SimulationError(f"IR node '{node}' ({op}, module '{ir.node(node)['module']}'): "
                              "cannot tell which host stage runs it (expected emb, blocks.N, "
                              "ln_out or head)")
    return layer


def _stage_rank(name: str) -> tuple[int, int]:
    if name == "emb":
        return (0, 0)
    if name.startswith("blocks."):
        return (1, int(name.split(".")[1]))
    return (2, 0)


class _Planner:
    def __init__(self, ir: IR, precision: str) -> None:
        if precision not in PRECISIONS:
            raise SimulationError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if "partition" not in ir.passes:
            raise SimulationError("the bundle's IR is not partitioned (passes: "
                                  f"{', '.join(ir.passes)}); re-run 'spikegpt-deploy convert'")
        if precision == "fixed" and "quantize" not in ir.passes:
            raise SimulationError("precision 'fixed' needs a quantized IR (the quantize pass); "
                                  "re-run 'spikegpt-deploy convert'")
        self.ir, self.precision, self.fixed = ir, precision, precision == "fixed"
        self.order = ir.topological()
        self.host = {n for n in self.order if ir.node(n).get("placement", HOST) == HOST}
        probe = Executor(ir).step(np.zeros(1, np.int64), Executor(ir).init_state(1), True)
        self.width = {k: int(np.prod(v.shape[1:])) for k, v in probe.values.items()}
        self.stage = {n: stage_of(ir, n) for n in self.order if n in self.host}
        self.stage_names = sorted(set(self.stage.values()), key=_stage_rank)
        self.phase: dict[str, int] = {}
        self.ins: dict[str, list[InSlot]] = {s: [] for s in self.stage_names}
        self.outs: dict[str, list[OutSlot]] = {s: [] for s in self.stage_names}
        self.records: dict[str, list] = {s: [] for s in self.stage_names}
        self.traffic: dict[str, list] = {s: [] for s in self.stage_names}
        self.chip: list[ChipProcess] = []
        self.conns: list[Connection] = []
        self.arrivals: dict[tuple[str, tuple], str] = {}  # (stage, key) -> slot delivering it

    # ---- helpers ---------------------------------------------------------------------------
    def op(self, n: str) -> str:
        return self.ir.node(n)["op"]

    def sources(self, n: str) -> list[tuple[Port, float]]:
        """Populations (and coefficients) a SpikeLinear reads, directly or through a SpikeSum."""
        (src,) = self.ir.inputs(n)
        if self.op(src.node) == "SpikeSum":
            coeffs = self.ir.node(src.node)["attrs"]["coefficients"]
            pops = list(zip(self.ir.inputs(src.node), coeffs))
        else:
            pops = [(src, 1.0)]
        for p, _ in pops:
            if self.op(p.node) not in POPULATION_OPS or p.port != 0:
                raise SimulationError(f"SpikeLinear '{n}' reads '{p.node}' ({self.op(p.node)}), "
                                      "not the spikes of a LIF or Heaviside population")
        return pops

    def slot(self, stage: str, kind: str, spec: InSlot | OutSlot) -> str:
        used = [s.slot for s in (self.ins[stage] if kind.endswith("_in") else self.outs[stage])]
        spec.slot = f"{kind}_{sum(s.startswith(kind) for s in used)}"
        (self.ins[stage] if kind.endswith("_in") else self.outs[stage]).append(spec)  # type: ignore
        return spec.slot

    def consumers(self, n: str, port: int = 0) -> list[str]:
        return sorted({v for v, _ in self.ir.consumers(n, port)})

    # ---- phases ----------------------------------------------------------------------------
    def schedule(self) -> None:
        for n in self.order:
            op, ins = self.op(n), self.ir.inputs(n)
            if n not in self.host and op == "SpikeLinear":
                self.phase[n] = max(self.phase[p.node] for p, _ in self.sources(n)) + 1
            elif n not in self.host and op == "Linear":
                self.phase[n] = self.phase[ins[0].node] + 1
            elif n not in self.host and op not in ("LIF", "SpikeSum", "StateIn", "StateOut"):
                raise SimulationError(f"chip node '{n}' ({op}): the simulator has no Lava "
                                      "process for this op on the chip")
            else:
                self.phase[n] = max((self.phase[p.node] for p in ins), default=0)
        self.period = max(self.phase.values()) + 1

    # ---- host stages -----------------------------------------------------------------------
    def host_nodes(self) -> dict[str, list[HostNode]]:
        nodes: dict[str, list[HostNode]] = {s: [] for s in self.stage_names}
        for n in self.order:
            if n in self.host:
                d = self.ir.node(n)
                nodes[self.stage[n]].append(HostNode(
                    n, d["op"], {"op": d["op"], "module": d["module"], "params": d["params"],
                                 "attrs": d["attrs"]},
                    [(p.node, p.port) for p in self.ir.inputs(n)], self.phase[n]))
        return nodes

    def chain(self) -> None:
        """Host values a later stage needs ride the chain emb -> blocks.0 -> ... -> head."""
        rank = {s: i for i, s in enumerate(self.stage_names)}
        links: list[set] = [set() for _ in self.stage_names[:-1]]
        for n in self.host:
            for p in self.ir.inputs(n):
                if p.node not in self.host or self.stage[p.node] == self.stage[n]:
                    continue
                a, b = rank[self.stage[p.node]], rank[self.stage[n]]
                if a > b:
                    raise SimulationError(f"host node '{n}' ({self.stage[n]}) reads '{p.node}' "
                                          f"of a later stage ({self.stage[p.node]})")
                for j in range(a, b):
                    links[j].add((p.node, p.port))
        for j, keys in enumerate(links):
            if not keys:
                continue
            entries: dict[int, list[PortEntry]] = {}
            off = 0
            for k in sorted(keys, key=lambda k: (self.phase[k[0]], k)):
                w = self.width[k]
                entries.setdefault(self.phase[k[0]], []).append(PortEntry(k, off, off + w))
                off += w
            a, b = self.stage_names[j], self.stage_names[j + 1]
            src = self.slot(a, "host_out", OutSlot("", off, entries))
            dst = self.slot(b, "host_in", InSlot("", off, "latch", entries, early=True))
            self.conns.append(Connection(f"host:{a}", src, f"host:{b}", dst))

    def feedback(self, prompt: list[int], sampling: SamplingOptions) -> tuple[str, str, tuple]:
        """The sampled token goes back from the stage with the Output to the one with the Input."""
        (inp,) = list(self.ir.nodes_of("Input"))
        outs = [n for n in self.ir.nodes_of("Output") if self.ir.node(n)["attrs"]["name"] == "logits"]
        if len(outs) != 1:
            raise SimulationError("the IR has no single 'logits' Output node")
        out = outs[0]
        a, b = self.stage[out], self.stage[inp]
        logits = self.ir.inputs(out)[0]
        if a == b:
            self.records[a].append(((logits.node, logits.port), "logits"))
            return a, b, (logits.node, logits.port)
        entries = {self.phase[out]: [PortEntry(TOKEN_KEY, 0, 1)]}
        src = self.slot(a, "host_out", OutSlot("", 1, entries))
        dst = self.slot(b, "host_in", InSlot("", 1, "latch", entries))
        self.conns.append(Connection(f"host:{a}", src, f"host:{b}", dst))
        logits = self.ir.inputs(out)[0]
        self.records[a].append(((logits.node, logits.port), "logits"))
        return a, b, (logits.node, logits.port)

    def host_out(self, n: Port, codec: tuple, integer: bool, dst: str, dst_port: str,
                 reuse: bool = False) -> None:
        """An out slot of n's stage that sends n's value (encoded) to a chip process."""
        stage, key = self.stage[n.node], (n.node, n.port)
        existing = [s for s in self.outs[stage] if reuse and
                    any(e.key == key and e.codec == codec for es in s.entries.values() for e in es)]
        if existing:
            slot = existing[0].slot
        else:
            entries = {self.phase[n.node]: [PortEntry(key, 0, self.width[key], codec)]}
            slot = self.slot(stage, "chip_out", OutSlot("", self.width[key], entries, integer))
        self.conns.append(Connection(f"host:{stage}", slot, dst, dst_port))

    def host_in(self, stage: str, src: str, entries: dict[int, list[PortEntry]], width: int,
                mode: str) -> None:
        slot = self.slot(stage, "chip_in", InSlot("", width, mode, entries))
        self.conns.append(Connection(src, "a_out" if src.startswith("dense:") else "s_out",
                                     f"host:{stage}", slot))

    # ---- chip processes --------------------------------------------------------------------
    def lifs(self) -> None:
        for n in self.order:
            if self.op(n) != "LIF" or n in self.host:
                continue
            a = self.ir.node(n)["attrs"]
            x, v = self.ir.inputs(n)
            init = float(self.ir.node(v.node)["attrs"].get("init", 0.0))
            if self.fixed:
                if "vth_fixed" not in a:
                    raise SimulationError(f"LIF '{n}' has no fixed-point parameters; re-run convert")
                kw = {"du": a["du_fixed"], "dv": a["dv_fixed"], "vth": a["vth_fixed"],
                      "v": int(round(init))}
                codec: tuple = ("current", 2.0 ** a["input_scale_bits"])
            else:
                tau, th = float(a["tau"]), float(a["threshold"])
                kw = {"du": 1.0, "dv": 1.0 / tau, "vth": float(np.nextafter(th, 0.0)), "v": init}
                codec = ("gain", 1.0 / tau)
            name = f"lif:{n}"
            self.chip.append(ChipProcess(name, "GatedLIF", {"shape": (self.width[(n, 0)],), **kw},
                                         self.phase[n]))
            if x.node in self.host:
                self.host_out(x, codec, self.fixed, name, "a_in")
            elif self.op(x.node) != "Linear":
                raise SimulationError(f"LIF '{n}' reads '{x.node}' ({self.op(x.node)}) on the chip; "
                                      "the simulator connects LIFs to host currents or a Dense")
            for stage in sorted({self.stage[c] for c in self.consumers(n, 0) if c in self.host},
                                key=_stage_rank):
                w = self.width[(n, 0)]
                self.host_in(stage, name, {self.phase[n]: [PortEntry((n, 0), 0, w)]}, w, "latch")
            for c in self.consumers(n, 1):
                if self.op(c) != "StateOut" or c in self.host:
                    raise SimulationError(f"'{c}' reads the membrane of LIF '{n}'; only the LIF "
                                          "itself may (it stays on the chip)")

    def _weights(self, n: str, scale: float = 1.0) -> tuple[np.ndarray, dict, tuple]:
        """Dense weights, kwargs and readout codec for a host readout of chip linear n."""
        d = self.ir.node(n)
        if not self.fixed:
            return d["params"]["weight"].astype(np.float64), {}, ("float",)
        bits = int(d["attrs"]["weight_bits"])
        k = fp.DENSE_WEIGHT_BITS + 1 - bits  # as QuantizedWeights.lava_dense_kwargs; exp -k:
        w = np.left_shift(d["params"]["weight_q"].astype(np.int32), k)  # the sum of mantissas
        return w, {"weight_exp": -k, "num_weight_bits": bits}, \
            ("scale", float(d["attrs"]["weight_scale"]) * scale)

    def pop_source(self, p: Port, dense: str) -> None:
        if p.node in self.host:  # the binary embedding: a host value sent as spikes
            self.host_out(p, ("float",), self.fixed, dense, "s_in", reuse=True)
        else:
            self.conns.append(Connection(f"lif:{p.node}", "s_out", dense, "s_in"))

    def stage_denses(self) -> None:
        """One Dense per (reading host stage, layer) of spike-driven linears."""
        groups: dict[tuple[str, str], list[str]] = {}
        for n in self.order:
            if self.op(n) != "SpikeLinear" or n in self.host:
                continue
            stages = {self.stage.get(c) for c in self.consumers(n)}
            if len(stages) != 1 or None in stages:
                raise SimulationError(f"SpikeLinear '{n}' feeds {self.consumers(n)}: expected "
                                      "host nodes of one stage")
            key = (stages.pop(), layer_of(self.ir.node(n)["module"]))
            groups.setdefault(key, []).append(n)
        for (stage, layer), sls in groups.items():
            parts, rows, r, kws = [], {}, 0, []
            for n in sls:
                w, kw, codec = self._weights(n)
                parts.append(w)
                rows[n] = (r, r + w.shape[0], codec)
                r += w.shape[0]
                kws.append(kw)
            if any(kw != kws[0] for kw in kws):
                raise SimulationError(f"stage {stage}: its spike-driven linears use different "
                                      "weight bits; one Dense cannot hold them")
            name = f"dense:{layer}"
            self.chip.append(ChipProcess(name, "Dense", {"weights": np.concatenate(parts), **kws[0]}))
            pops: dict[Port, int] = {}
            entries: dict[int, list[PortEntry]] = {}
            for n in sls:
                for p, coef in self.sources(n):
                    if self.fixed and coef != int(coef):
                        raise SimulationError(f"'{n}': spike coefficient {coef} is not an integer")
                    pops[p] = arrival = self.phase[p.node] + 1
                    r0, r1, codec = rows[n]
                    entries.setdefault(arrival, []).append(PortEntry((n, 0), r0, r1, codec, coef))
            if len(set(pops.values())) != len(pops):
                raise SimulationError(f"{name}: two of its populations fire on the same phase, so "
                                      "its phase-multiplexed readout cannot tell them apart")
            for p in pops:
                self.pop_source(p, name)
            self.host_in(stage, name, entries, r, "accumulate")

    def graded_denses(self) -> None:
        for n in self.order:
            if self.op(n) != "Linear" or n in self.host:
                continue
            a = self.ir.node(n)["attrs"]
            (x,) = self.ir.inputs(n)
            cons = self.consumers(n)
            to_lif = len(cons) == 1 and self.op(cons[0]) == "LIF"
            name = f"dense:{n}"
            kw: dict[str, Any] = {"num_message_bits": int(a.get("graded_bits", 8))}
            if self.fixed:
                qmax = 2 ** (int(a["graded_bits"]) - 1) - 1
                in_codec: tuple = ("graded", float(a["input_step"]), qmax)
            else:
                in_codec = ("float",)
            if to_lif and self.fixed:
                kw.update(weights=self.ir.node(n)["params"]["weight_lava"].astype(np.int32),
                          weight_exp=int(a["weight_exp_lava"]),
                          num_weight_bits=int(a["weight_bits"]))
            elif to_lif:
                gain = 1.0 / float(self.ir.node(cons[0])["attrs"]["tau"])
                kw["weights"] = self.ir.node(n)["params"]["weight"].astype(np.float64) * gain
            else:
                w, wkw, codec = self._weights(n, float(a["input_step"]) if self.fixed else 1.0)
                kw.update(weights=w, **wkw)
            self.chip.append(ChipProcess(name, "Dense", kw))
            self.host_out(x, in_codec, self.fixed, name, "s_in")
            if to_lif:
                self.conns.append(Connection(name, "a_out", f"lif:{cons[0]}", "a_in"))
                continue
            stages = {self.stage.get(c) for c in cons}
            if len(stages) != 1 or None in stages:
                raise SimulationError(f"chip Linear '{n}' feeds {cons}: expected one LIF or host "
                                      "nodes of one stage")
            w = self.width[(n, 0)]
            self.host_in(stages.pop(), name, {self.phase[n]: [PortEntry((n, 0), 0, w, codec)]},
                         w, "accumulate")

    # ---- results -----------------------------------------------------------------------------
    def records_and_traffic(self) -> tuple[dict[str, int], list[str]]:
        pops: dict[str, int] = {}
        for n in self.order:
            if self.op(n) not in POPULATION_OPS:
                continue
            module, key = self.ir.node(n)["module"], (n, 0)
            where = [s for s in self.stage_names if n in self.host and self.stage[n] == s] or \
                [s for s in self.stage_names
                 if any(e.key == key for i in self.ins[s] for es in i.entries.values() for e in es)]
            if not where:
                raise SimulationError(f"no host stage receives the spikes of '{n}'")
            self.records[where[0]].append((key, f"spikes:{module}"))
            pops[module] = self.width[key]
        names = []
        for i, c in enumerate(self.ir.meta.get("crossings", [])):
            src = c["source"] if c["direction"] == "host_to_chip" else c["readers"][0]
            stage = self.stage.get(src)
            if stage is None:
                raise SimulationError(f"crossing from '{c['source']}': its host end '{src}' is "
                                      "not a host node")
            self.traffic[stage].append((i, (c["source"], int(c["port"]))))
            names.append(f"{c['source']}:{c['port']}:{c['direction']}")
        return pops, names

    def critical_path(self, out: str) -> list[str]:
        """The chain of nodes that sets the phase of the logits, Dense hops marked."""
        path, n = [], out
        while True:
            ins = [p.node for p in self.ir.inputs(n)]
            if self.op(n) in ("SpikeLinear", "Linear") and n not in self.host:
                path.append(f"{n}: Dense readout, +1 timestep -> phase {self.phase[n]}")
                ins = [p.node for p, _ in self.sources(n)] if self.op(n) == "SpikeLinear" else ins
            elif self.op(n) in POPULATION_OPS:
                path.append(f"{n}: spikes on phase {self.phase[n]}")
            if not ins:
                break
            n = max(ins, key=lambda m: (self.phase[m], m))
        return path[::-1] + [f"logits on phase {self.phase[out]}; the sampled token reaches the "
                             f"embedding one timestep later: D = {self.period}"]


def plan_network(ir: IR, precision: str, prompt: list[int], n_tokens: int,
                 sampling: SamplingOptions, fault: tuple[str, int] | None = None) -> NetworkPlan:
    """The Lava network that runs ``len(prompt) + n_tokens - 1`` tokens of ``ir`` (see module doc).

    fault: test hook, (stage, token): that host stage raises RuntimeError on that token.
    """
    pl = _Planner(ir, precision)
    pl.schedule()
    nodes = pl.host_nodes()
    pl.chain()
    head, emb, logits_key = pl.feedback(prompt, sampling)
    pl.lifs()
    pl.stage_denses()
    pl.graded_denses()
    pops, crossings = pl.records_and_traffic()
    num_tokens = len(prompt) + max(n_tokens, 1) - 1
    state_init = Executor(ir).init_state(1)
    stages: dict[str, StageProgram] = {}
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for index, s in enumerate(pl.stage_names):
        slots = {n.data["attrs"]["state"] for n in nodes[s] if n.op == "StateIn"}
        prog = StageProgram(s, pl.period, num_tokens, precision, nodes[s], pl.ins[s], pl.outs[s],
                            {k: state_init[k] for k in slots}, pl.records[s], pl.traffic[s],
                            index=index)
        if s == emb:
            prog.prompt = list(prompt)
        if s == head:
            prog.sampling, prog.logits_key = sampling, logits_key
            prog.sample_from = len(prompt) - 1 if n_tokens > 0 else num_tokens
        if fault is not None and fault[0] == s:
            prog.fault = (int(fault[1]), min((n.phase for n in nodes[s]), default=0))
        stages[s] = prog
        shapes[s] = {x.slot: (x.width,) for x in [*pl.ins[s], *pl.outs[s]]}
    if fault is not None and fault[0] not in stages:
        raise SimulationError(f"fault hook: no host stage '{fault[0]}' ({', '.join(stages)})")
    out = [n for n in ir.nodes_of("Output")][0]
    return NetworkPlan(pl.period, precision, stages, shapes, pl.chip, pl.conns, pops, crossings,
                       pl.critical_path(out), int(ir.config["vocab_size"]))
