"""The SANA-FE cross-check (the [crosscheck] extra) and the optional extras' import isolation.

SANA-FE is GPL-3.0: the package must not import it (nor Ray) unless the command that needs it
runs. The cross-check itself runs on the shipped model, converted here, on a few tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO_ROOT, random_text
from hw_profiles import load_profile
from spikegpt_deploy import api
from spikegpt_deploy.cli import main
from spikegpt_deploy.crosscheck import render_table
from spikegpt_deploy.crosscheck.sanafe_net import arch_description, assign_cores, chip_groups
from spikegpt_deploy.folded import linear_weight
from spikegpt_deploy.placement import Mesh
from spikegpt_deploy.profiling import core_mapping

ISOLATION = """
import sys
from click.testing import CliRunner
import spikegpt_deploy, spikegpt_deploy.api, spikegpt_deploy.profiling, spikegpt_deploy.cli
import spikegpt_deploy.distributed, spikegpt_deploy.crosscheck.sanafe_net
from spikegpt_deploy.cli import main
from spikegpt_deploy.crosscheck import render_table
for args in (["targets"], ["--help"], ["crosscheck", "--help"], ["profile", "--help"],
             ["evaluate", "--help"], ["inspect", "no-such-bundle"]):
    CliRunner().invoke(main, args)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("sanafe", "sanafecpp", "ray"))
print(",".join(bad))
"""


def test_package_and_other_commands_never_import_sanafe_or_ray() -> None:
    proc = subprocess.run([sys.executable, "-c", ISOLATION], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported: {proc.stdout.strip()}"


def test_missing_sanafe_says_how_to_install(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sanafe", None)
    result = CliRunner().invoke(main, ["crosscheck", str(tmp_path), "--tokens", "4"])
    assert result.exit_code == 1
    assert "pip install 'spikegpt-deploy[crosscheck]'" in result.output
    assert "GPL-3.0" in result.output and "Traceback" not in result.output


def test_arch_carries_the_profile_figures() -> None:
    profile = load_profile("loihi")
    mesh = Mesh.for_cores(9, profile.capacity_count("cores_per_tile"), 128)
    arch = arch_description(profile, mesh)["architecture"]
    assert (arch["attributes"]["width"], arch["attributes"]["height"]) == (2, 2)  # 3 tiles
    core = arch["tile"][0]["core"][0]
    assert core["name"] == "core[0..3]"
    lif = core["soma"][0]["attributes"]
    assert lif["energy_access_neuron"] == pytest.approx(52e-12)          # idle update
    assert lif["energy_access_neuron"] + lif["energy_update_neuron"] == pytest.approx(81e-12)
    assert core["synapse"][0]["attributes"]["energy_process_spike"] == pytest.approx(23.6e-12)
    assert core["axon_out"][0]["attributes"]["energy_message_out"] == pytest.approx(1.7e-12)
    assert arch["tile"][0]["attributes"]["energy_east_hop"] == pytest.approx(4.0e-12)


@pytest.fixture(scope="module")
def shipped_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crosscheck") / "bundle"
    api.convert(api.default_model_path(), out, target="loihi2", check_tokens=16,
                calibration_tokens=64)
    return out


def test_groups_replay_spikes_and_map_every_synapse(shipped_bundle: Path) -> None:
    from spikegpt_deploy.bundle import load_bundle

    ir = load_bundle(shipped_bundle).ir
    rng = np.random.default_rng(0)
    spikes = {n: rng.random((3, 128)) < 0.3 for n in
              ["emb"] + [f"blocks.{i}.lif{j}" for i in range(4) for j in (1, 2)]}
    groups = chip_groups(ir, spikes)
    by_name = {g.name: g for g in groups}
    assert np.array_equal(by_name["emb.heaviside.out"].trains, spikes["emb"])
    acc = by_name["blocks.1.ln1.counts.out"].trains   # n = lif1 + lif2 of block 0, non-zero
    assert np.array_equal(acc, spikes["blocks.0.lif1"] | spikes["blocks.0.lif2"])
    head = by_name["head.spikes.readout"]
    W = linear_weight(ir.node("head.spikes")["params"])
    assert head.neurons == W.shape[0] and head.inputs[0][1].shape[1] == np.count_nonzero(W)
    assert by_name["blocks.0.lif1.soma"].force_update
    # the groups sit on the profiler's placement: a node's receivers and its replayed spikes on
    # the node's cores, the host's spikes on injection cores of their own
    assign_cores(groups, core_mapping(ir, load_profile("loihi"))["placement"])
    assert by_name["blocks.0.lif1.out"].cores == by_name["blocks.0.lif1.soma"].cores
    assert by_name["blocks.1.ln1.counts.out"].cores == by_name["blocks.1.ln1.counts.acc"].cores
    emb = set(by_name["emb.heaviside.out"].cores)
    assert emb and not emb & {c for g in groups if g.node != "emb.heaviside" for c in g.cores}


def test_crosscheck_shipped_model_within_goals(shipped_bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "text.txt"
    data.write_text(random_text(4000, seed=3).lower(), encoding="utf-8")
    out = tmp_path / "cc"
    result = CliRunner().invoke(main, ["crosscheck", str(shipped_bundle), "--data", str(data),
                                       "--tokens", "6", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("{"), result.stdout[:300]
    report = json.loads(result.stdout)
    assert {p.name for p in out.iterdir()} == {"arch.yaml", "snn.yaml", "crosscheck.json"}
    assert 0.9 <= report["total"]["ratio"] <= 1.1
    assert {row["layer"] for row in report["layers"]} >= {"emb", "blocks.0", "head"}
    for row in report["layers"]:
        ours, theirs = row["ours"], row["sanafe"]
        # the same synaptic events and neuron updates on both sides: exact up to rounding
        assert ours["synaptic"] == pytest.approx(theirs["synaptic"], rel=1e-9), row["layer"]
        assert ours["neuron"] == pytest.approx(theirs["neuron"], rel=1e-9), row["layer"]
        # messages travel the same placement on both sides: each layer's own hop distance
        assert row["ours_hops"] == pytest.approx(row["sanafe_hops"], rel=1e-9), row["layer"]
        assert 0.9 <= row["ratio"] <= 1.1, row
    assert 0.75 <= report["latency"]["ratio"] <= 1.25
    table = render_table(report)
    assert "SANA-FE" in table
    assert any(line.split()[:1] == ["total"] for line in table.splitlines())
