"""Held-out quality of a deployed bundle: bits per token of the computation the bundle runs.

``precision='fixed'`` runs the bundle's quantized fixed-point emulation (``passes.quantize``'s
``QUANT_OPS``, the numpy program the Lava fixed-point simulation is spike-exact with);
``precision='float'`` runs the partitioned float IR. The text is cut into the same non-overlapping
windows as ``evaluation.evaluate_ids`` (``window_len + 1`` tokens, each from the zero state), and
many windows run at once as the batch axis of the IR executor, so every op is one vectorised numpy
call per token position.

Beside it, when the source model file is at hand (its sha256 is in the manifest), the source
PyTorch model runs on the same windows: its bits per token, the quantization cost (deployed -
source), the greedy next-token agreement and each population's firing-rate change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .bits import surprisal_bits
from .errors import DataError
from .interpreter import Executor
from .ir import IR
from .model import SpikeGPT
from .passes.quantize import emulator

log = logging.getLogger(__name__)

PRECISIONS = ("float", "fixed")
BACKENDS = ("numpy",)


@dataclass
class SourceComparison:
    """The source model on the same tokens, and how the deployed computation differs from it."""

    model: str
    bits_per_token: float
    quantization_cost_bits_per_token: float     # deployed - source (negative: deployed is better)
    greedy_agreement: float                     # fraction of positions with the same argmax
    firing_rates: dict[str, float]
    firing_rate_change: dict[str, float]        # deployed - source, per population


@dataclass
class BundleEvalResult:
    """Bits per token of a bundle's computation on held-out text (``evaluate BUNDLE``)."""

    bundle: str
    backend: str
    precision: str
    data: str
    split: str
    bits_per_token: float
    tokens: int
    windows: int
    window_len: int
    firing_rates: dict[str, float]
    seconds: float                              # the deployed computation alone
    source: SourceComparison | None = None
    source_missing: str | None = None           # why there is no source comparison
    weight_bits: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tokens_per_s"] = self.tokens_per_s
        return out


def windows_of(ids: np.ndarray, window_len: int, max_tokens: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets (n_windows, window_len) as ``evaluate_ids`` cuts them."""
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    n = (len(ids) - 1) // window_len
    if n < 1:
        raise DataError(f"need at least {window_len + 1} tokens to evaluate, got {len(ids)}")
    ids = np.asarray(ids[: n * window_len + 1], dtype=np.int64)
    x = ids[:-1].reshape(n, window_len)
    y = ids[1:].reshape(n, window_len)
    return x, y


class _Tally:
    """Sums of bits, argmax tokens and spikes per population over windows."""

    def __init__(self) -> None:
        self.bits = 0.0
        self.tokens = 0
        self.argmax: list[np.ndarray] = []
        self.spikes: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, logits: np.ndarray, targets: np.ndarray, spikes: dict[str, np.ndarray]) -> None:
        self.bits += float(surprisal_bits(logits, targets).sum())
        self.tokens += targets.size
        self.argmax.append(logits.argmax(-1))
        for name, s in spikes.items():
            self.spikes[name] = self.spikes.get(name, 0.0) + float(np.sum(s))
            self.counts[name] = self.counts.get(name, 0) + int(np.size(s))

    @property
    def bits_per_token(self) -> float:
        return self.bits / self.tokens

    def rates(self) -> dict[str, float]:
        return {k: self.spikes[k] / self.counts[k] for k in self.spikes}


def run_ir_windows(executor: Executor, x: np.ndarray, targets: np.ndarray, tally: _Tally) -> None:
    """Run the IR over windows x (B, T) from the zero state, adding each position to ``tally``."""
    ir = executor.ir
    populations = [(n, ir.node(n)["module"]) for n in executor.order
                   if ir.node(n)["op"] in ("LIF", "Heaviside")]
    state = executor.init_state(x.shape[0])
    logits = []
    spikes: dict[str, float] = {m: 0.0 for _, m in populations}
    for t in range(x.shape[1]):
        res = executor.step(x[:, t], state, keep_values=True)
        state = res.state
        logits.append(res.outputs["logits"])
        for n, module in populations:
            spikes[module] += float(np.sum(res.values[(n, 0)]))
    width = {m: 0 for _, m in populations}
    for n, module in populations:
        width[module] = int(np.size(res.values[(n, 0)]))
    stacked = np.stack(logits, 1)
    tally.bits += float(surprisal_bits(stacked, targets).sum())
    tally.tokens += targets.size
    tally.argmax.append(stacked.argmax(-1))
    for _, module in populations:
        tally.spikes[module] = tally.spikes.get(module, 0.0) + spikes[module]
        tally.counts[module] = tally.counts.get(module, 0) + width[module] * x.shape[1]


@torch.no_grad()
def run_model_windows(model: SpikeGPT, x: np.ndarray, targets: np.ndarray, tally: _Tally) -> None:
    """The source model in parallel mode on the same windows."""
    with model.record_spikes() as rec:
        logits = model(torch.from_numpy(x)).numpy()
    tally.add(logits, targets, {k: v.numpy() for k, v in rec.spikes().items()})


def evaluate_ir(ir: IR, precision: str, x: np.ndarray, y: np.ndarray, batch_size: int = 256
                ) -> tuple[_Tally, float]:
    """The bundle's computation over windows x, y (n, T); returns the tally and its seconds."""
    if precision not in PRECISIONS:
        raise DataError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    executor = emulator(ir) if precision == "fixed" else Executor(ir)
    tally = _Tally()
    start = time.perf_counter()
    for lo in range(0, x.shape[0], batch_size):
        run_ir_windows(executor, x[lo:lo + batch_size], y[lo:lo + batch_size], tally)
        log.info("evaluate bundle: %d / %d windows", min(lo + batch_size, x.shape[0]), x.shape[0])
    return tally, time.perf_counter() - start


def compare_source(model: SpikeGPT, name: str, x: np.ndarray, y: np.ndarray, deployed: _Tally,
                   batch_size: int = 64) -> SourceComparison:
    """Run the source model on the deployed run's windows and compare the two."""
    was_training = model.training
    model.eval()
    tally = _Tally()
    try:
        for lo in range(0, x.shape[0], batch_size):
            run_model_windows(model, x[lo:lo + batch_size], y[lo:lo + batch_size], tally)
    finally:
        model.train(was_training)
    agree = np.concatenate([a.reshape(-1) for a in deployed.argmax]) == \
        np.concatenate([a.reshape(-1) for a in tally.argmax])
    src_rates, dep_rates = tally.rates(), deployed.rates()
    return SourceComparison(
        model=name, bits_per_token=tally.bits_per_token,
        quantization_cost_bits_per_token=deployed.bits_per_token - tally.bits_per_token,
        greedy_agreement=float(agree.mean()), firing_rates=src_rates,
        firing_rate_change={k: dep_rates[k] - src_rates[k] for k in dep_rates if k in src_rates})
