"""Throughput of SpikeGPT against its non-spiking RWKV-4 twin, measured in the same run.

    python benchmarks/bench_model.py [--model PATH] [--quick] [--threads N]

Two numbers, each for the model and for the same weights with ``spiking=False`` (every LIF
replaced by the identity: the plain RWKV-4 baseline), and their ratio:

- parallel-mode training throughput: forward + backward on random windows of ctx_len tokens
  (tokens/s), the work of ``spikegpt-deploy train``;
- RNN-mode generation throughput: one ``step`` per token, batch 1 (tokens/s), the work of
  ``spikegpt-deploy generate``.

Then a breakdown of one spiking training step (the LIF scans = spiking minus baseline step, the
WKV scans measured alone, the rest) explains the ratio. The model is the shipped default (``api.default_model_path()``) if it exists, else a
freshly initialised 4 x 128 char model with the KJV's 73-symbol vocabulary; the script says which.
Runs alternate spiking / non-spiking and report the best of several repeats, which keeps the
ratio meaningful on a shared, busy machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spikegpt_deploy import api  # noqa: E402
from spikegpt_deploy.checkpoint import load_checkpoint  # noqa: E402
from spikegpt_deploy.errors import DeployError  # noqa: E402
from spikegpt_deploy.model import SpikeGPT, SpikeGPTConfig  # noqa: E402
from spikegpt_deploy.model.layers import wkv_scan  # noqa: E402

KJV_VOCAB = 73  # distinct characters of `bible -l0 Gen1:1-Rev22:21` (docs/data.md)


def pick_model(path: str | None) -> tuple[SpikeGPT, str]:
    if path is not None:
        return load_checkpoint(path).model, f"{path}"
    try:
        default = api.default_model_path()
        return load_checkpoint(default).model, f"shipped default model {default}"
    except DeployError as exc:
        torch.manual_seed(0)
        cfg = SpikeGPTConfig(vocab_size=KJV_VOCAB, n_layer=4, n_embd=128, ctx_len=128)
        return SpikeGPT(cfg), f"freshly initialised 4x128 model (no default model: {exc})"


def twin(model: SpikeGPT, **overrides: object) -> SpikeGPT:
    other = SpikeGPT(model.config.replace(**overrides))
    other.load_state_dict(model.state_dict())
    return other


def best_time(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def train_step_fn(model: SpikeGPT, batch: int, T: int, seed: int) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size

    def run() -> None:
        window = torch.randint(0, V, (batch, T + 1), generator=gen)
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), window[:, 1:].reshape(-1))
        model.zero_grad(set_to_none=True)
        loss.backward()
    return run


def generate_fn(model: SpikeGPT, n_tokens: int) -> Callable[[], None]:
    V = model.config.vocab_size

    @torch.no_grad()
    def run() -> None:
        state = model.init_state(1)
        tok = torch.tensor([1])
        for _ in range(n_tokens):
            logits, state = model.step(tok, state)
            tok = logits.argmax(-1) % V
    return run


def measure_pair(make: Callable[[SpikeGPT], Callable[[], None]], spiking: SpikeGPT,
                 plain: SpikeGPT, work: int, rounds: int, repeats: int) -> tuple[float, float]:
    """Alternate the two models ``rounds`` times; tokens/s of each, best time per round, median."""
    fs, fp = make(spiking), make(plain)
    fs(), fp()  # warm-up (allocator, lazy init)
    ts, tp = [], []
    for _ in range(rounds):
        ts.append(best_time(fs, repeats))
        tp.append(best_time(fp, repeats))
    return work / statistics.median(ts), work / statistics.median(tp)


def wkv_seconds(model: SpikeGPT, batch: int, T: int, repeats: int) -> float:
    """Seconds per training step in the WKV scans (forward + backward), measured alone."""
    C = model.config.n_embd
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(batch, T, C, generator=gen).requires_grad_()
    v = torch.randn(batch, T, C, generator=gen).requires_grad_()
    w, u = -torch.rand(C, generator=gen).exp(), torch.randn(C, generator=gen)

    def wkv() -> None:
        wkv_scan(w, u, k, v).sum().backward()

    n_wkv = sum(1 for b in model.blocks if hasattr(b, "att"))
    return n_wkv * best_time(wkv, repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file (default: the shipped model, else a fresh "
                                        "4x128 model)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (~10 s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: stable on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as training does: subnormal exp() results stall x86

    model, which = pick_model(args.model)
    cfg = model.config
    spiking = twin(model, spiking=True).train()
    plain = twin(model, spiking=False).train()
    batch, T = (4, min(cfg.ctx_len, 64)) if args.quick else (16, cfg.ctx_len)
    gen_tokens = 128 if args.quick else 256
    rounds, repeats = (3, 1) if args.quick else (3, 2)

    print(f"model: {which}")
    print(f"config: {cfg.n_layer} layers x {cfg.n_embd} wide, vocab {cfg.vocab_size}, "
          f"{model.num_parameters():,} parameters, binary_embedding={cfg.binary_embedding}")
    print(f"torch {torch.__version__}, {args.threads} thread(s); best of {repeats} per round, "
          f"median of {rounds} alternating rounds\n")

    tr_s, tr_p = measure_pair(lambda m: train_step_fn(m, batch, T, 0), spiking, plain,
                              batch * T, rounds, repeats)
    print(f"parallel-mode training (forward+backward, batch {batch} x {T} tokens):")
    print(f"  spiking SpikeGPT     {tr_s:10.0f} tokens/s")
    print(f"  RWKV-4 (spiking=off) {tr_p:10.0f} tokens/s")
    print(f"  ratio spiking / baseline: {tr_s / tr_p:.2f}x\n")

    spiking.eval(), plain.eval()
    ge_s, ge_p = measure_pair(lambda m: generate_fn(m, gen_tokens), spiking, plain,
                              gen_tokens, rounds, repeats)
    print(f"RNN-mode generation (batch 1, {gen_tokens} tokens):")
    print(f"  spiking SpikeGPT     {ge_s:10.0f} tokens/s")
    print(f"  RWKV-4 (spiking=off) {ge_p:10.0f} tokens/s")
    print(f"  ratio spiking / baseline: {ge_s / ge_p:.2f}x\n")

    step_s, step_p = batch * T / tr_s, batch * T / tr_p
    wkv = min(wkv_seconds(model, batch, T, repeats), step_p)
    lif = max(step_s - step_p, 0.0)
    print(f"where a spiking training step goes ({step_s * 1e3:.0f} ms):")
    rows = [(f"LIF scans, {2 * cfg.n_layer} populations (spiking - baseline step)", lif),
            ("WKV scans (measured alone)", wkv),
            ("the rest: matmuls, LayerNorm, head, loss", step_p - wkv)]
    for label, seconds in rows:
        print(f"  {label:<52} {seconds * 1e3:7.0f} ms {100 * seconds / step_s:4.0f}%")
    print("\nWhat dominates: the LIF membrane runs over the token axis, so training scans it")
    print("token by token (a Python loop of small elementwise kernels, forward and backward)")
    print("for every population, like the WKV scan the baseline has too; at this width the")
    print("matmuls are cheap, so these sequential scans, not arithmetic, set the training cost.")
    print("In RNN mode each token already runs sequentially; the LIF adds two small elementwise")
    print("updates per layer to a step dominated by per-op dispatch overhead, hence a ratio")
    print("closer to 1.")


if __name__ == "__main__":
    main()
