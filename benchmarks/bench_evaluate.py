"""Held-out evaluation speed: ``evaluate BUNDLE --precision fixed|float`` vs ``evaluate MODEL``.

    python benchmarks/bench_evaluate.py [MODEL] [--tokens 16384] [--data kjv]

The same validation tokens go through: the PyTorch model as ``evaluate MODEL`` runs it
(``evaluation.evaluate_ids``: parallel mode, batches of 16 windows), and the model's bundle
(converted once beforehand, not timed) as ``evaluate BUNDLE`` runs it (``bundle_evaluation
.evaluate_ir``: the IR executor with 256 windows as its batch), in fixed point (the quantized
emulation) and in float. Printed: tokens/s of each and the ratios bundle / model measured in
this run. The source-model comparison that ``evaluate BUNDLE`` adds runs the PyTorch model once
more and is not part of the bundle's figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spikegpt_deploy import api  # noqa: E402
from spikegpt_deploy.bundle import load_bundle  # noqa: E402
from spikegpt_deploy.bundle_evaluation import evaluate_ir, windows_of  # noqa: E402
from spikegpt_deploy.data import encode_split, load_corpus  # noqa: E402
from spikegpt_deploy.evaluation import evaluate_ids  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--data", default="kjv")
    args = ap.parse_args()
    loaded = api.open_model(args.model)
    ids = encode_split(api.require_tokenizer(loaded), load_corpus(args.data), "valid")
    window = loaded.model.config.ctx_len
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = api.convert(loaded.path, Path(tmp) / "b", calibration=args.data)
        ir = load_bundle(path).ir
    x, y = windows_of(ids, window, args.tokens)
    t0 = time.perf_counter()
    ref = evaluate_ids(loaded.model, ids, window, max_tokens=x.size)
    model_s = time.perf_counter() - t0
    rates = {"evaluate MODEL (PyTorch)": (ref.tokens, model_s, ref.bits_per_token)}
    for precision in ("fixed", "float"):
        tally, sec = evaluate_ir(ir, precision, x, y)
        rates[f"evaluate BUNDLE --precision {precision}"] = (tally.tokens, sec,
                                                              tally.bits_per_token)
    base = ref.tokens / model_s
    print(f"{loaded.path.name}, {x.size} validation tokens ({x.shape[0]} windows of {window}):")
    for name, (tokens, sec, bits) in rates.items():
        print(f"  {name:<34} {tokens / sec:>8,.0f} tokens/s ({sec:6.1f} s)  {bits:.4f} bits/token"
              f"  ratio {tokens / sec / base:.2f}x")


if __name__ == "__main__":
    main()
