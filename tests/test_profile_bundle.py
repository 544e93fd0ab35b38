"""Profiling a bundle through the Lava simulation gives the PyTorch path's counts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_tiny_model, random_text
from proc_watch import Spawned
from spikegpt_deploy import api
from spikegpt_deploy.checkpoint import save_model
from spikegpt_deploy.data import CharTokenizer
from spikegpt_deploy.profiling import profile_bundle, profile_checkpoint

TOKENS = 48
_EXE = Path(sys.executable).with_name("spikegpt-deploy")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("profile_bundle")
    text = random_text(6000, seed=3)
    corpus = root / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    model_path = root / "tiny.pt"
    save_model(make_tiny_model(n_layer=2, n_embd=32, vocab_size=tok.vocab_size, seed=2),
               model_path, tok)
    bundle, _ = api.convert(model_path, root / "tiny.bundle", force=True)
    return model_path, bundle, corpus


def test_lava_float_counts_equal_pytorch_counts(files) -> None:
    model_path, bundle, corpus = files
    torch_result = profile_checkpoint(model_path, str(corpus), TOKENS)
    lava_result = profile_bundle(bundle, str(corpus), TOKENS, "float")
    a = torch_result.counts["loihi2"].to_dict()
    b = lava_result.counts["loihi2"].to_dict()
    assert a["tokens"] == b["tokens"] == TOKENS
    assert sum(p["spikes"] for p in a["populations"].values()) > 0  # not a vacuous comparison
    assert a == b
    assert lava_result.meta["recording"] == "lava-float"
    # static energy uses the simulator's measured pipeline depth, equal to the IR's estimate
    assert lava_result.meta["timesteps"] == \
        torch_result.counts["loihi2"].pipeline["lava_timesteps"]


def test_profile_cli_on_a_bundle(files, tmp_path: Path) -> None:
    _, bundle, corpus = files
    out = tmp_path / "prof"
    proc = subprocess.run([str(_EXE), "profile", str(bundle), "--data", str(corpus), "--tokens",
                           "24", "--precision", "fixed", "-o", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "profile.json").read_text())
    assert doc["meta"]["recording"] == "lava-fixed"
    bad = subprocess.run([str(_EXE), "profile", str(bundle), "--data", str(corpus), "--target",
                          "spinnaker2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("error:")
    assert "Traceback" not in bad.stderr


def test_profile_cli_on_a_bundle_sigterm_leaves_nothing_behind(files, tmp_path: Path) -> None:
    """`profile BUNDLE` runs the bundle in Lava too: SIGTERM mid-run cleans up as in simulate."""
    _, bundle, short = files
    corpus = tmp_path / "long.txt"  # the model's characters, enough held-out text to last
    corpus.write_text(short.read_text(encoding="utf-8") * 60, encoding="utf-8")
    with Spawned([str(_EXE), "profile", str(bundle), "--data", str(corpus), "--tokens", "15000",
                  "-o", str(tmp_path / "prof")], cwd=tmp_path) as run:
        started = run.wait_until(lambda: len(run.seen) >= 6 and run.segments, 180)  # all up
        assert started and run.proc.poll() is None, f"the run did not start: {run.output()}"
        run.proc.send_signal(signal.SIGTERM)
        rc = run.wait_exit(120)
        err = run.output()[1]
        assert rc == 128 + signal.SIGTERM and "Traceback" not in err, (rc, err[-2000:])
        assert err.strip().splitlines()[-1] == "interrupted (SIGTERM)"
        assert run.survivors() == [] and run.leftover_segments() == []
    assert not (tmp_path / "prof" / "profile.json").exists()
