"""A table of bad inputs swept over every command and the Python API.

Every CLI case must end with exit code 1, exactly one ``error: ...`` line on stderr that names
the file, key or option, nothing on stdout, no traceback, nothing new or changed on disk (no
half-written output), no child process and no unmapped /dev/shm/psm_* segment left behind.
Every API case must raise a DeployError naming the same thing. The commands run in-process
(click's CliRunner, so an escaping exception is caught and shown, not hidden); one case runs
two real ``convert`` processes at once.

The tests run as root in CI, where a read-only folder does not stop a write: the unwritable
outputs here are paths under a regular FILE (ENOTDIR for everyone) and under /proc (which
refuses new entries even to root), and the unreadable input is /proc/self/mem (EIO at offset 0).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from bad_input_files import BUNDLE_TAMPERS, MARKER, TOMLS, make_world
from proc_watch import descendants
from spikegpt_deploy import api, load_model, simulation
from spikegpt_deploy.simulation import run as simulation_run
from spikegpt_deploy.cli import main
from spikegpt_deploy.errors import DeployError
from spikegpt_deploy.inputs import MAX_TOKENS
from spikegpt_deploy.profiling import profile_model
from spikegpt_deploy.sampling import SamplingOptions, generate_ids

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The table's inputs (bad_input_files.make_world); the tests only read them, and check
    after every case that nothing there was written or changed."""
    return make_world(tmp_path_factory.mktemp("bad_inputs"))


SMALL = ["--steps", "1", "--layers", "1", "--width", "8", "--ctx-len", "16", "--eval-tokens",
         "64", "--threads", "1"]
BAD_DATA = {"data-empty": ("{empty.txt}", "only 0 characters"),
            "data-binary": ("{binary.txt}", "not UTF-8"),
            "data-one-char": ("{one-char.txt}", "only 1 characters"),
            "data-folder": ("{w}", "is a folder"),
            "data-missing": ("{w}/absent.txt", "no such file"),
            "data-unreadable": ("/proc/self/mem", "cannot be read")}
CKPT_NEEDLES = {"zero.pt": "zero.pt", "truncated.pt": "truncated.pt", "random.pt": "random.pt",
                "folder.pt": "is a folder", "evil.pt": "refused", "evil.pkl.pt": "refused",
                "nan.pth": "NaN/Inf", "inf.pth": "NaN/Inf", "shape.pth": "head.weight",
                "missing.pth": "blocks.1.att.key.weight", "extra.pth": "optimizer.lr",
                "absent.pt": "no such file"}
BAD_OUTPUTS = {"out-under-file": ("{w}/a-file/out", "is not a folder"),
               "out-missing-parent": ("{w}/no/such/dir/out", "does not exist"),
               "out-under-proc": ("/proc/spikegpt-out", "")}


def _cases() -> list[tuple[str, list[str], list[str]]]:
    """(case id, argv with {placeholders}, needles the error line must contain)."""
    m, c, b = "{model}", "{corpus}", "{bundle}"
    cases: list[tuple[str, list[str], list[str]]] = []
    model_cmds = {"evaluate": lambda f: ["evaluate", f, "--data", c],
                  "generate": lambda f: ["generate", "--model", f, "--prompt", "a", "--tokens", "2"],
                  "export-onnx": lambda f: ["export-onnx", f, "-o", "step.onnx"],
                  "convert": lambda f: ["convert", f, "-o", "out.bundle"],
                  "profile": lambda f: ["profile", f, "--data", c, "--tokens", "16"]}
    for cmd, argv in model_cmds.items():
        for name, needle in CKPT_NEEDLES.items():
            if cmd == "profile" and name == "folder.pt":  # a folder is read as a bundle
                needle = "not a spikegpt-deploy bundle"
            cases.append((f"{cmd}-ckpt-{name}", argv("{ckpt:" + name + "}"), [name, needle]))
        if cmd in ("evaluate", "generate", "profile"):  # the others need no tokenizer
            cases.append((f"{cmd}-official-pth-no-tokenizer", argv("{w}/official.pth"),
                          ["official.pth", "--tokenizer"]))
    data_cmds = {"train": lambda d: ["train", "--data", d, "--out", "m.pt", *SMALL],
                 "evaluate": lambda d: ["evaluate", m, "--data", d],
                 "profile": lambda d: ["profile", m, "--data", d, "--tokens", "16"],
                 "profile-bundle": lambda d: ["profile", b, "--data", d, "--tokens", "16"],
                 "convert-calibration": lambda d: ["convert", m, "--calibration", d, "-o", "o.b"]}
    for cmd, argv in data_cmds.items():
        for name, (path, needle) in BAD_DATA.items():
            cases.append((f"{cmd}-{name}", argv(path), [needle]))
    for name, (_, needle) in BUNDLE_TAMPERS.items():
        bundle = "{bundle:" + name + "}"
        for cmd, argv in {"inspect": ["inspect", bundle],
                          "simulate": ["simulate", bundle, "--prompt", "ab", "--tokens", "2"],
                          "profile": ["profile", bundle, "--data", c, "--tokens", "16"]}.items():
            if cmd == "profile" and name == "not-a-folder":  # read as a model file
                needle = f"{name}.bundle"
            cases.append((f"{cmd}-bundle-{name}", argv, [needle]))
    gen = ["generate", "--model", m, "--prompt", "ab"]
    sim = ["simulate", b, "--prompt", "ab"]
    for cmd, base in (("generate", gen), ("simulate", sim)):
        for name, args, needle in (
                ("tokens-negative", ["--tokens", "-1"], "--tokens"),
                ("tokens-huge", ["--tokens", "99999999999"], "--tokens"),
                ("temperature-nan", ["--temperature", "nan"], "--temperature"),
                ("temperature-inf", ["--temperature", "inf"], "--temperature"),
                ("temperature-negative", ["--temperature", "-0.5"], "--temperature"),
                ("top-p-nan", ["--top-p", "nan"], "--top-p"),
                ("top-p-inf", ["--top-p", "inf"], "--top-p"),
                ("top-p-negative", ["--top-p", "-0.1"], "--top-p"),
                ("top-p-above-1", ["--top-p", "1.5"], "--top-p"),
                ("seed-negative", ["--seed", "-3"], "--seed")):
            cases.append((f"{cmd}-{name}", base + args, [needle]))
        base = base[:-2]
        for name, prompt, needle in (("prompt-empty", "", "empty"),
                                     ("prompt-emoji", "hi \U0001F600", "vocabulary"),
                                     ("prompt-cjk", "\u4f60\u597d", "vocabulary"),
                                     ("prompt-nul", "a\x00b", "vocabulary")):
            cases.append((f"{cmd}-{name}", base + ["--prompt", prompt, "--tokens", "2"],
                          [needle]))
    for name, value in (("nan", "nan"), ("negative", "-1"), ("zero", "0")):
        cases.append((f"simulate-timeout-{name}", sim + ["--timeout", value], ["--timeout"]))
    for name, _ in TOMLS.items():
        needle = TOMLS[name][1]
        cases.append((f"convert-target-{name}", ["convert", m, "--target", "{" + name + "}",
                                                 "-o", "o.b"], [name, needle]))
        cases.append((f"profile-target-{name}", ["profile", m, "--data", c, "--tokens", "16",
                                                 "--target", "{" + name + "}"], [name, needle]))
        cases.append((f"profile-user-profile-{name}", ["profile", m, "--data", c, "--tokens",
                                                       "16", "--profile", "{" + name + "}"],
                      [name, needle]))
    for name, (path, needle) in BAD_OUTPUTS.items():
        for cmd, argv in {"convert": ["convert", m, "-o", path],
                          "export-onnx": ["export-onnx", m, "-o", path + ".onnx"],
                          "profile": ["profile", m, "--data", c, "--tokens", "16", "-o", path],
                          "report-html": ["report", "{profile_json}", "--html", path + ".html"],
                          "train": ["train", "--data", c, *SMALL, "--out", path + ".pt"]
                          }.items():
            cases.append((f"{cmd}-{name}", argv, [needle] if needle else ["proc"]))
    for name, args, needle in (
            ("profile-tokens-negative", ["profile", m, "--data", c, "--tokens", "-5"], "--tokens"),
            ("profile-tokens-zero", ["profile", m, "--data", c, "--tokens", "0"], "--tokens"),
            ("profile-tokens-huge", ["profile", m, "--data", c, "--tokens", "99999999999"],
             "--tokens"),
            ("profile-tokens-more-than-text", ["profile", m, "--data", c, "--tokens", "5000"],
             "--tokens 5000"),
            ("profile-timesteps-nan", ["profile", m, "--data", c, "--timesteps", "nan"],
             "--timesteps"),
            ("profile-hops-negative", ["profile", m, "--data", c, "--hops", "-2"], "--hops"),
            ("profile-sensitivity-inf", ["profile", m, "--data", c, "--sensitivity-factor",
                                         "inf"], "--sensitivity-factor"),
            ("profile-bundle-with-target", ["profile", b, "--data", c, "--target", "loihi"],
             "--target"),
            ("profile-bundle-with-neurobench", ["profile", b, "--data", c, "--neurobench"],
             "--neurobench"),
            ("profile-host-timing-unknown", ["profile", m, "--data", c, "--tokens", "16",
                                             "--host-timing", "nosuchhost"], "nosuchhost"),
            ("evaluate-max-tokens-zero", ["evaluate", m, "--data", c, "--max-tokens", "0"],
             "--max-tokens"),
            ("convert-weight-bits-zero", ["convert", m, "--weight-bits", "0", "-o", "o.b"],
             "--weight-bits"),
            ("convert-calibration-tokens-huge", ["convert", m, "--calibration-tokens",
                                                 "99999999999", "-o", "o.b"],
             "--calibration-tokens"),
            ("convert-existing-output", ["convert", m, "-o", "{bundle}"], "already exists"),
            ("convert-tokenizer-binary", ["convert", "{w}/official.pth", "--tokenizer",
                                          "{w}/binary.txt", "-o", "o.b"], "--tokenizer"),
            ("profile-tokenizer-binary", ["profile", "{w}/official.pth", "--data", c,
                                          "--tokenizer", "{w}/binary.txt"], "--tokenizer"),
            ("train-steps-negative", ["train", "--data", c, "--steps", "-1"], "--steps"),
            ("train-lr-nan", ["train", "--data", c, "--lr", "nan"], "--lr"),
            ("train-threads-negative", ["train", "--data", c, "--threads", "-2"], "--threads"),
            ("report-missing", ["report", "{w}/absent.json"], "absent.json"),
            ("report-empty", ["report", "{empty.txt}"], "empty.txt"),
            ("report-binary", ["report", "{binary.txt}"], "binary.txt"),
            ("report-bad-json", ["report", "{notes.json}"], "notes.json"),
            ("report-other-format", ["report", "{other.json}"], "other.json"),
            ("report-folder", ["report", "{w}"], "cannot read")):
        cases.append((name, args, [needle]))
    return cases


CASES = _cases()


# ----------------------------------------------------------------------- the invariants
def _snapshot(*dirs: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``dirs``; files and links with size and modification time."""
    out = {}
    for d in dirs:
        for p in d.rglob("*"):
            st = p.lstat()
            out[str(p)] = (0, 0) if p.is_dir() and not p.is_symlink() else (st.st_size,
                                                                            st.st_mtime_ns)
    return out


def _psm() -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith("psm_")}


def _mapped_anywhere() -> set[str]:
    """psm_* segments mapped by any process we can see: those of other, running jobs."""
    from proc_watch import segments_of
    return segments_of(int(e) for e in os.listdir("/proc") if e.isdigit())


class Watch:
    """What a case leaves behind: new child processes and orphaned shared-memory segments."""

    def __init__(self) -> None:
        self.children = set(descendants(os.getpid()))
        self.segments = _psm()

    def leftovers(self) -> tuple[set[int], set[str]]:
        deadline = time.monotonic() + 5.0
        while True:
            procs = set(descendants(os.getpid())) - self.children
            segs = _psm() - self.segments
            if segs:  # segments another job on the machine maps are not ours
                segs -= _mapped_anywhere()
            if not procs and not segs or time.monotonic() > deadline:
                return procs, segs
            time.sleep(0.2)


def _fill(argv: list[str], world: dict[str, Path]) -> list[str]:
    """Replace each {name} by the path world[name]."""
    return [re.sub(r"\{([^{}]+)\}", lambda m: str(world[m.group(1)]), a) for a in argv]


def assert_clean_cli_error(result: Any, needles: list[str]) -> str:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback
        raise AssertionError("an exception escaped:\n" + "".join(
            traceback.format_exception(*result.exc_info)))
    out, err = result.stdout, result.stderr
    assert result.exit_code == 1, (result.exit_code, out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert out == "", out
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("case_id,argv,needles", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_input(world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       case_id: str, argv: list[str], needles: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    before = _snapshot(world["w"], tmp_path)
    watch = Watch()
    result = CliRunner().invoke(main, _fill(argv, world))
    assert_clean_cli_error(result, _fill(needles, world))
    assert _snapshot(world["w"], tmp_path) == before, "a file was written or changed"
    assert not (world["w"] / MARKER).exists(), "unpickling ran code"
    assert watch.leftovers() == (set(), set())


# --------------------------------------------------------------------------- the API
BAD_IDS = {"inf": [1, float("inf")], "nan": [float("nan")], "fraction": [1.5],
           "negative": [-1], "vocab": [10_000], "huge": [2**70], "bool": [True],
           "string": ["1"], "none": None, "text": "abc", "nested": [[1, 2]]}


def _api_cases() -> list[tuple[str, Callable[[dict[str, Path]], Any], str]]:
    cases: list[tuple[str, Callable[[dict[str, Path]], Any], str]] = []
    for name, needle in CKPT_NEEDLES.items():
        key = f"ckpt:{name}"
        cases.append((f"load_model-{name}", lambda w, k=key: load_model(w[k]), needle))
        cases.append((f"open_model-{name}", lambda w, k=key: api.open_model(w[k]), needle))
    for name, (_, needle) in BUNDLE_TAMPERS.items():
        key = f"bundle:{name}"
        cases.append((f"inspect_bundle-{name}", lambda w, k=key: api.inspect_bundle(w[k]),
                      needle))
        cases.append((f"simulation.simulate-{name}",
                      lambda w, k=key: simulation.simulate(w[k], [1, 2], 2), needle))
    for name, ids in BAD_IDS.items():
        cases.append((f"simulation.simulate-ids-{name}",
                      lambda w, i=ids: simulation.simulate(w["bundle"], i, 2), "token ids"))
        cases.append((f"generate_ids-{name}", lambda w, i=ids: generate_ids(
            load_model(w["model"]), i, 2, SamplingOptions()), "token ids"))
        cases.append((f"profile_model-{name}", lambda w, i=ids: profile_model(
            load_model(w["model"]), i), "token_ids"))
    for name, n in (("negative", -1), ("huge", 99_999_999_999), ("float", 2.5), ("nan", float("nan"))):
        cases.append((f"api.simulate-tokens-{name}",
                      lambda w, n=n: api.simulate(w["bundle"], "ab", n), "--tokens"))
        cases.append((f"api.generate-tokens-{name}", lambda w, n=n: api.generate(
            api.open_model(w["model"]), "ab", n, SamplingOptions()), "--tokens"))
    cases.append(("api.convert-target-negative-energy", lambda w: api.convert(
        w["model"], w["w"] / "nope.bundle", target=str(w["toml-negative-energy"])),
        "synaptic_op"))
    cases.append(("api.profile-bundle-policy", lambda w: api.profile(
        w["bundle"], str(w["corpus"]), 16, policy="graded"), "--policy"))
    return cases


API_CASES = _api_cases()


@pytest.mark.parametrize("case_id,call,needle", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(world: dict[str, Path], case_id: str,
                       call: Callable[[dict[str, Path]], Any], needle: str) -> None:
    before = _snapshot(world["w"])
    watch = Watch()
    with pytest.raises(DeployError) as info:
        call(world)
    assert needle in str(info.value), (needle, str(info.value))
    assert _snapshot(world["w"]) == before
    assert not (world["w"] / MARKER).exists()
    assert watch.leftovers() == (set(), set())


def test_simulate_refuses_buffers_beyond_memory(world: dict[str, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose per-token result buffers would not fit is refused before any allocation."""
    monkeypatch.setattr(simulation_run, "available_memory_bytes", lambda: 2**30)
    watch = Watch()
    with pytest.raises(DeployError, match=r"--tokens: .* GiB of result buffers.*at most"):
        simulation.simulate(world["bundle"], [1, 2], MAX_TOKENS)
    assert watch.leftovers() == (set(), set())


def test_two_converts_to_the_same_output(world: dict[str, Path], tmp_path: Path) -> None:
    """Two real processes convert to one -o at once: one wins, the other gets one error line,
    and the bundle left is whole (it verifies) with no temporary directory beside it."""
    exe = Path(sys.executable).with_name("spikegpt-deploy")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "spikegpt_deploy.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([*cmd, "convert", str(world["model"]), "-o", "same.bundle"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate(timeout=10)) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], results
    (loser,) = [r for r in results if r[0] == 1]
    lines = loser[2].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "same.bundle" in lines[0]
    assert "Traceback" not in loser[1] + loser[2]
    api.inspect_bundle(tmp_path / "same.bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.bundle"]


def test_readme_states_the_case_count() -> None:
    """The README's reliability figures are this table's: every case above must pass (clean
    error, no traceback, no leftover), and the count there is the count here."""
    n = len(CASES) + len(API_CASES) + 2  # + the memory refusal and the concurrent converts
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Reliability", 1)[-1]
    stated = re.search(r"\*\*([\d,]+) bad inputs tried\*\*", section)
    assert stated is not None, "README: no '**N bad inputs tried**' in the Reliability section"
    assert int(stated.group(1).replace(",", "")) == n, (stated.group(1), n, len(CASES),
                                                        len(API_CASES))
    assert f"**{n:,} clean errors**" in section
