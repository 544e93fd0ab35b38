"""Sinks that stream results out of a Lava run through shared memory instead of Var.get.

``StreamSink`` stores what arrives on its InPort each step; ``VarProbe`` reads a Var of another
process (e.g. a LIF's ``u`` or ``v``) through a RefPort after each step. Both write into a
``SharedStepBuffer`` created with the Process, read back with ``.data()`` as (T, *shape).
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyRefPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, RefPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from spikegpt_deploy.simulation.lava.procs.shared_buffer import SharedStepBuffer


class StreamSink(AbstractProcess):
    """Receives (*shape) on ``a_in`` each step and keeps the first ``num_steps`` rows."""

    def __init__(self, *, shape: ty.Tuple[int, ...], num_steps: int,
                 name: ty.Optional[str] = None) -> None:
        buffer = SharedStepBuffer(tuple(shape), num_steps)
        super().__init__(shape=tuple(shape), buffer=buffer, name=name)
        self.a_in = InPort(shape=tuple(shape))

    def data(self) -> np.ndarray:
        """Everything received, (num_steps, *shape) float64 (int32 payloads are exact)."""
        return self.proc_params["buffer"].read()


class _AbstractStreamSinkModel(PyLoihiProcessModel):
    a_in = None

    def run_spk(self) -> None:
        self.proc_params["buffer"].write(self.time_step, self.a_in.recv())


@implements(proc=StreamSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyStreamSinkModelFloat(_AbstractStreamSinkModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)


@implements(proc=StreamSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyStreamSinkModelFixed(_AbstractStreamSinkModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)


class VarProbe(AbstractProcess):
    """Records ``var`` (a Var of another process) after every step, through a RefPort."""

    def __init__(self, *, var: Var, num_steps: int, name: ty.Optional[str] = None) -> None:
        buffer = SharedStepBuffer(tuple(var.shape), num_steps)
        super().__init__(shape=tuple(var.shape), buffer=buffer, name=name)
        self.state = RefPort(shape=tuple(var.shape))
        self.state.connect_var(var)

    def data(self) -> np.ndarray:
        """The Var after each step, (num_steps, *shape) float64."""
        return self.proc_params["buffer"].read()


class _AbstractVarProbeModel(PyLoihiProcessModel):
    state = None

    def post_guard(self) -> bool:
        return True

    def run_post_mgmt(self) -> None:
        self.proc_params["buffer"].write(self.time_step, self.state.read())


@implements(proc=VarProbe, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyVarProbeModelFloat(_AbstractVarProbeModel):
    state: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, float)


@implements(proc=VarProbe, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyVarProbeModelFixed(_AbstractVarProbeModel):
    state: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, np.int32)
