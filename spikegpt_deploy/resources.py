"""Map the chip partition onto cores and chips using the target profile's capacity table.

Per chip node: neurons (LIF: one per channel; SpikeSum: one integer accumulator per channel;
SpikeLinear / chip Linear: one read-out neuron per output, which forwards the accumulated input),
synapses (non-zero weights; a SpikeSum has one synapse per input neuron), synaptic memory
(synapses x weight bits; index and compression overheads are not modelled, so this is a lower
bound), fan-in, and the cores needed: the largest of neurons / neurons_per_core,
memory / synaptic_memory_per_core and fan-in / fan_in_per_core. Layers do not share cores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from hw_profiles import HardwareProfile

from .errors import ConversionError
from .folded import has_linear_weight, linear_weight
from .ir import HOST, IR


@dataclass(frozen=True)
class LayerResources:
    node: str
    module: str
    op: str
    neurons: int
    synapses: int
    weight_bits: int
    synaptic_memory_bytes: int
    fan_in: int
    cores: int
    limited_by: str


def _weight_of(data: dict) -> np.ndarray | None:
    params = data["params"]
    if "weight_q" in params:
        return params["weight_q"]
    if has_linear_weight(params):
        return linear_weight(params)
    return None


@dataclass(frozen=True)
class Capacity:
    """A core's limits from the target profile's capacity table."""

    neurons_per_core: int
    synaptic_memory_per_core_bytes: float
    fan_in_per_core: int
    cores_per_chip: int

    @classmethod
    def of(cls, profile: HardwareProfile) -> "Capacity":
        return cls(profile.capacity_count("neurons_per_core"),
                   profile.value("capacity", "synaptic_memory_per_core", "B"),
                   profile.capacity_count("fan_in_per_core"),
                   profile.capacity_count("cores_per_chip"))

    def cores(self, neurons: int, fan_in: int, synapses: int, bits: int
              ) -> tuple[int, int, str]:
        """(cores, synaptic memory in bytes, what limits the cores) of one layer."""
        memory = math.ceil(synapses * bits / 8)
        needs = {"neurons": math.ceil(neurons / self.neurons_per_core), "synaptic memory":
                 math.ceil(memory / self.synaptic_memory_per_core_bytes),
                 "fan-in": math.ceil(fan_in / self.fan_in_per_core)}
        limited_by = max(needs, key=lambda k: needs[k])
        return max(1, needs[limited_by]), memory, limited_by


def map_resources(ir: IR, profile: HardwareProfile, weight_bits: int = 8) -> dict:
    """Resources per chip node and totals (cores, chips) for a partitioned IR."""
    cap = Capacity.of(profile)
    per_chip = cap.cores_per_chip
    layers: list[LayerResources] = []
    for n, d in ir.graph.nodes(data=True):
        if d.get("placement", HOST) == HOST or d["op"] in ("StateIn", "StateOut"):
            continue  # chip state lives in the neurons counted below
        op = d["op"]
        bits = int(d["attrs"].get("weight_bits", weight_bits))
        if op in ("SpikeLinear", "Linear"):
            w = _weight_of(d)
            if w is None:
                raise ConversionError(f"node '{n}' ({op}) has no weight")
            neurons, fan_in, synapses = w.shape[0], w.shape[1], int(np.count_nonzero(w))
        elif op == "SpikeSum":
            width = int(ir.config["n_embd"])
            neurons, fan_in = width, width * len(ir.inputs(n))
            synapses, bits = fan_in, max(1, math.ceil(math.log2(
                max(abs(c) for c in d["attrs"]["coefficients"]) + 1)) + 1)
        elif op == "LIF":
            neurons = fan_in = synapses = int(ir.config["n_embd"])
            bits = 1  # one identity synapse per neuron from its input
        else:
            raise ConversionError(f"node '{n}': no resource model for chip op {op}")
        cores, memory, limited_by = cap.cores(neurons, fan_in, synapses, bits)
        layers.append(LayerResources(n, d["module"], op, neurons, synapses, bits, memory, fan_in,
                                     cores, limited_by))
    cores = sum(r.cores for r in layers)
    return {
        "target": profile.name,
        "layers": [asdict(r) for r in sorted(layers, key=lambda r: r.node)],
        "totals": {"neurons": sum(r.neurons for r in layers),
                   "synapses": sum(r.synapses for r in layers),
                   "synaptic_memory_bytes": sum(r.synaptic_memory_bytes for r in layers),
                   "cores": cores, "chips": math.ceil(cores / per_chip) if cores else 0,
                   "cores_per_chip": per_chip},
        "assumptions": "memory = synapses x weight bits (no index/compression overhead); "
                       "one read-out neuron per linear output; layers do not share cores",
    }
