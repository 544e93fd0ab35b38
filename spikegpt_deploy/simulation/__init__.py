"""Simulate a deployment bundle in Lava, built from the bundle's IR (not from PyTorch).

Modules, each importing only those listed before it (tests/test_layering.py checks the
direction for the whole package):
- ``backend``: the backend-neutral interface (``SimulationBackend``, ``RunResult``);
- ``schedule``: which timestep of a token each node works on, the one schedule the simulator
  runs and the profiler prices;
- ``chip_params``: how chip nodes become Lava parameters (LIF Vars, current and graded codecs),
  for both networks;
- ``program``: the pipelined network as a numpy contract (``ChipProgram``, ``HostProgram``,
  ``LifSpec``) that both the Lava process models and the numpy references execute;
- ``stage`` / ``chip``: the host stages and chip processes of the per-population network;
  ``plan`` wires them into a ``NetworkPlan``; ``host`` runs a ``HostProgram`` step by step;
- ``lava/``: everything that imports Lava (the supervised runner, the network builders, the
  custom Processes and their ProcessModels);
- ``run`` and ``pipelined``: the public entry (``simulate``, ``simulate_text``,
  ``evaluate_tokens``, ``equivalence``).

The public names below are loaded on first use, so importing a low module (``schedule`` for the
profiler) does not import the whole simulator.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "SimulationResult": "run", "simulate": "run", "simulate_text": "run", "equivalence": "run",
    "bits_per_token": "run", "buffer_bytes": "run", "available_memory_bytes": "run",
    "SELECT_TAG": "run",
    "LavaEvaluation": "pipelined", "evaluate_tokens": "pipelined", "run_pipelined": "pipelined",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
