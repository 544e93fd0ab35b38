"""Character-level training of SpikeGPT on CPU (parallel mode, surrogate gradients).

The recipe follows the reference (spec 4): Adam with betas (0.9, 0.99), cosine learning-rate
decay, gradient clipping at 1.0, random windows of ctx_len + 1 tokens, each starting from the
zero state. Training is deterministic for a given seed on a given machine, and resumable from the
``<out>.ckpt`` file written every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .checkpoint import _atomic_torch_save, _torch_load, save_model
from .data import CharTokenizer, encode_split, load_corpus
from .errors import CheckpointError, DataError
from .evaluation import evaluate_ids
from .inputs import check_count, check_real
from .model import SpikeGPT, SpikeGPTConfig

log = logging.getLogger(__name__)
RESUME_FORMAT = "spikegpt-deploy-train-state"


@dataclass(frozen=True)
class TrainOptions:
    data: str = "kjv"
    out: str = "model.pt"
    layers: int = 4
    width: int = 128
    ctx_len: int = 128
    batch_size: int = 16
    steps: int = 2000
    lr: float = 2e-3
    lr_final: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 42
    eval_every: int = 250
    eval_tokens: int = 32768
    checkpoint_every: int = 250
    threads: int = 0  # 0 = torch's default

    def validate(self) -> None:
        for name in ("layers", "width", "ctx_len", "batch_size", "steps", "eval_every",
                     "eval_tokens", "checkpoint_every"):
            check_count(getattr(self, name), f"--{name.replace('_', '-')}", 1, 2**62)
        for name in ("lr", "lr_final", "grad_clip"):
            check_real(getattr(self, name), f"--{name.replace('_', '-')}", 0.0, above=True)
        check_count(self.warmup_steps, "--warmup-steps", 0, 2**62)
        check_count(self.seed, "--seed", 0, 2**63 - 1)
        check_count(self.threads, "--threads", 0, 4096)


@dataclass
class TrainProgress:
    step: int
    loss: float
    tokens_per_s: float
    lr: float
    valid_bpc: float | None = None


def learning_rate(opts: TrainOptions, step: int) -> float:
    """Linear warm-up, then cosine decay from lr to lr_final over the remaining steps."""
    if step < opts.warmup_steps:
        return opts.lr * (step + 1) / opts.warmup_steps
    frac = (step - opts.warmup_steps) / max(1, opts.steps - opts.warmup_steps)
    return opts.lr_final + 0.5 * (opts.lr - opts.lr_final) * (1 + math.cos(math.pi * min(frac, 1.0)))


def _resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def train(opts: TrainOptions, on_progress: Callable[[TrainProgress], None] | None = None,
          resume: bool = False) -> dict[str, Any]:
    """Train a char-level SpikeGPT and write ``opts.out``; returns the final metadata."""
    opts.validate()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    # exp() of very negative WKV exponents yields subnormal floats, which are slow on x86;
    # flushing them to zero changes nothing measurable in training and avoids the stalls.
    # The setting is process-wide, so it is switched off again when training ends.
    torch.set_flush_denormal(True)
    try:
        return _train(opts, on_progress, resume)
    finally:
        torch.set_flush_denormal(False)


def _train(opts: TrainOptions, on_progress: Callable[[TrainProgress], None] | None,
           resume: bool) -> dict[str, Any]:
    corpus = load_corpus(opts.data)
    tokenizer = CharTokenizer.from_text(corpus.train + corpus.valid + corpus.test)
    train_ids = torch.from_numpy(encode_split(tokenizer, corpus, "train"))
    valid_ids = encode_split(tokenizer, corpus, "valid")
    if len(train_ids) <= opts.ctx_len + 1:
        raise DataError(f"{opts.data}: training text has {len(train_ids)} characters, fewer than "
                        f"--ctx-len + 2 = {opts.ctx_len + 2}")
    if len(valid_ids) <= opts.ctx_len:  # checked now, not after the whole run at the first eval
        raise DataError(f"{opts.data}: validation text has {len(valid_ids)} characters, fewer "
                        f"than --ctx-len + 1 = {opts.ctx_len + 1}; use a longer text or a "
                        f"smaller --ctx-len")
    torch.manual_seed(opts.seed)
    config = SpikeGPTConfig(vocab_size=tokenizer.vocab_size, n_layer=opts.layers,
                            n_embd=opts.width, ctx_len=opts.ctx_len)
    model = SpikeGPT(config)
    optim = torch.optim.Adam(model.parameters(), lr=opts.lr, betas=(0.9, 0.99), eps=1e-8)
    gen = torch.Generator().manual_seed(opts.seed)
    out = Path(opts.out)
    start_step, history, elapsed = 0, [], 0.0
    if resume:
        start_step, history, elapsed = _load_resume(out, opts, model, optim, gen)
    model.train()
    n_windows = len(train_ids) - opts.ctx_len - 1
    offsets = torch.arange(opts.ctx_len + 1)
    t_last, tokens_since, valid_bpc = time.perf_counter(), 0, None
    for step in range(start_step, opts.steps):
        lr = learning_rate(opts, step)
        for group in optim.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, n_windows, (opts.batch_size,), generator=gen)
        window = train_ids[starts[:, None] + offsets]               # (B, T+1)
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        optim.step()
        tokens_since += window[:, 1:].numel()
        now = time.perf_counter()
        elapsed += now - t_last
        tps = tokens_since / max(now - t_last, 1e-9)
        t_last, tokens_since = now, 0
        done = step + 1
        valid_bpc = None
        if done % opts.eval_every == 0 or done == opts.steps:
            valid_bpc = evaluate_ids(model, valid_ids, opts.ctx_len,
                                     max_tokens=opts.eval_tokens).bits_per_token
            history.append({"step": done, "train_loss": loss.item(), "valid_bpc": valid_bpc})
            log.info("step %d: valid bpc %.4f", done, valid_bpc)
            t_last = time.perf_counter()  # evaluation time is not training throughput
        if on_progress is not None:
            on_progress(TrainProgress(done, loss.item(), tps, lr, valid_bpc))
        if done % opts.checkpoint_every == 0 and done < opts.steps:
            _save_resume(out, opts, model, optim, gen, done, history, elapsed)
    meta = {"train_options": asdict(opts), "corpus": corpus.name, "corpus_sha256": corpus.sha256,
            "steps": opts.steps, "train_seconds": round(elapsed, 1), "history": history,
            "valid_bpc": history[-1]["valid_bpc"] if history else None,
            "valid_tokens": min(opts.eval_tokens, len(valid_ids) - 1)}
    save_model(model, out, tokenizer, meta)
    _resume_path(out).unlink(missing_ok=True)
    return meta


def _save_resume(out: Path, opts: TrainOptions, model: SpikeGPT, optim: torch.optim.Optimizer,
                 gen: torch.Generator, step: int, history: list, elapsed: float) -> None:
    _atomic_torch_save({"format": RESUME_FORMAT, "options": asdict(opts), "step": step,
                        "model": model.state_dict(), "optim": optim.state_dict(),
                        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                        "history": history, "elapsed": elapsed}, _resume_path(out))


def _load_resume(out: Path, opts: TrainOptions, model: SpikeGPT, optim: torch.optim.Optimizer,
                 gen: torch.Generator) -> tuple[int, list, float]:
    path = _resume_path(out)
    if not path.is_file():
        raise CheckpointError(f"--resume: no training state at {path}; start without --resume")
    state = _torch_load(path)
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise CheckpointError(f"{path}: not a spikegpt-deploy training state")
    saved = dict(state["options"])
    for key in ("data", "layers", "width", "ctx_len", "batch_size", "seed", "lr", "lr_final",
                "warmup_steps", "steps"):
        if saved.get(key) != getattr(opts, key):
            raise CheckpointError(f"{path}: resumed run must use the same --{key.replace('_', '-')} "
                                  f"({saved.get(key)!r}), got {getattr(opts, key)!r}")
    model.load_state_dict(state["model"])
    optim.load_state_dict(state["optim"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), list(state["history"]), float(state["elapsed"])
