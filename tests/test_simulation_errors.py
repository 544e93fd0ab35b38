"""Errors and clean-up of the Lava simulation: tampered bundles and bad prompts, a failing host
process, the simulate command's one-line errors and JSON output, and every way a ``simulate``
can end (return, error, signals) leaving no process and no /dev/shm segment behind.

The seeded tiny SpikeGPT bundle is converted once per module (simulation_helpers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

pytest.importorskip("lava")
pytest.importorskip("torch")

from simulation_helpers import ROOT, TEXT, bundle, model_file  # noqa: E402,F401  (fixtures)

from conftest import CLI  # noqa: E402
from proc_watch import Spawned, descendants  # noqa: E402
from spikegpt_deploy import simulation  # noqa: E402
from spikegpt_deploy.simulation.lava import runner as lava_runner  # noqa: E402
from spikegpt_deploy.errors import BundleError, DataError, SimulationError  # noqa: E402


# ----------------------------------------------------------------------------------- errors
def _psm() -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith("psm_")}


def test_tampered_bundle_and_bad_prompts(bundle, tmp_path):
    import shutil
    bad = tmp_path / "tampered.bundle"
    shutil.copytree(bundle, bad)
    (bad / "ir.json").write_text((bad / "ir.json").read_text() + " ")
    with pytest.raises(BundleError, match="sha256"):
        simulation.simulate(bad, [1, 2], 3)
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        simulation.simulate_text(bundle, "Thé", 3)
    with pytest.raises(DataError, match="outside the vocabulary"):
        simulation.simulate(bundle, [1, 10_000], 3)
    with pytest.raises(DataError, match="empty"):
        simulation.simulate(bundle, [], 3)
    with pytest.raises(SimulationError, match="precision"):
        simulation.simulate(bundle, [1], 3, "double")


def test_host_process_exception_is_reported_and_cleaned_up(bundle, monkeypatch):
    runners = []

    class Recording(lava_runner.LavaRunner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runners.append(self)

    monkeypatch.setattr(lava_runner, "LavaRunner", Recording)
    before = set(descendants(os.getpid()))
    t0 = time.monotonic()
    with pytest.raises(SimulationError, match="injected fault in host stage 'blocks.1' at token 3"):
        simulation.simulate(bundle, [1, 2, 3], 8, "fixed", host_layout="layers",
                            fault=("blocks.1", 3))
    assert time.monotonic() - t0 < 60
    (runner,) = runners
    assert runner.last_segments and runner.leftovers() == ([], [])
    assert set(descendants(os.getpid())) <= before


def test_cli_errors_are_one_line(bundle, tmp_path):
    import shutil
    tampered = tmp_path / "tampered.bundle"
    shutil.copytree(bundle, tampered)
    (tampered / "manifest.json").write_text("{")
    for target, prompt, expect in ((bundle, "Thé", "outside the model's vocabulary"),
                                   (tmp_path / "missing", "x", "not a bundle directory"),
                                   (tampered, "x", "not valid JSON")):
        p = subprocess.run([*CLI, "simulate", str(target), "--prompt", prompt, "--tokens", "2"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1, p.stderr
        assert lines[0].startswith("error:") and expect in lines[0] and p.stdout == ""
    p = subprocess.run([*CLI, "simulate", str(bundle), "--prompt", "x", "--precision", "double"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stdout == ""  # click usage


def test_cli_json(bundle):
    p = subprocess.run([*CLI, "simulate", str(bundle), "--prompt", TEXT[:10], "--tokens", "6",
                        "--precision", "fixed", "--temperature", "0", "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert len(out["generated_ids"]) == 6 and isinstance(out["text"], str)
    assert out["timesteps_per_token"] == 5 and out["precision"] == "fixed"
    eq = out["equivalence"]
    assert eq["spikes_identical"] and eq["generated_tokens_identical"]
    assert eq["max_abs_logit_diff"] < 1e-5 and "tokens/s" not in p.stdout
    assert "tok/s" not in p.stderr  # progress lines go to a terminal only, not into a pipe


# How each ending ends the command: its exit code and the last line on stderr.
CLI_ENDINGS = {
    "return": (0, "tokens in Lava float"),
    "error": (1, "error: Lava run (floating_pt"),          # --timeout hit mid-run
    "SIGINT": (128 + signal.SIGINT, "interrupted (SIGINT)"),
    "SIGTERM": (128 + signal.SIGTERM, "interrupted (SIGTERM)"),
    "SIGHUP": (128 + signal.SIGHUP, "interrupted (SIGHUP)"),
    "SIGKILL": (-signal.SIGKILL, None),                    # no handler runs: the run's child cleans
}


@pytest.mark.parametrize("ending", list(CLI_ENDINGS))
def test_cli_simulate_leaves_nothing_behind(bundle, ending):
    """Every way a ``simulate`` can end leaves no process and no /dev/shm segment of the run:
    right away when the command's own code runs to the end, within seconds after a SIGKILL of
    the command (the run's child watches its parent)."""
    tokens = {"return": "2000", "error": "100000"}.get(ending, "100000")  # return: >= seconds
    timeout = ["--timeout", "40"] if ending == "error" else []
    with Spawned([*CLI, "simulate", str(bundle), "--prompt", TEXT[:10], "--tokens", tokens,
                  "--temperature", "0", *timeout], cwd=ROOT) as run:
        # until the Lava network runs and tokens stream out of it
        started = run.wait_until(lambda: len(run.seen) >= 6 and run.segments  # all 6 up
                                 and (run.output()[0] or run.proc.poll() is not None), 180)
        assert started and run.segments, f"the simulation did not start: {run.output()}"
        if ending.startswith("SIG"):
            assert run.proc.poll() is None, run.output()
            run.proc.send_signal(getattr(signal, ending))
        rc = run.wait_exit(180)
        out, err = run.output()
        want_rc, want_line = CLI_ENDINGS[ending]
        assert rc == want_rc, (rc, err[-2000:])
        if ending == "SIGKILL":
            assert run.wait_until(lambda: not run.survivors() and not run.leftover_segments(),
                                  30), (run.survivors(), run.leftover_segments())
        else:
            assert "Traceback" not in err and want_line in err.strip().splitlines()[-1], err[-2000:]
            assert run.survivors() == [] and run.leftover_segments() == []

