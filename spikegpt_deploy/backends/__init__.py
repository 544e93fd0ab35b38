"""Simulation backends: run a spiking network for N timesteps, feed inputs, collect outputs.

``base`` holds the backend-neutral interface (``SimulationBackend``, ``RunResult``); ``lava_runner``
implements it with Lava's CPU simulator; ``lava_procs`` holds custom Lava Processes. Nothing here
imports Lava at package import time.
"""

from spikegpt_deploy.backends.base import RunResult, SimulationBackend

__all__ = ["RunResult", "SimulationBackend"]
