"""Checkpoints: both formats round-trip, config inference, overrides, and every error is a
CheckpointError that names the file (and the key), including for hostile or random files."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_tiny_model
from spikegpt_deploy import load_model
from spikegpt_deploy.checkpoint import (
    MODEL_FORMAT,
    load_checkpoint,
    save_model,
    save_official_state_dict,
)
from spikegpt_deploy.data import CharTokenizer
from spikegpt_deploy.errors import CheckpointError
from spikegpt_deploy.model import SpikeGPT

VOCAB = "\n !,.:;?abcde"  # 13 characters, the tiny models' vocab size
IDX = torch.tensor([[1, 5, 9, 2, 12, 0, 7, 7, 3, 11, 4, 6]])


def _logits(model: SpikeGPT) -> torch.Tensor:
    with torch.no_grad():
        return model(IDX)


def _assert_same_model(a: SpikeGPT, b: SpikeGPT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(_logits(a), _logits(b))


def _official(tmp_path: Path, model_type: str = "RWKV", n_layer: int = 2, **kw: Any
              ) -> tuple[SpikeGPT, Path]:
    model = make_tiny_model(model_type, n_layer=n_layer, **kw)
    path = tmp_path / "official.pth"
    save_official_state_dict(model, path)
    return model, path


def _save_sd(tmp_path: Path, sd: Any, name: str = "edited.pth") -> Path:
    path = tmp_path / name
    torch.save(sd, path)
    return path


# ---- round trips ------------------------------------------------------------------------------

def test_model_pt_round_trip(tmp_path: Path, model_type: str) -> None:
    model = make_tiny_model(model_type, rescale_every=2, binary_embedding=False)
    path = tmp_path / "model.pt"
    save_model(model, path, CharTokenizer(list(VOCAB)), {"valid_bpc": 2.5, "note": "x"})
    loaded = load_model(path)
    assert loaded.config == model.config
    _assert_same_model(model, loaded)
    assert not loaded.training
    assert loaded.tokenizer.vocab == list(VOCAB)
    full = load_checkpoint(path)
    assert full.source_format == "spikegpt-deploy"
    assert full.meta == {"valid_bpc": 2.5, "note": "x"}
    assert len(full.sha256) == 64
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == MODEL_FORMAT and raw["version"] == 1


@pytest.mark.parametrize("n_layer", [1, 3])
def test_official_round_trip_infers_config(tmp_path: Path, model_type: str, n_layer: int
                                           ) -> None:
    model, path = _official(tmp_path, model_type, n_layer=n_layer, n_embd=24, vocab_size=17)
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, OrderedDict) and list(raw) == list(model.state_dict())
    loaded = load_model(path)
    cfg = loaded.config
    assert (cfg.n_layer, cfg.vocab_size, cfg.n_embd, cfg.model_type) == \
        (n_layer, 17, 24, model_type)
    assert loaded.tokenizer is None
    _assert_same_model(model, loaded)
    assert load_checkpoint(path).source_format == "official-state-dict"


def test_squeezed_rnn_time_mix_accepted(tmp_path: Path, model_type: str) -> None:
    model = make_tiny_model(model_type, n_layer=2)
    sd = OrderedDict((k, v.squeeze() if ".time_" in k else v)
                     for k, v in model.state_dict().items())
    assert sd["blocks.1.att.time_mix_k"].shape == (16,)
    loaded = load_model(_save_sd(tmp_path, sd))
    assert loaded.blocks[1].att.time_mix_k.shape == (1, 1, 16)
    _assert_same_model(model, loaded)


def test_half_precision_weights_load_as_float32(tmp_path: Path) -> None:
    model = make_tiny_model(n_layer=2)
    sd = OrderedDict((k, v.half()) for k, v in model.state_dict().items())
    loaded = load_model(_save_sd(tmp_path, sd))
    assert all(v.dtype == torch.float32 for v in loaded.state_dict().values())
    assert torch.allclose(loaded.emb.weight, model.emb.weight, atol=1e-2)


def test_overrides_applied(tmp_path: Path) -> None:
    model, path = _official(tmp_path)
    assert model.config.spiking and model.config.binary_embedding
    loaded = load_model(path, spiking=False, binary_embedding=False, rescale_every=2, ctx_len=64)
    cfg = loaded.config
    assert (cfg.spiking, cfg.binary_embedding, cfg.rescale_every, cfg.ctx_len) == \
        (False, False, 2, 64)
    assert not torch.equal(_logits(loaded), _logits(model))
    with loaded.record_spikes() as rec:
        _logits(loaded)
    assert rec.spikes() == {}
    # The same overrides work on a model.pt.
    pt = tmp_path / "model.pt"
    save_model(model, pt, None)
    assert load_model(pt, spiking=False).config.spiking is False


@pytest.mark.parametrize("override", [{"n_layer": 3}, {"n_embd": 32}, {"vocab_size": 99},
                                      {"model_type": "RWKV-ffnPre"}, {"bogus": 1}])
def test_shape_overrides_refused(tmp_path: Path, override: dict) -> None:
    _, path = _official(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_model(path, **override)
    assert str(path) in str(info.value)
    assert next(iter(override)) in str(info.value)


def test_bad_override_value_refused(tmp_path: Path) -> None:
    _, path = _official(tmp_path)
    with pytest.raises(CheckpointError, match="rescale_every"):
        load_model(path, rescale_every=-1)


# ---- errors -----------------------------------------------------------------------------------

def _expect_error(path: Path, *needles: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert "\n" not in msg.strip()
    return msg


def test_missing_key(tmp_path: Path) -> None:
    model, _ = _official(tmp_path)
    sd = model.state_dict()
    del sd["blocks.1.ffn.key.weight"]
    _expect_error(_save_sd(tmp_path, sd), "blocks.1.ffn.key.weight", "missing")


def test_missing_block_does_not_infer_a_smaller_model(tmp_path: Path) -> None:
    model, _ = _official(tmp_path, n_layer=3)
    sd = OrderedDict((k, v) for k, v in model.state_dict().items()
                     if not k.startswith("blocks.1."))
    _expect_error(_save_sd(tmp_path, sd), "1")


def test_extra_key(tmp_path: Path) -> None:
    model, _ = _official(tmp_path)
    sd = model.state_dict()
    sd["module.blocks.0.att.key.weight"] = torch.zeros(16, 16)
    _expect_error(_save_sd(tmp_path, sd), "module.blocks.0.att.key.weight", "unexpected")


def test_wrong_shape(tmp_path: Path) -> None:
    model, _ = _official(tmp_path)
    sd = model.state_dict()
    sd["blocks.1.att.value.weight"] = torch.zeros(16, 8)
    msg = _expect_error(_save_sd(tmp_path, sd), "blocks.1.att.value.weight")
    assert "[16, 8]" in msg and "[16, 16]" in msg


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights(tmp_path: Path, bad: float) -> None:
    model, _ = _official(tmp_path)
    sd = model.state_dict()
    sd["blocks.0.ffn.value.weight"][3, 5] = bad
    _expect_error(_save_sd(tmp_path, sd), "blocks.0.ffn.value.weight", "NaN/Inf")


def test_non_tensor_and_integer_values(tmp_path: Path) -> None:
    model, _ = _official(tmp_path)
    sd = model.state_dict()
    sd["head.weight"] = [[0.0] * 16] * 13
    _expect_error(_save_sd(tmp_path, sd), "head.weight", "list")
    sd["head.weight"] = torch.zeros(13, 16, dtype=torch.int64)
    _expect_error(_save_sd(tmp_path, sd, "int.pth"), "head.weight", "float tensor")


def test_model_pt_with_inconsistent_config(tmp_path: Path) -> None:
    model = make_tiny_model(n_layer=2)
    path = tmp_path / "model.pt"
    save_model(model, path, None)
    obj = torch.load(path, weights_only=True)
    obj["config"]["n_layer"] = 10 ** 8  # must be refused, not built
    _expect_error(_save_sd(tmp_path, obj, "big.pt"), "n_layer")
    obj["config"]["n_layer"] = 2
    obj["config"]["surprise"] = 1
    _expect_error(_save_sd(tmp_path, obj, "unknown.pt"), "surprise")
    del obj["config"]["surprise"]
    obj["version"] = 99
    _expect_error(_save_sd(tmp_path, obj, "version.pt"), "version")


class Payload:
    """Unpickling an instance of this class would create MARKER (it must never happen)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


class CustomModule(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))


def test_pickle_payload_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:  # a plain (non-zip) pickle with a __reduce__ payload
        pickle.dump({"emb.weight": Payload(str(marker))}, f)
    _expect_error(path, "refused")
    assert not marker.exists()
    zipped = tmp_path / "evil_zip.pth"  # the same payload inside torch's zip format
    torch.save({"emb.weight": torch.zeros(2, 2), "x": Payload(str(marker))}, zipped)
    _expect_error(zipped, "refused")
    assert not marker.exists()


def test_pickled_custom_class_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pth"
    torch.save(CustomModule(), path)
    _expect_error(path, "refused")


@pytest.mark.parametrize("content", [os.urandom(256), b"hello world, not a model\n" * 20, b"",
                                     b"PK\x03\x04 truncated zip", b"\x80\x02}q\x00."[:-1]],
                         ids=["random", "text", "empty", "zip", "truncated-pickle"])
def test_non_checkpoint_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    _expect_error(path)


@pytest.mark.parametrize("obj", [[1, 2], torch.zeros(3), {"a": torch.zeros(1)}, {},
                                 {1: torch.zeros(2)}], ids=["list", "tensor", "foreign-dict",
                                                            "empty-dict", "int-key"])
def test_non_spikegpt_objects(tmp_path: Path, obj: Any) -> None:
    _expect_error(_save_sd(tmp_path, obj))


def test_missing_file(tmp_path: Path) -> None:
    msg = _expect_error(tmp_path / "nope.pth", "no such file")
    assert "nope.pth" in msg
    _expect_error(tmp_path)  # a directory is not a model file either


def test_truncated_checkpoint(tmp_path: Path) -> None:
    _, path = _official(tmp_path)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 20):
        bad = tmp_path / f"cut{cut}.pth"
        bad.write_bytes(data[:cut])
        _expect_error(bad)


# ---- property tests ---------------------------------------------------------------------------

# More examples for a deeper hunt: SPIKEGPT_FUZZ_EXAMPLES=2000 pytest tests/test_checkpoint.py
FUZZ_EXAMPLES = int(os.environ.get("SPIKEGPT_FUZZ_EXAMPLES", "60"))

_BASE = make_tiny_model(n_layer=2, n_embd=8, vocab_size=5).state_dict()
_BASE_PT = {"format": MODEL_FORMAT, "version": 1,
            "config": make_tiny_model(n_layer=2, n_embd=8, vocab_size=5).config.to_dict(),
            "state_dict": _BASE, "tokenizer": {"type": "char", "vocab": list("abcde")},
            "meta": {"valid_bpc": 1.0}}
_KEYS = list(_BASE)

_junk = st.one_of(st.none(), st.integers(-3, 10 ** 9), st.floats(allow_nan=True),
                  st.text(max_size=5), st.lists(st.integers(0, 3), max_size=3),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                  st.just(torch.zeros(())), st.just(torch.zeros(3, dtype=torch.bool)),
                  st.just(torch.ones(2, 3, dtype=torch.int32)))
_new_key = st.one_of(st.sampled_from(_KEYS).map(lambda k: k.replace("blocks.1", "blocks.7")),
                     st.sampled_from(_KEYS).map(lambda k: "module." + k),
                     st.text(max_size=12), st.integers(-5, 5),
                     st.sampled_from(["blocks.99999999.ln1.weight", "emb.weight",
                                      "blocks.0.ffnPre.key.weight"]))


@st.composite
def _corruption(draw: st.DrawFn) -> tuple:
    kind = draw(st.sampled_from(["drop", "rename", "reshape", "nan", "junk", "dtype", "add"]))
    key = draw(st.sampled_from(_KEYS))
    if kind == "rename" or kind == "add":
        return kind, key, draw(_new_key)
    if kind == "reshape":
        return kind, key, draw(st.lists(st.integers(0, 9), min_size=0, max_size=3))
    if kind == "junk":
        return kind, key, draw(_junk)
    if kind == "dtype":
        return kind, key, draw(st.sampled_from([torch.int64, torch.bool, torch.float16,
                                                torch.float64, torch.complex64, torch.uint8]))
    if kind == "nan":
        return kind, key, draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    return kind, key, None


def _apply(sd: dict, corruption: tuple) -> dict:
    kind, key, arg = corruption
    sd = dict(sd)
    if key not in sd:
        return sd
    value = sd[key]
    if kind == "drop":
        del sd[key]
    elif kind == "rename":
        del sd[key]
        sd[arg] = value
    elif kind == "add":
        sd[arg] = value
    elif kind == "reshape":
        sd[key] = torch.zeros(arg)
    elif kind == "junk":
        sd[key] = arg
    elif kind == "dtype" and isinstance(value, torch.Tensor):
        sd[key] = value.to(arg)
    elif kind == "nan" and isinstance(value, torch.Tensor) and value.is_floating_point() \
            and value.numel():
        value = value.clone().reshape(-1)
        value[value.numel() // 2] = arg
        sd[key] = value.reshape(sd[key].shape)
    return sd


def _load_or_checkpoint_error(obj: Any) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.pth"
        torch.save(obj, path)
        try:
            model = load_model(path)
        except CheckpointError as exc:
            assert str(path) in str(exc)
        else:
            assert isinstance(model, SpikeGPT)
            assert all(torch.isfinite(v).all() for v in model.state_dict().values())


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_corruption(), min_size=1, max_size=4))
def test_corrupted_state_dict_raises_only_checkpoint_error(corruptions: list) -> None:
    sd = dict(_BASE)
    for c in corruptions:
        sd = _apply(sd, c)
    _load_or_checkpoint_error(sd)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_corruption(), max_size=2),
       st.sampled_from(["format", "version", "config", "state_dict", "tokenizer", "meta", None]),
       _junk, st.sampled_from(["vocab_size", "n_layer", "n_embd", "model_type", "spiking",
                               "rescale_every", "ctx_len", None]), _junk)
def test_corrupted_model_pt_raises_only_checkpoint_error(corruptions: list, top_key: str | None,
                                                         top_value: Any, cfg_key: str | None,
                                                         cfg_value: Any) -> None:
    obj = dict(_BASE_PT)
    sd = dict(_BASE)
    for c in corruptions:
        sd = _apply(sd, c)
    obj["state_dict"] = sd
    if cfg_key is not None:
        obj["config"] = {**obj["config"], cfg_key: cfg_value}
    if top_key is not None:
        obj[top_key] = top_value
    _load_or_checkpoint_error(obj)


_VALID_BYTES: bytes = b""


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1,
                max_size=6), st.one_of(st.none(), st.integers(0, 10 ** 6)))
def test_byte_corrupted_file_raises_only_checkpoint_error(flips: list, cut: int | None) -> None:
    global _VALID_BYTES
    if not _VALID_BYTES:
        with tempfile.TemporaryDirectory() as d:
            torch.save(_BASE_PT, Path(d) / "m.pt")
            _VALID_BYTES = (Path(d) / "m.pt").read_bytes()
    data = bytearray(_VALID_BYTES)
    for pos, byte in flips:
        data[pos % len(data)] = byte
    if cut is not None:
        data = data[: cut % len(data)]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "flipped.pt"
        path.write_bytes(bytes(data))
        try:
            load_model(path)
        except CheckpointError as exc:
            assert str(path) in str(exc)
