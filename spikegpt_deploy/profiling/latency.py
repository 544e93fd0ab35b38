"""Latency of a token from the work on each core, the host's compute and the chip-host transfers.

Form: Timcheck, Pierro & Shrestha, 'A Compute and Communication Runtime Model for Loihi 2',
arXiv 2601.10035, 2026: a max-affine lower bound of one timestep (r >= 0.97 against measured
Loihi 2 runtime). Each timestep lasts as long as its slowest core; a core's time is the largest
of its resource terms (they overlap in the core's pipeline), and the barrier ends the step:

    core time    = max(synaptic ops x T[synaptic_op],                       -> 'synapses'
                       active x T[neuron_update] + idle x T[neuron_update_idle],  -> 'neurons'
                       spikes sent x T[spike_local])                         -> 'messages'
    timestep     = max over cores (core time) + network + T[barrier_sync]
    network      = max over layers (hops x T[spike_hop] + chip hops x T[chip_hop])
    token        = timesteps x timestep + host compute + chip-host transfers   (separate terms)
    host compute = sum over op kinds of host ops per token x T_host[kind]
    transfers    = crossings per token x T[chip_io_crossing] + bytes per token x T[chip_io_byte]

The paper's microbenchmarked Loihi 2 constants were not available to this project, so the
per-event times are the target profile's (Davies et al. 2018 Table 2 for Loihi, as proxies for
Loihi 2); every figure keeps its kind in the report. A core's work is the mean per token of the
neurons mapped to it: a node's neurons are split into ``cores`` contiguous blocks (the mapping
of ``resources.map_resources``), each block with the synapses that feed it. Each layer acts once
per token, so a core's per-token work falls into one timestep; charging every timestep with the
slowest core is exact when the pipeline is full (one token per layer per timestep) and an upper
bound when a single token crosses it. ``token_latency`` takes the number of timesteps as input,
so a caller can price any schedule (e.g. a prompt pipelined at one timestep per token, or a
generated token that waits for the whole pipeline). A layer's hops are the mean distance its
spike messages travel on the placement (``placement.py``: between tiles, and between chips);
the network term is the layer whose messages travel farthest, since the barrier waits for every
message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from ..placement import Route

BOUNDS = ("synapses", "neurons", "messages")
WORK_TIMES = ("synaptic_op", "neuron_update", "neuron_update_idle", "spike_local", "spike_hop",
              "barrier_sync")
SOURCE = ("max-affine form of Timcheck, Pierro & Shrestha, arXiv 2601.10035 (2026); per-event "
          "times from the target profile's [timing]")


@dataclass(frozen=True)
class CoreTime:
    """One core's mean work per token and its time terms (ns); ``core`` counts from 0."""

    node: str
    layer: str
    op: str
    core: int
    cores: int
    synaptic_ops: float
    neuron_active: float
    neuron_idle: float
    messages: float
    synapses_ns: float
    neurons_ns: float
    messages_ns: float

    @property
    def time_ns(self) -> float:
        return max(self.synapses_ns, self.neurons_ns, self.messages_ns)

    @property
    def bound(self) -> str:
        """The term that sets the core's time: synapses, neurons or messages."""
        terms = (self.synapses_ns, self.neurons_ns, self.messages_ns)
        return BOUNDS[terms.index(max(terms))]   # the first of equal terms, as np.argmax

    @property
    def name(self) -> str:
        return f"{self.node}#{self.core}"

    def to_dict(self) -> dict[str, Any]:
        # the fields hold plain values: no deep copy (dataclasses.asdict) needed
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "name": self.name,
                "time_ns": self.time_ns, "bound": self.bound}


@dataclass(frozen=True)
class TimestepLatency:
    """One timestep: the slowest core, the network and the barrier (ns), and per-layer detail.

    ``model`` is 'work' (from the cores) or 'fixed' (a clocked target's stated tick, ``fixed_ns``).
    ``layers``: layer -> its slowest core; ``nodes``: chip node -> its slowest core.
    """

    model: str
    compute_ns: float
    network_ns: float
    barrier_ns: float
    hops: float
    chip_hops: float
    critical: CoreTime | None
    layers: dict[str, CoreTime] = field(default_factory=dict)
    nodes: dict[str, CoreTime] = field(default_factory=dict)
    cores: int = 0
    fixed_ns: float | None = None
    network_layer: str | None = None     # the layer whose messages set the network term

    @property
    def timestep_ns(self) -> float:
        if self.model == "fixed":
            return float(self.fixed_ns or 0.0)
        return self.compute_ns + self.network_ns + self.barrier_ns

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "timestep_ns": self.timestep_ns,
                "compute_ns": self.compute_ns, "network_ns": self.network_ns,
                "barrier_ns": self.barrier_ns, "hops": self.hops, "chip_hops": self.chip_hops,
                "network_layer": self.network_layer,
                "cores": self.cores, "fixed_ns": self.fixed_ns,
                "critical": self.critical.to_dict() if self.critical else None,
                "layers": {k: c.to_dict() for k, c in self.layers.items()},
                "nodes": {k: c.to_dict() for k, c in self.nodes.items()}, "source": SOURCE}


@dataclass(frozen=True)
class TokenLatency:
    """A token's latency as separate terms (ns); a term whose figure is missing is None."""

    timesteps: float
    timestep_ns: float | None
    host_ns: float | None
    io_ns: float | None

    @property
    def chip_ns(self) -> float | None:
        return None if self.timestep_ns is None else self.timesteps * self.timestep_ns

    @property
    def total_ns(self) -> float | None:
        parts = (self.chip_ns, self.host_ns, self.io_ns)
        if any(p is None for p in parts):
            return None
        return float(sum(parts))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"timesteps": self.timesteps, "timestep_ns": self.timestep_ns,
                "chip_ns": self.chip_ns, "host_ns": self.host_ns, "io_ns": self.io_ns,
                "total_ns": self.total_ns}


def core_times(work: Mapping[str, Mapping[str, Any]], cores: Mapping[str, int], tokens: int,
               times_ns: Mapping[str, float], rate: float = 1.0) -> list[CoreTime]:
    """Per-core mean work per token and time terms of every chip node in ``work``.

    work: node -> per-neuron sums over ``tokens`` (``OpCounts.neuron_work``); cores: node -> cores
    of the mapping; times_ns: synaptic_op, neuron_update, neuron_update_idle, spike_local in ns.
    ``rate`` scales the events (synaptic ops, active updates, messages) for sensitivity runs.
    """
    out: list[CoreTime] = []
    for node, w in work.items():
        k = max(1, int(cores.get(node, 1)))
        sums = _block_sums(np.stack([np.asarray(w[key], dtype=np.float64) for key in
                                     ("synaptic_ops", "active", "idle", "messages")]), k)
        for i, (syn, act, idle, msg) in enumerate(sums.tolist()):
            total = (act + idle) / tokens
            s, m = syn * rate / tokens, msg * rate / tokens
            a = min(act * rate / tokens, total)
            out.append(CoreTime(
                node, str(w["layer"]), str(w["op"]), i, k, s, a, total - a, m,
                s * times_ns["synaptic_op"],
                a * times_ns["neuron_update"] + (total - a) * times_ns["neuron_update_idle"],
                m * times_ns["spike_local"]))
    return out


def _block_sums(rows: np.ndarray, k: int) -> np.ndarray:
    """(k, rows) sums of each row over ``k`` contiguous blocks, the blocks of
    ``np.array_split`` (the first n % k one longer), in one ``reduceat`` per node."""
    n = rows.shape[1]
    size, extra = divmod(n, k)
    starts = np.array([i * size + min(i, extra) for i in range(k)], dtype=np.intp)
    if n == 0 or (starts >= n).any():   # more cores than neurons: empty blocks sum to 0
        return np.stack([np.array([r.sum() for r in np.array_split(row, k)])
                         for row in rows]).T
    return np.add.reduceat(rows, starts, axis=1).T


def mean_mesh_distance(n: int) -> float:
    """Mean Manhattan distance between two random points of a square grid holding ``n``."""
    side = math.ceil(math.sqrt(max(n, 1)))
    return 2 * (side * side - 1) / (3 * side)


def timestep_latency(cores: list[CoreTime], times_ns: Mapping[str, float],
                     routes: Mapping[str, Route]) -> TimestepLatency:
    """The work-based timestep (see the module docstring). ``routes``: layer -> the mean hops
    of its messages; ``times_ns`` also needs spike_hop, barrier_sync and, where messages cross
    chips, chip_hop (else a chip hop is timed as a mesh hop)."""
    critical = max(cores, key=lambda c: c.time_ns, default=None)
    layers: dict[str, CoreTime] = {}
    nodes: dict[str, CoreTime] = {}
    for c in cores:
        for table, key in ((layers, c.layer), (nodes, c.node)):
            if key not in table or c.time_ns > table[key].time_ns:
                table[key] = c
    chip_hop = times_ns.get("chip_hop", times_ns["spike_hop"])

    def network(r: Route) -> float:
        return r.hops * times_ns["spike_hop"] + r.chip_hops * chip_hop

    far = max(routes, key=lambda k: network(routes[k]), default=None)
    r = routes[far] if far is not None else Route(0.0, 0.0)
    return TimestepLatency("work", critical.time_ns if critical else 0.0, network(r),
                           times_ns["barrier_sync"], r.hops, r.chip_hops, critical, layers,
                           nodes, len(cores), network_layer=far)


def fixed_timestep(tick_ns: float) -> TimestepLatency:
    """A clocked target whose timestep is a stated tick, whatever the work."""
    return TimestepLatency("fixed", 0.0, 0.0, 0.0, 0.0, 0.0, None, fixed_ns=tick_ns)


def host_time_ns(ops_per_token: Mapping[str, float], op_ns: Mapping[str, float]) -> float:
    """Host compute time of a token: ops of each kind x the host's time per op of that kind."""
    return float(sum(n * op_ns[kind] for kind, n in ops_per_token.items() if n))


def io_time_ns(crossings: float, nbytes: float, crossing_ns: float, byte_ns: float) -> float:
    """Chip-host transfer time of a token: a fixed latency per crossing plus time per byte."""
    return crossings * crossing_ns + nbytes * byte_ns


def token_latency(timesteps: float, timestep_ns: float | None, host_ns: float | None,
                  io_ns: float | None) -> TokenLatency:
    """A token's latency = timesteps x timestep + host compute + transfers, kept as terms.

    Call it once per schedule: the timestep is the same, the number of timesteps differs.
    """
    if timesteps < 0:
        raise ValueError(f"timesteps must be >= 0, got {timesteps}")
    return TokenLatency(float(timesteps), timestep_ns, host_ns, io_ns)


def token_latency_for(latency: Mapping[str, Any], timesteps: float) -> TokenLatency:
    """A priced target's token latency (``price_target(...)['latency']``) for another number of
    chip timesteps per token, e.g. a prompt pipelined at one timestep per token."""
    tok = latency["token"]
    return token_latency(timesteps, tok["timestep_ns"], tok["host_ns"], tok["io_ns"])
