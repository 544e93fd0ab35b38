"""Profiler pricing: missing figures are unsupported (not zero), the paper's formula and the
figures' provenance, prefill and decode regimes, graded-policy counts from the value trace, the
JSON round trip and CSVs, and the profile / report / targets commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from converters.torch_capture import capture_ir
from hw_profiles import builtin_profile_dir, load_profile
from spikegpt_deploy.checkpoint import save_model
from spikegpt_deploy.cli import main
from spikegpt_deploy.data import CharTokenizer
from spikegpt_deploy.errors import DataError
from spikegpt_deploy.folded import linear_weight
from spikegpt_deploy.partition import partition
from spikegpt_deploy.passes.fold import fold_layernorm
from spikegpt_deploy.profiling import (count_ops, graded_input_trace, profile_model,
                                       record_spikes_pytorch)
from spikegpt_deploy.profiling.report import (load_json, render_table, write_csvs,
                                              write_json)

from conftest import make_tiny_model, random_text
from profiling_helpers import SCALE, ids, tiny  # noqa: F401  (fixtures)


# ---- pricing -------------------------------------------------------------------------------------
def _user_profile(tmp_path: Path, base: str, drop: str, name: str) -> Path:
    lines = (builtin_profile_dir() / f"{base}.toml").read_text().splitlines()
    out = [f'name = "{name}"' if ln.startswith("name =") else ln for ln in lines
           if not ln.startswith(f"{drop} =")]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(out) + "\n")
    return path


def test_missing_figures_are_unsupported_not_zero(tiny, ids, tmp_path):
    chip = _user_profile(tmp_path, "loihi2", "chip_io_byte", "mychip")
    host = _user_profile(tmp_path, "cmos45nm", "exp", "myhost")
    res = profile_model(tiny, ids, [str(chip)], host_profile=str(host))
    price = res.prices["mychip"]
    keys = {u["key"] for u in price["unsupported"]}
    assert {"[energy] chip_io_byte", "[host_ops] exp"} <= keys
    assert price["per_token"]["total"] is None and not price["complete"]
    assert price["per_token"]["io"] is None and price["per_token"]["host"] is None
    assert price["per_token"]["priced_subtotal"] > 0
    assert all(row["io"] is None for row in price["layers"].values() if row["io"] != 0)
    assert "n/a" in render_table(res) or ">=" in render_table(res)


def test_paper_formula_and_provenance(tiny, ids):
    res = profile_model(tiny, ids, "loihi2")
    pp, macs = res.paper, res.counts["loihi2"].ann["macs"]
    assert macs == 2 * 13 * 16 ** 2 + 13 * 16
    assert pp["ann_pj"] == pytest.approx(macs * 4.6)
    assert pp["snn_pj"] == pytest.approx(0.15 * macs * 0.9)
    assert pp["ann_over_snn"] == pytest.approx(4.6 / (0.15 * 0.9))
    measured = res.prices["loihi2"]["per_token"]["priced_subtotal"]
    assert pp["measured"]["loihi2"]["measured_over_paper_snn"] == pytest.approx(
        measured / pp["snn_pj"])
    price = res.prices["loihi2"]
    assert price["target"]["sha256"] == load_profile("loihi2").sha256
    kinds = {(f["profile"], f["key"]): f["kind"] for f in price["figures"]}
    assert kinds[("loihi2", "synaptic_op")] == "proxy"
    assert kinds[("loihi2", "static_power")] == "measured"
    assert kinds[("cmos45nm", "add")] == "datasheet"
    s = price["sensitivity"]
    assert s["firing_rate_x"] > measured > s["firing_rate_div"]
    assert s["proxy_x"] > measured > s["proxy_div"]
    gpu = res.ann["gpu"]
    assert gpu["per_token"]["total"] > res.ann["cmos45nm"]["per_token"]["total"]


def test_prefill_and_decode_regimes_use_the_simulated_schedule(tiny, ids):
    """Prefill tokens enter one timestep apart, decode tokens a pipeline depth apart: the
    static energy per token scales with those timestep counts, the rest does not."""
    res = profile_model(tiny, ids, "loihi2")
    price, pipe = res.prices["loihi2"], res.counts["loihi2"].pipeline
    pre, dec = price["regimes"]["prefill"], price["regimes"]["decode"]
    assert dec["timesteps_per_token"] == price["timesteps_per_token"] == pipe["lava_timesteps"]
    assert pre["timesteps_per_token"] == pipe["prefill_timesteps_per_token"] == 1
    assert dec["timesteps_per_token"] == pipe["depth_timesteps"] - 1 > 1
    assert pre["static_per_token_pj"] < dec["static_per_token_pj"]
    assert pre["latency_per_token_ns"] < dec["latency_per_token_ns"]
    assert dec["energy_per_token_pj"] - pre["energy_per_token_pj"] == pytest.approx(
        dec["static_per_token_pj"] - pre["static_per_token_pj"])
    assert pre["ttft_timesteps"] == 499 + pipe["depth_timesteps"]  # a stated 500-token prompt
    assert pre["ttft_ns"] == pytest.approx(499 * pre["latency_per_token_ns"]
                                           + price["regimes"]["depth_latency_ns"])
    assert "prefill: 1 timestep(s) per token" in render_table(res)


def test_graded_policy_counts_from_the_value_trace(tiny, ids):
    ir = partition(fold_layernorm(capture_ir(tiny)), load_profile("loihi2"), "graded")
    spikes = record_spikes_pytorch(tiny, ids[:12])
    trace = graded_input_trace(ir, ids[:12])
    counts = count_ops(ir, spikes, trace)
    graded = {n: v for n, v in counts.linears.items() if v["input"] == "graded"}
    assert sorted(v["module"].split(".", 2)[2] for v in graded.values()) == \
        ["att.output", "att.output", "ffn.value", "ffn.value"]
    for n, v in graded.items():
        nnz = (linear_weight(ir.node(n)["params"]) != 0).sum(axis=0)
        assert v["synaptic_ops"] == int(((trace[n] != 0) @ nnz).sum())
        if v["module"].endswith("ffn.value"):              # ReLU^2 zeros send no event
            assert v["events"] < 12 * v["weight_shape"][1]
    assert not counts.unsupported
    without = count_ops(ir, spikes)                        # no value trace: unsupported, not 0
    assert {u["what"] for u in without.unsupported} >= {f"chip node {n}" for n in graded}
    assert profile_model(tiny, ids[:12], "loihi2", "graded").prices["loihi2"]["complete"]


def test_json_round_trip_and_csv(tiny, ids, tmp_path):
    res = profile_model(tiny, ids, ["loihi2", "spinnaker2", "truenorth"])
    assert "placement" in res.prices["truenorth"]["unsupported"][0]["what"]
    path = write_json(res, tmp_path / "profile.json")
    back = load_json(path)
    assert back.to_dict() == json.loads(json.dumps(res.to_dict()))
    assert back.counts["spinnaker2"] is back.counts["loihi2"]      # shared placement
    assert render_table(back) == render_table(res)
    names = {p.name for p in write_csvs(back, tmp_path)}
    assert {"layers_loihi2.csv", "populations.csv", "targets.csv"} <= names
    with pytest.raises(DataError, match="not a spikegpt-deploy profile"):
        (tmp_path / "bad.json").write_text("{}")
        load_json(tmp_path / "bad.json")


# ---- CLI ----------------------------------------------------------------------------------------
def _runner() -> CliRunner:
    """stdout and stderr kept apart (click 8.1 needs mix_stderr=False; 8.2 removed it)."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


@pytest.fixture(scope="module")
def model_and_text(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    text = random_text(8000, seed=1)
    (d / "corpus.txt").write_text(text, encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    model = make_tiny_model(n_layer=2, n_embd=16, vocab_size=tok.vocab_size, scale=SCALE)
    save_model(model, d / "model.pt", tok)
    return d / "model.pt", d / "corpus.txt"


def test_cli_profile_report_targets(model_and_text, tmp_path):
    model, text = model_and_text
    runner = _runner()
    out = tmp_path / "prof"
    r = runner.invoke(main, ["profile", str(model), "--data", str(text), "--tokens", "30",
                             "--target", "loihi2", "--target", "spinnaker2", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "loihi2" in r.stdout and "paper formula" in r.stdout
    res = load_json(out / "profile.json")
    assert res.meta["tokens"] == 30 and res.meta["model_sha256"] and res.meta["data_sha256"]
    assert (out / "layers_loihi2.csv").is_file()
    r = runner.invoke(main, ["report", str(out / "profile.json"), "--html", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    r = runner.invoke(main, ["targets"])
    assert r.exit_code == 0 and "loihi2" in r.stdout and "Davies" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--tokens", "0"], "--tokens must be between 1 and"),
    (["--target", "cmos45nm"], "not a chip"),
    (["--target", "nochip"], "unknown built-in hardware profile"),
    (["--tokens", "100000"], "fewer than --tokens"),
])
def test_cli_profile_bad_input(model_and_text, tmp_path, args, message):
    model, text = model_and_text
    r = _runner().invoke(
        main, ["profile", str(model), "--data", str(text), "-o", str(tmp_path), *args])
    assert r.exit_code == 1 and r.stderr.startswith("error:") and message in r.stderr


def test_cli_report_bad_file(tmp_path):
    (tmp_path / "x.json").write_text("not json")
    r = _runner().invoke(main, ["report", str(tmp_path / "x.json")])
    assert r.exit_code == 1 and r.stderr.startswith("error:")
