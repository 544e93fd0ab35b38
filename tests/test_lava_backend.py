"""Lava itself against the LIF mapping and the fixed-point emulation, and the runner's cleanup.

Each Lava run is a few processes for tens of steps (about 1 s with compile) on 2 shared cores.
"""

from __future__ import annotations

import signal
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # lava's wheels install a top-level `tests` package
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from proc_watch import Spawned  # noqa: E402

from spikegpt_deploy import fixed_point as fp  # noqa: E402
from spikegpt_deploy.simulation.backend import SimulationBackend  # noqa: E402
from spikegpt_deploy.simulation.lava.runner import LavaNetwork, LavaRunner  # noqa: E402
from spikegpt_deploy.errors import ConversionError, SimulationError  # noqa: E402

NIR_DIR = ROOT / "tests" / "data" / "nir-paper-01-lif"


# ------------------------------------------------------------------ network builders (child)
def build_lif(lif_kw: dict, extra_lif_kw: dict | None = None):
    """CurrentSource -> LIF (-> a second LIF with other parameters) with spike sinks and u/v probes."""
    def build(inputs, T):
        from lava.proc.lif.process import LIF
        from spikegpt_deploy.simulation.lava.procs.sinks import StreamSink, VarProbe
        from spikegpt_deploy.simulation.lava.procs.sources import CurrentSource
        src = CurrentSource(data=inputs["a"])
        n = inputs["a"].shape[1]
        outputs, lifs = {}, {"": lif_kw, "2": extra_lif_kw}
        for key, kw in lifs.items():
            if kw is None:
                continue
            lif = LIF(shape=(n,), **kw)
            sink = StreamSink(shape=(n,), num_steps=T)
            src.s_out.connect(lif.a_in)
            lif.s_out.connect(sink.a_in)
            outputs.update({"s" + key: sink, "u" + key: VarProbe(var=lif.u, num_steps=T),
                            "v" + key: VarProbe(var=lif.v, num_steps=T)})
        return LavaNetwork(run_process=lif, outputs=outputs)
    return build


def build_dense_lif(dense_kw: dict, naive_kw: dict, lif_kw: dict):
    """RingBuffer spikes -> Dense (quantized) -> LIF, and -> Dense (naive int8) -> LIF."""
    def build(inputs, T):
        from lava.proc.dense.process import Dense
        from lava.proc.io.source import RingBuffer
        from lava.proc.lif.process import LIF
        from spikegpt_deploy.simulation.lava.procs.sinks import StreamSink, VarProbe
        src = RingBuffer(data=inputs["s"].T.copy())  # Lava's RingBuffer is time-last
        outputs = {}
        for key, kw in (("", dense_kw), ("naive", naive_kw)):
            dense = Dense(**kw)
            n = kw["weights"].shape[0]
            lif = LIF(shape=(n,), **lif_kw)
            sink = StreamSink(shape=(n,), num_steps=T)
            src.s_out.connect(dense.s_in)
            dense.a_out.connect(lif.a_in)
            lif.s_out.connect(sink.a_in)
            outputs.update({"s" + key: sink, "u" + key: VarProbe(var=lif.u, num_steps=T),
                            "v" + key: VarProbe(var=lif.v, num_steps=T)})
        return LavaNetwork(run_process=lif, outputs=outputs)
    return build


def build_fail(action: str, fail_step: int = 3):
    def build(inputs, T):
        from lava.proc.lif.process import LIF
        from spikegpt_deploy.simulation.lava.procs.faults import FailAt
        from spikegpt_deploy.simulation.lava.procs.sinks import StreamSink
        from spikegpt_deploy.simulation.lava.procs.sources import CurrentSource
        n = inputs["a"].shape[1]
        src, lif = CurrentSource(data=inputs["a"]), LIF(shape=(n,), du=4095, dv=2048, vth=64)
        fail = FailAt(shape=(n,), fail_step=fail_step, message="boom at step 3", action=action)
        sink = StreamSink(shape=(n,), num_steps=T)
        src.s_out.connect(fail.s_in)
        fail.s_out.connect(lif.a_in)
        lif.s_out.connect(sink.a_in)
        return LavaNetwork(run_process=lif, outputs={"s": sink})
    return build


def _lif_kw(p: fp.FloatLifParams | fp.FixedLifParams) -> dict:
    return {"du": p.du, "dv": p.dv, "vth": p.vth}


def _assert_clean(runner: LavaRunner) -> None:
    assert runner.last_segments, "the run should have reported its shared-memory segments"
    assert runner.leftovers() == ([], [])


# ----------------------------------------------------------------------------- numerics
def test_float_lif_reproduces_lif_step():
    import torch
    from spikegpt_deploy.model.layers import lif_step

    m = fp.map_lif()
    rng = np.random.default_rng(3)
    T, n = 40, 8
    x = rng.normal(0.8, 1.0, (T, n)).astype(np.float32)
    runner = LavaRunner(build_lif(_lif_kw(m.float)), "floating_pt", timeout_s=60)
    res = runner.run(T, {"a": m.float.input_gain * x.astype(np.float64)})
    _assert_clean(runner)
    v32, v64 = torch.zeros(n), torch.zeros(n, dtype=torch.float64)
    for t in range(T):
        s32, v32 = lif_step(torch.from_numpy(x[t]), v32)
        s64, v64 = lif_step(torch.from_numpy(x[t]).double(), v64)
        assert np.array_equal(res.outputs["s"][t], s32.numpy()), f"step {t}"
        assert np.array_equal(res.outputs["s"][t], s64.numpy())
        np.testing.assert_allclose(res.outputs["v"][t], v64.numpy(), rtol=0, atol=1e-12)
    assert 20 < res.outputs["s"].sum() < T * n


def test_float_lif_ties_fire_only_with_mapped_vth():
    """H == 1.0 exactly: SpikeGPT fires (>=); Lava's LIF with vth = 1.0 does not (>), with the
    mapping's vth = nextafter(1, 0) it does."""
    m = fp.map_lif()
    x = np.array([[2.0, 1.0], [0.0, 1.5], [0.0, 0.0]])  # ties at (0, 0) and (1, 1)
    plain = dict(_lif_kw(m.float), vth=1.0)
    runner = LavaRunner(build_lif(_lif_kw(m.float), plain), "floating_pt", timeout_s=60)
    res = runner.run(3, {"a": m.float.input_gain * x})
    assert res.outputs["s"].tolist() == [[1, 0], [0, 1], [0, 0]]
    assert res.outputs["s2"].sum() == 0


def test_fixed_dense_lif_matches_emulation():
    m = fp.map_lif(6)
    rng = np.random.default_rng(5)
    T, n_in, n = 40, 6, 5
    spikes = (rng.random((T, n_in)) < 0.4).astype(np.int32)
    q = fp.quantize_weights(rng.normal(0.3, 1.0, (n, n_in)), 8, m.input_scale)
    kw = q.lava_dense_kwargs()
    naive = {"weights": q.mantissa, "weight_exp": q.exponent}  # mixed signs: LSB dropped
    assert fp.dense_sign_mode(q.mantissa) == "mixed" and (q.mantissa % 2 != 0).any()
    runner = LavaRunner(build_dense_lif(kw, naive, _lif_kw(m.fixed)), "fixed_pt", timeout_s=60)
    res = runner.run(T, {"s": spikes})
    _assert_clean(runner)
    for key, d in (("", kw), ("naive", naive)):
        a = fp.dense_fixed_sequence(d["weights"], d["weight_exp"], spikes,
                                    d.get("num_weight_bits", 8))
        s, u, v = fp.lif_fixed_sequence(a, m)
        assert np.array_equal(res.outputs["s" + key], s), key
        assert np.array_equal(res.outputs["u" + key], u), key
        assert np.array_equal(res.outputs["v" + key], v), key
    exact = fp.dense_fixed_sequence(q.mantissa * 2, q.exponent - 1, spikes)
    assert np.array_equal(fp.dense_fixed_sequence(**kw, spikes=spikes), exact)
    quirk = fp.dense_fixed_sequence(naive["weights"], naive["weight_exp"], spikes)
    assert not np.array_equal(quirk, exact)  # the quirk changes currents in this network
    assert res.outputs["s"].sum() > 5


def test_fixed_lif_from_host_currents_matches_emulation():
    m = fp.map_lif(10)
    x = np.random.default_rng(7).normal(0.8, 1.5, (40, 6))
    a = fp.quantize_current(x, m.input_scale)
    runner = LavaRunner(build_lif(_lif_kw(m.fixed)), "fixed_pt", timeout_s=60)
    res = runner.run(40, {"a": a})
    s, u, v = fp.lif_fixed_sequence(a, m)
    assert np.array_equal(res.outputs["s"], s)
    assert np.array_equal(res.outputs["u"], u) and np.array_equal(res.outputs["v"], v)
    assert fp.compare_float_fixed(x, m).agreement > 0.99


def test_nir_fixed_trace_reproduced_by_lava():
    """Lava's fixed LIF with the NIR conversion (tests/test_fixed_point.py::nir_lif_to_lava:
    w 10, vth 25, dv 163, du 4095) reproduces the paper's Lava CPU trace exactly, 1000 steps."""
    ref = np.loadtxt(NIR_DIR / "lif_lava_cpu_fixed.csv", delimiter=",")

    def build(inputs, T):
        from lava.proc.dense.process import Dense
        from lava.proc.lif.process import LIF
        from spikegpt_deploy.simulation.lava.procs.sinks import StreamSink, VarProbe
        from spikegpt_deploy.simulation.lava.procs.sources import CurrentSource
        src, dense = CurrentSource(data=inputs["s"]), Dense(weights=np.array([[10]]))
        lif, sink = LIF(shape=(1,), du=4095, dv=163, vth=25), StreamSink(shape=(1,), num_steps=T)
        src.s_out.connect(dense.s_in)
        dense.a_out.connect(lif.a_in)
        lif.s_out.connect(sink.a_in)
        return LavaNetwork(lif, {"s": sink, "v": VarProbe(var=lif.v, num_steps=T)})

    res = LavaRunner(build, "fixed_pt", timeout_s=60).run(len(ref), {"s": ref[:, :1].astype(int)})
    assert np.array_equal(res.outputs["v"][:, 0], ref[:, 1])
    assert np.array_equal(res.outputs["s"][:, 0], ref[:, 2])


# ------------------------------------------------------------------------------- runner
def test_runner_success_is_clean_and_timed():
    a = np.full((20, 3), 3000, dtype=np.int32)
    with LavaRunner(build_lif({"du": 4095, "dv": 2048, "vth": 4096}), "fixed_pt") as runner:
        assert isinstance(runner, SimulationBackend)
        res = runner.run(20, {"a": a})
        _assert_clean(runner)
    assert res.outputs["s"].shape == (20, 3) and res.num_steps == 20
    assert res.run_s > 0 and res.compile_s > 0 and res.step_ms == pytest.approx(
        1e3 * res.run_s / 20)


def test_runner_surfaces_model_exception_and_cleans_up():
    runner = LavaRunner(build_fail("raise"), "fixed_pt", timeout_s=60)
    t0 = time.monotonic()
    with pytest.raises(SimulationError, match="boom at step 3") as info:
        runner.run(30, {"a": np.ones((30, 2), np.int32)})
    assert "RuntimeError" in str(info.value) and time.monotonic() - t0 < 30
    _assert_clean(runner)


def test_runner_reports_float_into_fixed_lif_instead_of_hanging():
    """A float OutPort into a bit-accurate LIF hangs plain Lava silently (docs/lava.md); the runner
    sees the LIF's process die and reports its error."""
    def build(inputs, T):
        from lava.proc.io.source import PySendModelFloat, RingBuffer
        from lava.proc.lif.process import LIF
        from spikegpt_deploy.simulation.lava.procs.sinks import StreamSink
        src, lif = RingBuffer(data=np.full((2, T), 0.5)), LIF(shape=(2,), du=4095, dv=2048, vth=9)
        sink = StreamSink(shape=(2,), num_steps=T)
        src.s_out.connect(lif.a_in)
        lif.s_out.connect(sink.a_in)
        return LavaNetwork(lif, {"s": sink}, exception_proc_model_map={RingBuffer: PySendModelFloat})

    runner = LavaRunner(build, "fixed_pt", timeout_s=60)
    with pytest.raises(SimulationError, match="left_shift"):
        runner.run(10)
    _assert_clean(runner)


def test_runner_timeout_on_hang_cleans_up():
    runner = LavaRunner(build_fail("hang"), "fixed_pt", timeout_s=4)
    with pytest.raises(SimulationError, match="did not finish within 4 s"):
        runner.run(30, {"a": np.ones((30, 2), np.int32)})
    _assert_clean(runner)


def test_runner_build_errors():
    def bad_build(inputs, T):
        raise ConversionError("no such layer: blocks.9")

    with pytest.raises(ConversionError, match="blocks.9"):
        LavaRunner(bad_build, "fixed_pt", timeout_s=60).run(5)
    with pytest.raises(SimulationError, match="expected a LavaNetwork"):
        LavaRunner(lambda inputs, T: 42, "fixed_pt", timeout_s=60).run(5)
    with pytest.raises(SimulationError, match="floating_pt"):
        LavaRunner(bad_build, "float")


# ------------------------------------------------------------------- signals to the caller
RUN_FOREVER_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import numpy as np
    from spikegpt_deploy.simulation.lava.runner import LavaNetwork, LavaRunner

    def build(inputs, T):
        from lava.proc.lif.process import LIF
        from spikegpt_deploy.simulation.lava.procs.sinks import StreamSink
        from spikegpt_deploy.simulation.lava.procs.sources import CurrentSource
        src, lif = CurrentSource(data=inputs["a"]), LIF(shape=(3,), du=4095, dv=2048, vth=4096)
        sink = StreamSink(shape=(3,), num_steps=10)
        src.s_out.connect(lif.a_in)
        lif.s_out.connect(sink.a_in)
        return LavaNetwork(lif, {{"s": sink}})

    runner = LavaRunner(build, "fixed_pt", timeout_s=120)
    try:
        runner.run(10**6, {{"a": np.full((10, 3), 100, dtype=np.int32)}})
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        sys.exit(130)
""")

# How each signal ends a caller that installed no handler of its own: Ctrl-C as the script's
# KeyboardInterrupt (exit 130); SIGTERM and SIGHUP by the signal itself, after the runner's
# cleanup (signals.termination_raises); SIGKILL at once, the run's child cleans up after it.
ENDINGS = {signal.SIGINT: 130, signal.SIGTERM: -signal.SIGTERM, signal.SIGHUP: -signal.SIGHUP,
           signal.SIGKILL: -signal.SIGKILL}


@pytest.mark.parametrize("signum", list(ENDINGS), ids=lambda s: signal.Signals(s).name)
def test_runner_signal_leaves_nothing_behind(signum):
    """Whatever signal ends the caller mid-run, no process and no /dev/shm segment of the run is
    left: right away for SIGINT / SIGTERM / SIGHUP, within seconds after a SIGKILL (the child's
    watchdog polls its parent every 0.1 s)."""
    with Spawned([sys.executable, "-c", RUN_FOREVER_SCRIPT.format(root=str(ROOT))],
                 cwd=ROOT) as run:
        started = run.wait_until(lambda: len(run.seen) >= 6 and run.segments, 60)
        time.sleep(1.0)  # well into the run
        run.watch()
        assert started and run.proc.poll() is None, f"the run did not start: {run.output()}"
        run.proc.send_signal(signum)
        rc = run.wait_exit(60)
        out, err = run.output()
        assert rc == ENDINGS[signum], (rc, err[-2000:])
        if signum == signal.SIGINT:
            assert "INTERRUPTED" in out
        if signum != signal.SIGKILL:
            assert "Traceback" not in err, err[-2000:]
            assert run.survivors() == [] and run.leftover_segments() == []
        else:
            assert run.wait_until(lambda: not run.survivors() and not run.leftover_segments(),
                                  30), (run.survivors(), run.leftover_segments())
