"""HostStage: a CPU process that runs one slice of the IR's host partition each Lava timestep.

The work itself is ``spikegpt_deploy.simulation.stage.StageRunner`` (numpy only, the
interpreter's op functions); this module only gives it Lava ports. A ProcessModel declares its
ports statically, so a stage has fixed slots: ``chip_in_i`` / ``chip_out_i`` talk to chip
processes (Lava's Dense, GatedLIF) and carry int32 under fixed_pt (a bit-accurate process must
receive integers, docs/lava.md); ``host_in_i`` / ``host_out_i`` talk to other host stages and carry
float64 (exact for the float32 values of the IR). Unused slots have shape (1,) and stay
unconnected (``simulation.stage.SLOTS`` sets how many there are). No torch here: it deadlocks
under Lava's fork.
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from spikegpt_deploy.simulation.lava.procs.ports import add_ports, declare_ports, ports_of
from spikegpt_deploy.simulation.stage import SLOTS, StageRunner

SLOT_KINDS = ("chip_in", "chip_out", "host_in", "host_out")


def slot_names(kind: str) -> list[str]:
    return [f"{kind}_{i}" for i in range(SLOTS[kind.split("_")[0]])]


class HostStage(AbstractProcess):
    """Runs ``program`` (a ``simulation.stage.StageProgram``); ``shapes`` maps used slot names to
    their (width,) shapes; ``buffers`` are the shared result buffers it writes."""

    def __init__(self, *, program: ty.Any, shapes: ty.Dict[str, ty.Tuple[int, ...]],
                 buffers: ty.Dict[str, ty.Any], name: ty.Optional[str] = None) -> None:
        unknown = sorted(set(shapes) - {s for k in SLOT_KINDS for s in slot_names(k)})
        if unknown:
            raise ValueError(f"HostStage {name}: no port slots {unknown} (it has {SLOTS['chip']} "
                             f"chip and {SLOTS['host']} host slots per direction)")
        super().__init__(program=program, buffers=buffers, used=sorted(shapes), name=name)
        add_ports(self, {**_directions("chip"), **_directions("host")}, shapes)


class _AbstractHostStageModel(PyLoihiProcessModel):
    def __init__(self, proc_params: ty.Any) -> None:
        super().__init__(proc_params)
        self._runner: ty.Optional[StageRunner] = None

    def run_spk(self) -> None:
        if self._runner is None:
            self._runner = StageRunner(self.proc_params["program"],
                                       ports_of(self, self.proc_params["used"]),
                                       self.proc_params["buffers"])
        self._runner.step(self.time_step)


def _directions(side: str) -> ty.Dict[str, str]:
    """The slots to ``side`` ('chip' | 'host') and their directions."""
    return {slot: kind.split("_")[1] for kind in SLOT_KINDS if kind.startswith(side)
            for slot in slot_names(kind)}


@implements(proc=HostStage, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyHostStageModelFloat(_AbstractHostStageModel):
    """Every slot float64."""


@implements(proc=HostStage, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyHostStageModelFixed(_AbstractHostStageModel):
    """Chip slots int32 (24-bit payload, as Lava's bit-accurate LIF sends), host slots float64."""


for _model, _chip_payload, _chip_precision in ((PyHostStageModelFloat, float, None),
                                               (PyHostStageModelFixed, np.int32, 24)):
    declare_ports(_model, _directions("chip"), _chip_payload, _chip_precision)
    declare_ports(_model, _directions("host"))
