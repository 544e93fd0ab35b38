"""CurrentSource: sends a precomputed current (or spike) sequence, one row per timestep.

Its fixed_pt model sends int32 with ``precision=24``: a bit-accurate LIF needs integer input (a
float OutPort into Lava's fixed LIF makes ``np.left_shift`` fail inside the LIF, which shows as a
silent hang, docs/lava.md). Data are time-first, (T, *shape); after T steps the source sends zeros.
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class CurrentSource(AbstractProcess):
    """Sends data[t - 1] on ``s_out`` at Lava step t (data: (T, *shape)), zeros after T steps."""

    def __init__(self, *, data: np.ndarray, name: ty.Optional[str] = None) -> None:
        data = np.asarray(data)
        if data.ndim < 2:
            raise ValueError(f"CurrentSource: data must be (T, *shape), got shape {data.shape}")
        super().__init__(data=data, name=name)
        self.s_out = OutPort(shape=data.shape[1:])


class _AbstractCurrentSourceModel(PyLoihiProcessModel):
    s_out = None

    def run_spk(self) -> None:
        data = self.proc_params["data"]
        t = self.time_step - 1
        row = data[t] if t < data.shape[0] else np.zeros(data.shape[1:], data.dtype)
        self.s_out.send(self._cast(row))

    def _cast(self, row: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@implements(proc=CurrentSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyCurrentSourceModelFloat(_AbstractCurrentSourceModel):
    """Sends float64 currents."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

    def _cast(self, row: np.ndarray) -> np.ndarray:
        return np.asarray(row, dtype=np.float64)


@implements(proc=CurrentSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyCurrentSourceModelFixed(_AbstractCurrentSourceModel):
    """Sends int32 currents (24-bit payload); refuses non-integer data instead of truncating."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def _cast(self, row: np.ndarray) -> np.ndarray:
        row = np.asarray(row)
        if not (np.issubdtype(row.dtype, np.integer) or np.issubdtype(row.dtype, np.bool_)):
            raise TypeError("CurrentSource (fixed_pt) needs integer data, got dtype "
                            f"{row.dtype}; quantize with spikegpt_deploy.fixed_point."
                            "quantize_current")
        return row.astype(np.int32)
