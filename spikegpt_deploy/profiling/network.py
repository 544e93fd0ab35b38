"""How far a price's spike messages travel: per layer, from the placement or a mesh estimate.

With a mapping that carries a placement (``profiling.core_mapping``: ``placement.place``, the one
placement the SANA-FE cross-check also uses), each source's messages travel its own mean
distance between the tiles of its cores and of its readers' cores, plus the chips between them;
a layer's hops are the message-weighted mean of its sources'. A chip-to-chip hop is priced as
one mesh hop (a stated lower bound; no inter-chip energy figure). Without a placement (or for
messages of a source it lacks), every message travels the mean Manhattan distance between two
random cores of a square mesh of the mapped cores (``resources.map_resources`` when given, else
the larger of neurons / neurons_per_core and synapse bits / synaptic_memory_per_core at
weight_bits_max), 2 (s^2 - 1) / (3 s) hops for side s (0 for one core), and past one chip the
mean distance between chips on a square grid. ``hops`` given: every message travels that many
mesh hops, plus that chip distance. The timestep's network term is the layer whose messages
travel farthest (``latency.timestep_latency``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from hw_profiles import HardwareProfile

from ..placement import Route, routes_of
from .counts import OpCounts
from .latency import mean_mesh_distance


def mapping_estimate(counts: OpCounts, chip: HardwareProfile) -> dict[str, Any]:
    """Cores, chips and mean hops per message for the chip part (see the module docstring)."""
    neurons, synapses = counts.mapping.get("neurons", 0), counts.mapping.get("synapses", 0)
    notes, cores = [], 1

    def have(key: str) -> bool:
        return key in chip.capacity

    if have("neurons_per_core"):
        cores = max(cores, math.ceil(neurons / chip.capacity_count("neurons_per_core")))
    else:
        notes.append("no [capacity] neurons_per_core: neuron count not used for the core count")
    if have("synaptic_memory_per_core") and have("weight_bits_max"):
        bits = synapses * chip.capacity_bits("weight_bits_max")
        cores = max(cores, math.ceil(bits / chip.capacity_bits("synaptic_memory_per_core")))
    else:
        notes.append("no synaptic memory or weight width: synapses not used for the core count")
    per_chip = chip.capacity_count("cores_per_chip") if have("cores_per_chip") else cores
    chips = max(1, math.ceil(cores / per_chip))
    side = math.ceil(math.sqrt(min(cores, per_chip)))
    hops = mean_mesh_distance(min(cores, per_chip))
    if chips > 1:
        notes.append(f"{chips} chips: inter-chip messages priced as on-chip hops (lower bound; "
                     f"no inter-chip energy figure)")
    return {"neurons": neurons, "synapses": synapses, "cores": cores, "chips": chips,
            "mesh_side": side, "hops_per_message": hops, "notes": notes}


def message_routes(counts: OpCounts, chip: HardwareProfile, resources: Mapping[str, Any] | None,
                   hops: float | None) -> tuple[dict[str, Any], dict[str, Route]]:
    """The mapping summary (cores, chips, hops per message and per layer) and each layer's
    route; ``resources``: ``core_mapping`` of the partitioned IR; ``hops``: a given distance."""
    mapping = mapping_estimate(counts, chip)
    if resources is not None:
        total = int(resources["totals"]["cores"])
        on_chip = min(total, int(resources["totals"].get("cores_per_chip") or total))
        mapping.update(cores=total, chips=max(1, int(resources["totals"]["chips"])),
                       mesh_side=math.ceil(math.sqrt(max(on_chip, 1))),
                       hops_per_message=mean_mesh_distance(on_chip), mapped=True)
    hop = float(mapping["hops_per_message"] if hops is None else hops)
    placed = routes_of(resources) if hops is None else None
    chips = mapping["chips"]
    routes = layer_routes(counts, placed, Route(hop, mean_mesh_distance(chips) if chips > 1
                                                else 0.0))
    messages = {k: counts.layer_totals.get(k, {}).get("spike_messages", 0.0) for k in routes}
    sent = sum(messages.values())
    mapping.update(
        hops_per_message=(sum(messages[k] * r.hops for k, r in routes.items()) / sent
                          if sent else hop),
        chip_hops_per_message=(sum(messages[k] * r.chip_hops for k, r in routes.items())
                               / sent if sent else 0.0),
        hops_per_layer={k: {"hops": r.hops, "chip_hops": r.chip_hops}
                        for k, r in routes.items()},
        placed=placed is not None, hops_given=hops is not None)
    if placed is not None:
        placement = resources["placement"]  # type: ignore[index]
        mapping.update(placement={k: placement[k] for k in ("cores", "cores_per_tile", "mesh")})
        mapping["notes"] = mapping["notes"] + list(placement.get("notes", []))
    return mapping, routes


def layer_routes(counts: OpCounts, sources: Mapping[str, Route] | None,
                 uniform: Route) -> dict[str, Route]:
    """Layer -> the mean route of its spike messages: each source's own route where the
    placement has it, ``uniform`` for the rest (see the module docstring)."""
    out: dict[str, Route] = {}
    for layer in counts.layers:
        total = counts.layer_totals.get(layer, {}).get("spike_messages", 0.0)
        if not total:
            out[layer] = Route(0.0, 0.0)
            continue
        hops = chip_hops = 0.0
        placed = 0.0
        for source, n in counts.messages.get(layer, {}).items():
            r = (sources or {}).get(source)
            if r is not None:
                hops, chip_hops, placed = hops + n * r.hops, chip_hops + n * r.chip_hops, \
                    placed + n
        rest = total - placed
        out[layer] = Route((hops + rest * uniform.hops) / total,
                           (chip_hops + rest * uniform.chip_hops) / total)
    return out
