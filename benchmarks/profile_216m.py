"""Profile the official 216M shape (18 x 768, vocab 50277) with random weights on random tokens.

    flock /tmp/spikegpt-216m.lock python benchmarks/profile_216m.py [--tokens 16] [-o DIR]

No trained 216M checkpoint is at hand, so the model is ``random_firing_model`` (seeded random
weights, LIF-feeding weights x 8 so the LIFs fire): its mapping and per-core capacity are the
real shape's, its firing rates are not a trained model's. Prints the profile table (per-term
latency, the slowest core of each layer, static energy over that latency) and writes
profile.json. Needs about 5 GB of memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import random_firing_model  # noqa: E402

from spikegpt_deploy.profiling import profile_model  # noqa: E402
from spikegpt_deploy.profiling.report import render_table, write_json  # noqa: E402

SHAPE_216M = {"vocab_size": 50277, "layers": 18, "width": 768}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("-o", "--out", default="out/profile-216m")
    args = parser.parse_args()
    start = time.perf_counter()
    model = random_firing_model(**SHAPE_216M)
    ids = np.random.RandomState(0).randint(0, SHAPE_216M["vocab_size"], args.tokens)
    result = profile_model(model, ids, "loihi2",
                           meta={"model": "random 216M shape (18 x 768, vocab 50277)",
                                 "data": f"{args.tokens} random tokens", "split": "-"})
    print(render_table(result))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = write_json(result, Path(args.out) / "profile.json")
    print(f"\nwrote {path} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
