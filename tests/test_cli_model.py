"""The command line (train, evaluate, generate) in-process via CliRunner and as a real subprocess.

Errors must reach the user as one ``error: ...`` line and exit code 1, never as a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import make_tiny_model, random_text
from spikegpt_deploy import api
from spikegpt_deploy.checkpoint import load_checkpoint, save_model
from spikegpt_deploy.cli import main
from spikegpt_deploy.data import CharTokenizer
from spikegpt_deploy.sampling import SamplingOptions

EXE = Path(sys.executable).parent / "spikegpt-deploy"
PROMPT = "the lord "


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    (d / "corpus.txt").write_text(random_text(), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def trained(workdir: Path) -> Path:
    """A model written by `train` (CliRunner)."""
    out = workdir / "trained.pt"
    result = CliRunner().invoke(main, [
        "train", "--data", str(workdir / "corpus.txt"), "--out", str(out), "--layers", "2",
        "--width", "16", "--ctx-len", "16", "--batch-size", "4", "--steps", "4",
        "--eval-every", "2", "--eval-tokens", "256", "--checkpoint-every", "100"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and not Path(str(out) + ".ckpt").exists()
    assert f"wrote {out}" in result.stdout and "bits/char" in result.stdout
    return out


@pytest.fixture(scope="module")
def firing_model(workdir: Path) -> Path:
    """A model.pt whose LIF populations fire (scaled tiny model) with the corpus' vocabulary."""
    tok = CharTokenizer.from_text((workdir / "corpus.txt").read_text(encoding="utf-8"))
    model = make_tiny_model(n_layer=2, vocab_size=tok.vocab_size, ctx_len=32)
    path = workdir / "firing.pt"
    save_model(model, path, tok, {})
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    assert EXE.is_file(), f"{EXE} missing: pip install -e . into this interpreter's venv"
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=120, check=False)


def _assert_clean_error(code: int, stdout: str, stderr: str, *needles: str) -> None:
    assert code == 1, (code, stdout, stderr)
    assert "Traceback" not in stdout + stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ---- train ------------------------------------------------------------------------------------

def test_train_writes_loadable_model(trained: Path, workdir: Path) -> None:
    loaded = load_checkpoint(trained)
    assert loaded.model.config.n_layer == 2 and loaded.model.config.n_embd == 16
    assert [h["step"] for h in loaded.meta["history"]] == [2, 4]
    text = (workdir / "corpus.txt").read_text(encoding="utf-8")
    assert loaded.tokenizer.vocab == sorted(set(text))


def test_train_subprocess(workdir: Path) -> None:
    out = workdir / "sub.pt"
    proc = _run(["train", "--data", "corpus.txt", "--out", out.name, "--layers", "2", "--width",
                 "16", "--ctx-len", "16", "--batch-size", "2", "--steps", "2", "--eval-every",
                 "2", "--eval-tokens", "64"], workdir)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and load_checkpoint(out).meta["steps"] == 2


def test_train_missing_data(workdir: Path) -> None:
    result = CliRunner().invoke(main, ["train", "--data", "nope.txt", "--out",
                                       str(workdir / "x.pt")])
    _assert_clean_error(result.exit_code, result.stdout, result.stderr, "nope.txt")
    assert not (workdir / "x.pt").exists()


# ---- evaluate ---------------------------------------------------------------------------------

def _check_eval_json(text: str, model_path: Path) -> dict:
    data = json.loads(text)
    loaded = load_checkpoint(model_path)
    assert data["model"].endswith(model_path.name)
    assert data["model_sha256"] == loaded.sha256
    assert 0 < data["bits_per_token"] < 10
    assert data["tokens"] > 0 and data["windows"] > 0
    assert list(data["firing_rates"]) == loaded.model.population_names()
    assert all(0 <= r <= 1 for r in data["firing_rates"].values())
    return data


def test_evaluate_json_trained_model(trained: Path, workdir: Path) -> None:
    result = CliRunner().invoke(main, ["evaluate", str(trained), "--data",
                                       str(workdir / "corpus.txt"), "--json"])
    assert result.exit_code == 0, result.output
    data = _check_eval_json(result.stdout, trained)
    assert set(data["firing_rates"]) == {"emb", "blocks.0.lif1", "blocks.0.lif2",
                                         "blocks.1.lif1", "blocks.1.lif2"}


def test_evaluate_json_subprocess_matches_api(firing_model: Path, workdir: Path) -> None:
    proc = _run(["evaluate", str(firing_model), "--data", "corpus.txt", "--json",
                 "--max-tokens", "512"], workdir)
    assert proc.returncode == 0, proc.stderr
    data = _check_eval_json(proc.stdout, firing_model)
    assert all(r > 0 for r in data["firing_rates"].values()), data["firing_rates"]
    expected = api.evaluate(api.open_model(firing_model), str(workdir / "corpus.txt"),
                            "valid", max_tokens=512)
    assert data["bits_per_token"] == pytest.approx(expected.bits_per_token, rel=1e-6)
    assert data["firing_rates"] == pytest.approx(expected.firing_rates, rel=1e-6)


def test_evaluate_text_output(firing_model: Path, workdir: Path) -> None:
    result = CliRunner().invoke(main, ["evaluate", str(firing_model), "--data",
                                       str(workdir / "corpus.txt"), "--max-tokens", "256"])
    assert result.exit_code == 0, result.output
    assert "bits per token" in result.stdout
    for name in ("emb", "blocks.1.lif2"):
        assert name in result.stdout


# ---- generate ---------------------------------------------------------------------------------

def _generate_args(model: Path) -> list[str]:
    return ["generate", "--model", str(model), "--prompt", PROMPT, "--tokens", "20",
            "--temperature", "0"]


def test_generate_greedy_is_deterministic_and_matches_api(firing_model: Path, workdir: Path
                                                          ) -> None:
    first = _run(_generate_args(firing_model), workdir)
    second = _run(_generate_args(firing_model), workdir)
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    loaded = api.open_model(firing_model)
    pieces = list(api.generate(loaded, PROMPT, 20, SamplingOptions(temperature=0)))
    assert len(pieces) == 20
    assert first.stdout == PROMPT + "".join(pieces) + "\n"
    # Greedy means argmax of the RNN-mode logits, token after token.
    model, tok = loaded.model, loaded.tokenizer
    state, ids = model.init_state(1), tok.encode(PROMPT)
    with torch.no_grad():
        for t in ids:
            logits, state = model.step(torch.tensor([t]), state)
        greedy = []
        for _ in range(20):
            greedy.append(int(logits[0].argmax()))
            logits, state = model.step(torch.tensor([greedy[-1]]), state)
    assert "".join(pieces) == tok.decode(greedy)
    in_process = CliRunner().invoke(main, _generate_args(firing_model))
    assert in_process.exit_code == 0 and in_process.stdout == first.stdout


def test_generate_sampling_depends_on_seed(firing_model: Path) -> None:
    runner = CliRunner()
    base = ["generate", "--model", str(firing_model), "--prompt", PROMPT, "--tokens", "40",
            "--temperature", "1.5", "--top-p", "1.0"]
    a = runner.invoke(main, base + ["--seed", "1"]).stdout
    b = runner.invoke(main, base + ["--seed", "1"]).stdout
    c = runner.invoke(main, base + ["--seed", "2"]).stdout
    assert a == b and a != c


def test_generate_prompt_outside_vocabulary(firing_model: Path, workdir: Path) -> None:
    proc = _run(["generate", "--model", str(firing_model), "--prompt", "the \u20ac lord",
                 "--tokens", "5", "--temperature", "0"], workdir)
    _assert_clean_error(proc.returncode, proc.stdout, proc.stderr, "\u20ac", "vocabulary")
    result = CliRunner().invoke(main, ["generate", "--model", str(firing_model), "--prompt",
                                       "#", "--tokens", "5"])
    _assert_clean_error(result.exit_code, result.stdout, result.stderr, "'#'")


def test_generate_missing_model(workdir: Path) -> None:
    proc = _run(["generate", "--model", "absent.pt", "--prompt", PROMPT], workdir)
    _assert_clean_error(proc.returncode, proc.stdout, proc.stderr, "absent.pt", "no such file")


@pytest.mark.parametrize("content", [os.urandom(300), b"just some text\n" * 30],
                         ids=["random-bytes", "text"])
def test_generate_corrupt_model(workdir: Path, content: bytes) -> None:
    bad = workdir / "corrupt.pt"
    bad.write_bytes(content)
    proc = _run(["generate", "--model", str(bad), "--prompt", PROMPT], workdir)
    _assert_clean_error(proc.returncode, proc.stdout, proc.stderr, "corrupt.pt")
    result = CliRunner().invoke(main, ["evaluate", str(bad), "--data",
                                       str(workdir / "corpus.txt")])
    _assert_clean_error(result.exit_code, result.stdout, result.stderr, "corrupt.pt")


def test_evaluate_bare_state_dict_needs_tokenizer(workdir: Path) -> None:
    from spikegpt_deploy.checkpoint import save_official_state_dict

    path = workdir / "bare.pth"
    save_official_state_dict(make_tiny_model(n_layer=1), path)
    result = CliRunner().invoke(main, ["evaluate", str(path), "--data",
                                       str(workdir / "corpus.txt")])
    _assert_clean_error(result.exit_code, result.stdout, result.stderr, "bare.pth", "tokenizer")
