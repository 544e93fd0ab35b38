"""Run the pipelined network (``simulation.program``) in Lava and collect a SimulationResult.

``run_pipelined`` feeds teacher-forced tokens one timestep apart (the schedule's interval), in
blocks of ``PREFILL_BLOCK`` tokens per Lava step (``schedule.Schedule.units``: the same chip
timesteps, fewer and larger Lava steps, identical results), and then, when tokens are to be
generated, continues autoregressively, one token per unit. ``evaluate_tokens`` is the
teacher-forced run over held-out token ids: bits per token of the deployed bundle in the Lava
simulation, with its spikes and logits compared to the numpy reference of the same precision
(the quantized emulation for 'fixed', the float IR for 'float').
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle, load_bundle
from ..errors import DataError, SimulationError
from ..sampling import SamplingOptions
from .run import SELECT_TAG
from .program import plan_pipeline
from .schedule import PREFILL_BLOCK, StepUnits

log = logging.getLogger(__name__)


def _buffers(plan: Any, T: int, n_tokens: int) -> dict[str, Any]:
    """``run_buffers`` plus the wall time at which each token was done (prefill / decode)."""
    from .lava.procs.shared_buffer import SharedStepBuffer, run_buffers

    bufs = run_buffers(plan, T, n_tokens)
    bufs["token_time"] = SharedStepBuffer((1,), T)
    return bufs


def run_pipelined(bundle: Bundle, ids: list[int], n_tokens: int, precision: str,
                  sampling: SamplingOptions, timeout_s: float | None,
                  stream: Any, fault: tuple[str, int] | None, t0: float,
                  block: int = PREFILL_BLOCK) -> Any:
    """Feed ``ids`` (pipelined, ``block`` tokens per Lava step: ``Schedule.units``) and sample
    ``n_tokens`` (autoregressive); ``stream`` is the caller's token streamer
    (``simulation._TokenStream`` factory: bufs -> streamer or None)."""
    from .lava.procs.chip_core import build_pipeline_network
    from .lava.runner import LavaRunner
    from .run import SimulationResult, _check_memory

    plan = plan_pipeline(bundle.ir, precision, ids, n_tokens, sampling, fault, block)
    T = len(ids) + max(n_tokens, 1) - 1
    _check_memory(plan, T, len(ids))
    steps = plan.schedule.num_steps(len(ids), max(n_tokens - 1, 0))  # the chip's timesteps
    lava_steps = StepUnits(plan.chip.units, plan.schedule.depth).num_steps
    bufs = _buffers(plan, T, n_tokens)
    runner = LavaRunner(lambda inputs, num_steps: build_pipeline_network(plan, bufs),
                        SELECT_TAG[precision], timeout_s=timeout_s or 120.0 + 0.5 * steps)
    log.info("simulate (pipelined): %d tokens in %d timesteps (%d Lava steps), processes %s",
             T, steps, lava_steps, plan.process_counts())
    streamer = stream(bufs) if stream is not None else None
    stop = threading.Event()
    watcher = None
    if streamer is not None and n_tokens > 0:
        watcher = threading.Thread(target=streamer.watch, args=(stop,), daemon=True)
        watcher.start()
    try:
        res = runner.run(lava_steps)
    finally:
        stop.set()
        if watcher is not None and watcher.is_alive():
            watcher.join(5.0)
    if streamer is not None:
        streamer.pump()
    generated = [int(t) for t in bufs["generated"].read()[:n_tokens, 0]]
    traffic = bufs["traffic"].read().astype(np.int64)
    sch = plan.schedule
    times = bufs["token_time"].read()[:, 0]
    result = SimulationResult(
        bundle=str(bundle.path), precision=precision, prompt_ids=list(ids),
        generated_ids=generated, token_ids=(list(ids) + generated)[:T],
        logits=bufs["logits"].read().astype(np.float32),
        spikes={k: bufs[f"spikes:{k}"].read().astype(np.uint8) for k in plan.populations},
        traffic={name: traffic[:, i] for i, name in enumerate(plan.crossings)},
        timesteps_per_token=sch.decode, timesteps_why=sch.why, num_steps=steps,
        processes=plan.process_counts(), wall_s=time.perf_counter() - t0,
        timings=res.timings(),
        host_compute_s={"host": float(bufs["host_busy"].read()[0, 0])})
    result.schedule = {**sch.regimes(len(ids)), "network": "pipelined",
                       "prefill_block": int(block) if sch.interval == 1 else 1,
                       "lava_steps": lava_steps, "token_done_s": [float(x) for x in times]}
    return result


@dataclass
class LavaEvaluation:
    """Bits per token of a bundle in the Lava simulation over teacher-forced token ids."""

    precision: str
    tokens: int
    bits_per_token: float
    reference_bits_per_token: float
    reference: str
    spikes_identical: bool
    spike_agreement: float
    max_abs_logit_diff: float
    tokens_per_s: float
    timesteps: int
    processes: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate_tokens(bundle_path: str | Path, ids: list[int], precision: str = "fixed", *,
                    timeout_s: float | None = None,
                    block: int = PREFILL_BLOCK) -> LavaEvaluation:
    """Teacher-forced Lava run over ``ids`` (``block`` tokens per Lava step): bits per token of
    ids[1:] and the comparison with the numpy reference of the same precision (module
    docstring)."""
    from .lava.runner import require_lava
    from .run import equivalence

    require_lava()
    if precision not in SELECT_TAG:
        raise SimulationError(f"--precision {precision!r}: choose one of float, fixed")
    ids = [int(t) for t in ids]
    if len(ids) < 2:
        raise DataError(f"evaluation needs at least 2 tokens, got {len(ids)}")
    bundle = load_bundle(bundle_path)
    vocab = int(bundle.ir.config["vocab_size"])
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise DataError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
    greedy = SamplingOptions(temperature=0.0)
    r = run_pipelined(bundle, ids, 0, precision, greedy, timeout_s, None, None,
                      time.perf_counter(), block)
    eq = equivalence(bundle.ir, r, greedy)  # all of ids is the prompt: nothing is sampled
    return LavaEvaluation(
        precision, len(ids), eq["prompt_bits_per_token"], eq["reference_prompt_bits_per_token"],
        eq["reference"], eq["spikes_identical"],
        float(np.mean([s["agreement"] for s in eq["spikes"].values()])),
        eq["max_abs_logit_diff"], r.tokens_per_s, r.num_steps, r.processes)
