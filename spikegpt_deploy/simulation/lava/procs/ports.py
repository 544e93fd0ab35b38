"""Ports declared once for a Process and its ProcessModels.

Lava needs a process's ports twice: as ``InPort`` / ``OutPort`` Vars of the Process (with their
shapes) and as ``LavaPyType`` class attributes of each ProcessModel (with their payload type);
the model then hands them to a numpy runner as a dict of objects with recv() / send(). These
helpers do all three from one map of port name -> direction ('in' | 'out'). Side-effect free,
as every module of this package must be.
"""

from __future__ import annotations

import typing as ty

from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort

Directions = ty.Mapping[str, str]


def add_ports(proc: ty.Any, directions: Directions,
              shapes: ty.Mapping[str, ty.Tuple[int, ...]]) -> None:
    """Give a Process an InPort or OutPort per name, of shapes[name] (default (1,): unused)."""
    for name, direction in directions.items():
        port_cls = InPort if direction == "in" else OutPort
        setattr(proc, name, port_cls(shape=tuple(shapes.get(name, (1,)))))


def declare_ports(model: type, directions: Directions, payload: ty.Any = float,
                  precision: ty.Optional[int] = None) -> type:
    """Give a ProcessModel class the LavaPyType of each port (dense vectors of ``payload``;
    precision None: Lava's default, unbounded)."""
    for name, direction in directions.items():
        kind = PyInPort.VEC_DENSE if direction == "in" else PyOutPort.VEC_DENSE
        setattr(model, name, LavaPyType(kind, payload, precision=precision))
    return model


def ports_of(model: ty.Any, names: ty.Iterable[str]) -> ty.Dict[str, ty.Any]:
    """A running model's ports by name: what the numpy runners recv() and send() on."""
    return {name: getattr(model, name) for name in names}
