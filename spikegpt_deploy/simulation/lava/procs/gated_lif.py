"""GatedLIF: Lava's LIF whose update runs once per token, on one timestep of every ``period``.

SpikeGPT's LIF updates once per token (tau = 2 per token, spec 2.7), but a token needs ``period``
(D) Lava timesteps to cross the simulated pipeline, and Lava's LIF decays on every timestep: over
D - 1 idle timesteps v would shrink by (1 - dv)**(D - 1), truncated at every step by the
bit-accurate model, so no choice of du, dv reproduces one tau = 2 update per token. This process
is Lava's ``LIF`` (same Vars, ports and parameters) plus two process parameters, ``period`` and
``phase``: on the timesteps t (1-based) with ``(t - 1) % period == phase`` the model runs Lava's
own LIF update unchanged (``PyLifModelFloat`` / ``PyLifModelBitAcc``: decay, integrate, fire,
reset); on every other timestep it consumes its input (zero by construction of the schedule),
sends zeros and leaves u and v untouched. On Loihi 2 neurons are microcoded, so this is a
programmable neuron model: the standard LIF program behind a timestep condition.
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import PyLifModelBitAcc, PyLifModelFloat
from lava.proc.lif.process import LIF


class GatedLIF(LIF):
    """Lava's LIF, updated only on timesteps t with (t - 1) % period == phase (module docstring)."""

    def __init__(self, *, shape: ty.Tuple[int, ...], period: int, phase: int,
                 **lif_kwargs: ty.Any) -> None:
        if not 0 <= int(phase) < int(period):
            raise ValueError(f"GatedLIF: phase={phase} must lie in 0..period-1 (period={period})")
        super().__init__(shape=tuple(shape), period=int(period), phase=int(phase), **lif_kwargs)


class _GatedMixin:
    """Runs the parent (Lava) LIF model's ``run_spk`` on the active timestep only."""

    def _active(self) -> bool:
        p = self.proc_params  # type: ignore[attr-defined]
        return (self.time_step - 1) % p["period"] == p["phase"]  # type: ignore[attr-defined]

    def run_spk(self) -> None:
        if self._active():
            super().run_spk()  # type: ignore[misc]
            return
        self.a_in.recv()  # type: ignore[attr-defined]
        self.s_out.send(np.zeros(self.v.shape, dtype=bool))  # type: ignore[attr-defined]


# @requires(CPU) and the tags (floating_pt; bit_accurate_loihi, fixed_pt) are inherited from
# Lava's models (both decorators add to the parent's lists).
# Lava's ``implements`` refuses to bind a model class that already implements another Process
# (LIF, inherited from Lava's models); clearing the inherited binding lets the derived models
# below bind to GatedLIF.
class _FloatBase(_GatedMixin, PyLifModelFloat):
    implements_process = None


class _FixedBase(_GatedMixin, PyLifModelBitAcc):
    implements_process = None


@implements(proc=GatedLIF, protocol=LoihiProtocol)
class PyGatedLifModelFloat(_FloatBase):
    """Lava's ``PyLifModelFloat`` arithmetic, gated per token."""


@implements(proc=GatedLIF, protocol=LoihiProtocol)
class PyGatedLifModelBitAcc(_FixedBase):
    """Lava's bit-accurate ``PyLifModelBitAcc`` arithmetic, gated per token."""
