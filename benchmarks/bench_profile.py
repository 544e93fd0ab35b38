"""Tokens per second of ``spikegpt-deploy profile`` vs plain RNN inference, in the same run.

    python benchmarks/bench_profile.py [MODEL] [--data kjv|PATH] [--tokens N] [--target loihi2]

MODEL defaults to the shipped model; when there is none, a seeded random 4 x 128 char model with
the corpus's vocabulary is used (its firing rates are not a trained model's, its cost is).
Prints the plain inference rate, the profiler's rate (whole pipeline: capture, fold, partition,
spike recording, counting, pricing) with its parts, and their ratio, in wall time and in this
process's CPU time (on a machine shared with other jobs the CPU-time ratio is the steadier one). With ``--lava N`` it also
converts the model and times the Lava-based count (``profile BUNDLE``: spikes recorded in the
simulator, fixed point) on the first N tokens against the PyTorch-based count on the same tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spikegpt_deploy import api  # noqa: E402
from spikegpt_deploy.data import CharTokenizer, encode_split, load_corpus  # noqa: E402
from spikegpt_deploy.errors import DeployError  # noqa: E402
from common import random_firing_model, rnn_step_seconds  # noqa: E402
from spikegpt_deploy.model import SpikeGPT  # noqa: E402
from spikegpt_deploy.profiling import count_ops, profile_model, record_spikes_pytorch  # noqa
from spikegpt_deploy.profiling.pricing import price_target  # noqa: E402


def _model_and_ids(model_path: str | None, data: str, n: int) -> tuple[SpikeGPT, np.ndarray, str]:
    corpus = load_corpus(data)
    try:
        loaded = api.open_model(model_path)
        ids = encode_split(api.require_tokenizer(loaded), corpus, "valid")
        return loaded.model, ids[:n], str(loaded.path)
    except DeployError as exc:
        if model_path is not None:
            raise
        tok = CharTokenizer.from_text(corpus.train + corpus.valid + corpus.test)
        model = random_firing_model(tok.vocab_size)
        ids = encode_split(tok, corpus, "valid")
        return model, ids[:n], f"random 4x128 (no default model: {exc})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--data", default="kjv")
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--target", default="loihi2")
    parser.add_argument("--lava", type=int, default=0, metavar="N",
                        help="also time the Lava-based count on N tokens (needs a model file)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, ids, name = _model_and_ids(args.model, args.data, args.tokens)
    n = len(ids)
    print(f"model {name}: {model.config.n_layer} x {model.config.n_embd}, {n} tokens, "
          f"target {args.target}")
    rnn_step_seconds(model, ids[: min(n, 20)])                     # warm-ups (imports, allocators)
    profile_model(model, ids[: min(n, 20)], args.target)
    cpu0 = time.process_time()
    plain = rnn_step_seconds(model, ids)
    cpu1 = time.process_time()
    start = time.perf_counter()
    result = profile_model(model, ids, args.target)
    whole = time.perf_counter() - start
    cpu2 = time.process_time()
    # the parts, on the IR the profile used
    from converters.torch_capture import capture_ir
    from hw_profiles import load_profile
    from spikegpt_deploy.partition import partition
    from spikegpt_deploy.passes.fold import fold_layernorm

    t0 = time.perf_counter()
    ir = partition(fold_layernorm(capture_ir(model)), load_profile(args.target), "spikes")
    t1 = time.perf_counter()
    spikes = record_spikes_pytorch(model, ids)
    t2 = time.perf_counter()
    counts = count_ops(ir, spikes)
    t3 = time.perf_counter()
    price_target(counts, load_profile(args.target))
    t4 = time.perf_counter()
    print(f"plain RNN inference : {n / plain:10.1f} tokens/s")
    print(f"profile (all steps) : {n / whole:10.1f} tokens/s")
    print(f"  capture+fold+partition {t1 - t0:.3f} s, record spikes {t2 - t1:.3f} s "
          f"({n / (t2 - t1):.1f} tokens/s), count {t3 - t2:.3f} s "
          f"({n / (t3 - t2):.1f} tokens/s), price {t4 - t3:.3f} s")
    print(f"ratio profile / plain inference (tokens/s): {plain / whole:.3f}")
    print(f"CPU time: plain {cpu1 - cpu0:.3f} s, profile {cpu2 - cpu1:.3f} s, "
          f"ratio {(cpu1 - cpu0) / (cpu2 - cpu1):.3f}")
    total = result.prices[args.target]["per_token"]["priced_subtotal"]
    print(f"(per-token energy on {args.target}: {total / 1e3:.1f} nJ)")
    if args.lava:
        _lava_vs_pytorch(args, args.lava)


def _lava_vs_pytorch(args: argparse.Namespace, n: int) -> None:
    import tempfile

    from spikegpt_deploy.profiling import profile_bundle, profile_checkpoint

    model_path = args.model or str(api.default_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        bundle, _ = api.convert(model_path, Path(tmp) / "bundle", target=args.target)
        t0 = time.perf_counter()
        torch_result = profile_checkpoint(model_path, args.data, n, (args.target,))
        t1 = time.perf_counter()
        lava_result = profile_bundle(bundle, args.data, n, "fixed")
        t2 = time.perf_counter()
    print(f"PyTorch-based count : {n / (t1 - t0):10.1f} tokens/s ({n} tokens)")
    print(f"Lava-based count    : {n / (t2 - t1):10.1f} tokens/s (fixed point, "
          f"{lava_result.meta['simulation']['timesteps_per_token']} timesteps per token)")
    print(f"ratio Lava / PyTorch (tokens/s): {(t1 - t0) / (t2 - t1):.4f}")
    same = torch_result.counts[args.target].populations == \
        lava_result.counts[args.target].populations
    print(f"spike counts identical (fixed point vs float PyTorch): {same}")


if __name__ == "__main__":
    main()
