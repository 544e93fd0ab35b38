"""Where a partitioned network sits on the chip's mesh, and how far its spike messages travel.

One placement serves the profiler's pricing (per-layer hop distances, in energy and in the
timestep's network term) and the SANA-FE cross-check (which maps its neuron groups onto these
cores), so both price the same routes.

Rule. Units in the IR's topological order, each on consecutive cores of its own: every chip
node on the cores of the mapping (``resources.map_resources``), and every host node whose
events chip nodes read as spike messages (the host's spikes into the chip: a Heaviside or LIF
population, or the graded input of a chip Linear) on injection cores of its own,
ceil(width / neurons_per_core), where the host's messages enter the mesh. A unit's neurons are
split into contiguous blocks, one per core (as ``profiling.latency.core_times`` splits a node's
work). Cores fill tiles of ``[capacity] cores_per_tile`` (one core per tile where the profile
has no figure), tiles fill one chip after another (``cores_per_chip``); the tiles of a chip
form a near-square mesh, width = ceil(sqrt(tiles)), height = ceil(tiles / width), for the tiles
the placement uses on one chip (a full chip's tiles when it spans several), numbered column by
column as SANA-FE numbers them (tile t at x = t // height, y = t % height). Chips form a square
grid, numbered the same way.

A message from core a to core b travels the Manhattan distance between their tiles (0 within a
tile), each on its own chip's mesh, plus ``chip_hops`` = the Manhattan distance between the two
chips. A source's route is the mean over its chip readers (``count_ops`` counts one message per
event per reading chip node), over the source's cores weighted by the neurons on each, and over
the reader's cores weighted the same way: exact where the source and each reader sit on one
core (every node of the shipped model), a uniform-firing mean otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from hw_profiles import HardwareProfile

from .errors import ProfileError
from .ir import HOST, IR

#: host ops whose output the chip reads as spike messages (``count_ops`` emits them)
HOST_POPULATIONS = ("Heaviside", "LIF")


@dataclass(frozen=True)
class Mesh:
    """Tiles of ``cores_per_tile`` cores on a ``width`` x ``height`` mesh per chip."""

    cores_per_tile: int
    cores_per_chip: int
    width: int
    height: int
    chips: int

    @classmethod
    def for_cores(cls, cores: int, cores_per_tile: int, cores_per_chip: int) -> "Mesh":
        on_chip = max(1, min(cores, cores_per_chip))
        tiles = math.ceil(on_chip / cores_per_tile)
        width = math.ceil(math.sqrt(tiles))
        return cls(cores_per_tile, cores_per_chip, width, math.ceil(tiles / width),
                   max(1, math.ceil(cores / cores_per_chip)))

    def _chip_grid(self) -> int:
        return math.ceil(math.sqrt(self.chips))

    def locate(self, core: int) -> tuple[int, int, int, int]:
        """(chip x, chip y, tile x, tile y) of a core."""
        chip, local = divmod(core, self.cores_per_chip)
        tile = local // self.cores_per_tile
        side = self._chip_grid()
        return chip // side, chip % side, tile // self.height, tile % self.height

    def hops(self, a: int, b: int) -> tuple[int, int]:
        """(tile hops, chip hops) of a message from core a to core b."""
        ca, cb = self.locate(a), self.locate(b)
        return (abs(ca[2] - cb[2]) + abs(ca[3] - cb[3]),
                abs(ca[0] - cb[0]) + abs(ca[1] - cb[1]))


@dataclass(frozen=True)
class Route:
    """Mean hops of one source's messages: between tiles of a chip, and between chips."""

    hops: float
    chip_hops: float = 0.0


def neuron_blocks(neurons: int, cores: int) -> list[np.ndarray]:
    """The neuron indices on each of ``cores`` cores: contiguous blocks (``np.array_split``)."""
    return np.array_split(np.arange(neurons), max(1, cores))


def event_sources(ir: IR) -> dict[str, list[str]]:
    """Nodes whose output port 0 reaches chip nodes as spike messages -> those chip readers."""
    chip = {n for n in ir.graph if ir.node(n).get("placement", HOST) != HOST}
    out: dict[str, list[str]] = {}
    for n in ir.topological():
        readers = sorted({v for v, _ in ir.consumers(n, 0) if v in chip})
        if not readers:
            continue
        op = ir.node(n)["op"]
        if n in chip and op in ("LIF", "SpikeSum"):
            out[n] = readers
        elif n not in chip and (op in HOST_POPULATIONS or any(
                ir.node(r)["op"] == "Linear" for r in readers)):
            out[n] = readers
    return out


def _width(ir: IR, node: str) -> int:
    shapes = [d.get("shape") for _, _, d in ir.graph.out_edges(node, data=True)
              if d["src_port"] == 0]
    shape = next((s for s in shapes if s is not None), None)
    if shape is None:
        raise ProfileError(f"IR node '{node}' has no annotated output shape; run partition() "
                           f"before placing the network")
    return int(np.prod(shape))


def _capacity(profile: HardwareProfile, key: str, default: int | None) -> int:
    if key in profile.capacity:
        return profile.capacity_count(key)
    if default is None:
        raise ProfileError(f"profile {profile.name!r} has no [capacity] {key}, which the "
                           f"placement needs")
    return default


def place(ir: IR, resources: Mapping[str, Any], profile: HardwareProfile) -> dict[str, Any]:
    """The placement of a partitioned IR on the mapping ``resources`` (see the docstring):
    cores and neurons per unit, the mesh, and the route of every event source."""
    per_tile = _capacity(profile, "cores_per_tile", 1)
    per_core = _capacity(profile, "neurons_per_core", None)
    per_chip = int(resources["totals"]["cores_per_chip"])
    mapped = {r["node"]: r for r in resources["layers"]}
    sources = event_sources(ir)
    units: list[tuple[str, int, int]] = []          # (node, neurons, cores)
    for n in ir.topological():
        if n in mapped:
            units.append((n, int(mapped[n]["neurons"]), int(mapped[n]["cores"])))
        elif n in sources:                          # the host's spikes: injection cores
            width = _width(ir, n)
            units.append((n, width, max(1, math.ceil(width / per_core))))
    cores: dict[str, list[int]] = {}
    neurons: dict[str, int] = {}
    nxt = 0
    for n, width, k in units:
        cores[n], neurons[n] = list(range(nxt, nxt + k)), width
        nxt += k
    mesh = Mesh.for_cores(nxt, per_tile, per_chip)
    routes = {s: route(mesh, cores[s], neurons[s], [(cores[r], neurons[r]) for r in readers])
              for s, readers in sources.items()}
    notes = [] if "cores_per_tile" in profile.capacity else [
        f"no [capacity] cores_per_tile in {profile.name!r}: one core per mesh position"]
    return {"rule": "topological order, consecutive cores per node; host spike sources on "
                    "injection cores of their own",
            "cores": nxt, "cores_per_tile": per_tile, "cores_per_chip": per_chip,
            "mesh": {"width": mesh.width, "height": mesh.height, "chips": mesh.chips},
            "units": {n: {"cores": cores[n], "neurons": neurons[n]} for n, _, _ in units},
            "routes": {s: {"readers": sources[s], "hops": r.hops, "chip_hops": r.chip_hops}
                       for s, r in routes.items()},
            "notes": notes}


def mesh_of(placement: Mapping[str, Any]) -> Mesh:
    """The ``Mesh`` of a ``place`` result."""
    m = placement["mesh"]
    return Mesh(int(placement["cores_per_tile"]), int(placement["cores_per_chip"]),
                int(m["width"]), int(m["height"]), int(m["chips"]))


def route(mesh: Mesh, src_cores: Sequence[int], src_neurons: int,
          readers: Sequence[tuple[Sequence[int], int]]) -> Route:
    """Mean hops of a source's messages: over readers, source cores and reader cores, each
    core weighted by the share of its unit's neurons it holds."""
    if not readers:
        return Route(0.0, 0.0)

    def weighted(cs: Sequence[int], n: int) -> list[tuple[int, float]]:
        return [(c, len(b) / max(n, 1)) for c, b in zip(cs, neuron_blocks(n, len(cs)))]

    tile = chip = 0.0
    for r_cores, r_neurons in readers:
        for a, wa in weighted(src_cores, src_neurons):
            for b, wb in weighted(r_cores, r_neurons):
                t, c = mesh.hops(a, b)
                tile += wa * wb * t
                chip += wa * wb * c
    return Route(tile / len(readers), chip / len(readers))


def routes_of(resources: Mapping[str, Any] | None) -> dict[str, Route] | None:
    """Source node -> Route of a mapping that carries a placement; None otherwise."""
    placement = (resources or {}).get("placement")
    if not placement:
        return None
    return {s: Route(float(r["hops"]), float(r["chip_hops"]))
            for s, r in placement["routes"].items()}
