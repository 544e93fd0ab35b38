"""A (T, *shape) float64 array in anonymous shared memory, for results streamed out of a Lava run.

Lava forks one OS process per ProcessModel after the network is built; a buffer created before
that (when the Process is constructed) is inherited by the fork and shared with it, so a sink
model writes each step's data into it and the building process reads it with no Var.get (about
40 us per element) and no named /dev/shm segment to leak. No Lava import here.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np


class SharedStepBuffer:
    """float64 buffer of shape (num_steps, *shape), shared with forked children (MAP_SHARED)."""

    def __init__(self, shape: tuple[int, ...], num_steps: int) -> None:
        self.shape = (int(num_steps),) + tuple(int(s) for s in shape)
        nbytes = max(int(np.prod(self.shape)) * 8, 8)
        self._mmap = mmap.mmap(-1, nbytes)  # anonymous, MAP_SHARED: visible across fork
        self.array = np.ndarray(self.shape, dtype=np.float64, buffer=self._mmap)
        self.array[...] = 0.0

    @property
    def num_steps(self) -> int:
        return self.shape[0]

    def write(self, time_step: int, data: np.ndarray) -> None:
        """Store the data of Lava time step ``time_step`` (1-based); steps past the end are dropped."""
        t = int(time_step) - 1
        if 0 <= t < self.shape[0]:
            self.array[t] = data

    def read(self) -> np.ndarray:
        """A private copy of everything written so far."""
        return np.array(self.array, copy=True)


def run_buffers(plan: Any, T: int, n_tokens: int, host_stages: int = 1) -> dict[str, Any]:
    """The buffers a simulation run streams its results into, for a plan with ``populations``
    (name -> width), ``vocab_size`` and ``crossings``: spikes and logits per timestep, the
    generated tokens, progress, chip-host traffic, and whether each of ``host_stages`` host
    stages is busy."""
    bufs: dict[str, Any] = {f"spikes:{k}": SharedStepBuffer((c,), T)
                            for k, c in plan.populations.items()}
    bufs["logits"] = SharedStepBuffer((plan.vocab_size,), T)
    bufs["generated"] = SharedStepBuffer((1,), max(n_tokens, 1))
    bufs["progress"] = SharedStepBuffer((1,), 1)
    bufs["traffic"] = SharedStepBuffer((max(len(plan.crossings), 1),), T)
    bufs["host_busy"] = SharedStepBuffer((host_stages,), 1)
    return bufs
