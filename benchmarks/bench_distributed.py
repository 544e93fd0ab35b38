"""Profile throughput on 1 and 2 local Ray workers, in the same run.

    python benchmarks/bench_distributed.py [MODEL] [--tokens N] [--window W] [--shape-216m]

MODEL defaults to the shipped model. ``--shape-216m`` profiles the official 216M shape instead
(18 x 768, vocab 50277, seeded random weights in the official layout, written once to a
temporary file; each worker needs about 6 GB: run it alone, e.g. under
``flock /tmp/spikegpt-216m.lock``). Token ids are seeded random ids of the model's vocabulary
(throughput does not depend on the text).

One local Ray with 2 CPU slots is started; a warm-up shard on each worker loads the model and
captures its graph (timed apart: a worker does it once). Then the same windows are profiled as
1 shard (one worker busy) and as 2 shards (both workers), with ``profile_shard`` and the exact
merge the ``profile --workers`` command uses, and the merged counts of both runs are compared.
Each shard also reports its own CPU time: on a machine shared with other jobs, the ratio of the
1-shard CPU time to the slowest of the 2 shards' is what 2 free cores would give.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hw_profiles import load_profile  # noqa: E402
from spikegpt_deploy import api  # noqa: E402
from spikegpt_deploy.distributed import Cluster, ModelSource, ray_cluster, run_shards  # noqa
from spikegpt_deploy.distributed import split_shards  # noqa: E402
from spikegpt_deploy.profiling.merge import merge_targets  # noqa: E402
from spikegpt_deploy.profiling.windows import profile_shard, split_windows  # noqa: E402

SHAPE_216M = {"vocab_size": 50277, "n_layer": 18, "n_embd": 768}


def _make_216m(path: Path) -> None:
    import torch

    from spikegpt_deploy.checkpoint import save_official_state_dict
    from spikegpt_deploy.model import SpikeGPT, SpikeGPTConfig

    torch.manual_seed(0)
    with torch.no_grad():
        model = SpikeGPT(SpikeGPTConfig(**SHAPE_216M)).eval()
    save_official_state_dict(model, path)


def _cpu_timed_shard(*args: object) -> tuple[float, dict]:
    """``profile_shard`` and the CPU seconds its worker process spent on it."""
    start = time.process_time()
    out = profile_shard(*args)
    return time.process_time() - start, out


def _timed(source: ModelSource, windows: list, chips: list,
           shards: int) -> tuple[float, dict, list[float]]:
    ranges = split_shards(len(windows), shards)
    args = [(source, windows[r.start:r.stop], chips, "spikes", 8) for r in ranges]
    start = time.perf_counter()
    timed = run_shards(_cpu_timed_shard, args, lambda i: f"shard {i + 1}")
    seconds = time.perf_counter() - start
    merged = merge_targets([part for _, part in timed])
    return (seconds, {k: v.to_dict() for k, v in merged.items() if not isinstance(v, str)},
            [cpu for cpu, _ in timed])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--shape-216m", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.shape_216m:
            path = Path(tmp) / "spikegpt-216m-random.pth"
            t0 = time.perf_counter()
            _make_216m(path)
            print(f"wrote the random 216M-shape checkpoint in {time.perf_counter() - t0:.0f} s")
            vocab, name = SHAPE_216M["vocab_size"], "official 216M shape (random weights)"
        else:
            path = Path(args.model) if args.model else api.default_model_path()
            vocab, name = api.open_model(path).model.config.vocab_size, str(path)
        source = ModelSource(str(path))
        ids = np.random.default_rng(0).integers(0, vocab, size=args.tokens)
        windows = split_windows(ids, args.window)
        chips = [load_profile("loihi2")]
        print(f"model {name}: {args.tokens} tokens in {len(windows)} windows of {args.window}")
        with ray_cluster(Cluster(workers=2)):
            t0 = time.perf_counter()
            run_shards(profile_shard, [(source, [w[:2]], chips, "spikes", 8) for w in windows[:2]],
                       lambda i: f"warm-up {i + 1}")
            print(f"warm-up (each Ray worker loads the model, captures and partitions it): "
                  f"{time.perf_counter() - t0:.1f} s")
            one, counts_one, cpu_one = _timed(source, windows, chips, 1)
            two, counts_two, cpu_two = _timed(source, windows, chips, 2)
    print(f"1 worker : {args.tokens / one:10.1f} tokens/s ({one:.1f} s; shard CPU "
          f"{cpu_one[0]:.2f} s)")
    print(f"2 workers: {args.tokens / two:10.1f} tokens/s ({two:.1f} s; shard CPU "
          f"{', '.join(f'{c:.2f}' for c in cpu_two)} s)")
    print(f"ratio 2 workers / 1 worker (tokens/s): {one / two:.2f}")
    print(f"ratio by CPU time (1 shard / slowest of 2 shards): "
          f"{sum(cpu_one) / max(cpu_two):.2f}")
    print(f"merged counts identical: {counts_one == counts_two}")


if __name__ == "__main__":
    main()
