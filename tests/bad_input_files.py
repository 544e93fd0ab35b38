"""The files of the bad-input table (tests/test_bad_inputs.py): a tiny model, its bundle and
profile.json, and every bad checkpoint, bundle, TOML and text file, made once per session."""

from __future__ import annotations

import json
import pickle
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from conftest import make_tiny_model, random_text
from spikegpt_deploy import api
from spikegpt_deploy.checkpoint import save_model, save_official_state_dict
from spikegpt_deploy.data import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXT = random_text(6000, seed=5)
MARKER = "code-ran.marker"


class _RunsCode:
    """Unpickling this creates MARKER: the 'checkpoint that would run code'."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


# ----------------------------------------------------------------------------- the world
def _bad_checkpoints(w: Path, good: Path) -> dict[str, Path]:
    sd = OrderedDict(make_tiny_model(n_layer=2, n_embd=16, vocab_size=20, seed=4).state_dict())
    out: dict[str, Path] = {}
    (w / "zero.pt").write_bytes(b"")
    data = good.read_bytes()
    (w / "truncated.pt").write_bytes(data[: len(data) // 2])
    (w / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (w / "folder.pt").mkdir()
    torch.save({"state_dict": sd, "evil": _RunsCode(str(w / MARKER))}, w / "evil.pt")
    (w / "evil.pkl.pt").write_bytes(pickle.dumps(_RunsCode(str(w / MARKER)), protocol=2))
    for name, edit in (("nan", lambda d: d["emb.weight"].__setitem__((0, 0), float("nan"))),
                       ("inf", lambda d: d["blocks.0.ffn.key.weight"].__setitem__((1, 1),
                                                                                  float("inf"))),
                       ("shape", lambda d: d.__setitem__("head.weight", torch.zeros(3, 3))),
                       ("missing", lambda d: d.pop("blocks.1.att.key.weight")),
                       ("extra", lambda d: d.__setitem__("optimizer.lr", torch.zeros(1)))):
        copy = OrderedDict((k, v.clone()) for k, v in sd.items())
        edit(copy)
        torch.save(copy, w / f"{name}.pth")
    for name in ("zero.pt", "truncated.pt", "random.pt", "folder.pt", "evil.pt", "evil.pkl.pt",
                 "nan.pth", "inf.pth", "shape.pth", "missing.pth", "extra.pth", "absent.pt"):
        out[name] = w / name
    return out


BUNDLE_TAMPERS: dict[str, tuple[Callable[[Path, Path], None], str]] = {}


def _tamper(name: str, needle: str) -> Callable[[Callable[[Path, Path], None]], Any]:
    def register(fn: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
        BUNDLE_TAMPERS[name] = (fn, needle)
        return fn
    return register


def _edit_manifest(b: Path, fn: Callable[[dict], None]) -> None:
    m = json.loads((b / "manifest.json").read_text())
    fn(m)
    (b / "manifest.json").write_text(json.dumps(m))


@_tamper("bad-json", "not valid JSON")
def _bad_json(b: Path, w: Path) -> None:
    (b / "manifest.json").write_text('{"format": ')


@_tamper("format-version", "format version 99")
def _version(b: Path, w: Path) -> None:
    _edit_manifest(b, lambda m: m.__setitem__("format_version", 99))


@_tamper("changed-file", "sha256 does not match")
def _changed(b: Path, w: Path) -> None:
    (b / "ir.json").write_text((b / "ir.json").read_text() + " ")


@_tamper("listed-file-missing", "listed in the manifest but missing")
def _missing(b: Path, w: Path) -> None:
    (b / "tokenizer.json").unlink()


@_tamper("symlink-outside", "outside the bundle")
def _symlink(b: Path, w: Path) -> None:
    (b / "ir_params.npz").unlink()
    (b / "ir_params.npz").symlink_to(w / "outside.npz")


@_tamper("absolute-name", "points outside the bundle")
def _absolute(b: Path, w: Path) -> None:
    _edit_manifest(b, lambda m: m["files"].__setitem__(str(w / "outside.npz"), "0" * 64))


@_tamper("dotdot-name", "points outside the bundle")
def _dotdot(b: Path, w: Path) -> None:
    _edit_manifest(b, lambda m: m["files"].__setitem__("../../../../etc/passwd", "0" * 64))


@_tamper("profile-changed", "target.toml: sha256 does not match")
def _profile(b: Path, w: Path) -> None:
    toml = b / "target.toml"
    toml.write_text(toml.read_text().replace("value = 23.6", "value = 2.36", 1))


@_tamper("not-a-folder", "not a bundle directory")
def _not_dir(b: Path, w: Path) -> None:
    shutil.rmtree(b)
    b.write_text("x")


TOMLS = {"toml-missing-field": ("title = ", "title"),
         "toml-negative-energy": ("synaptic_op = { value = 23.6", "synaptic_op"),
         "toml-string-number": ("cores_per_chip = { value = 128", "cores_per_chip")}


def _bad_tomls(w: Path) -> dict[str, Path]:
    good = (ROOT / "hw_profiles" / "loihi2.toml").read_text()
    lines = good.splitlines()
    out = {}
    edits = {"toml-missing-field": "\n".join(l for l in lines if not l.startswith("title = ")),
             "toml-negative-energy": good.replace("synaptic_op = { value = 23.6",
                                                  "synaptic_op = { value = -23.6", 1),
             "toml-string-number": good.replace("cores_per_chip = { value = 128",
                                                'cores_per_chip = { value = "128"', 1)}
    for name, text in edits.items():
        assert text != good
        out[name] = w / f"{name}.toml"
        out[name].write_text(text)
    return out


def make_world(w: Path) -> dict[str, Path]:
    """Every input of the table, made once in ``w``: a tiny model, its bundle, a profile.json,
    and the bad files; returns name -> path (the names the table's {placeholders} use)."""
    tok = CharTokenizer.from_text(TEXT)
    p: dict[str, Path] = {"w": w, "corpus": w / "corpus.txt", "model": w / "model.pt"}
    p["corpus"].write_text(TEXT, encoding="utf-8")
    model = make_tiny_model(n_layer=2, n_embd=16, vocab_size=tok.vocab_size, seed=4)
    save_model(model, p["model"], tok)
    save_official_state_dict(model, w / "official.pth")
    p["bundle"] = api.convert(p["model"], w / "good.bundle")[0]
    _, paths = api.profile(p["model"], str(p["corpus"]), 32, out_dir=w / "prof")
    p["profile_json"] = w / "prof" / "profile.json"
    np.savez(w / "outside.npz", x=np.zeros(3))
    for name, (fn, _) in BUNDLE_TAMPERS.items():
        b = w / f"{name}.bundle"
        shutil.copytree(p["bundle"], b)
        fn(b, w)
        p[f"bundle:{name}"] = b
    for name, path in _bad_checkpoints(w, p["model"]).items():
        p[f"ckpt:{name}"] = path
    for name, path in _bad_tomls(w).items():
        p[name] = path
    (w / "empty.txt").write_bytes(b"")
    (w / "binary.txt").write_bytes(np.random.default_rng(1).bytes(5000))
    (w / "one-char.txt").write_text("a")
    (w / "a-file").write_text("a regular file, used as a parent folder")
    (w / "notes.json").write_text("{not json")
    (w / "other.json").write_text('{"format": "something-else"}')
    for name in ("empty.txt", "binary.txt", "one-char.txt", "a-file", "notes.json", "other.json"):
        p[name] = w / name
    return p
