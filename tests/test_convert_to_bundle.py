"""bundle.convert_to_bundle (what ``convert`` runs): the IR files are written while the
equivalence check runs, and the bundle is the one run_pipeline + write_bundle give, byte for
byte; a step that fails, or an interrupt, leaves nothing behind."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_model
from spikegpt_deploy import convert as convert_mod
from spikegpt_deploy.bundle import convert_to_bundle, verify_bundle, write_bundle
from spikegpt_deploy.checkpoint import save_model
from spikegpt_deploy.convert import ConvertOptions, run_pipeline
from spikegpt_deploy.data import CharTokenizer
from spikegpt_deploy.errors import BundleError, ConversionError
from spikegpt_deploy.ir_io import savez_stream

OPTIONS = ConvertOptions(calibration_tokens=64, check_tokens=16)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = make_tiny_model("RWKV", seed=4, n_layer=2, n_embd=16, vocab_size=30)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(model, path, CharTokenizer([chr(97 + i) for i in range(30)]))
    return path


def test_same_bundle_as_the_pipeline_then_write(model_path: Path, tmp_path: Path) -> None:
    out, ctx = convert_to_bundle(model_path, OPTIONS, tmp_path / "overlapped.bundle")
    plain = write_bundle(run_pipeline(model_path, OPTIONS), tmp_path / "plain.bundle")
    assert verify_bundle(out) == verify_bundle(plain)   # every file's sha256 included
    assert {p.name: p.read_bytes() for p in out.iterdir()} == \
        {p.name: p.read_bytes() for p in plain.iterdir()}
    assert list(ctx.step_seconds) == [name for name, _ in convert_mod.STEPS]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlapped.bundle", "plain.bundle"]


@pytest.mark.parametrize("exc", [ConversionError("check failed"), KeyboardInterrupt()])
def test_a_failing_check_leaves_nothing(model_path: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        exc: BaseException) -> None:
    """The check fails while the IR files are being written: no bundle, no temporary folder."""
    def failing_check(ctx: convert_mod.ConvertContext) -> None:
        raise exc

    steps = [(n, failing_check if n == "check_equivalence" else s) for n, s in convert_mod.STEPS]
    monkeypatch.setattr(convert_mod, "STEPS", steps)
    with pytest.raises(type(exc)):
        convert_to_bundle(model_path, OPTIONS, tmp_path / "b.bundle")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_unwritable_parent(model_path: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(BundleError, match="already exists.*--force"):
        convert_to_bundle(model_path, OPTIONS, tmp_path / "taken")
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(BundleError, match="cannot write the bundle"):
        convert_to_bundle(model_path, OPTIONS, blocker / "b.bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken"]


def test_savez_stream_writes_what_np_savez_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundle's npz writer: the same bytes as np.savez (zip members, .npy headers, data) for
    contiguous, strided, Fortran-ordered, empty and 0-d arrays, read back equal."""
    monkeypatch.setattr(time, "time", lambda: 1.7e9)  # the zip entries' timestamps
    rng = np.random.default_rng(0)
    arrays = {"a/w": rng.standard_normal((30, 7)).astype(np.float32),
              "b/q": rng.integers(-127, 128, (5, 9)).astype(np.int8),
              "c/strided": rng.standard_normal((6, 4))[:, ::2],
              "d/fortran": np.asfortranarray(rng.standard_normal((3, 5))),
              "e/empty": np.zeros((0, 4)), "f/scalar": np.float64(3.5)}
    ours, theirs = io.BytesIO(), io.BytesIO()
    savez_stream(ours, arrays)
    np.savez(theirs, **arrays)
    assert ours.getvalue() == theirs.getvalue()
    with np.load(io.BytesIO(ours.getvalue()), allow_pickle=False) as back:
        assert all(np.array_equal(back[k], v) and back[k].dtype == np.asarray(v).dtype
                   for k, v in arrays.items())
