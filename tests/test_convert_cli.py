"""The ``convert`` and ``inspect`` commands, run as real subprocesses of the installed
``spikegpt-deploy`` script (the one next to this Python, i.e. .venv/bin/spikegpt-deploy).

Success: convert writes a verified bundle, inspect --json summarises it. Errors: exit code 1,
exactly one ``error:`` line, no traceback, and nothing half-written next to the output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_model
from hw_profiles import list_profiles
from spikegpt_deploy.bundle import load_bundle, verify_bundle
from spikegpt_deploy.checkpoint import file_sha256, save_model
from spikegpt_deploy.data import CharTokenizer

SCRIPT = Path(sys.executable).with_name("spikegpt-deploy")
TOKENIZER = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz .,\n"))


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    if not SCRIPT.is_file():
        pytest.fail(f"{SCRIPT} is missing: install the project (pip install -e .)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def tree(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_clean_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, one ``error:`` line naming the needles, no traceback; returns the message."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == errors[0]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    model = make_tiny_model("RWKV", seed=0, n_layer=2, n_embd=16, vocab_size=30)
    save_model(model, root / "model.pt", TOKENIZER)
    return root


@pytest.fixture(scope="module")
def converted(workdir: Path) -> Path:
    proc = cli("convert", "model.pt", "--target", "loihi2", "-o", "out.bundle",
               "--calibration-tokens", "64", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.startswith("wrote out.bundle")
    return workdir / "out.bundle"


def test_convert_writes_a_verified_bundle(workdir: Path, converted: Path) -> None:
    manifest = verify_bundle(converted)
    assert manifest["source_model"]["sha256"] == file_sha256(workdir / "model.pt")
    assert manifest["target"]["name"] == "loihi2"
    assert manifest["policy"]["policy"] == "spikes"
    assert manifest["quantization"]["calibration_tokens"] == 64
    assert set(manifest["files"]) == {"ir.json", "ir_params.npz", "tokenizer.json", "target.toml"}
    assert manifest["equivalence"]["float_ir_spikes_identical"] is True
    bundle = load_bundle(converted)
    assert bundle.tokenizer is not None and bundle.tokenizer.to_dict() == TOKENIZER.to_dict()
    # No temporary directory is left next to the bundle.
    assert sorted(p.name for p in workdir.iterdir()) == ["model.pt", "out.bundle"]


def test_inspect_json(workdir: Path, converted: Path) -> None:
    proc = cli("inspect", "out.bundle", "--json", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert {"partition", "crossings_per_token", "resources", "quantization"} <= set(info)
    assert set(info["partition"]) == {"host", "loihi2"}
    assert set(info["crossings_per_token"]) == {"chip_to_host", "host_to_chip"}
    for d in info["crossings_per_token"].values():
        assert d["values"] > 0 and d["max_messages"] > 0 and d["max_bytes"] > 0
    totals = info["resources"]["totals"]
    assert totals["chips"] == 1 and totals["neurons"] > 0
    assert info["quantization"] and all("op" in q for q in info["quantization"].values())
    manifest = verify_bundle(converted)
    assert info["resources"] == manifest["resources"]
    # each chip layer's quantization report, with its bits, cores and memory beside it
    assert set(info["quantization"]) == set(manifest["quantization"]["layers"])
    by_node = {r["node"]: r for r in manifest["resources"]["layers"]}
    for n, q in info["quantization"].items():
        assert {k: v for k, v in q.items() if k not in ("cores", "synaptic_memory_bytes")} \
            == manifest["quantization"]["layers"][n]
        if q["op"] == "SpikeLinear":
            assert q["weight_bits"] == 8 and q["cores"] == by_node[n]["cores"] >= 1
            assert q["synaptic_memory_bytes"] == by_node[n]["synaptic_memory_bytes"] > 0
    # The text form prints the same summary.
    text = cli("inspect", "out.bundle", cwd=workdir)
    assert text.returncode == 0, text.stderr
    assert "partition" in text.stdout and f"{totals['cores']} cores" in text.stdout


def test_existing_output_without_force(workdir: Path, converted: Path) -> None:
    before = tree(converted)
    proc = cli("convert", "model.pt", "-o", "out.bundle", cwd=workdir)
    assert_clean_error(proc, "out.bundle already exists", "--force")
    assert tree(converted) == before
    proc = cli("convert", "model.pt", "-o", "out.bundle", "--force", "--json",
               "--calibration-tokens", "64", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest == verify_bundle(converted)
    assert sorted(p.name for p in workdir.iterdir()) == ["model.pt", "out.bundle"]


@pytest.fixture()
def scratch(workdir: Path, tmp_path: Path) -> Path:
    shutil.copy(workdir / "model.pt", tmp_path / "model.pt")
    return tmp_path


def _nothing_written(scratch: Path, *keep: str) -> None:
    assert sorted(p.name for p in scratch.iterdir()) == sorted(["model.pt", *keep])


def test_unknown_target_lists_the_known_ones(scratch: Path) -> None:
    proc = cli("convert", "model.pt", "--target", "loihi7", "-o", "b", cwd=scratch)
    message = assert_clean_error(proc, "loihi7")
    assert all(name in message for name in list_profiles())
    _nothing_written(scratch)


def test_checkpoint_that_is_not_spikegpt(scratch: Path) -> None:
    torch.save({"weight": torch.randn(4, 3), "bias": torch.randn(4)}, scratch / "other.pt")
    proc = cli("convert", "other.pt", "-o", "b", cwd=scratch)
    assert_clean_error(proc, "other.pt", "not a SpikeGPT checkpoint")
    _nothing_written(scratch, "other.pt")


def test_graded_policy_on_truenorth(scratch: Path) -> None:
    proc = cli("convert", "model.pt", "--policy", "graded", "--target", "truenorth", "-o", "b",
               cwd=scratch)
    assert_clean_error(proc, "truenorth", "graded", "--policy spikes")
    _nothing_written(scratch)


def test_inspect_tampered_bundle(converted: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tampered.bundle"
    shutil.copytree(converted, copy)
    target = copy / "ir_params.npz"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    before = tree(copy)
    proc = cli("inspect", "tampered.bundle", cwd=tmp_path)
    assert_clean_error(proc, "ir_params.npz", "sha256")
    assert tree(copy) == before
    proc = cli("inspect", "no-such.bundle", "--json", cwd=tmp_path)
    assert_clean_error(proc, "not a bundle directory")
