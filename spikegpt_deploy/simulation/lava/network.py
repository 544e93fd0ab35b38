"""Instantiate a ``simulation.plan.NetworkPlan`` as Lava processes (inside the LavaRunner's child).

Chip side: Lava's own ``lava.proc.dense.process.Dense`` (its float or bit-accurate model, chosen
by the run's select tag) and ``GatedLIF`` (Lava's ``PyLifModelFloat`` / ``PyLifModelBitAcc``
arithmetic, updated once per token). Host side: ``HostStage`` processes running the IR's host
ops in numpy. Lava is imported only here, when the runner's child builds the network.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from spikegpt_deploy.simulation.lava.runner import LavaNetwork
from spikegpt_deploy.errors import SimulationError
from spikegpt_deploy.simulation.plan import NetworkPlan


def build_network(plan: NetworkPlan, buffers: Mapping[str, Any]) -> LavaNetwork:
    """Create and connect every process of ``plan``; results go to the shared ``buffers``."""
    from lava.proc.dense.process import Dense

    from spikegpt_deploy.simulation.lava.procs.gated_lif import GatedLIF
    from spikegpt_deploy.simulation.lava.procs.host_stage import HostStage

    procs: dict[str, Any] = {}
    for name, program in plan.stages.items():
        procs[f"host:{name}"] = HostStage(program=program, shapes=plan.shapes[name],
                                          buffers=dict(buffers), name=f"host:{name}")
    for p in plan.chip:
        if p.kind == "GatedLIF":
            procs[p.name] = GatedLIF(period=plan.period, phase=p.phase, name=p.name, **p.kwargs)
        elif p.kind == "Dense":
            kw = dict(p.kwargs)
            procs[p.name] = Dense(weights=np.asarray(kw.pop("weights")), name=p.name, **kw)
        else:
            raise SimulationError(f"plan: unknown chip process kind {p.kind!r}")
    for c in plan.connections:
        try:
            src = getattr(procs[c.src], c.src_port)
            dst = getattr(procs[c.dst], c.dst_port)
            src.connect(dst)
        except (KeyError, AttributeError, ValueError) as exc:
            raise SimulationError(f"plan: cannot connect {c.src}.{c.src_port} -> "
                                  f"{c.dst}.{c.dst_port}: {exc}") from None
    last = list(plan.stages)[-1]
    return LavaNetwork(run_process=procs[f"host:{last}"], outputs={})
