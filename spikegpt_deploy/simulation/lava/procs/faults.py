"""FailAt: a pass-through Process that raises (or hangs) on a chosen timestep, to test error handling."""

from __future__ import annotations

import time
import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class FailAt(AbstractProcess):
    """Forwards ``s_in`` to ``s_out``; at Lava step ``fail_step`` raises RuntimeError(message)
    (``action="raise"``) or blocks for ever (``action="hang"``, like a deadlocked model)."""

    def __init__(self, *, shape: ty.Tuple[int, ...], fail_step: int, message: str = "",
                 action: str = "raise", name: ty.Optional[str] = None) -> None:
        if action not in ("raise", "hang"):
            raise ValueError(f"FailAt: action={action!r}; expected 'raise' or 'hang'")
        super().__init__(shape=tuple(shape), fail_step=int(fail_step), message=str(message),
                         action=action, name=name)
        self.s_in = InPort(shape=tuple(shape))
        self.s_out = OutPort(shape=tuple(shape))


class _AbstractFailAtModel(PyLoihiProcessModel):
    s_in = None
    s_out = None

    def run_spk(self) -> None:
        data = self.s_in.recv()
        if self.time_step == self.proc_params["fail_step"]:
            if self.proc_params["action"] == "hang":
                while True:
                    time.sleep(1.0)
            raise RuntimeError(self.proc_params["message"])
        self.s_out.send(data)


@implements(proc=FailAt, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyFailAtModelFloat(_AbstractFailAtModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)


@implements(proc=FailAt, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyFailAtModelFixed(_AbstractFailAtModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
