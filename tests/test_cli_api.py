"""What a user expects of the command line: every command is a thin layer over an ``api``
function, model commands take --tokenizer, --json prints exactly one JSON document on stdout,
progress lines go to stderr only on a terminal (and --quiet silences them), and a bundle
converted for a TOML profile carries it.
"""

from __future__ import annotations

import inspect
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_tiny_model, random_text
from spikegpt_deploy import api
from spikegpt_deploy.checkpoint import save_model
from spikegpt_deploy.cli import main
from spikegpt_deploy.data import CharTokenizer
from spikegpt_deploy.errors import BundleError, DataError

ROOT = Path(__file__).resolve().parents[1]
TEXT = random_text(6000, seed=7)
_EXE = Path(sys.executable).with_name("spikegpt-deploy")
CLI = [str(_EXE)] if _EXE.is_file() else [sys.executable, "-m", "spikegpt_deploy.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model, a corpus, and a bundle converted for a user's own profile TOML (then
    deleted: the bundle must not need it)."""
    root = tmp_path_factory.mktemp("cli_api")
    tok = CharTokenizer.from_text(TEXT)
    model = root / "model.pt"
    save_model(make_tiny_model(n_layer=2, n_embd=16, vocab_size=tok.vocab_size, seed=3,
                               ctx_len=32),
               model, tok)
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    toml = root / "my-chip.toml"
    toml.write_text((ROOT / "hw_profiles" / "loihi2.toml").read_text()
                    .replace('name = "loihi2"', 'name = "my-chip"', 1)
                    .replace("synaptic_op = { value = 23.6", "synaptic_op = { value = 5.0", 1))
    bundle, _ = api.convert(model, root / "my.bundle", target=str(toml))
    toml.unlink()
    return {"root": root, "model": model, "corpus": corpus, "bundle": bundle}


# ------------------------------------------------------------------------- thin layer
def test_every_command_has_a_typed_api_function() -> None:
    assert set(main.commands) == set(api.COMMANDS)
    for name, fn in api.COMMANDS.items():
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, name
        for p in sig.parameters.values():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                assert p.annotation is not inspect.Parameter.empty, (name, p.name)
        assert getattr(api, fn.__name__) is fn


def _minimal_args(name: str, f: dict[str, Path]) -> list[str]:
    m, c, b = str(f["model"]), str(f["corpus"]), str(f["bundle"])
    return {"train": ["train", "--data", c, "--out", "x.pt"],
            "evaluate": ["evaluate", m, "--data", c],
            "generate": ["generate", "--model", m, "--prompt", "a"],
            "export-onnx": ["export-onnx", m, "-o", "x.onnx"],
            "convert": ["convert", m, "-o", "x.bundle"],
            "inspect": ["inspect", b],
            "export": ["export", b, "--format", "onnx", "-o", "x.onnx"],
            "simulate": ["simulate", b, "--prompt", "a"],
            "profile": ["profile", m, "--data", c],
            "crosscheck": ["crosscheck", b, "--data", c],
            "report": ["report", "x.json"],
            "targets": ["targets"]}[name]


@pytest.mark.parametrize("name", sorted(api.COMMANDS))
def test_command_calls_its_api_function(name: str, files: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Replacing the api function changes what the command does: the command has no second
    implementation of its own."""
    fn = api.COMMANDS[name]

    def stub(*args: object, **kwargs: object) -> None:
        raise DataError(f"stub of api.{fn.__name__} called")

    monkeypatch.setattr(api, fn.__name__, stub)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, _minimal_args(name, files))
    assert result.exit_code == 1 and f"stub of api.{fn.__name__} called" in result.stderr, \
        result.output


def test_model_commands_take_the_tokenizer() -> None:
    for name, cmd in main.commands.items():
        params = {p.name for p in cmd.params}
        if "model" in params:
            assert "tokenizer_path" in params, name


# ------------------------------------------------------------------------------- --json
def _json_args(name: str, f: dict[str, Path], tmp: Path) -> list[str]:
    m, c, b = str(f["model"]), str(f["corpus"]), str(f["bundle"])
    return {"evaluate": ["evaluate", m, "--data", c],
            "convert": ["convert", m, "-o", str(tmp / "j.bundle"), "--check-tokens", "8"],
            "inspect": ["inspect", b],
            "simulate": ["simulate", b, "--prompt", "ab", "--tokens", "3", "--temperature", "0"],
            "profile": ["profile", m, "--data", c, "--tokens", "16", "-o", str(tmp / "p")],
            "crosscheck": ["crosscheck", b, "--data", c, "--tokens", "3"],
            "targets": ["targets"]}[name]


JSON_COMMANDS = sorted(n for n, c in main.commands.items()
                       if any("--json" in p.opts for p in c.params))


def test_the_json_commands_are_all_tested() -> None:
    assert JSON_COMMANDS == ["convert", "crosscheck", "evaluate", "inspect", "profile",
                             "simulate", "targets"]


@pytest.mark.parametrize("name", JSON_COMMANDS)
def test_json_is_one_document_on_stdout(name: str, files: dict[str, Path],
                                        tmp_path: Path) -> None:
    """A real process, stdout and stderr piped: stdout parses as exactly one JSON document."""
    proc = subprocess.run([*CLI, *_json_args(name, files, tmp_path), "--json"], cwd=tmp_path,
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # raises on anything before or after the document
    assert isinstance(doc, (dict, list)) and doc
    assert "tok/s]" not in proc.stderr  # no progress line into a pipe


# ---------------------------------------------------------------------- progress lines
def _run_on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (stdout piped); returns (code, stdout, stderr)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*CLI, *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other end closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    out = proc.stdout.read().decode() if proc.stdout else ""
    code = proc.wait(timeout=60)
    return code, out, b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("quiet", [False, True], ids=["terminal", "terminal-quiet"])
def test_progress_only_on_a_terminal_and_not_quiet(quiet: bool, files: dict[str, Path],
                                                   tmp_path: Path) -> None:
    args = ["simulate", str(files["bundle"]), "--prompt", "ab", "--tokens", "3",
            "--temperature", "0", *(["--quiet"] if quiet else [])]
    code, out, err = _run_on_a_terminal(args, tmp_path)
    assert code == 0, err
    assert ("[3/3 tokens" in err) is not quiet, err
    assert "tok/s]" not in out and out.startswith("ab")


def test_no_progress_into_a_pipe(files: dict[str, Path], tmp_path: Path) -> None:
    proc = subprocess.run([*CLI, "train", "--data", str(files["corpus"]), "--out",
                           str(tmp_path / "m.pt"), "--steps", "3", "--layers", "1", "--width",
                           "8", "--ctx-len", "16", "--eval-tokens", "64", "--threads", "1"],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout.startswith(f"wrote {tmp_path / 'm.pt'}")


# --------------------------------------------------------------- the bundle's profile
def test_bundle_carries_the_profile_it_was_converted_for(files: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """Converted with --target my-chip.toml (deleted since): inspect, simulate and profile
    read the copy inside the bundle; profile prices with its figures (5 pJ per synaptic op)."""
    bundle = files["bundle"]
    info = api.inspect_bundle(bundle)
    assert info["target"]["name"] == "my-chip" and info["target_profile"]["name"] == "my-chip"
    assert Path(info["target_profile"]["path"]) == bundle / "target.toml"
    run = api.simulate(bundle, "ab", 2, timeout_s=300)
    assert len(run.result.generated_ids) == 2
    result, _ = api.profile(bundle, str(files["corpus"]), 16, precision="float")
    assert list(result.prices) == ["my-chip"]
    assert result.prices["my-chip"]["target"]["sha256"] == info["target_profile"]["sha256"]
    used = {(f["profile"], f["section"], f["key"]): f["value"]
            for f in result.prices["my-chip"]["figures"]}
    assert used[("my-chip", "energy", "synaptic_op")] == 5.0

    tampered = tmp_path / "tampered.bundle"
    shutil.copytree(bundle, tampered)
    toml = tampered / "target.toml"
    toml.write_text(toml.read_text().replace("value = 5.0", "value = 0.5", 1))
    for call in (lambda: api.inspect_bundle(tampered),
                 lambda: api.simulate(tampered, "ab", 2),
                 lambda: api.profile(tampered, str(files["corpus"]), 16)):
        with pytest.raises(BundleError, match="target.toml: sha256 does not match"):
            call()
