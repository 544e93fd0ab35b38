"""Tokens per second of ``spikegpt-deploy simulate`` (Lava, both precisions) vs the PyTorch step.

    python benchmarks/bench_simulate.py [MODEL] [--tokens N] [--policy spikes|graded]

MODEL defaults to the shipped model (examples/spikegpt-kjv-4x128.pt); when there is none, a
seeded random 4 x 128 char model (LIF-feeding weights x8 so that LIFs fire). The model is
converted to a bundle in a temporary folder, then, in this one run: the Lava simulation
generates greedily from a 16-character prompt until N tokens have been fed (float, then fixed),
and the PyTorch RNN step runs on the same N tokens. Prints tokens/s, the ratio, and where the
simulator's time goes: compile and start, processes by kind, timesteps per token, ms per
timestep and per process-timestep, and the host stages' own compute time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spikegpt_deploy import api, simulation  # noqa: E402
from spikegpt_deploy.checkpoint import load_checkpoint, save_model  # noqa: E402
from spikegpt_deploy.data import CharTokenizer, load_corpus  # noqa: E402
from spikegpt_deploy.errors import DeployError  # noqa: E402
from common import random_firing_model, rnn_step_seconds  # noqa: E402
from spikegpt_deploy.sampling import SamplingOptions  # noqa: E402

PROMPT_CHARS = 16


def _model(path: str | None, tmp: Path) -> tuple[Path, str]:
    try:
        return api.default_model_path() if path is None else Path(path), "model"
    except DeployError as exc:
        text = load_corpus("kjv").valid[:20000]
        tok = CharTokenizer.from_text(text)
        model = random_firing_model(tok.vocab_size)
        out = tmp / "random-4x128.pt"
        save_model(model, out, tok)
        return out, f"random 4x128 ({exc})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--tokens", type=int, default=128, help="tokens fed per precision")
    ap.add_argument("--policy", choices=["spikes", "graded"], default="spikes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model_path, what = _model(args.model, Path(tmp))
        t0 = time.perf_counter()
        bundle, _ = api.convert(model_path, Path(tmp) / "b.bundle", force=True,
                                policy=args.policy)
        print(f"model: {model_path} ({what}); bundle converted in "
              f"{time.perf_counter() - t0:.1f} s (policy {args.policy})")
        loaded = load_checkpoint(model_path)
        text = load_corpus("kjv").valid if loaded.tokenizer is not None else ""
        tok = loaded.tokenizer
        prompt = tok.encode(text[:PROMPT_CHARS]) if text else list(range(PROMPT_CHARS))
        n_gen = max(args.tokens - len(prompt) + 1, 1)
        rows = []
        for precision in ("float", "fixed"):
            r = simulation.simulate(bundle, prompt, n_gen, precision,
                                    SamplingOptions(temperature=0.0))
            torch_s = rnn_step_seconds(loaded.model, r.token_ids)
            rows.append((precision, r, len(r.token_ids) / torch_s))
    print(f"\n{'precision':<9} {'tokens':>6} {'sim tok/s':>9} {'torch tok/s':>11} "
          f"{'ratio':>7} {'wall s':>7} {'compile s':>9} {'run s':>7}")
    for precision, r, torch_tps in rows:
        print(f"{precision:<9} {len(r.token_ids):>6} {r.tokens_per_s:>9.2f} {torch_tps:>11.1f} "
              f"{torch_tps / r.tokens_per_s:>6.0f}x {r.wall_s:>7.1f} "
              f"{r.timings['compile_s']:>9.2f} {r.timings['run_s']:>7.2f}")
    print("\nwhere the simulator's time goes:")
    for precision, r, _ in rows:
        procs = sum(r.processes.values())
        host = sum(r.host_compute_s.values())
        kinds = ", ".join(f"{v} {k}" for k, v in r.processes.items())
        per_stage = ", ".join(f"{k} {v * 1e3 / len(r.token_ids):.2f}"
                              for k, v in r.host_compute_s.items())
        print(f"  {precision}: {procs} Lava processes ({kinds}), {r.timesteps_per_token} "
              f"timesteps per token, {r.step_ms:.2f} ms per timestep = "
              f"{r.step_ms / procs:.3f} ms per process-timestep")
        print(f"    host stages computing: {host:.2f} s of {r.timings['run_s']:.2f} s run "
              f"({100 * host / r.timings['run_s']:.0f}%; ms per token: {per_stage}); the rest is "
              "Lava's per-timestep synchronisation and messages, and the chip models")
    if tok is not None:
        print(f"\ngenerated (fixed): {tok.decode(rows[1][1].generated_ids)!r}")


if __name__ == "__main__":
    main()
