"""The conversion pipeline: one explicit, ordered list of steps (nothing registers itself).

model file -> load -> capture (torch.fx) -> fold_layernorm -> partition -> quantize ->
map_resources -> check_equivalence. Each step reads and extends a ``ConvertContext``; a failing
step raises a ConversionError that says which steps ran before it. ``bundle.write_bundle`` then
emits the deployment bundle.
"""

from __future__ import annotations

import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from hw_profiles import HardwareProfile, load_profile

from .bits import bits_per_token
from .checkpoint import LoadedModel, file_sha256, load_checkpoint
from .data import Tokenizer, encode_split, load_corpus
from .errors import ConversionError, DeployError
from .inputs import check_count
from .interpreter import Executor, SequenceResult
from .ir import IR
from .partition import POLICIES, partition
from .passes.fold import fold_layernorm
from .passes.quantize import (emulator, needs_grams, quantize, spike_linear_inputs,
                              stats_of_run)
from .resources import map_resources
from .threads import one_blas_thread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertOptions:
    target: str = "loihi2"              # a built-in profile name or a profile TOML path
    policy: str = "spikes"
    weight_bits: int = 8
    graded_bits: int = 8
    scales: str = "channel"             # SpikeLinear scales: 'channel' | 'layer'
    rounding: str = "auto"              # SpikeLinear rounding: 'auto' | 'gptq' | 'nearest'
    quality_budget: float | None = None  # bits/token of quantization cost: bits per chip linear
    calibration: str | None = None      # 'kjv' | text path | None: seeded random tokens
    calibration_tokens: int = 128     # = check_tokens: one float run serves both
    check_tokens: int = 128
    seed: int = 0
    tokenizer: str | None = None        # tokenizers JSON for a bare .pth
    overrides: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.policy not in POLICIES:
            raise ConversionError(f"--policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        for name in ("calibration_tokens", "check_tokens"):
            check_count(getattr(self, name), f"--{name.replace('_', '-')}", 1)
        for name in ("weight_bits", "graded_bits"):
            check_count(getattr(self, name), f"--{name.replace('_', '-')}", 1, 64)
        check_count(self.seed, "seed", 0, 2**63 - 1)
        if self.quality_budget is not None:
            if not self.quality_budget > 0:
                raise ConversionError(f"--quality-budget {self.quality_budget}: expected a "
                                      "positive number of bits per token")
            if self.calibration is None:
                raise ConversionError("--quality-budget measures the quantization cost on real "
                                      "text: pass --calibration kjv or a text file")
            if self.scales != "channel":
                raise ConversionError("--quality-budget needs per-channel scales")


@dataclass
class ConvertContext:
    source: Path
    options: ConvertOptions
    loaded: LoadedModel | None = None
    profile: HardwareProfile | None = None
    ir: IR | None = None
    irs: dict[str, IR] = field(default_factory=dict)   # the IR after each step, for the tests
    resources: dict[str, Any] | None = None
    equivalence: dict[str, Any] | None = None
    calibration_ids: np.ndarray | None = None
    float_run: SequenceResult | None = None   # the float IR on the calibration tokens
    bit_plan: Any = None                  # passes.bit_budget.BitPlan with --quality-budget
    steps_done: list[str] = field(default_factory=list)
    step_seconds: dict[str, float] = field(default_factory=dict)  # wall time of each step run

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.loaded.tokenizer if self.loaded else None


def step_load(ctx: ConvertContext) -> None:
    opts = ctx.options
    ctx.profile = load_profile(opts.target)
    if ctx.profile.role != "chip":
        raise ConversionError(f"--target {opts.target}: '{ctx.profile.name}' is a "
                              f"{ctx.profile.role} profile; targets are chip profiles")
    from .data import BPETokenizer
    tok = BPETokenizer.from_file(opts.tokenizer) if opts.tokenizer else None
    if ctx.source.suffix == ".onnx":
        from converters.onnx_import import model_from_onnx
        if opts.overrides:
            raise ConversionError("config overrides do not apply to an .onnx step export (its "
                                  "config is fixed at export time)")
        model = model_from_onnx(ctx.source)
        ctx.loaded = LoadedModel(model, tok, ctx.source, file_sha256(ctx.source), "onnx-step")
    else:
        ctx.loaded = load_checkpoint(ctx.source, tokenizer=tok, **opts.overrides)


def step_capture(ctx: ConvertContext) -> None:
    from converters.torch_capture import capture_ir
    assert ctx.loaded is not None
    ctx.ir = capture_ir(ctx.loaded.model)


def step_fold(ctx: ConvertContext) -> None:
    ctx.ir = fold_layernorm(_ir(ctx))


def step_partition(ctx: ConvertContext) -> None:
    assert ctx.profile is not None
    ctx.ir = partition(_ir(ctx), ctx.profile, ctx.options.policy, ctx.options.graded_bits)


def _calibration_text_ids(ctx: ConvertContext) -> np.ndarray:
    """calibration_tokens + 1 token ids (the last one is only a target): seeded random tokens,
    or the start of the training split of --calibration (never the held-out splits, on which
    the bundle is evaluated)."""
    opts = ctx.options
    vocab = int(_ir(ctx).config["vocab_size"])
    if opts.calibration is None:
        rng = np.random.default_rng(opts.seed)
        return rng.integers(0, vocab, size=opts.calibration_tokens + 1)
    if ctx.tokenizer is None:
        raise ConversionError("--calibration needs a tokenizer; the model file has none "
                              "(pass --tokenizer)")
    ids = encode_split(ctx.tokenizer, load_corpus(opts.calibration), "train")
    return ids[: opts.calibration_tokens + 1]


def _calibration_windows(ctx: ConvertContext, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The calibration tokens as the model's training windows (B, ctx_len) and their next tokens,
    when there are at least two windows; else one sequence (1, T)."""
    window = int(_ir(ctx).config.get("ctx_len", 0)) or len(ids) - 1
    n = (len(ids) - 1) // window
    if n < 2:
        return ids[None, :-1], ids[None, 1:]
    return ids[: n * window].reshape(n, window), ids[1: n * window + 1].reshape(n, window)


def step_quantize(ctx: ConvertContext) -> None:
    opts = ctx.options
    ids = _calibration_text_ids(ctx)
    ctx.calibration_ids = ids[None, :-1]
    x, y = _calibration_windows(ctx, ids)
    same = x.shape == ctx.calibration_ids.shape  # one sequence: the run below calibrates
    grams = opts.quality_budget is not None and opts.rounding != "nearest" or \
        needs_grams(opts.rounding, opts.weight_bits, scales=opts.scales)
    gram_of = spike_linear_inputs(_ir(ctx)) if same and grams else ()
    # One float run gives the calibration's peaks and grams and, for the check, the float IR's
    # logits and spikes: quantize only annotates chip nodes, so the float program it leaves is
    # this one.
    ctx.float_run = Executor(_ir(ctx)).run_sequence(ctx.calibration_ids, peaks=True,
                                                    keep=gram_of)
    stats = stats_of_run(ctx.float_run, gram_of) if same else None
    ctx.float_run.values.clear()
    if opts.quality_budget is not None:
        from .passes.bit_budget import plan_bits
        from .resources import Capacity
        assert ctx.profile is not None
        ctx.ir, ctx.bit_plan = plan_bits(_ir(ctx), x, y, opts.quality_budget,
                                         Capacity.of(ctx.profile), opts.rounding)
    else:
        ctx.ir = quantize(_ir(ctx), x, opts.weight_bits, scales=opts.scales,
                          rounding=opts.rounding, stats=stats)


def step_resources(ctx: ConvertContext) -> None:
    assert ctx.profile is not None
    ctx.resources = map_resources(_ir(ctx), ctx.profile, ctx.options.weight_bits)


@torch.no_grad()
def step_check(ctx: ConvertContext) -> None:
    """Run the final IR (float and quantized emulation) against the PyTorch model on the first
    ``check_tokens`` calibration tokens, from the zero state.

    The reference is PyTorch's parallel mode (equal to its RNN step to 1e-5 with identical
    spikes, tests/test_model.py), which reads each weight once for all tokens; the IR runs each op
    once over all tokens where no state slot forbids it (``Executor.run_sequence``)."""
    assert ctx.loaded is not None and ctx.calibration_ids is not None
    model, ir = ctx.loaded.model, _ir(ctx)
    n = min(ctx.options.check_tokens, ctx.calibration_ids.shape[1])
    tokens = ctx.calibration_ids[:, :n]

    @torch.no_grad()  # no_grad is per thread
    def reference() -> tuple[np.ndarray, dict[str, np.ndarray]]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # beside the emulation and the writer, as numpy's BLAS below
        try:
            with model.record_spikes() as rec:
                logits = model(torch.from_numpy(np.ascontiguousarray(tokens))).numpy()
        finally:
            torch.set_num_threads(threads)
        return logits, {k: v.numpy() for k, v in rec.spikes().items()}

    # PyTorch's run and the emulation share nothing: the reference runs on a second thread,
    # and numpy's BLAS on one (the bundle's files are usually being written meanwhile, and
    # BLAS threads waiting for work only take the cores from the others)
    with one_blas_thread(), \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="spikegpt-deploy-ref") as pool:
        ref_future = pool.submit(reference)
        if ctx.float_run is not None and ctx.float_run.logits.shape[1] >= n:
            f_logits = ctx.float_run.logits[:, :n]
            f_spikes = {k: v[:, :n] for k, v in ctx.float_run.spikes.items()}
        else:
            f_logits, f_spikes = Executor(ir).run(tokens)
        q = emulator(ir, keep_weights=False).run_sequence(tokens)
        q_logits, q_spikes = q.logits, q.spikes
        ref_logits, ref_spikes = ref_future.result()
    ctx.equivalence = {
        "tokens": n,
        "float_ir_vs_pytorch_max_abs_logit_diff": float(np.max(np.abs(f_logits - ref_logits))),
        "float_ir_spikes_identical": all(np.array_equal(f_spikes[k], ref_spikes[k])
                                         for k in ref_spikes),
        "quantized_greedy_token_agreement": float(np.mean(q_logits.argmax(-1)
                                                          == ref_logits.argmax(-1))),
        "quantized_spike_agreement": {k: float(np.mean(q_spikes[k] == ref_spikes[k]))
                                      for k in ref_spikes},
        "quantized_max_abs_logit_diff": float(np.max(np.abs(q_logits - ref_logits))),
        # next-token cross-entropy on the check tokens (meaningful when they are real text)
        "float_bits_per_token": _bits_per_token(ref_logits, tokens),
        "quantized_bits_per_token": _bits_per_token(q_logits, tokens),
        "check_tokens_source": ctx.options.calibration or "random tokens",
    }


def _bits_per_token(logits: np.ndarray, tokens: np.ndarray) -> float | None:
    """Mean -log2 p(next token) over a (1, T) sequence, from logits (1, T, V)."""
    if tokens.shape[1] < 2:
        return None
    return bits_per_token(logits[0, :-1], tokens[0, 1:])


def _ir(ctx: ConvertContext) -> IR:
    if ctx.ir is None:
        raise ConversionError("internal: no IR yet (capture has not run)")
    return ctx.ir


STEPS: list[tuple[str, Callable[[ConvertContext], None]]] = [
    ("load", step_load),
    ("capture", step_capture),
    ("fold_layernorm", step_fold),
    ("partition", step_partition),
    ("quantize", step_quantize),
    ("map_resources", step_resources),
    ("check_equivalence", step_check),
]


# steps that only read the IR the steps before them made: a bundle's IR files can be written
# while they run (bundle.convert_to_bundle)
READ_ONLY_STEPS = ("check_equivalence",)


def run_pipeline(source: str | Path, options: ConvertOptions, stop_after: str | None = None,
                 before_step: Callable[[str, ConvertContext], None] | None = None
                 ) -> ConvertContext:
    """Run the steps in order (up to ``stop_after``); see the module docstring.
    ``before_step(name, ctx)`` is called before each step."""
    options.validate()
    if stop_after is not None and stop_after not in dict(STEPS):
        raise ConversionError(f"stop_after={stop_after!r}: not a convert step; choose one of "
                              f"{', '.join(name for name, _ in STEPS)}")
    ctx = ConvertContext(Path(source), options)
    # The run makes many short-lived objects (IR copies, per-token values), and each collection
    # they trigger would walk every object made before it (the imported libraries, the loaded
    # model) again: frozen, those are left out (0.7 s of a 216M-shape convert's 10 s, measured
    # with collection switched off)
    ours = gc.get_freeze_count() == 0  # a caller's own frozen objects stay frozen
    if ours:
        gc.freeze()
    try:
        _run_steps(ctx, stop_after, before_step, refreeze=ours)
    finally:
        if ours:
            gc.unfreeze()
    return ctx


def _run_steps(ctx: ConvertContext, stop_after: str | None,
               before_step: Callable[[str, ConvertContext], None] | None,
               refreeze: bool) -> None:
    for name, step in STEPS:
        log.info("convert: %s", name)
        if before_step is not None:
            before_step(name, ctx)
        start = time.perf_counter()
        try:
            step(ctx)
        except DeployError as exc:
            ran = ", ".join(ctx.steps_done) or "none"
            raise type(exc)(f"convert step '{name}' failed (steps run before it: {ran}): {exc}"
                            ) from None
        ctx.step_seconds[name] = time.perf_counter() - start
        ctx.steps_done.append(name)
        if ctx.ir is not None:
            ctx.irs[name] = ctx.ir
        if name == "load" and refreeze:
            gc.freeze()  # the loaded model too
        if name == stop_after:
            break
