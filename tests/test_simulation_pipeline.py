"""The pipelined Lava network: teacher-forced evaluation (``evaluate BUNDLE --backend lava``)
and the one schedule that the simulator runs and the profiler prices.

A seeded tiny SpikeGPT (2 layers x 32, firing LIFs) is converted once per module; each Lava run
is two processes for a few dozen timesteps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # lava's wheels install a top-level `tests` package
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("lava")
pytest.importorskip("torch")

from conftest import CLI, pytorch_reference, random_text, save_char_model  # noqa: E402
from proc_watch import descendants  # noqa: E402
from spikegpt_deploy import api, simulation  # noqa: E402
from spikegpt_deploy.bundle import load_bundle  # noqa: E402
from spikegpt_deploy.errors import DataError, SimulationError  # noqa: E402
from spikegpt_deploy.passes.quantize import emulator  # noqa: E402
from spikegpt_deploy.sampling import SamplingOptions  # noqa: E402
from spikegpt_deploy.simulation.pipelined import evaluate_tokens  # noqa: E402
from spikegpt_deploy.simulation.schedule import schedule_of  # noqa: E402

TEXT = random_text(4000, seed=2)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_char_model(tmp_path_factory.mktemp("pipe") / "tiny.pt", TEXT, seed=2)


@pytest.fixture(scope="module")
def bundle(model_file) -> Path:
    return api.convert(model_file, model_file.with_suffix(".bundle"), force=True)[0]


@pytest.fixture(scope="module")
def held_out(bundle) -> list[int]:
    return load_bundle(bundle).tokenizer.encode(TEXT[-48:])


def test_schedule_regimes(bundle):
    s = schedule_of(load_bundle(bundle).ir)
    assert (s.depth, s.interval, s.decode, s.rounds) == (2 * 2 + 2, 1, 2 * 2 + 1, 1)
    assert s.starts(3, 2) == [0, 1, 2, 7, 12]
    assert s.num_steps(3, 2) == 12 + s.depth
    reg = s.regimes(100)
    assert reg["prefill"]["ttft_timesteps"] == 99 + s.depth
    assert reg["prefill"]["tokens_per_timestep"] == 1.0
    assert reg["decode"]["timesteps_per_token"] == 5.0


def test_block_units(bundle):
    """Block prefill: blocks of prompt tokens on consecutive Lava steps, then each generated
    token alone, ``decode`` steps after the unit it is sampled from."""
    s = schedule_of(load_bundle(bundle).ir)
    assert s.units(7, 2, 3) == [(0, 0, 3), (1, 3, 3), (2, 6, 1), (7, 7, 1), (12, 8, 1)]
    assert s.units(3, 2, 1) == [(st, k, 1) for k, st in enumerate(s.starts(3, 2))]
    assert s.units(4, 0, 16) == [(0, 0, 4)]
    with pytest.raises(SimulationError, match="prefill block"):
        s.units(4, 0, 0)


def test_block_prefill_equals_token_by_token(bundle, held_out):
    """23 prompt tokens in blocks of 5 (which does not divide 23), then 4 generated tokens:
    logits, spikes, traffic and the generated tokens are those of the token-by-token run
    exactly (fixed precision), on the same chip timesteps, in fewer Lava steps."""
    ids, greedy = held_out[:23], SamplingOptions(0.0)
    one = simulation.simulate(bundle, ids, 4, "fixed", greedy, prefill_block=1)
    five = simulation.simulate(bundle, ids, 4, "fixed", greedy, prefill_block=5)
    assert five.generated_ids == one.generated_ids
    assert np.array_equal(five.logits, one.logits)
    assert all(np.array_equal(five.spikes[k], one.spikes[k]) for k in one.spikes)
    assert all(np.array_equal(five.traffic[k], one.traffic[k]) for k in one.traffic)
    assert five.num_steps == one.num_steps == 22 + 3 * 5 + 6  # the chip's timesteps
    assert one.schedule["lava_steps"] == one.num_steps
    assert five.schedule["lava_steps"] == 4 + 3 * 5 + 6  # 5 blocks, then 3 tokens fed back
    assert five.schedule["prefill"] == one.schedule["prefill"]  # what the profiler prices
    ev = evaluate_tokens(bundle, ids, "fixed", block=5)
    assert ev.spikes_identical and ev.max_abs_logit_diff == 0.0
    assert ev.bits_per_token == ev.reference_bits_per_token


def test_fixed_evaluation_equals_the_emulation_exactly(bundle, held_out):
    ev = evaluate_tokens(bundle, held_out, "fixed")
    ref_logits, _ = emulator(load_bundle(bundle).ir).run(np.asarray([held_out]))
    assert ev.spikes_identical and ev.spike_agreement == 1.0
    assert ev.max_abs_logit_diff == 0.0
    assert ev.bits_per_token == ev.reference_bits_per_token  # to the last digit
    assert ev.bits_per_token == simulation.bits_per_token(ref_logits[0], held_out[1:])
    assert ev.timesteps == len(held_out) - 1 + 2 * 2 + 2  # one token per timestep
    assert ev.processes == {"HostPipe": 1, "ChipCore": 1}


@pytest.mark.parametrize("options", [{"weight_bits": 3}, {"weight_bits": 5}, {"weight_bits": 7},
                                     {"weight_bits": 6, "scales": "layer", "rounding": "nearest"},
                                     {"quality_budget": 0.5}],
                         ids=["3bit", "5bit", "7bit", "6bit-layer-nearest", "budget-mix"])
def test_fixed_is_exact_at_every_bit_width(model_file, held_out, tmp_path, options):
    """The pipelined fixed-point network equals the quantized emulation exactly whatever the
    chip weights' width, scales and rounding, and for a budget's mix of widths."""
    text = tmp_path / "calibration.txt"
    text.write_text(TEXT, encoding="utf-8")
    path = api.convert(model_file, tmp_path / "b.bundle", calibration=str(text),
                       calibration_tokens=512, check_tokens=16, **options)[0]
    ev = evaluate_tokens(path, held_out[:24], "fixed")
    assert ev.spikes_identical and ev.max_abs_logit_diff == 0.0
    assert ev.bits_per_token == ev.reference_bits_per_token


def test_float_evaluation_matches_pytorch(model_file, bundle, held_out):
    r = simulation.simulate(bundle, held_out, 0, "float")
    logits, spikes = pytorch_reference(model_file, held_out)
    assert np.max(np.abs(r.logits - logits)) < 1e-3
    for name, s in spikes.items():
        assert np.array_equal(r.spikes[name], s), name
    ev = evaluate_tokens(bundle, held_out, "float")
    assert abs(ev.bits_per_token - simulation.bits_per_token(logits, held_out[1:])) < 1e-3


def test_pipelined_and_per_population_networks_agree(bundle, held_out):
    a = simulation.simulate(bundle, held_out[:10], 6, "fixed", SamplingOptions(0.0))
    b = simulation.simulate(bundle, held_out[:10], 6, "fixed", SamplingOptions(0.0),
                            network="populations")
    assert a.generated_ids == b.generated_ids and np.array_equal(a.logits, b.logits)
    assert all(np.array_equal(a.spikes[k], b.spikes[k]) for k in b.spikes)
    assert all(np.array_equal(a.traffic[k], b.traffic[k]) for k in b.traffic)
    assert a.num_steps < b.num_steps


def test_cli_evaluate_lava(bundle, tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    p = subprocess.run([*CLI, "evaluate", str(bundle), "--backend", "lava", "--precision",
                        "fixed", "--data", str(data), "--max-tokens", "40", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["tokens"] == 40 and out["spikes_identical"]
    assert out["bits_per_token"] == out["reference_bits_per_token"]
    p = subprocess.run([*CLI, "evaluate", "--backend", "lava"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and "pass BUNDLE" in p.stderr and "Traceback" not in p.stderr


def test_bad_evaluation_input(bundle):
    with pytest.raises(DataError, match="at least 2 tokens"):
        evaluate_tokens(bundle, [1], "fixed")
    with pytest.raises(DataError, match="outside the vocabulary"):
        evaluate_tokens(bundle, [1, 10 ** 6], "fixed")
    with pytest.raises(SimulationError, match="precision"):
        evaluate_tokens(bundle, [1, 2], "double")


def test_host_fault_in_the_pipelined_network_is_reported_and_cleaned_up(bundle):
    before = set(descendants(os.getpid()))
    t0 = time.monotonic()
    with pytest.raises(SimulationError, match="injected fault in host stage 'host' at token 3"):
        simulation.simulate(bundle, [1, 2, 3, 4, 5], 4, "fixed", fault=("host", 3))
    assert time.monotonic() - t0 < 60
    assert set(descendants(os.getpid())) <= before
