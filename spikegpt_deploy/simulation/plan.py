"""Plan the Lava network of a bundle's IR: its processes, ports, and the phase of every value.

Processes (``simulation/lava/network.py`` instantiates them; details in ``simulation.chip``):
- chip, Lava's own ``Dense``: one per layer for its spike-driven linears (the SpikeSum realised
  by the Dense's InPort adding the populations' connections), one per chip Linear (graded);
- chip, ``GatedLIF``: one per LIF population (Lava's LIF models, updated once per token);
- host, ``HostStage`` (numpy, the interpreter's own ops, ``simulation.stage``): one process for
  the whole host partition (layout 'single', the default: fewest processes), or one per layer
  (layout 'layers': emb, blocks.N, head), chained in that order: the values a later stage needs
  ride the chain message, the sampled token goes back to the embedding stage.

Phases. Lava's processes exchange messages on every timestep. A Dense sends the sum of the
previous timestep (a one-step synaptic delay); a LIF and a host stage receive and send within
one timestep. So the phase (timestep within the token) on which a value is ready counts the
Dense hops before it: phase(x) = max over inputs of phase(input), + 1 for an input that leaves a
Dense. A LIF updates on the phase its current arrives, a host node runs on the phase its last
input arrives. The sampled token is used one timestep after the logits, so a token takes
D = 1 + phase(logits) timesteps: two Dense hops per block (four under policy graded: att.output
and ffn.value are Denses too), one for the head's readout, one for the token's way back.
Populations fire on distinct phases, which lets one Dense serve several of them (see
``simulation.chip``) and one host port receive the spikes of all LIFs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SimulationError
from ..interpreter import Executor
from ..ir import HOST, IR, Port
from ..naming import layer_of, layer_rank
from ..sampling import SamplingOptions
from .chip import ChipProcess, ChipWiring, Connection
from .schedule import POPULATION_OPS, crossing_name
from .stage import (SLOTS, TOKEN_KEY, HostNode, InSlot, OutSlot, PortEntry,
                    StageProgram)

PRECISIONS = ("float", "fixed")
HOST_LAYOUTS = ("layers", "single")


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


def stage_of(ir: IR, node: str, layout: str = "layers") -> str:
    """The host stage that runs ``node``: 'host' (layout 'single'), else its layer."""
    if layout == "single":
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


class _Planner(ChipWiring):
    def __init__(self, ir: IR, precision: str, layout: str) -> None:
        if precision not in PRECISIONS:
            raise SimulationError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if layout not in HOST_LAYOUTS:
            raise SimulationError(f"host layout {layout!r}: choose one of "
                                  f"{', '.join(HOST_LAYOUTS)}")
        if "partition" not in ir.passes:
            raise SimulationError("the bundle's IR is not partitioned (passes: "
                                  f"{', '.join(ir.passes)}); re-run 'spikegpt-deploy convert'")
        if precision == "fixed" and "quantize" not in ir.passes:
            raise SimulationError("precision 'fixed' needs a quantized IR (the quantize pass); "
                                  "re-run 'spikegpt-deploy convert'")
        self.ir, self.precision, self.fixed = ir, precision, precision == "fixed"
        self.order = ir.topological()
        self.host = {n for n in self.order if ir.node(n).get("placement", HOST) == HOST}
        ex = Executor(ir)
        probe = ex.step(np.zeros(1, np.int64), ex.init_state(1), True)
        self.width = {k: int(np.prod(v.shape[1:])) for k, v in probe.values.items()}
        self.state_init = ex.init_state(1)
        self.stage = {n: stage_of(ir, n, layout) for n in self.order if n in self.host}
        self.stage_names = sorted(set(self.stage.values()), key=layer_rank)
        self.phase: dict[str, int] = {}
        self.ins: dict[str, list[InSlot]] = {s: [] for s in self.stage_names}
        self.outs: dict[str, list[OutSlot]] = {s: [] for s in self.stage_names}
        self.records: dict[str, list] = {s: [] for s in self.stage_names}
        self.traffic: dict[str, list] = {s: [] for s in self.stage_names}
        self.chip: list[ChipProcess] = []
        self.conns: list[Connection] = []

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
        """Give ``spec`` the next free slot name of ``kind`` in ``stage`` and register it."""
        specs = self.ins[stage] if kind.endswith("_in") else self.outs[stage]
        index = sum(s.slot.startswith(kind) for s in specs)
        if index >= SLOTS[kind.split("_")[0]]:
            raise SimulationError(f"host stage '{stage}' needs more than {index} {kind} ports "
                                  "(HostStage's fixed slots); use host_layout='layers'")
        spec.slot = f"{kind}_{index}"
        specs.append(spec)  # type: ignore[arg-type]
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

    def feedback(self) -> tuple[str, str, str]:
        """The sampled token goes back from the stage with the logits Output to the stage with
        the Input (inside one stage when they are the same). Returns both stages and the Output."""
        (inp,) = list(self.ir.nodes_of("Input"))
        outs = [n for n in self.ir.nodes_of("Output")
                if self.ir.node(n)["attrs"]["name"] == "logits"]
        if len(outs) != 1:
            raise SimulationError("the IR has no single 'logits' Output node")
        out = outs[0]
        a, b = self.stage[out], self.stage[inp]
        logits = self.ir.inputs(out)[0]
        self.records[a].append(((logits.node, logits.port), "logits"))
        if a != b:
            entries = {self.phase[out]: [PortEntry(TOKEN_KEY, 0, 1)]}
            src = self.slot(a, "host_out", OutSlot("", 1, entries))
            dst = self.slot(b, "host_in", InSlot("", 1, "latch", entries))
            self.conns.append(Connection(f"host:{a}", src, f"host:{b}", dst))
        return a, b, out

    @staticmethod
    def _free(specs: list, group: str, width: int, phase: int) -> Any:
        """A slot of ``group`` and ``width`` that carries nothing on ``phase`` (to share)."""
        return next((s for s in specs if group and s.group == group and s.width == width
                     and phase not in s.entries), None)

    def host_out(self, n: Port, codec: tuple, integer: bool, dst: str, dst_port: str,
                 group: str = "") -> None:
        """Send n's value (encoded) from its stage to a chip process. The same value and codec
        share one port (fan-out); values of one ``group`` on distinct phases share one port too
        (phase-multiplexed)."""
        stage, key, phase = self.stage[n.node], (n.node, n.port), self.phase[n.node]
        entry = PortEntry(key, 0, self.width[key], codec)
        same = [s for s in self.outs[stage] if entry in s.entries.get(phase, [])]
        spec = same[0] if same else self._free(self.outs[stage], group, self.width[key], phase)
        if spec is None:
            spec = OutSlot("", self.width[key], {}, integer, group=group)
            self.slot(stage, "chip_out", spec)
        if not same:
            spec.entries[phase] = [entry]
        self.conns.append(Connection(f"host:{stage}", spec.slot, dst, dst_port))

    def host_in(self, stage: str, src: str, entries: dict[int, list[PortEntry]], width: int,
                mode: str, group: str = "") -> None:
        """Receive a chip process's output in ``stage``. Outputs of one ``group`` arriving on
        distinct phases share one port (Lava adds the connections; e.g. the spikes of all LIFs
        a stage reads: only the active one sends non-zeros)."""
        (phase,) = entries if group else (None,)
        spec = self._free(self.ins[stage], group, width, phase) if group else None
        if spec is None:
            spec = InSlot("", width, mode, {}, group=group)
            self.slot(stage, "chip_in", spec)
        spec.entries.update(entries)
        self.conns.append(Connection(src, "a_out" if src.startswith("dense:") else "s_out",
                                     f"host:{stage}", spec.slot))

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
            names.append(crossing_name(c))
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
                 sampling: SamplingOptions, fault: tuple[str, int] | None = None,
                 host_layout: str = "single") -> NetworkPlan:
    """The Lava network that runs ``len(prompt) + n_tokens - 1`` tokens of ``ir`` (see module doc).

    fault: test hook, (stage, token): that host stage raises RuntimeError on that token.
    """
    pl = _Planner(ir, precision, host_layout)
    pl.schedule()
    nodes = pl.host_nodes()
    pl.chain()
    head, emb, out = pl.feedback()
    pl.lifs()
    pl.stage_denses()
    pl.graded_denses()
    pops, crossings = pl.records_and_traffic()
    num_tokens = len(prompt) + max(n_tokens, 1) - 1
    stages: dict[str, StageProgram] = {}
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for index, s in enumerate(pl.stage_names):
        slots = {n.data["attrs"]["state"] for n in nodes[s] if n.op == "StateIn"}
        written = {n.data["attrs"]["state"] for n in nodes[s] if n.op == "StateOut"}
        if written - slots:
            raise SimulationError(f"host stage '{s}' writes state {sorted(written - slots)} that "
                                  "another stage reads; use host_layout='single'")
        prog = StageProgram(s, pl.period, num_tokens, precision, nodes[s], pl.ins[s], pl.outs[s],
                            {k: pl.state_init[k] for k in slots}, pl.records[s], pl.traffic[s],
                            index=index)
        if s == emb:
            prog.prompt = list(prompt)
        if s == head:
            prog.sampling = sampling
            logits = ir.inputs(out)[0]
            prog.logits_key = (logits.node, logits.port)
            prog.sample_from = len(prompt) - 1 if n_tokens > 0 else num_tokens
        if fault is not None and fault[0] == s:
            prog.fault = (int(fault[1]), min((n.phase for n in nodes[s]), default=0))
        stages[s] = prog
        shapes[s] = {x.slot: (x.width,) for x in [*pl.ins[s], *pl.outs[s]]}
    if fault is not None and fault[0] not in stages:
        raise SimulationError(f"fault hook: no host stage '{fault[0]}' ({', '.join(stages)})")
    return NetworkPlan(pl.period, precision, stages, shapes, pl.chip, pl.conns, pops, crossings,
                       pl.critical_path(out), int(ir.config["vocab_size"]))
