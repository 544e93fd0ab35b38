"""Time and peak memory of ``convert`` vs merely loading the checkpoint, in the same run.

    python benchmarks/bench_convert.py [MODEL] [--skip-216m] [--steps-216m STEPS] [--keep DIR]

Cases, each what ``spikegpt-deploy convert`` does (``bundle.convert_to_bundle``): every pipeline
step (load, capture, fold_layernorm, partition, quantize, map_resources, check_equivalence) and
the bundle's files, the IR files written while the check runs ("write_bundle" is the time after
the last step):
- the shipped model (``api.default_model_path()``; when there is none, a seeded random 4 x 128
  char model saved as model.pt);
- the official 216M shape (18 x 768, vocab 50277) with random weights, saved once in the official
  state_dict layout (862 MB .pth); ``--steps-216m`` runs a subset (comma-separated, no bundle).

Each measurement runs in a fresh subprocess, so that peak RSS (``ru_maxrss``) belongs to that
case alone; the baseline is a subprocess that only calls ``checkpoint.load_checkpoint`` on the
same file. Reported: the machine, seconds per step, total, peak RSS, the bundle's size, and the
ratios convert / load and bundle / checkpoint against the goals (3x time, 2.5x peak memory,
1.5x size). Run the 216M case alone on the machine (it needs about 5 GB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOALS = {"time": 3.0, "memory": 2.5, "size": 1.5}
SHAPE_216M = {"vocab_size": 50277, "n_layer": 18, "n_embd": 768}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ---- workers (run in a subprocess; print one JSON line) ---------------------------------
def _worker_load(path: str) -> dict:
    import torch
    torch.set_num_threads(1)
    from spikegpt_deploy.checkpoint import load_checkpoint

    rss0 = _peak_rss_mb()
    start = time.perf_counter()
    loaded = load_checkpoint(path)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "rss_after_imports_mb": rss0,
            "parameters": loaded.model.num_parameters()}


def _worker_convert(path: str, steps: str, bundle_dir: str) -> dict:
    # torch's threads as the command leaves them (the machine's cores), as a user runs it
    from spikegpt_deploy.bundle import convert_to_bundle
    from spikegpt_deploy.convert import STEPS, ConvertContext, ConvertOptions

    rss0 = _peak_rss_mb()
    start = time.perf_counter()
    if steps == "all":  # what ``spikegpt-deploy convert`` runs (bundle_api.convert)
        _, ctx = convert_to_bundle(path, ConvertOptions(), bundle_dir, force=True)
        times = dict(ctx.step_seconds)
        # the IR files are written during the check; what is left after it
        times["write_bundle"] = time.perf_counter() - start - sum(times.values())
    else:
        wanted = steps.split(",")
        bundle_dir = ""  # a bundle needs every step
        unknown = sorted(set(wanted) - {name for name, _ in STEPS})
        if unknown:
            raise SystemExit(f"unknown step(s) {unknown}; steps: {[n for n, _ in STEPS]}")
        ctx = ConvertContext(Path(path), ConvertOptions())
        times = {}
        for name, step in STEPS:  # the pipeline's own order; steps not wanted are skipped
            if name not in wanted:
                continue
            t = time.perf_counter()
            step(ctx)
            times[name] = time.perf_counter() - t
            ctx.steps_done.append(name)
    totals = (ctx.resources or {}).get("totals", {})
    size = sum(p.stat().st_size for p in Path(bundle_dir).iterdir()) if bundle_dir else None
    return {"seconds": time.perf_counter() - start, "steps": times, "bundle_bytes": size,
            "check_tokens": (ctx.equivalence or {}).get("tokens"),
            "peak_rss_mb": _peak_rss_mb(), "rss_after_imports_mb": rss0,
            "chips": totals.get("chips"), "cores": totals.get("cores"),
            "neurons": totals.get("neurons"), "synapses": totals.get("synapses")}


def _worker_make_216m(path: str) -> dict:
    import torch
    torch.set_num_threads(1)
    from spikegpt_deploy.checkpoint import save_official_state_dict
    from spikegpt_deploy.model import SpikeGPT, SpikeGPTConfig

    torch.manual_seed(0)
    with torch.no_grad():
        model = SpikeGPT(SpikeGPTConfig(**SHAPE_216M)).eval()
    save_official_state_dict(model, path)
    return {"parameters": model.num_parameters(), "bytes": Path(path).stat().st_size}


def _worker_make_small(path: str) -> dict:
    from common import random_firing_model
    from spikegpt_deploy.checkpoint import save_model
    from spikegpt_deploy.data import CharTokenizer

    tok = CharTokenizer([chr(c) for c in range(32, 127)] + ["\n"])
    model = random_firing_model(tok.vocab_size)
    save_model(model, path, tok)
    return {"parameters": model.num_parameters()}


WORKERS = {"load": _worker_load, "convert": _worker_convert, "make-216m": _worker_make_216m,
           "make-small": _worker_make_small}


def _run(kind: str, *args: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- driver -----------------------------------------------------------------------------
def _goal(what: str, shown: bool) -> str:
    return f" (goal <= {GOALS[what]}x)" if shown else ""


def _machine() -> str:
    import os
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2 ** 20
    except OSError:
        mem = float("nan")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB; load average {load}; "
            f"torch and BLAS threads as set by the environment")


def _report(name: str, path: Path, steps: str, bundle_dir: str, goals: bool = False) -> None:
    """``goals``: the issue's goals are for the 216M shape (a small model's load is too short
    and its chip matrices too large a share for the same ratios)."""
    load = _run("load", str(path))
    conv = _run("convert", str(path), steps, bundle_dir)
    what = ", ".join(conv["steps"])
    print(f"\n{name}: {path.name} ({load['parameters']:,} parameters)")
    print(f"  steps: {what}")
    for label, r in (("load_checkpoint only", load), ("convert", conv)):
        print(f"  {label:<20} : {r['seconds']:8.2f} s   peak RSS {r['peak_rss_mb']:8.0f} MB"
              f"   (after imports {r['rss_after_imports_mb']:.0f} MB)")
    for step, seconds in conv["steps"].items():
        print(f"    {step:<18} {seconds:8.2f} s")
    t_ratio = conv["seconds"] / load["seconds"]
    m_ratio = conv["peak_rss_mb"] / load["peak_rss_mb"]
    print(f"  ratio convert / load : time {t_ratio:.1f}x{_goal('time', goals)}, "
          f"peak memory {m_ratio:.2f}x{_goal('memory', goals)}")
    if "load" in conv["steps"]:  # the same work in the same process: robust to other jobs
        print(f"  ratio convert / its own load step ({conv['steps']['load']:.2f} s): "
              f"{conv['seconds'] / conv['steps']['load']:.1f}x")
    if conv.get("bundle_bytes"):
        ratio = conv["bundle_bytes"] / path.stat().st_size
        print(f"  bundle {conv['bundle_bytes'] / 1e6:.0f} MB / checkpoint "
              f"{path.stat().st_size / 1e6:.0f} MB = {ratio:.2f}x{_goal('size', goals)}")
    if conv.get("check_tokens"):
        print(f"  equivalence check over {conv['check_tokens']} tokens")
    if conv.get("chips") is not None:
        print(f"  mapped: {conv['neurons']:,} neurons, {conv['synapses']:,} synapses, "
              f"{conv['cores']} cores on {conv['chips']} chip(s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=None,
                        help="Model file (default: the shipped model, else a random 4 x 128).")
    parser.add_argument("--skip-216m", action="store_true", help="Only the shipped model.")
    parser.add_argument("--steps-216m", default="all",
                        help="Comma-separated pipeline steps for the 216M case (no bundle), or "
                             "'all' (with the bundle).")
    parser.add_argument("--keep", default=None, help="Keep the generated files in this folder.")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        print(json.dumps(WORKERS[kind](*rest)))
        return

    from spikegpt_deploy import api
    from spikegpt_deploy.errors import DeployError

    print(f"machine: {_machine()}")
    with tempfile.TemporaryDirectory(prefix="bench_convert.") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.model:
            small, label = Path(args.model), "given model"
        else:
            try:
                small, label = api.default_model_path(), "shipped model"
            except DeployError as exc:
                small, label = work / "random-4x128.pt", f"random 4 x 128 (no shipped model: {exc})"
                _run("make-small", str(small))
        _report(label, small, "all", str(work / "small.bundle"))
        if args.skip_216m:
            return
        big = work / "spikegpt-216m-random.pth"
        if big.is_file():  # --keep DIR from an earlier run: the same seeded checkpoint
            print(f"\n(reusing the random 216M checkpoint {big})")
        else:
            start = time.perf_counter()
            made = _run("make-216m", str(big))
            print(f"\n(wrote the random 216M checkpoint, official layout: "
                  f"{made['bytes'] / 1e6:.0f} MB, {made['parameters']:,} parameters, in "
                  f"{time.perf_counter() - start:.1f} s)")
        _report("official 216M shape, random weights", big, args.steps_216m,
                str(work / "216m.bundle"), goals=True)


if __name__ == "__main__":
    main()
