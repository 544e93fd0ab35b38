"""The backend-neutral contract for running a spiking network, so a successor to Lava can replace it.

A backend is given a network when it is created and then asked to ``run`` it for N timesteps with
named input sequences, returning named output sequences. Arrays are time-first: inputs and outputs
are (T, *shape). A backend must leave nothing behind (processes, shared memory) when ``run``
returns or raises, including on KeyboardInterrupt, and raises ``SimulationError`` for failures of
the simulated network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class RunResult:
    """Outputs of one run, with wall-clock timings in seconds.

    build_s: constructing the network; compile_s: compiling it and starting the simulator's
    processes; run_s: the N timesteps; readout_s: collecting outputs; total_s: the whole call.
    """

    outputs: dict[str, np.ndarray]
    num_steps: int
    backend: str
    build_s: float = 0.0
    compile_s: float = 0.0
    run_s: float = 0.0
    readout_s: float = 0.0
    total_s: float = 0.0
    info: dict[str, object] = field(default_factory=dict)

    @property
    def step_ms(self) -> float:
        """Simulator cost per timestep in milliseconds (run_s / num_steps)."""
        return 1e3 * self.run_s / max(self.num_steps, 1)

    def timings(self) -> dict[str, float]:
        """The timings by name, as a simulation result reports them."""
        return {"build_s": self.build_s, "compile_s": self.compile_s, "run_s": self.run_s,
                "readout_s": self.readout_s, "total_run_call_s": self.total_s}


@runtime_checkable
class SimulationBackend(Protocol):
    """Runs one network; ``inputs`` maps input names to (T, *shape) arrays."""

    name: str

    def run(self, num_steps: int, inputs: Mapping[str, np.ndarray] | None = None) -> RunResult:
        """Simulate ``num_steps`` timesteps and return the named outputs, (num_steps, *shape)."""
        ...

    def close(self) -> None:
        """Release everything the backend holds; safe to call twice."""
        ...
