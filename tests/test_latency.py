"""Per-token latency: work-based per-core times, the timestep and the token's separate terms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hw_profiles import load_profile
from spikegpt_deploy.cli import main
from spikegpt_deploy.ir import IR
from spikegpt_deploy.profiling import count_ops, price_target
from spikegpt_deploy.profiling.latency import core_times, token_latency, token_latency_for
from spikegpt_deploy.resources import map_resources

from profiling_helpers import SPIKES_HAND, W_HAND, hand_ir

SHIPPED = Path(__file__).resolve().parent.parent / "examples" / "spikegpt-kjv-4x128.pt"
# Davies et al. 2018 Table 2 (the loihi2 profile's [timing]), ns
T_SYN, T_ACT, T_IDLE, T_MSG, T_HOP, T_BARRIER = 3.5, 8.4, 5.3, 2.1, 6.5, 465.0


def _price(ir: IR, spikes: dict, **kw) -> dict:
    chip = load_profile("loihi2")
    return price_target(count_ops(ir, spikes), chip, hops=0.0, resources=map_resources(ir, chip),
                        host_timing=load_profile("cpu"), **kw)


def test_hand_computed_per_core_times() -> None:
    ir = hand_ir(W_HAND)
    step = _price(ir, SPIKES_HAND)["latency"]["timestep"]
    nodes = step["nodes"]
    # LIF: 4 neurons, all active each token (dense float input from the host); spikes per neuron
    # [0,1,1,1] to one chip reader: 1 message per token.
    lif = nodes["blocks.0.lif1"]
    assert lif["neurons_ns"] == pytest.approx(4 * T_ACT)
    assert lif["messages_ns"] == pytest.approx(1 * T_MSG)
    assert lif["synapses_ns"] == 0 and lif["bound"] == "neurons"
    # SpikeSum n = emb + 2 lif: accumulations [2,2,3,2] -> 3 per token; active (emb|lif) 8 of
    # 12 updates; non-zero n 8 times, one reader (the SpikeLinear).
    acc = nodes["ln_out.counts"]
    assert acc["synapses_ns"] == pytest.approx(3 * T_SYN)
    assert acc["neurons_ns"] == pytest.approx(8 / 3 * T_ACT + 4 / 3 * T_IDLE)
    assert acc["messages_ns"] == pytest.approx(8 / 3 * T_MSG)
    # SpikeLinear: input events per column [2,2,2,2]; row fan-in nnz -> synaptic ops per row
    # [4,2,4] = 10 in 3 tokens; read-out compartments reached [2,2,3] of 9.
    lin = nodes["head.spikes"]
    assert lin["synapses_ns"] == pytest.approx(10 / 3 * T_SYN)
    assert lin["neurons_ns"] == pytest.approx(7 / 3 * T_ACT + 2 / 3 * T_IDLE)
    assert lin["time_ns"] == pytest.approx(7 / 3 * T_ACT + 2 / 3 * T_IDLE)
    # per layer: the slowest core, and the timestep = slowest core + barrier (hops 0, one chip)
    assert step["layers"]["blocks.0"]["name"] == "blocks.0.lif1#0"
    assert step["layers"]["head"]["name"] == "ln_out.counts#0"
    assert step["critical"]["name"] == "blocks.0.lif1#0"
    assert step["timestep_ns"] == pytest.approx(4 * T_ACT + T_BARRIER)


def test_a_node_split_over_cores_is_timed_per_core() -> None:
    ir = hand_ir(W_HAND)
    counts = count_ops(ir, SPIKES_HAND)
    times = {"synaptic_op": T_SYN, "neuron_update": T_ACT, "neuron_update_idle": T_IDLE,
             "spike_local": T_MSG}
    cores = [c for c in core_times(counts.neuron_work, {"head.spikes": 2}, 3, times)
             if c.node == "head.spikes"]
    # rows [0, 1] on core 0, row [2] on core 1 (contiguous blocks)
    assert [c.synapses_ns for c in cores] == pytest.approx([6 / 3 * T_SYN, 4 / 3 * T_SYN])
    assert [c.neurons_ns for c in cores] == pytest.approx(
        [4 / 3 * T_ACT + 2 / 3 * T_IDLE, 3 / 3 * T_ACT])


def test_doubling_input_spikes_raises_the_synapse_bound_core_time() -> None:
    width = 8
    ir = hand_ir(np.ones((4, width)))
    quiet = np.zeros((2, width), dtype=np.uint8)
    base = np.zeros((2, width), dtype=np.uint8)
    base[:, :3] = 1
    double = np.zeros((2, width), dtype=np.uint8)
    double[:, :6] = 1
    a = _price(ir, {"emb": base, "blocks.0.lif1": quiet})["latency"]["timestep"]["nodes"]
    b = _price(ir, {"emb": double, "blocks.0.lif1": quiet})["latency"]["timestep"]["nodes"]
    # 3 (then 6) input events x 4 rows each: 12 (then 24) synaptic ops per token on one core
    assert a["head.spikes"]["synapses_ns"] == pytest.approx(12 * T_SYN)
    assert b["head.spikes"]["synapses_ns"] == pytest.approx(24 * T_SYN)
    assert a["head.spikes"]["bound"] == b["head.spikes"]["bound"] == "synapses"
    assert b["head.spikes"]["time_ns"] - a["head.spikes"]["time_ns"] == pytest.approx(12 * T_SYN)


def test_token_latency_terms_and_static_energy() -> None:
    ir = hand_ir(W_HAND)
    price = _price(ir, SPIKES_HAND, timesteps=7)
    tok = price["latency"]["token"]
    assert tok["chip_ns"] == pytest.approx(7 * price["latency"]["timestep"]["timestep_ns"])
    assert tok["host_ns"] > 0 and tok["io_ns"] > 0
    assert tok["total_ns"] == pytest.approx(tok["chip_ns"] + tok["host_ns"] + tok["io_ns"])
    chip = load_profile("loihi2")
    assert price["per_token"]["chip_static"] == pytest.approx(
        price["mapping"]["chips"] * chip.power_mw("static_power") * tok["total_ns"])
    # the same timestep priced for another schedule (e.g. one timestep per prompt token)
    assert token_latency(1, tok["timestep_ns"], 0.0, 0.0).total_ns == tok["timestep_ns"]
    one = token_latency_for(price["latency"], 1)
    assert one.chip_ns == tok["timestep_ns"] and one.host_ns == tok["host_ns"]
    assert one.total_ns == pytest.approx(tok["total_ns"] - 6 * tok["timestep_ns"])
    with pytest.raises(ValueError):
        token_latency(-1, 1.0, 0.0, 0.0)


def test_missing_timing_figure_is_unsupported_not_zero(tmp_path: Path) -> None:
    text = (Path(load_profile("loihi2").path)).read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.startswith("barrier_sync =")]
    path = tmp_path / "nobarrier.toml"
    path.write_text("\n".join(lines).replace('name = "loihi2"', 'name = "nobarrier"'),
                    encoding="utf-8")
    ir = hand_ir(W_HAND)
    chip = load_profile(path)
    price = price_target(count_ops(ir, SPIKES_HAND), chip, resources=map_resources(ir, chip))
    assert price["latency"]["timestep"] is None
    assert price["per_token"]["chip_static"] is None and price["per_token"]["total"] is None
    assert any("barrier_sync" in u["key"] for u in price["unsupported"])


def test_shipped_model_profile_shows_the_latency_terms(tmp_path: Path) -> None:
    out = tmp_path / "prof"
    res = CliRunner().invoke(main, ["profile", str(SHIPPED), "--data", "kjv", "--tokens", "32",
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    for term in ("chip timesteps", "host compute", "chip-host transfers", "slowest core",
                 "blocks.3", "synapses"):
        assert term in res.output
    data = json.loads((out / "profile.json").read_text())
    lat = data["prices"]["loihi2"]["latency"]
    tok, step = lat["token"], lat["timestep"]
    # decode: 2L + 1 timesteps per generated token for policy spikes (simulation.schedule)
    assert tok["timesteps"] == 2 * 4 + 1 and step["model"] == "work"
    assert set(step["layers"]) == {"blocks.0", "blocks.1", "blocks.2", "blocks.3", "head"}
    assert step["compute_ns"] == max(c["time_ns"] for c in step["layers"].values())
    assert tok["total_ns"] == pytest.approx(tok["chip_ns"] + tok["host_ns"] + tok["io_ns"])
    assert (out / "latency_loihi2.csv").exists()
