"""The Python API on the shipped model: load, generate, convert, and count per-layer spikes.

Run from the repository root:  .venv/bin/python examples/python_api.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import spikegpt_deploy
from spikegpt_deploy import api
from spikegpt_deploy.sampling import SamplingOptions


def main() -> None:
    model_path = api.default_model_path()
    model = spikegpt_deploy.load_model(model_path)          # torch.load(weights_only=True)
    tokenizer = model.tokenizer
    print(f"{model_path.name}: {model.config}")

    # RNN mode, recording the spikes of every LIF population.
    ids = tokenizer.encode("And God said, Let there be light")
    state = model.init_state(1)
    with torch.no_grad(), model.record_spikes() as rec:
        for tok in ids:
            logits, state = model.step(torch.tensor([tok]), state)
    for name, spikes in rec.spikes().items():
        print(f"  {name:<16} firing rate {spikes.float().mean():.3f}")

    loaded = api.open_model(model_path)
    text = "".join(api.generate(loaded, "In the beginning", 80, SamplingOptions(temperature=0)))
    print("greedy continuation:", repr(text))

    with tempfile.TemporaryDirectory() as tmp:
        bundle, manifest = api.convert(model_path, Path(tmp) / "bundle", target="loihi2")
        print("bundle files:", sorted(manifest["files"]))
        for fmt in ("onnx", "nir"):  # interop files, written from the bundle on demand
            path, _ = api.export_bundle(bundle, fmt)
            print(f"exported {fmt}:", repr(path.name))
        print("equivalence:", manifest["equivalence"]["float_ir_spikes_identical"],
              manifest["equivalence"]["quantized_greedy_token_agreement"])


if __name__ == "__main__":
    main()
