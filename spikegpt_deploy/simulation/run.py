"""Simulate a deployment bundle in Lava, built from the bundle's IR (not from PyTorch).

``simulate(bundle, prompt_ids, n_tokens, precision)`` runs ONE Lava network for the whole
generation: the prompt is fed token by token, then the sampled token is fed back inside the
network. ``LavaRunner`` supervises the run (Lava's processes in their own process group; killed,
and their /dev/shm segments unlinked, on an error, a timeout or Ctrl-C). The result holds the
logits and spikes of every fed token, the generated ids, the traffic of every chip-host crossing
per token, the timesteps per token and why, and timings.

The network (``simulation.plan`` for the schedule, ``simulation.chip`` for the chip side,
``simulation.stage`` for the host side):
- chip: Lava's own ``Dense`` for the spike-driven linears (one per layer, weights stacked; the
  SpikeSum is the Dense's InPort adding its populations' connections) and for the chip linears
  of policy graded; ``GatedLIF`` (Lava's float / bit-accurate LIF arithmetic, updated once per
  token) for every LIF population;
- host: ``HostStage`` processes (numpy, the interpreter's FLOAT_OPS): one for the whole host
  partition (default) or one per layer ('layers'), wired to the chip processes port to port.
A token takes D Lava timesteps, one per Dense hop on its longest path (two per block, four under
policy graded, one for the head) plus one to feed the sampled token back; every process gets a
phase in 0..D-1 and works on that timestep of each token.

``equivalence(ir, result)`` compares a run with the bundle's own numpy references: the float IR
(``interpreter.Executor``) for precision 'float', the quantized emulation (``emulator(ir)``) for
'fixed', teacher-forced on the tokens the simulation fed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bits import bits_per_token
from ..bundle import Bundle, load_bundle
from ..errors import BundleError, DataError, SimulationError
from ..inputs import check_count, check_real, check_token_ids
from ..interpreter import Executor
from ..ir import IR
from ..passes.quantize import emulator
from ..sampling import Sampler, SamplingOptions, encode_prompt
from .plan import PRECISIONS, NetworkPlan, plan_network

log = logging.getLogger(__name__)
SELECT_TAG = {"float": "floating_pt", "fixed": "fixed_pt"}
NETWORKS = ("pipelined", "populations")
TokenCallback = Callable[[int, int, float], None]  # (index, token id, seconds since start)


@dataclass
class SimulationResult:
    """One simulated generation; arrays are token-first (one row per token fed)."""

    bundle: str
    precision: str
    prompt_ids: list[int]
    generated_ids: list[int]
    token_ids: list[int]                 # fed tokens: the prompt, then generated[:-1]
    logits: np.ndarray                   # (T, V) float32: after each fed token
    spikes: dict[str, np.ndarray]        # population -> (T, C) uint8
    traffic: dict[str, np.ndarray]       # crossing 'source:port:direction' -> (T,) non-zeros
    timesteps_per_token: int
    timesteps_why: list[str]
    num_steps: int
    processes: dict[str, int]
    wall_s: float
    timings: dict[str, float] = field(default_factory=dict)
    host_compute_s: dict[str, float] = field(default_factory=dict)  # per host stage, no waiting
    schedule: dict[str, Any] = field(default_factory=dict)  # regimes of the run's schedule

    @property
    def tokens_per_s(self) -> float:
        """Tokens fed per second of simulated steps (compile and start excluded)."""
        return len(self.token_ids) / max(self.timings.get("run_s", self.wall_s), 1e-9)

    @property
    def step_ms(self) -> float:
        return 1e3 * self.timings.get("run_s", self.wall_s) / max(self.num_steps, 1)

    def summary(self) -> dict[str, Any]:
        """The JSON-friendly figures (no per-token arrays)."""
        return {
            "bundle": self.bundle, "precision": self.precision, "prompt_ids": self.prompt_ids,
            "generated_ids": self.generated_ids, "tokens_fed": len(self.token_ids),
            "timesteps_per_token": self.timesteps_per_token,
            "timesteps_why": self.timesteps_why, "num_steps": self.num_steps,
            "processes": self.processes, "wall_s": self.wall_s, "timings": self.timings,
            "host_compute_s": self.host_compute_s,
            "schedule": {k: v for k, v in self.schedule.items() if k != "token_done_s"},
            "tokens_per_s": self.tokens_per_s, "ms_per_step": self.step_ms,
            "firing_rates": {k: float(v.mean()) for k, v in self.spikes.items()},
            "traffic_per_token": {k: float(v.mean()) for k, v in self.traffic.items()},
        }


def _check_inputs(ir: IR, prompt_ids: list[int], n_tokens: int, precision: str,
                  sampling: SamplingOptions) -> list[int]:
    if precision not in PRECISIONS:
        raise SimulationError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    check_count(n_tokens, "--tokens")
    sampling.validate()
    ids = check_token_ids(prompt_ids, int(ir.config["vocab_size"]))
    if not ids:
        raise DataError("the prompt is empty; pass at least one token")
    return ids


def buffer_bytes(plan: Any, T: int) -> int:
    """Bytes of the result buffers (``run_buffers``) for T tokens: float64 logits, spikes and
    traffic of every token, kept in memory until the run ends."""
    per_token = plan.vocab_size + sum(plan.populations.values()) + max(len(plan.crossings), 1)
    return 8 * T * (per_token + 1)


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where it cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            return next(int(line.split()[1]) * 1024 for line in f
                        if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _check_memory(plan: Any, T: int, n_prompt: int) -> None:
    """Refuse a run whose result buffers would not fit in half of the available memory, before
    anything is allocated (MemAvailable of /proc/meminfo; unchecked where that is unreadable)."""
    need = buffer_bytes(plan, T)
    avail = available_memory_bytes()
    if avail is None:
        return
    if need > avail // 2:
        most = max(avail // 2 // max(buffer_bytes(plan, 1), 1) - n_prompt + 1, 0)
        raise DataError(f"--tokens: {T:,} tokens need {need / 2**30:.1f} GiB of result buffers "
                        f"(logits and spikes of every token), more than half of the "
                        f"{avail / 2**30:.1f} GiB available; ask for at most {most:,} tokens")


def simulate(bundle_path: str | Path | Bundle, prompt_ids: list[int], n_tokens: int,
             precision: str = "float", sampling: SamplingOptions = SamplingOptions(), *,
             timeout_s: float | None = None, on_token: TokenCallback | None = None,
             host_layout: str = "single", fault: tuple[str, int] | None = None,
             network: str | None = None, prefill_block: int | None = None) -> SimulationResult:
    """Feed ``prompt_ids`` and generate ``n_tokens`` tokens with the bundle in Lava.

    network: 'pipelined' (one chip and one host process, prompt tokens one timestep apart,
    ``simulation.program``; prefill_block prompt tokens per Lava step, default
    ``schedule.PREFILL_BLOCK``: same timesteps and results, fewer Lava steps) or
    'populations' (a Lava process per population and Dense, each token run alone,
    ``simulation.plan``; host_layout is its layout). Default: 'pipelined', or 'populations'
    when host_layout is 'layers'.

    bundle_path: a bundle directory, or a loaded ``Bundle`` (to run one several times).
    precision: 'float' (Lava floating_pt models) or 'fixed' (bit-accurate fixed_pt). on_token is
    called from a watcher thread with each generated token as soon as the network samples it.
    timeout_s bounds the whole run (default: 120 s plus 0.5 s per Lava timestep). fault is a
    test hook: (host stage, token) makes that stage raise inside its Lava process model.
    """
    bundle = bundle_path if isinstance(bundle_path, Bundle) else load_bundle(bundle_path)
    return _simulate(bundle, prompt_ids, n_tokens, precision, sampling,
                     timeout_s, on_token, host_layout, fault, time.perf_counter(), network,
                     prefill_block)


def _simulate(bundle: Bundle, prompt_ids: list[int], n_tokens: int, precision: str,
              sampling: SamplingOptions, timeout_s: float | None, on_token: TokenCallback | None,
              host_layout: str, fault: tuple[str, int] | None, t0: float,
              network: str | None = None, prefill_block: int | None = None
              ) -> SimulationResult:
    from .lava.network import build_network
    from .lava.runner import LavaRunner, require_lava

    require_lava()
    if network is None:
        network = "populations" if host_layout == "layers" else "pipelined"
    if network not in NETWORKS:
        raise SimulationError(f"network {network!r}: choose one of {', '.join(NETWORKS)}")
    ids = _check_inputs(bundle.ir, prompt_ids, n_tokens, precision, sampling)
    if timeout_s is not None:
        check_real(timeout_s, "--timeout", 0.0, above=True)
    if network == "pipelined":
        from .pipelined import run_pipelined
        from .schedule import PREFILL_BLOCK
        stream = None if on_token is None else \
            (lambda bufs: _TokenStream(bufs, len(ids) - 1, n_tokens, on_token, t0))
        return run_pipelined(bundle, ids, n_tokens, precision, sampling, timeout_s, stream,
                             fault, t0, PREFILL_BLOCK if prefill_block is None else prefill_block)
    plan = plan_network(bundle.ir, precision, ids, n_tokens, sampling, fault, host_layout)
    T = len(ids) + max(n_tokens, 1) - 1
    _check_memory(plan, T, len(ids))
    steps = T * plan.period
    from .lava.procs.shared_buffer import run_buffers

    bufs = run_buffers(plan, T, n_tokens, host_stages=len(plan.stages))
    runner = LavaRunner(lambda inputs, num_steps: build_network(plan, bufs), SELECT_TAG[precision],
                        timeout_s=timeout_s or 120.0 + 0.5 * steps)
    log.info("simulate: %d tokens x %d timesteps, processes %s", T, plan.period,
             plan.process_counts())
    stream = _TokenStream(bufs, len(ids) - 1, n_tokens, on_token, t0)
    stop = threading.Event()
    watcher = threading.Thread(target=stream.watch, args=(stop,), daemon=True)
    if on_token is not None and n_tokens > 0:
        watcher.start()
    try:
        res = runner.run(steps)
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join(5.0)
    stream.pump()  # whatever the watcher had not delivered yet
    generated = [int(t) for t in bufs["generated"].read()[:n_tokens, 0]]
    logits = bufs["logits"].read().astype(np.float32)
    traffic = bufs["traffic"].read().astype(np.int64)
    return SimulationResult(
        bundle=str(bundle.path), precision=precision, prompt_ids=ids, generated_ids=generated,
        token_ids=(ids + generated)[:T], logits=logits,
        spikes={k: bufs[f"spikes:{k}"].read().astype(np.uint8) for k in plan.populations},
        traffic={name: traffic[:, i] for i, name in enumerate(plan.crossings)},
        timesteps_per_token=plan.period, timesteps_why=plan.critical_path, num_steps=steps,
        processes=plan.process_counts(), wall_s=time.perf_counter() - t0,
        timings=res.timings(),
        host_compute_s=dict(zip(plan.stages, (float(x) for x in bufs["host_busy"].read()[0]))))


class _TokenStream:
    """Hands each generated token to ``on_token`` once, in order, as soon as the network's head
    stage has written it to the shared buffers (from a watcher thread, then after the run)."""

    def __init__(self, bufs: dict[str, Any], first: int, n_tokens: int,
                 on_token: TokenCallback | None, t0: float) -> None:
        self.bufs, self.first, self.n, self.on_token, self.t0 = bufs, first, n_tokens, on_token, t0
        self.delivered = 0
        self.lock = threading.Lock()

    def pump(self) -> None:
        if self.on_token is None:
            return
        with self.lock:
            ready = min(max(int(self.bufs["progress"].array[0, 0]) - self.first, 0), self.n)
            while self.delivered < ready:
                tok = int(self.bufs["generated"].array[self.delivered, 0])
                self.on_token(self.delivered, tok, time.perf_counter() - self.t0)
                self.delivered += 1

    def watch(self, stop: threading.Event) -> None:
        while not stop.is_set() and self.delivered < self.n:
            self.pump()
            stop.wait(0.02)


def equivalence(ir: IR, result: SimulationResult,
                sampling: SamplingOptions = SamplingOptions()) -> dict[str, Any]:
    """The run against the bundle's numpy reference on the same fed tokens (module docstring)."""
    ref = Executor(ir) if result.precision == "float" else emulator(ir)
    ref_logits, ref_spikes = ref.run(np.asarray([result.token_ids], dtype=np.int64))
    ref_logits = ref_logits[0]
    first = len(result.prompt_ids) - 1
    sampler = Sampler(sampling)
    ref_tokens = [sampler(ref_logits[first + i]) for i in range(len(result.generated_ids))]
    spikes = {k: {"identical": bool(np.array_equal(result.spikes[k], v[0])),
                  "agreement": float(np.mean(result.spikes[k] == v[0])),
                  "spikes": int(result.spikes[k].sum())}
              for k, v in ref_spikes.items()}
    prompt_next = result.token_ids[1:len(result.prompt_ids)]
    out = {
        "reference": "float IR (numpy interpreter)" if result.precision == "float"
        else "quantized emulation (emulator(ir))",
        "tokens": len(result.token_ids),
        "max_abs_logit_diff": float(np.max(np.abs(result.logits - ref_logits))),
        "generated_tokens_identical": ref_tokens == result.generated_ids,
        "spikes_identical": all(s["identical"] for s in spikes.values()),
        "spikes": spikes,
    }
    if prompt_next:
        out["prompt_bits_per_token"] = bits_per_token(result.logits, prompt_next)
        out["reference_prompt_bits_per_token"] = bits_per_token(ref_logits, prompt_next)
    return out


def simulate_text(bundle_path: str | Path, prompt: str, n_tokens: int, precision: str = "float",
                  sampling: SamplingOptions = SamplingOptions(), *,
                  timeout_s: float | None = None, host_layout: str = "single",
                  on_text: Callable[[int, str, float], None] | None = None,
                  network: str | None = None
                  ) -> tuple[SimulationResult, str, dict[str, Any]]:
    """The CLI's entry: encode ``prompt`` with the bundle's tokenizer, simulate, decode, and
    compare with the reference; on_text gets (index, decoded piece, seconds) per token."""
    t0 = time.perf_counter()
    bundle = load_bundle(bundle_path)
    if bundle.tokenizer is None:
        raise BundleError(f"{bundle_path}: the bundle has no tokenizer.json; pass token ids "
                          "through the Python API (simulation.simulate) instead")
    tok = bundle.tokenizer
    ids = encode_prompt(tok, prompt)
    cb = None if on_text is None else (lambda i, t, s: on_text(i, tok.decode([t]), s))
    result = _simulate(bundle, ids, n_tokens, precision, sampling, timeout_s, cb, host_layout,
                       None, t0, network)
    return result, tok.decode(result.generated_ids), equivalence(bundle.ir, result, sampling)
