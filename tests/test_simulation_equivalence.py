"""The Lava simulation of a bundle against PyTorch, the numpy IR and the quantized emulation;
the GatedLIF process against Lava's LIF, and the network planner (no Lava).

A seeded tiny SpikeGPT (2 layers x 32, LIF-feeding weights x32: firing rates 0.2-0.3) is
converted once per module; each Lava run is a handful of processes for a few hundred timesteps
(a few seconds on 2 shared cores). The shipped model, when it exists, gets 64 tokens per precision.
Errors, clean-up and the simulate command's endings are in test_simulation_errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

pytest.importorskip("lava")
pytest.importorskip("torch")

from simulation_helpers import ROOT, TEXT, bundle, model_file  # noqa: E402,F401  (fixtures)

from conftest import pytorch_reference  # noqa: E402
from spikegpt_deploy import api, simulation  # noqa: E402
from spikegpt_deploy.simulation import run as simulation_run  # noqa: E402
from spikegpt_deploy.simulation.lava import runner as lava_runner  # noqa: E402
from spikegpt_deploy.bundle import load_bundle  # noqa: E402
from spikegpt_deploy.checkpoint import load_checkpoint  # noqa: E402
from spikegpt_deploy.data import load_corpus  # noqa: E402
from spikegpt_deploy.errors import DataError, DeployError, SimulationError  # noqa: E402
from spikegpt_deploy.inputs import MAX_TOKENS  # noqa: E402
from spikegpt_deploy.interpreter import Executor  # noqa: E402
from spikegpt_deploy.passes.quantize import emulator  # noqa: E402
from spikegpt_deploy.profiling.counts import count_ops  # noqa: E402
from spikegpt_deploy.sampling import SamplingOptions, generate_ids  # noqa: E402
from spikegpt_deploy.simulation.plan import plan_network  # noqa: E402

GREEDY = SamplingOptions(temperature=0.0)
SHIPPED = ROOT / "examples" / "spikegpt-kjv-4x128.pt"


# --------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_ir(bundle):
    return load_bundle(bundle).ir


@pytest.fixture(scope="module")
def prompt(bundle) -> list[int]:
    return load_bundle(bundle).tokenizer.encode(TEXT[:24])


@pytest.fixture(scope="module")
def float_run(bundle, prompt) -> simulation.SimulationResult:
    return simulation.simulate(bundle, prompt, 64, "float", GREEDY)


@pytest.fixture(scope="module")
def fixed_run(bundle, prompt) -> simulation.SimulationResult:
    return simulation.simulate(bundle, prompt, 64, "fixed", GREEDY)



# ------------------------------------------------------------------------------ equivalence
def test_float_matches_pytorch_and_ir(model_file, bundle, prompt, float_run):
    r = float_run
    assert len(r.generated_ids) == 64 and len(r.token_ids) == len(prompt) + 63 >= 64
    ref_logits, ref_spikes = pytorch_reference(model_file, r.token_ids)
    assert np.max(np.abs(r.logits - ref_logits)) < 1e-3
    ir_logits, ir_spikes = Executor(load_bundle(bundle).ir).run(np.array([r.token_ids]))
    assert np.max(np.abs(r.logits - ir_logits[0])) < 1e-3
    assert set(r.spikes) == set(ref_spikes) == {"emb", "blocks.0.lif1", "blocks.0.lif2",
                                                 "blocks.1.lif1", "blocks.1.lif2"}
    for name, s in ref_spikes.items():
        assert np.array_equal(r.spikes[name], s), name
        assert np.array_equal(r.spikes[name], ir_spikes[name][0]), name
    for name in ("blocks.0.lif1", "blocks.1.lif2"):  # the comparison is not vacuous
        assert 0.05 < r.spikes[name].mean() < 0.6
    model = load_checkpoint(model_file).model
    assert list(generate_ids(model, prompt, 64, GREEDY)) == r.generated_ids


def test_fixed_matches_quantized_emulation(bundle, fixed_run, float_run, prompt):
    r = fixed_run
    ir = load_bundle(bundle).ir
    q_logits, q_spikes = emulator(ir).run(np.array([r.token_ids]))
    for name, s in q_spikes.items():
        assert np.array_equal(r.spikes[name], s[0]), name
    assert np.max(np.abs(r.logits - q_logits[0])) < 1e-5
    assert r.generated_ids == [int(np.argmax(q_logits[0, len(prompt) - 1 + i]))
                               for i in range(64)]
    eq = simulation.equivalence(ir, r, GREEDY)
    assert eq["spikes_identical"] and eq["generated_tokens_identical"]
    # How quantization changes the model (reported, not asserted: a random tiny model).
    q = report_quantization(float_run, r, len(prompt), "tiny model")
    assert q["spike_agreement"] > 0.9 and abs(q["bits_per_char_fixed"]
                                              - q["bits_per_char_float"]) < 1.0


def test_pipeline_depth_and_records(bundle, prompt):
    """The per-population network: a token crosses it alone in D timesteps."""
    r = simulation.simulate(bundle, prompt[:6], 8, "float", GREEDY, network="populations")
    assert r.timesteps_per_token == 2 * 2 + 2  # two Dense hops per block + head + feedback
    assert r.num_steps == len(r.token_ids) * r.timesteps_per_token
    assert r.timesteps_why[-1].endswith(f"D = {r.timesteps_per_token}")
    assert r.processes == {"HostStage": 1, "GatedLIF": 4, "Dense": 3}  # one Dense per layer
    assert r.logits.shape == (len(r.token_ids), load_bundle(bundle).ir.config["vocab_size"])
    assert r.tokens_per_s > 0 and r.step_ms > 0


def test_pipelined_schedule_and_records(bundle, prompt, float_run):
    """The pipelined network: prompt tokens one timestep apart, generated tokens 2L + 1 apart
    (the token is sampled and embedded on the timestep its logits arrive)."""
    r = float_run
    P, T = len(prompt), len(r.token_ids)
    assert r.processes == {"HostPipe": 1, "ChipCore": 1}
    assert r.timesteps_per_token == 2 * 2 + 1
    assert r.schedule["prefill"]["timesteps_per_token"] == 1
    assert r.schedule["prefill"]["ttft_timesteps"] == (P - 1) + 2 * 2 + 2
    assert r.num_steps == (P - 1) + (T - P) * (2 * 2 + 1) + 2 * 2 + 2
    assert r.logits.shape == (T, load_bundle(bundle).ir.config["vocab_size"])
    done = r.schedule["token_done_s"]
    assert all(b >= a for a, b in zip(done, done[1:]))  # logits complete in token order


def test_traffic_and_profiler_counts(bundle, float_run, model_file):
    ir = load_bundle(bundle).ir
    r = float_run
    names = [f"{c['source']}:{c['port']}:{c['direction']}" for c in ir.meta["crossings"]]
    assert list(r.traffic) == names
    for name in ("blocks.0.lif1", "blocks.1.lif2"):  # spikes to the host = spikes fired
        assert np.array_equal(r.traffic[f"{name}:0:chip_to_host"], r.spikes[name].sum(1))
    assert np.array_equal(r.traffic["emb.heaviside:0:host_to_chip"], r.spikes["emb"].sum(1))
    _, ref_spikes = pytorch_reference(model_file, r.token_ids)
    assert count_ops(ir, r.spikes).to_dict() == count_ops(ir, ref_spikes).to_dict()


def test_layers_host_layout_gives_the_same_run(bundle, prompt, fixed_run):
    """One host process per layer (emb, blocks.N, head, chained) instead of one host process."""
    r = simulation.simulate(bundle, prompt, 16, "fixed", GREEDY, host_layout="layers")
    assert r.processes == {"HostStage": 4, "GatedLIF": 4, "Dense": 3}
    assert r.generated_ids == fixed_run.generated_ids[:16]
    n = len(r.token_ids)
    assert all(np.array_equal(v, fixed_run.spikes[k][:n]) for k, v in r.spikes.items())
    assert np.array_equal(r.logits, fixed_run.logits[:n])
    assert all(np.array_equal(v, fixed_run.traffic[k][:n]) for k, v in r.traffic.items())


def test_graded_policy_both_precisions(model_file, prompt):
    path = api.convert(model_file, model_file.with_name("graded.bundle"), force=True,
                       policy="graded")[0]
    ir = load_bundle(path).ir
    for precision, ref in (("fixed", emulator(ir)), ("float", Executor(ir))):
        r = simulation.simulate(path, prompt[:8], 12, precision, GREEDY)
        assert r.timesteps_per_token == 4 * 2 + 1  # + the att.output and ffn.value Denses
        logits, spikes = ref.run(np.array([r.token_ids]))
        assert all(np.array_equal(r.spikes[k], v[0]) for k, v in spikes.items()), precision
        assert np.max(np.abs(r.logits - logits[0])) < 1e-3


@pytest.mark.parametrize("options", [{"weight_bits": 2}, {"weight_bits": 4}, {"weight_bits": 6},
                                     {"weight_bits": 4, "scales": "layer", "rounding": "nearest"},
                                     {"quality_budget": 0.5}],
                         ids=["2bit", "4bit", "6bit", "4bit-layer-nearest", "budget-mix"])
def test_fixed_is_spike_exact_at_every_bit_width(model_file, prompt, tmp_path, options):
    """Lava's fixed-point run equals the quantized emulation, spike for spike and logit for
    logit, whatever the chip weights' width, scales and rounding (and for a per-layer mix)."""
    text = tmp_path / "calibration.txt"
    text.write_text(TEXT, encoding="utf-8")
    path = api.convert(model_file, tmp_path / "b.bundle", calibration=str(text),
                       calibration_tokens=512, check_tokens=16, **options)[0]
    ir = load_bundle(path).ir
    bits = {d["attrs"]["weight_bits"] for _, d in ir.graph.nodes(data=True)
            if d["op"] == "SpikeLinear" and "weight_bits" in d["attrs"]}
    assert bits == ({options["weight_bits"]} if "weight_bits" in options else bits) and bits
    r = simulation.simulate(path, prompt[:8], 12, "fixed", GREEDY)
    logits, spikes = emulator(ir).run(np.array([r.token_ids]))
    assert all(np.array_equal(r.spikes[k], v[0]) for k, v in spikes.items())
    assert np.array_equal(r.logits, logits[0])
    assert r.generated_ids == [int(np.argmax(logits[0, 7 + i])) for i in range(12)]


def test_sampled_generation_matches_pytorch(model_file, bundle, prompt):
    opts = SamplingOptions(temperature=0.8, top_p=0.9, seed=3)
    seen: list[tuple[int, int]] = []
    r = simulation.simulate(bundle, prompt[:6], 12, "float", opts,
                            on_token=lambda i, t, s: seen.append((i, t)))
    model = load_checkpoint(model_file).model
    assert r.generated_ids == list(generate_ids(model, prompt[:6], 12, opts))
    assert seen == list(enumerate(r.generated_ids))  # streamed once each, in order


# ------------------------------------------------------------------------------ GatedLIF
def _build_gated(period: int, phase: int, lif_kw: dict):
    def build(inputs, T):
        from spikegpt_deploy.simulation.lava.procs.gated_lif import GatedLIF
        from spikegpt_deploy.simulation.lava.procs.sinks import StreamSink
        from spikegpt_deploy.simulation.lava.procs.sources import CurrentSource
        src = CurrentSource(data=inputs["a"])
        lif = GatedLIF(shape=inputs["a"].shape[1:], period=period, phase=phase, **lif_kw)
        sink = StreamSink(shape=inputs["a"].shape[1:], num_steps=T)
        src.s_out.connect(lif.a_in)
        lif.s_out.connect(sink.a_in)
        return lava_runner.LavaNetwork(lif, {"s": sink})
    return build


@pytest.mark.parametrize("precision", ["fixed", "float"])
def test_gated_lif_is_lavas_lif_once_per_period(precision):
    """Input only on phase 1 of every 3 timesteps: the spikes are Lava's LIF run on those inputs
    alone (no decay in between), and nothing is sent on the other timesteps."""
    from spikegpt_deploy import fixed_point as fp
    m = fp.map_lif(8)
    rng = np.random.default_rng(4)
    x = rng.normal(0.9, 1.2, (12, 6))
    a = np.zeros((36, 6))
    if precision == "fixed":
        a = a.astype(np.int32)
        a[1::3] = fp.quantize_current(x, m.input_scale)
        ref = fp.lif_fixed_sequence(a[1::3], m)[0]
        kw = {"du": m.fixed.du, "dv": m.fixed.dv, "vth": m.fixed.vth}
    else:
        a[1::3] = m.float.input_gain * x
        v, steps = np.zeros(6, np.float32), []
        for t in range(12):
            spikes, v = fp.spikegpt_lif_step(x[t], v)
            steps.append(spikes)
        ref = np.array(steps)
        kw = {"du": m.float.du, "dv": m.float.dv, "vth": m.float.vth}
    tag = "fixed_pt" if precision == "fixed" else "floating_pt"
    s = lava_runner.LavaRunner(_build_gated(3, 1, kw), tag, timeout_s=60).run(36, {"a": a})
    s = s.outputs["s"]
    assert np.array_equal(s[1::3], ref) and not s[0::3].any() and not s[2::3].any()
    assert 5 < ref.sum() < ref.size


# ------------------------------------------------------------------------- planner (no Lava)
def test_plan_phases_and_processes(bundle):
    ir = load_bundle(bundle).ir
    plan = plan_network(ir, "fixed", [1, 2], 3, GREEDY)
    assert plan.period == 6 and plan.process_counts() == {"HostStage": 1, "GatedLIF": 4,
                                                          "Dense": 3}
    lif_phase = {p.name: p.phase for p in plan.chip if p.kind == "GatedLIF"}
    assert lif_phase == {"lif:blocks.0.lif1": 1, "lif:blocks.0.lif2": 2,
                         "lif:blocks.1.lif1": 3, "lif:blocks.1.lif2": 4}
    (host,) = plan.stages.values()
    spikes_in = [s for s in host.ins if s.group == "spikes"]
    assert len(spikes_in) == 1 and sorted(spikes_in[0].entries) == [1, 2, 3, 4]
    layers = plan_network(ir, "float", [1, 2], 3, GREEDY, host_layout="layers")
    assert list(layers.stages) == ["emb", "blocks.0", "blocks.1", "head"]
    assert layers.period == plan.period
    with pytest.raises(SimulationError, match="host layout"):
        plan_network(ir, "float", [1], 1, GREEDY, host_layout="many")
    unquantized = ir.copy()
    unquantized.passes.remove("quantize")
    with pytest.raises(SimulationError, match="quantized"):
        plan_network(unquantized, "fixed", [1], 1, GREEDY)


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.one_of(st.integers(-5, 100), st.floats(allow_nan=True), st.text(max_size=2)),
                    max_size=4),
       n=st.one_of(st.integers(-3, 5), st.floats(allow_nan=True), st.booleans(), st.none()))
# Pinned, so every run tries them whatever the seed: non-finite and non-integer ids, ids just
# outside the vocabulary, ids too large for any integer type, and counts likewise.
@example(ids=[float("inf")], n=1)
@example(ids=[float("-inf"), 1], n=1)
@example(ids=[float("nan")], n=1)
@example(ids=[1.5], n=1)
@example(ids=[2.0], n=1)
@example(ids=[-1], n=1)
@example(ids=[len(set(TEXT))], n=1)  # the vocabulary size: one past the last id
@example(ids=[2**64], n=1)
@example(ids=[10**400], n=1)
@example(ids=[10**5000], n=1)  # too long for int -> str
@example(ids=[np.int64(2**62)], n=1)
@example(ids=[True], n=1)
@example(ids=[1], n=float("inf"))
@example(ids=[1], n=float("nan"))
@example(ids=[1], n=1.5)
@example(ids=[1], n=-1)
@example(ids=[1], n=99_999_999_999)
@example(ids=[1], n=10**400)
@example(ids=[1], n=10**5000)
def test_bad_inputs_raise_only_data_errors(tiny_ir, ids, n):
    try:
        out = simulation_run._check_inputs(tiny_ir, ids, n, "float", GREEDY)
    except DataError:
        return
    assert out == ids and all(0 <= t < tiny_ir.config["vocab_size"] for t in out)
    assert all(type(t) is int for t in out) and type(n) is int and 0 <= n <= MAX_TOKENS



# ---------------------------------------------------------------------------- shipped model
@pytest.mark.skipif(not SHIPPED.is_file(), reason="examples/spikegpt-kjv-4x128.pt not built yet")
def test_shipped_model_64_tokens(tmp_path):
    try:
        text, calibration = load_corpus("kjv").valid[:48], "kjv"
    except DeployError:  # no KJV corpus installed: a fixed prompt, seeded random calibration
        text, calibration = "In the beginning God created the heaven and the e", None
    path = api.convert(SHIPPED, tmp_path / "kjv.bundle", force=True, calibration=calibration)[0]
    b = load_bundle(path)
    ids = b.tokenizer.encode(text)
    runs = {p: simulation.simulate(path, ids, 64 - len(ids) + 1, p, GREEDY)
            for p in ("float", "fixed")}
    f, q = runs["float"], runs["fixed"]
    assert len(f.token_ids) == 64
    ref_logits, ref_spikes = pytorch_reference(SHIPPED, f.token_ids)
    assert np.max(np.abs(f.logits - ref_logits)) < 1e-3
    assert all(np.array_equal(f.spikes[k], v) for k, v in ref_spikes.items())
    assert f.generated_ids == [int(np.argmax(ref_logits[len(ids) - 1 + i]))
                               for i in range(len(f.generated_ids))]
    eq = simulation.equivalence(b.ir, q, GREEDY)
    assert eq["spikes_identical"] and eq["generated_tokens_identical"]
    report_quantization(f, q, len(ids), "shipped model")


def report_quantization(f: simulation.SimulationResult, q: simulation.SimulationResult,
                        n_prompt: int, what: str) -> dict:
    """How the fixed-point run differs from the float run on the same prompt (printed)."""
    nxt = f.token_ids[1:n_prompt]
    out = {"bits_per_char_float": simulation.bits_per_token(f.logits, nxt),
           "bits_per_char_fixed": simulation.bits_per_token(q.logits, nxt),
           "next_char_argmax_agreement": float(np.mean(f.logits[:n_prompt - 1].argmax(1)
                                                       == q.logits[:n_prompt - 1].argmax(1))),
           "continuation_agreement": float(np.mean(np.array(f.generated_ids)
                                                   == np.array(q.generated_ids))),
           "spike_agreement": float(np.mean([np.mean(f.spikes[k][:n_prompt]
                                                     == q.spikes[k][:n_prompt])
                                             for k in f.spikes]))}
    print(f"\n{what}, fixed vs float over a {n_prompt}-character prompt: "
          + ", ".join(f"{k} {v:.4f}" for k, v in out.items()))
    return out
