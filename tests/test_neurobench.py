"""NeuroBench's metric classes on the PyTorch model, beside the profiler's counts per layer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from spikegpt_deploy.checkpoint import save_model
from spikegpt_deploy.cli import main
from spikegpt_deploy.data import CharTokenizer
from spikegpt_deploy.errors import DeployError
from spikegpt_deploy.profiling import profile_model

from conftest import make_tiny_model, random_text

ROOT = Path(__file__).resolve().parent.parent


def _pruned(vocab_size: int = 13):
    """A tiny model whose LIFs fire, with every 4th weight of every linear set to zero."""
    model = make_tiny_model(n_layer=2, n_embd=16, vocab_size=vocab_size, scale=8.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.view(-1)[::4] = 0
    return model


@pytest.fixture(scope="module")
def pruned():
    return _pruned()


@pytest.fixture(scope="module")
def compared(pruned):
    ids = np.random.RandomState(0).randint(0, pruned.config.vocab_size, 12)
    return profile_model(pruned, ids, "loihi2", neurobench=True)


def test_neurobench_figures_are_non_zero_and_beside_ours(compared) -> None:
    nb = compared.neurobench
    counts = compared.counts["loihi2"]
    layers = {r["layer"]: r for r in nb["layers"]}
    assert len(layers) == 2 * 7 + 1            # every nn.Linear: 7 per block and the head
    for r in layers.values():
        assert r["neurobench_effective"] > 0 and r["neurobench_dense"] > 0, r
        assert r["footprint_neurobench_b"] > 0 and r["ours"] > 0
        assert r["connection_sparsity_neurobench"] == pytest.approx(0.25, abs=1e-3)
        assert r["connection_sparsity_neurobench"] == pytest.approx(
            r["connection_sparsity_ours"], abs=1e-4)
        assert r["reason"] and "raised" not in r["reason"]
    for p in nb["populations"]:
        assert 0 < p["activation_sparsity_neurobench"] <= 1
        assert p["activation_sparsity_neurobench"] == pytest.approx(p["activation_sparsity_ours"])
    whole = nb["whole_model"]
    assert whole["Footprint"]["value"] > 0 and whole["ConnectionSparsity"]["value"] > 0
    assert nb["synaptic_operations"]["value"]["Effective_MACs"] > 0
    # NeuroBench finds no activation module in SpikeGPT (functions), and says so
    assert whole["activation_hooks"]["value"] == 0
    assert any("ActivationSparsity on the model" in d for d in nb["differences"])
    assert {p["population"] for p in nb["populations"]} == set(counts.populations)
    assert min(p["activation_sparsity_neurobench"] for p in nb["populations"]) < 1  # fires


def test_neurobench_on_the_chip_linears_equals_our_synaptic_ops(compared) -> None:
    counts = compared.counts["loihi2"]
    for r in compared.neurobench["layers"]:
        if r["placement"] == "chip":
            ours = sum(e["synaptic_ops"] for e in counts.linears.values()
                       if e["module"] == r["layer"]) / counts.tokens
            assert r["ours"] == pytest.approx(ours)
            assert r["neurobench_on_chip_linears"] == pytest.approx(ours, rel=1e-9)
            assert "NeuroBench sees" in r["reason"]
        else:   # host linears run densely: ours equals NeuroBench's Dense count
            assert r["ours"] == r["neurobench_dense"]
            if r["layer"].endswith("att.output"):   # no zero input: only the zero weights
                assert r["neurobench_effective"] == pytest.approx(
                    r["ours"] * (1 - r["connection_sparsity_ours"]))
            assert "host computes every MAC" in r["reason"]
    placements = {r["layer"].rsplit(".", 1)[-1]: r["placement"]
                  for r in compared.neurobench["layers"] if r["layer"].startswith("blocks.1")}
    assert placements == {"key": "chip", "value": "host", "receptance": "chip",
                          "output": "host"}


def test_cli_profile_neurobench_table_and_missing_extra(tmp_path, monkeypatch) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text(random_text(3000), encoding="utf-8")
    tok = CharTokenizer.from_text(text.read_text(encoding="utf-8"))
    model = _pruned(tok.vocab_size)
    model_path = tmp_path / "model.pt"
    save_model(model, model_path, tok)
    args = ["profile", str(model_path), "--data", str(text), "--tokens", "10", "--neurobench",
            "-o", str(tmp_path / "out")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "NeuroBench 2.3 metrics" in res.output and "differences:" in res.output
    assert (tmp_path / "out" / "neurobench_layers.csv").exists()
    monkeypatch.setitem(sys.modules, "neurobench.metrics.static", None)
    with pytest.raises(DeployError, match=r"optional extra"):
        profile_model(model, [1, 2, 3], "loihi2", neurobench=True)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "optional extra" in res.output


def test_neurobench_is_imported_only_when_asked_for() -> None:
    code = ("import sys, spikegpt_deploy.cli, spikegpt_deploy.profiling, "
            "spikegpt_deploy.profiling.report; assert 'neurobench' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_shipped_model_neurobench_table(tmp_path) -> None:
    res = CliRunner().invoke(main, ["profile", str(ROOT / "examples" / "spikegpt-kjv-4x128.pt"),
                                    "--data", "kjv", "--tokens", "16", "--neurobench",
                                    "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "profile.json").read_text())
    rows = data["neurobench"]["layers"]
    assert len(rows) == 4 * 7 + 1
    for r in rows:
        assert r["neurobench_effective"] > 0 and r["reason"]
        if r["placement"] == "chip":
            assert r["neurobench_on_chip_linears"] == pytest.approx(r["ours"], rel=1e-9)
    assert "blocks.3.ffn.key" in res.output and "NB ActivationSparsity" in res.output


def test_graded_chip_linears_equal_neurobench_on_the_model(pruned) -> None:
    """Under policy graded att.output and ffn.value run on the chip on the same float values
    the PyTorch layer reads: our count equals NeuroBench's effective count on the model."""
    ids = np.random.RandomState(1).randint(0, pruned.config.vocab_size, 10)
    rows = profile_model(pruned, ids, "loihi2", policy="graded", neurobench=True
                         ).neurobench["layers"]
    graded = [r for r in rows if r["layer"].endswith(("att.output", "ffn.value"))]
    assert len(graded) == 4 and all(r["placement"] == "chip" for r in graded)
    for r in graded:
        assert r["ours"] == pytest.approx(r["neurobench_effective"], rel=1e-9), r
        assert r["reason"].startswith("equal")
