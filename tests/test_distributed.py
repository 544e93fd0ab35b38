"""Profiles and evaluations on Ray (the [distributed] extra): the same figures as one process,
a shard retried once, a clear error after the second failure, nothing written, no process left.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_tiny_model, random_text
from proc_watch import descendants
from spikegpt_deploy import api
from spikegpt_deploy.checkpoint import save_model
from spikegpt_deploy.cli import main
from spikegpt_deploy.data import CharTokenizer
from spikegpt_deploy.distributed import (FAULT_ENV, Cluster, DistributedError, ModelSource,
                                         split_shards)
from spikegpt_deploy.profiling import profile_checkpoint
from spikegpt_deploy.profiling.merge import merge_counts
from spikegpt_deploy.profiling.windows import count_targets, split_windows

from hw_profiles import load_profile


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("distributed")
    text = random_text(12_000)
    (d / "corpus.txt").write_text(text, encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    save_model(make_tiny_model(n_layer=2, vocab_size=tok.vocab_size, ctx_len=24),
               d / "model.pt", tok, {})
    return d


def test_split_shards_are_consecutive_and_aligned() -> None:
    shards = split_shards(37, 3, align=4)
    assert [r.start for r in shards] == [0, 12, 28] and shards[-1].stop == 37
    assert [i for r in shards for i in r] == list(range(37))
    assert split_shards(2, 8) == [range(0, 1), range(1, 2)]


def test_merged_shard_counts_equal_one_count(workdir: Path) -> None:
    """Counts of consecutive window shards merge into exactly the single count (no Ray)."""
    model = api.open_model(workdir / "model.pt").model
    ids = np.arange(90) % model.config.vocab_size
    windows = split_windows(ids, 16)
    chips = [load_profile("loihi2"), load_profile("spinnaker2")]
    whole = count_targets(model, windows, chips)
    parts = [count_targets(model, windows[a:b], chips) for a, b in ((0, 2), (2, 3), (3, 6))]
    for chip in chips:
        assert not isinstance(whole[chip.name], str), whole[chip.name]
        merged = merge_counts([p[chip.name] for p in parts])
        assert merged.to_dict() == whole[chip.name].to_dict()


def test_a_worker_partitions_once_and_counts_as_one_process(workdir: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """``profile_shard`` (what a Ray task runs) keeps the partitioned IRs of its model for the
    worker's next shard; its counts are ``count_targets``' (no Ray)."""
    import spikegpt_deploy.partition as partition_module
    from spikegpt_deploy.profiling import windows as windows_module

    calls: list[str] = []
    real = partition_module.partition

    def counted(ir, profile, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(profile.name)
        return real(ir, profile, *args, **kwargs)

    monkeypatch.setattr(partition_module, "partition", counted)
    monkeypatch.setattr(windows_module, "_PARTITIONED", {})
    source = ModelSource(str(workdir / "model.pt"))
    model = source.open().model
    windows = split_windows(np.arange(60) % model.config.vocab_size, 16)
    chips = [load_profile("loihi2"), load_profile("spinnaker2")]
    first = windows_module.profile_shard(source, windows[:2], chips, "spikes", 8)
    second = windows_module.profile_shard(source, windows[2:], chips, "spikes", 8)
    assert calls == ["loihi2", "spinnaker2"]                  # once per target, not per shard
    windows_module.profile_shard(source, windows[:1], chips[:1], "graded", 8)
    assert calls[2:] == ["loihi2"]                           # other options: partitioned anew
    for part, ws in ((first, windows[:2]), (second, windows[2:])):
        whole = count_targets(model, ws, chips)
        assert {k: v.to_dict() for k, v in part.items()} == \
            {k: v.to_dict() for k, v in whole.items()}


def test_workers_without_ray_says_how_to_install(workdir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)   # import ray -> ImportError
    result = CliRunner().invoke(main, ["evaluate", str(workdir / "model.pt"), "--data",
                                       str(workdir / "corpus.txt"), "--workers", "2"])
    assert result.exit_code == 1
    assert "pip install 'spikegpt-deploy[distributed]'" in result.output


def test_bad_cluster_options() -> None:
    with pytest.raises(DistributedError, match="--workers must be a positive"):
        Cluster(0)
    with pytest.raises(DistributedError, match="not both"):
        Cluster(2, "ray://head:10001")


def _no_new_children(before: dict[int, str]) -> None:
    left = {p: s for p, s in descendants(os.getpid()).items() if p not in before}
    assert not left, f"processes left behind: {left}"


def test_profile_on_two_workers_equals_one_process(workdir: Path) -> None:
    pytest.importorskip("ray")
    before = descendants(os.getpid())
    args = (str(workdir / "model.pt"), str(workdir / "corpus.txt"), 150)
    opts = {"targets": ("loihi2", "spinnaker2", "loihi"), "window": 20}
    one = profile_checkpoint(*args, **opts)
    two = profile_checkpoint(*args, **opts, cluster=Cluster(2))
    _no_new_children(before)
    assert two.meta["distributed"]["shards"] == 2
    d1, d2 = one.to_dict(), two.to_dict()
    for key in ("counts", "prices", "ann", "paper"):
        assert d1[key] == d2[key], key
    assert one.counts["loihi2"].tokens == 150
    # a target the model cannot run on (Loihi 1: binary spikes only) stays unsupported
    assert d2["prices"]["loihi"]["unsupported"][0]["what"] == "placement"


def test_evaluate_on_two_workers_equals_one_process_with_a_crashed_shard_retried(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("ray")
    before = descendants(os.getpid())
    loaded = api.open_model(workdir / "model.pt")
    one = api.evaluate(loaded, str(workdir / "corpus.txt"), max_tokens=24 * 40)
    monkeypatch.setenv(FAULT_ENV, "1:1")           # shard 2's first worker dies
    with caplog.at_level(logging.WARNING, logger="spikegpt_deploy.distributed"):
        two = api.evaluate(loaded, str(workdir / "corpus.txt"), max_tokens=24 * 40,
                           cluster=Cluster(2), source=ModelSource(str(loaded.path)))
    _no_new_children(before)
    assert "shard 2 of 2" in caplog.text and "running it again" in caplog.text
    assert one.to_dict() == two.to_dict()
    assert one.windows > 16 and one.bits_per_token > 0   # more than one batch: two shards


def test_shard_failing_twice_is_a_clear_error_and_writes_nothing(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    before = descendants(os.getpid())
    out = workdir / "failed-profile"
    monkeypatch.setenv(FAULT_ENV, "0:2")
    result = CliRunner().invoke(main, ["profile", str(workdir / "model.pt"), "--data",
                                       str(workdir / "corpus.txt"), "--tokens", "96",
                                       "--workers", "2", "-o", str(out)])
    _no_new_children(before)
    assert result.exit_code == 1, result.output
    assert "error: shard 1 of 2 (windows 0-1 of 24 tokens) failed 2 times" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_sigterm_stops_the_command_and_every_ray_process(workdir: Path) -> None:
    """SIGTERM in the middle of a run: the command exits, and no process it started lives on."""
    import signal
    import subprocess
    import time

    from proc_watch import alive

    pytest.importorskip("ray")
    exe = Path(sys.executable).parent / "spikegpt-deploy"
    proc = subprocess.Popen([str(exe), "profile", str(workdir / "model.pt"), "--data",
                             str(workdir / "corpus.txt"), "--tokens", "600", "--window", "2",
                             "--workers", "2", "-o", str(workdir / "sigterm-profile")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=workdir)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        seen.update(descendants(proc.pid))
        if len(seen) >= 4:     # Ray's daemons and workers are up
            time.sleep(3)
            seen.update(descendants(proc.pid))
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert "interrupted (SIGTERM)" in err
    time.sleep(2)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:120]
            for pid, start in seen.items() if alive(pid, start)}
    assert not left, f"processes left behind: {left}"
    assert not (workdir / "sigterm-profile").exists()
