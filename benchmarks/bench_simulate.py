"""Lava simulation speed (``simulate``, ``evaluate --backend lava``) vs the PyTorch RNN step.

    python benchmarks/bench_simulate.py [MODEL] [--tokens N] [--generate G] [--repeat R]
                                        [--policy spikes|graded] [--shape 216m DIR] [--block B]

MODEL defaults to the shipped model (examples/spikegpt-kjv-4x128.pt; when there is none, a
seeded random 4 x 128 char model). ``--shape 216m DIR``: the official 216M shape (random
weights, official key layout, word-level tokenizer), its bundle built once in DIR and reused
(``benchmarks/shape_216m.py``; run under ``flock /tmp/spikegpt-216m.lock``).

In one run, per precision and repeat: the pipelined network evaluates N teacher-forced tokens
of held-out KJV text (prefill / evaluation: tokens enter one chip timestep apart, ``--block``
of them per Lava step) and generates G tokens greedily after a 16-character prompt (decode: each
token waits for the previous one's logits); the PyTorch RNN step runs on the same tokens. Prints
tokens/s and the ratio to PyTorch (goals: prefill >= 0.5x, generation >= 0.1x), processes,
timesteps per token, ms per chip timestep and per process-timestep, Lava steps, the load
average, bundle load and network build time, and the peak memory of all Lava processes together,
and the CPU time per token of the simulator's own compute against the PyTorch step's (wall-time
ratios on a loaded machine favour the simulator's several processes).
For the small model the per-population network (a process per population, each token alone)
is run once for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from spikegpt_deploy import api, simulation  # noqa: E402
from spikegpt_deploy.bundle import load_bundle  # noqa: E402
from spikegpt_deploy.checkpoint import load_checkpoint, save_model  # noqa: E402
from spikegpt_deploy.data import CharTokenizer, load_corpus  # noqa: E402
from spikegpt_deploy.errors import DeployError  # noqa: E402
from spikegpt_deploy.sampling import SamplingOptions  # noqa: E402
from spikegpt_deploy.simulation.schedule import PREFILL_BLOCK  # noqa: E402
from common import random_firing_model, rnn_step_seconds  # noqa: E402

PROMPT_CHARS = 16
GREEDY = SamplingOptions(temperature=0.0)


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = [int(c) for c in (task / "children").read_text().split()]
                out += kids
                todo += kids
        except OSError:
            continue
    return out


def _mem_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in kB (0, 0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    fields = {ln.split()[0]: int(ln.split()[1]) for ln in text.splitlines()[1:] if ln.split()}
    return fields.get("Rss:", 0), fields.get("Pss:", 0)


class PeakMemory:
    """Samples the summed RSS / PSS of this process's descendants (the Lava processes)."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s, self.peak_rss_kb, self.peak_pss_kb = every_s, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import os
        while not self._stop.is_set():
            mems = [_mem_kb(p) for p in _descendants(os.getpid())]
            self.peak_rss_kb = max(self.peak_rss_kb, sum(m[0] for m in mems))
            self.peak_pss_kb = max(self.peak_pss_kb, sum(m[1] for m in mems))
            self._stop.wait(self.every_s)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class _QueuePort:
    def __init__(self) -> None:
        import queue
        self.q: "queue.Queue" = queue.Queue()

    def send(self, x) -> None:
        self.q.put(x)

    def recv(self):
        return self.q.get()


def compute_cpu_ms(bundle, ids: list[int], precision: str,
                   block: int = PREFILL_BLOCK) -> tuple[float, float]:
    """CPU ms per teacher-forced token of the pipelined network's two runners (host, chip)
    without Lava (threads and queues in this process): the simulator's own compute, which the
    machine's load does not inflate the way it inflates wall time."""
    from threadpoolctl import threadpool_limits

    from spikegpt_deploy.simulation.lava.procs.chip_core import ChipRunner
    from spikegpt_deploy.simulation.host import HostPipeRunner
    from spikegpt_deploy.simulation.program import plan_pipeline
    from spikegpt_deploy.simulation.pipelined import _buffers

    plan = plan_pipeline(bundle.ir, precision, ids, 0, GREEDY, block=block)
    ports = {name: _QueuePort() for name in ["syn", *(f"{d}_{r}" for d in ("cur", "spk")
                                                       for r in range(plan.chip.rounds))]}
    chip = ChipRunner(plan.chip, ports)
    host = HostPipeRunner(plan.host, ports, _buffers(plan, len(ids), 0))
    steps = chip.units.num_steps  # Lava steps
    chip_cpu = [0.0]

    def run_chip() -> None:
        with threadpool_limits(limits=1):
            t0 = time.thread_time()
            for t in range(1, steps + 1):
                chip.step(t)
            chip_cpu[0] = time.thread_time() - t0

    th = threading.Thread(target=run_chip)
    th.start()
    with threadpool_limits(limits=1):
        t0 = time.thread_time()
        for t in range(1, steps + 1):
            host.step(t)
        host_cpu = time.thread_time() - t0
    th.join()
    return 1e3 * host_cpu / len(ids), 1e3 * chip_cpu[0] / len(ids)


def torch_cpu_ms(model: torch.nn.Module, ids: list[int]) -> float:
    """CPU ms per token of the PyTorch RNN step (this thread)."""
    state = model.init_state(1)
    t0 = time.thread_time()
    with torch.no_grad():
        for t in ids:
            _, state = model.step(torch.tensor([int(t)]), state)
    return 1e3 * (time.thread_time() - t0) / len(ids)


def _model(path: str | None, tmp: Path) -> tuple[Path, str]:
    try:
        return api.default_model_path() if path is None else Path(path), "model"
    except DeployError as exc:
        text = load_corpus("kjv").valid[:20000]
        tok = CharTokenizer.from_text(text)
        out = tmp / "random-4x128.pt"
        save_model(random_firing_model(tok.vocab_size), out, tok)
        return out, f"random 4x128 ({exc})"


def _gen_rate(r: simulation.SimulationResult) -> float:
    """Generated tokens per second, from the time each token's logits were complete."""
    done = r.schedule["token_done_s"]
    first, last = len(r.prompt_ids) - 1, len(r.token_ids) - 1
    return (last - first) / max(done[last] - done[first], 1e-9)


def _lif_rate(r: simulation.SimulationResult) -> float:
    rates = [v.mean() for k, v in r.spikes.items() if k != "emb"]
    return float(sum(rates) / max(len(rates), 1))


def _row(label: str, rates: list[float], torch_rates: list[float], r: simulation.SimulationResult,
         per_token: float) -> None:
    ratios = [a / b for a, b in zip(rates, torch_rates)]
    procs = sum(r.processes.values())
    print(f"  {label:<22} {statistics.median(rates):>9.1f} {statistics.median(torch_rates):>9.1f}"
          f"  {statistics.median(ratios):6.3f}x [{min(ratios):.3f}-{max(ratios):.3f}]"
          f"  {procs:>2} procs  {per_token:>4g} ts/token  {r.step_ms:7.2f} ms/ts"
          f"  {r.step_ms / procs:7.3f} ms/proc-ts  {r.schedule.get('lava_steps', r.num_steps)}"
          " Lava steps")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--tokens", type=int, default=256, help="teacher-forced tokens (prefill)")
    ap.add_argument("--generate", type=int, default=64, help="generated tokens")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--policy", choices=["spikes", "graded"], default="spikes")
    ap.add_argument("--shape", nargs=2, metavar=("216m", "DIR"))
    ap.add_argument("--block", type=int, default=PREFILL_BLOCK,
                    help="prefill tokens per Lava step (1: token by token)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.shape:
            from shape_216m import ensure_216m_bundle
            bundle = ensure_216m_bundle(Path(args.shape[1]))
            model_path, what = Path(args.shape[1]) / "216m.pth", "official 216M shape, random"
            loaded = api.open_model(model_path, str(Path(args.shape[1]) / "words.json"))
        else:
            model_path, what = _model(args.model, Path(tmp))
            bundle, _ = api.convert(model_path, Path(tmp) / "b.bundle", force=True,
                                    policy=args.policy)
            loaded = load_checkpoint(model_path)
        t0 = time.perf_counter()
        path, bundle = bundle, load_bundle(bundle)  # once: simulate() takes the loaded bundle
        tok = bundle.tokenizer
        load_s = time.perf_counter() - t0
        text = load_corpus("kjv").valid
        ids = tok.encode(text[:20 * args.tokens])[: args.tokens]
        prompt = tok.encode(text[:PROMPT_CHARS])
        print(f"model: {model_path} ({what}); bundle {path} loads in {load_s:.1f} s; load "
              f"average {os.getloadavg()[0]:.1f}", flush=True)
        results = {}
        for precision in ("float", "fixed"):
            pre, gen, tp, tg = [], [], [], []
            with PeakMemory() as mem:
                for _ in range(args.repeat):
                    rp = simulation.simulate(bundle, ids, 0, precision, GREEDY,
                                             prefill_block=args.block)
                    pre.append(len(ids) / rp.timings["run_s"])
                    tp.append(len(ids) / rnn_step_seconds(loaded.model, ids))
                    rg = simulation.simulate(bundle, prompt, args.generate, precision, GREEDY)
                    gen.append(_gen_rate(rg))
                    tg.append(len(rg.token_ids) / rnn_step_seconds(loaded.model, rg.token_ids))
            results[precision] = (pre, tp, rp, gen, tg, rg, mem)
        print(f"\nprefill: {args.block} tokens per Lava step (chip timesteps unchanged); load "
              f"average {os.getloadavg()[0]:.1f}")
        print(f"{'':<24} {'sim tok/s':>9} {'torch':>9}  {'ratio (median [min-max] of '}"
              f"{args.repeat})")
        for precision, (pre, tp, rp, gen, tg, rg, mem) in results.items():
            print(f"{precision}:")
            _row(f"prefill ({len(ids)} tokens)", pre, tp, rp,
                 rp.schedule["prefill"]["timesteps_per_token"])
            _row(f"generation ({args.generate})", gen, tg, rg,
                 rg.schedule["decode"]["timesteps_per_token"])
            host = sum(rp.host_compute_s.values())
            print(f"    network build (chip weights prepared) {rp.timings['build_s']:.1f} s, "
                  f"compile+start {rp.timings['compile_s']:.1f} s; host computing "
                  f"{100 * host / rp.timings['run_s']:.0f}% of the prefill run; peak memory of "
                  f"the Lava processes: {mem.peak_pss_kb / 2**20:.2f} GiB PSS "
                  f"({mem.peak_rss_kb / 2**20:.2f} GiB summed RSS); firing rate emb "
                  f"{rp.spikes['emb'].mean():.3f}, LIFs {_lif_rate(rp):.3f}; TTFT for a "
                  f"{len(prompt)}-token prompt {rg.schedule['prefill']['ttft_timesteps']} "
                  "timesteps")
        print("CPU time per teacher-forced token (no Lava, no waiting; load-independent):")
        for precision in ("float", "fixed"):
            host_ms, chip_ms = compute_cpu_ms(bundle, ids, precision, args.block)
            t_ms = torch_cpu_ms(loaded.model, ids)
            print(f"  {precision}: host {host_ms:.2f} ms + chip {chip_ms:.2f} ms vs PyTorch step "
                  f"{t_ms:.2f} ms: {t_ms / (host_ms + chip_ms):.3f}x")
        if not args.shape:
            r = simulation.simulate(bundle, prompt, args.generate, "fixed", GREEDY,
                                    network="populations")
            torch_tps = len(r.token_ids) / rnn_step_seconds(loaded.model, r.token_ids)
            print("per-population network (fixed, each token alone), for comparison:")
            _row(f"generation ({args.generate})", [r.tokens_per_s], [torch_tps], r,
                 r.timesteps_per_token)
        print(f"\ngenerated (fixed): {tok.decode(results['fixed'][5].generated_ids)!r}")


if __name__ == "__main__":
    main()
