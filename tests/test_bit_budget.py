"""``convert --quality-budget``: bits per chip linear within a measured cost
(spikegpt_deploy/passes/bit_budget.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_tiny_model, random_text
from spikegpt_deploy.checkpoint import save_model
from spikegpt_deploy.cli import main
from spikegpt_deploy.convert import ConvertOptions, run_pipeline
from spikegpt_deploy.data import CharTokenizer
from spikegpt_deploy.errors import ConversionError

TEXT = random_text(12_000, seed=5)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("budget")
    tok = CharTokenizer.from_text(TEXT)
    model = make_tiny_model(n_layer=2, n_embd=32, vocab_size=tok.vocab_size, seed=2, ctx_len=32)
    save_model(model, root / "m.pt", tok)
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    return root / "m.pt", root / "text.txt"


def _convert(files: tuple[Path, Path], **kw: object):
    model, text = files
    return run_pipeline(model, ConvertOptions(calibration=str(text), calibration_tokens=512,
                                              check_tokens=16, **kw), stop_after="map_resources")


@pytest.mark.parametrize("budget", [0.02, 0.3])
def test_budget_is_met_on_the_calibration_text_and_saves_memory(files, budget: float) -> None:
    ctx = _convert(files, quality_budget=budget)
    plan = ctx.bit_plan
    assert plan is not None and plan.budget_bits_per_token == budget
    assert plan.measured_cost_bits_per_token <= budget
    linears = {n for n, d in ctx.ir.graph.nodes(data=True)
               if d["op"] == "SpikeLinear" and d.get("placement") == "loihi2"}
    assert set(plan.bits) == linears and set(plan.bits.values()) <= set(range(2, 9))
    for n, b in plan.bits.items():          # the IR holds what the plan chose
        d = ctx.ir.node(n)
        assert d["attrs"]["weight_bits"] == b
        assert np.abs(d["params"]["weight_q"]).max() <= 2 ** (b - 1) - 1
    by_node = {r["node"]: r for r in ctx.resources["layers"]}
    assert all(by_node[n]["weight_bits"] == b for n, b in plan.bits.items())
    all8 = _convert(files, weight_bits=8)
    mem = sum(by_node[n]["synaptic_memory_bytes"] for n in linears)
    mem8 = sum(r["synaptic_memory_bytes"] for r in all8.resources["layers"] if r["node"] in linears)
    assert mem <= mem8 and ctx.resources["totals"]["cores"] <= all8.resources["totals"]["cores"]
    meta = ctx.ir.meta["quantization"]["budget"]
    assert meta["measured_cost_bits_per_token"] == plan.measured_cost_bits_per_token


def test_a_larger_budget_narrows_more(files) -> None:
    tight, loose = _convert(files, quality_budget=0.02), _convert(files, quality_budget=0.3)
    assert sum(loose.bit_plan.bits.values()) <= sum(tight.bit_plan.bits.values())
    assert min(loose.bit_plan.bits.values()) < 8   # a tiny model has room at 0.3 bits/token


def test_budget_needs_real_text_and_a_positive_budget(files) -> None:
    model, _ = files
    with pytest.raises(ConversionError, match="--calibration"):
        run_pipeline(model, ConvertOptions(quality_budget=0.05))
    with pytest.raises(ConversionError, match="positive"):
        run_pipeline(model, ConvertOptions(quality_budget=0.0, calibration="kjv"))
    res = CliRunner().invoke(main, ["convert", str(model), "--quality-budget", "0.05",
                                    "-o", str(model.with_suffix(".b"))])
    assert res.exit_code == 1 and "--calibration" in res.output


def test_cli_convert_and_inspect_show_the_mix(files, tmp_path: Path) -> None:
    model, text = files
    out = tmp_path / "mix.bundle"
    runner = CliRunner()
    res = runner.invoke(main, ["convert", str(model), "--quality-budget", "0.3", "--calibration",
                               str(text), "--calibration-tokens", "512", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "quality budget 0.3 bits/token" in res.output and "measured cost" in res.output
    res = runner.invoke(main, ["inspect", str(out)])
    assert res.exit_code == 0 and "quality budget 0.3" in res.output and " bit " in res.output
    info = json.loads(runner.invoke(main, ["inspect", str(out), "--json"]).output)
    budget = info["quality_budget"]
    for n, b in budget["bits"].items():
        q = info["quantization"][n]
        assert q["weight_bits"] == b and q["cores"] >= 1 and "predicted_cost" in q
