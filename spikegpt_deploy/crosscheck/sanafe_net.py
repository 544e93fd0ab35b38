"""The mapped chip network of a bundle in SANA-FE's terms: cores, neurons, synapses, replayed spikes.

SANA-FE (Boyle et al., IEEE TCAD 2025; the ``sanafe`` wheel, GPL-3.0) is imported only by
``build_and_run``, which the ``crosscheck`` command calls; nothing else in the package imports it.

One SANA-FE timestep is one token, as in the profiler's counts (every neuron is updated once per
token). Every chip population and every SpikeSum's non-zero outputs are *replayed*: an ``input``
neuron per neuron emits the spike train the Lava simulation measured (the host's messages into
the chip enter the same way). The neurons that integrate synaptic input (SpikeSum accumulators,
the readout compartments of SpikeLinears, LIFs fed from the host) are ``leaky_integrate_fire``
somas that reset every timestep, so SANA-FE updates one exactly when it receives input (or, for
a LIF fed dense floats by the host, always: ``force_update``). Synapses are the non-zero weights.
Groups sit on the cores of the profiler's placement (``placement.place``, the one the pricing
routes its messages on): a node's receivers and its replayed spikes on the node's cores (they
stand for the same neurons), the host's spikes on their injection cores, each node's neurons in
the same contiguous blocks per core; SANA-FE's mesh is the placement's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hw_profiles import HardwareProfile

from ..errors import DeployError
from ..folded import linear_shape, linear_weight
from ..ir import HOST, IR
from ..naming import layer_of
from ..placement import Mesh, neuron_blocks

EPS = 1e-9   # receivers fire (and reset) on any positive input; weights are all +1


class CrossCheckError(DeployError):
    """The cross-check cannot run (simulator missing, unsupported bundle, inconsistent result)."""


@dataclass
class Group:
    """One SANA-FE neuron group: replayed spikes (``trains``) or receivers (``inputs``)."""

    name: str
    node: str                                        # the IR node whose cores it sits on
    layer: str
    neurons: int
    trains: np.ndarray | None = None                 # (T, neurons) bool, replay groups
    force_update: bool = False                       # receivers fed dense floats by the host
    inputs: list[tuple[str, np.ndarray]] = field(default_factory=list)   # (source, (2, E) pairs)
    cores: list[int] = field(default_factory=list)


def _spikes(spikes: dict[str, Any], name: str, width: int) -> np.ndarray:
    if name not in spikes:
        raise CrossCheckError(f"no recorded spikes for population '{name}'")
    return np.asarray(spikes[name]).reshape(-1, width).astype(bool)


def chip_groups(ir: IR, spikes: dict[str, Any]) -> list[Group]:
    """Replay and receiver groups of a partitioned bundle IR (policy ``spikes``)."""
    chip = {n for n in ir.graph if ir.node(n)["placement"] != HOST}
    width = int(ir.config["n_embd"])
    replay: dict[str, Group] = {}
    receivers: list[Group] = []

    def readers(n: str) -> list[str]:
        return sorted({v for v, _ in ir.consumers(n, 0) if v in chip})

    def replay_of(n: str) -> Group:
        if n not in replay:
            d = ir.node(n)
            if d["op"] in ("LIF", "Heaviside"):
                trains = _spikes(spikes, d["module"] if d["op"] == "LIF" else "emb", width)
            elif d["op"] == "SpikeSum":
                n_t = sum(int(c) * replay_of(p.node).trains.astype(np.int64)  # type: ignore
                          for c, p in zip(d["attrs"]["coefficients"], ir.inputs(n)))
                trains = np.asarray(n_t) != 0
            else:
                raise CrossCheckError(f"chip node '{n}' ({d['op']}) feeds chip neurons; the "
                                      f"cross-check covers bundles of policy 'spikes'")
            replay[n] = Group(f"{n}.out", n, layer_of(d["module"]), trains.shape[1], trains)
        return replay[n]

    for n in ir.topological():
        d = ir.node(n)
        if n not in chip or d["op"] in ("StateIn", "StateOut"):
            continue
        layer = layer_of(d["module"])
        if d["op"] == "LIF":
            src = ir.inputs(n)[0]
            if src.node in chip:
                raise CrossCheckError(f"LIF '{n}' is fed on the chip; the cross-check covers "
                                      f"bundles of policy 'spikes'")
            receivers.append(Group(f"{n}.soma", n, layer, width, force_update=True))
        elif d["op"] == "SpikeSum":
            one_to_one = np.stack([np.arange(width), np.arange(width)])
            receivers.append(Group(f"{n}.acc", n, layer, width, inputs=[
                (replay_of(p.node).name, one_to_one) for p in ir.inputs(n)]))
        elif d["op"] == "SpikeLinear":
            if readers(n):
                raise CrossCheckError(f"SpikeLinear '{n}' feeds chip neurons; the cross-check "
                                      f"covers bundles of policy 'spikes'")
            out_idx, in_idx = np.nonzero(np.asarray(linear_weight(d["params"])))
            receivers.append(Group(f"{n}.readout", n, layer, linear_shape(d["params"])[0],
                                   inputs=[(replay_of(ir.inputs(n)[0].node).name,
                                            np.stack([in_idx, out_idx]))]))
        else:
            raise CrossCheckError(f"chip node '{n}' has op {d['op']}, which the cross-check "
                                  f"does not map; it covers bundles of policy 'spikes'")
    return list(replay.values()) + receivers


def _figure(profile: HardwareProfile, section: str, key: str, unit: str) -> float:
    try:
        return float(profile.quantity(section, key).to(unit))
    except DeployError as exc:
        raise CrossCheckError(f"profile {profile.name!r} lacks [{section}] {key}, which the "
                              f"SANA-FE architecture needs ({exc})") from None


def arch_description(profile: HardwareProfile, mesh: Mesh) -> dict[str, Any]:
    """A SANA-FE architecture with the profile's per-event figures (J and s) on one chip's
    ``mesh`` of the placement."""
    if mesh.chips > 1:
        raise CrossCheckError(f"the placement spans {mesh.chips} chips; the cross-check's "
                              f"SANA-FE architecture is one chip's mesh")
    e = {k: _figure(profile, "energy", k, "pJ") * 1e-12 for k in (
        "synaptic_op", "neuron_update_active", "neuron_update_idle", "spike_local", "spike_hop")}
    t = {k: _figure(profile, "timing", k, "ns") * 1e-9 for k in (
        "synaptic_op", "neuron_update", "neuron_update_idle", "spike_local", "spike_hop",
        "barrier_sync")}
    per_core = int(_figure(profile, "capacity", "neurons_per_core", "count"))
    width, height = mesh.width, mesh.height
    hop = {f"{k}_{d}_hop": v for d in ("north", "east", "south", "west")
           for k, v in (("energy", e["spike_hop"]), ("latency", t["spike_hop"]))}
    zero_soma = {"energy_access_neuron": 0.0, "latency_access_neuron": 0.0,
                 "energy_update_neuron": 0.0, "latency_update_neuron": 0.0,
                 "energy_spike_out": 0.0, "latency_spike_out": 0.0}
    core = {
        "name": f"core[0..{mesh.cores_per_tile - 1}]",
        # a node's neurons and their replayed spikes (the same neurons) share its cores
        "attributes": {"buffer_position": "soma", "buffer_inside_unit": False,
                       "max_neurons_supported": 2 * per_core},
        "axon_in": [{"name": "axon_in", "attributes": {"energy_message_in": 0.0,
                                                       "latency_message_in": 0.0}}],
        "soma": [
            {"name": "lif", "attributes": {
                "model": "leaky_integrate_fire",
                "energy_access_neuron": e["neuron_update_idle"],
                "latency_access_neuron": t["neuron_update_idle"],
                "energy_update_neuron": e["neuron_update_active"] - e["neuron_update_idle"],
                "latency_update_neuron": t["neuron_update"] - t["neuron_update_idle"],
                "energy_spike_out": 0.0, "latency_spike_out": 0.0}},
            {"name": f"replay[0..{per_core - 1}]", "attributes": {"model": "input",
                                                                  **zero_soma}}],
        "dendrite": [{"name": "dendrite", "attributes": {"model": "accumulator",
                                                         "energy_update": 0.0,
                                                         "latency_update": 0.0}}],
        "synapse": [{"name": "synapse", "attributes": {
            "model": "current_based", "energy_process_spike": e["synaptic_op"],
            "latency_process_spike": t["synaptic_op"]}}],
        "axon_out": [{"name": "axon_out", "attributes": {
            "energy_message_out": e["spike_local"], "latency_message_out": t["spike_local"]}}],
    }
    return {"architecture": {
        "name": f"spikegpt_deploy_{profile.name}",
        "attributes": {"topology": "mesh", "width": width, "height": height,
                       "link_buffer_size": 16, "sync_model": "fixed",
                       "latency_sync": t["barrier_sync"]},
        "tile": [{"name": f"tile[0..{width * height - 1}]", "attributes": hop,
                  "core": [core]}]}}


def assign_cores(groups: list[Group], placement: dict[str, Any]) -> None:
    """Each group on the cores of its node in ``placement`` (``placement.place``)."""
    units = placement["units"]
    for g in groups:
        if g.node not in units:
            raise CrossCheckError(f"node '{g.node}' has no cores in the placement")
        if units[g.node]["neurons"] != g.neurons:
            raise CrossCheckError(f"node '{g.node}': {g.neurons} neurons, the placement holds "
                                  f"{units[g.node]['neurons']}")
        g.cores = list(units[g.node]["cores"])


def core_of_neurons(g: Group) -> list[int]:
    """The core of each of the group's neurons: contiguous blocks, as the placement splits."""
    out = [0] * g.neurons
    for core, block in zip(g.cores, neuron_blocks(g.neurons, len(g.cores))):
        for i in block:
            out[int(i)] = core
    return out


def write_arch(description: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(description, indent=1), encoding="utf-8")   # JSON is YAML
    return path
