"""Training: determinism, resume == uninterrupted, learning, saved metadata, data errors, KJV."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from spikegpt_deploy import api
from spikegpt_deploy.checkpoint import load_checkpoint
from spikegpt_deploy.data import load_corpus
from spikegpt_deploy.errors import CheckpointError, DataError
from spikegpt_deploy.training import TrainOptions, TrainProgress, train


def _opts(text_file: Path, out: Path, **kw: Any) -> TrainOptions:
    base = dict(data=str(text_file), out=str(out), layers=2, width=16, ctx_len=16, batch_size=4,
                steps=6, lr=3e-3, lr_final=1e-4, warmup_steps=2, seed=3, eval_every=1000,
                eval_tokens=256, checkpoint_every=1000, threads=1)
    base.update(kw)
    return TrainOptions(**base)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model.state_dict()


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert list(wa) == list(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


class Interrupted(Exception):
    pass


def test_training_is_deterministic(text_file: Path, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    train(_opts(text_file, a))
    train(_opts(text_file, b))
    _assert_same_weights(a, b)
    # ... and the seed matters (so the equality above is not trivially true).
    train(_opts(text_file, c, seed=4))
    assert not torch.equal(_weights(a)["head.weight"], _weights(c)["head.weight"])


def test_resume_equals_uninterrupted(text_file: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "resumed").mkdir()
    full, resumed = tmp_path / "full" / "m.pt", tmp_path / "resumed" / "m.pt"
    kw = dict(steps=8, checkpoint_every=3, eval_every=4)
    meta_full = train(_opts(text_file, full, **kw))
    assert not Path(str(full) + ".ckpt").exists()  # the resume state goes once done

    seen: list[int] = []

    def stop_at_5(p: TrainProgress) -> None:  # the checkpoint of step 3 exists, 6 does not
        seen.append(p.step)
        if p.step == 5:
            raise Interrupted()

    with pytest.raises(Interrupted):
        train(_opts(text_file, resumed, **kw), stop_at_5)
    assert seen == [1, 2, 3, 4, 5]
    assert Path(str(resumed) + ".ckpt").is_file() and not resumed.exists()

    resumed_steps: list[int] = []
    meta_resumed = train(_opts(text_file, resumed, **kw),
                         lambda p: resumed_steps.append(p.step), resume=True)
    assert resumed_steps == [4, 5, 6, 7, 8]
    _assert_same_weights(full, resumed)
    strip = [{k: h[k] for k in ("step", "train_loss", "valid_bpc")}
             for h in meta_full["history"]]
    assert [h["step"] for h in strip] == [4, 8]
    assert strip == [{k: h[k] for k in ("step", "train_loss", "valid_bpc")}
                     for h in meta_resumed["history"]]


def test_resume_refuses_other_options_or_no_state(text_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    with pytest.raises(CheckpointError, match="no training state"):
        train(_opts(text_file, out), resume=True)

    def stop(p: TrainProgress) -> None:
        if p.step == 3:
            raise Interrupted()

    with pytest.raises(Interrupted):
        train(_opts(text_file, out, checkpoint_every=2), stop)
    with pytest.raises(CheckpointError, match="width"):
        train(_opts(text_file, out, checkpoint_every=2, width=32), resume=True)


def test_loss_decreases(text_file: Path, tmp_path: Path) -> None:
    losses: list[float] = []
    train(_opts(text_file, tmp_path / "m.pt", steps=30, width=32, ctx_len=32, batch_size=8,
                lr=4e-3, warmup_steps=3), lambda p: losses.append(p.loss))
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.3, (first, last)


def test_saved_model_carries_meta(text_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    progress: list[TrainProgress] = []
    meta = train(_opts(text_file, out, steps=6, eval_every=3), progress.append)
    loaded = load_checkpoint(out)
    assert loaded.source_format == "spikegpt-deploy"
    assert loaded.meta == meta
    assert [h["step"] for h in meta["history"]] == [3, 6]
    bpc = meta["valid_bpc"]
    assert isinstance(bpc, float) and 0 < bpc < 10 and bpc == meta["history"][-1]["valid_bpc"]
    assert [p.valid_bpc for p in progress if p.valid_bpc is not None] == \
        [h["valid_bpc"] for h in meta["history"]]
    assert meta["steps"] == 6 and meta["train_options"]["width"] == 16
    # The vocabulary comes from the whole file, sorted.
    text = text_file.read_text(encoding="utf-8")
    assert loaded.tokenizer.vocab == sorted(set(text))
    cfg = loaded.model.config
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.ctx_len) == (2, 16, len(set(text)), 16)
    # The recorded bpc is what an evaluation of the saved file gives.
    result = api.evaluate(loaded, str(text_file), "valid", max_tokens=256)
    assert result.bits_per_token == pytest.approx(bpc, rel=1e-6)


def test_missing_data_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        train(_opts(tmp_path / "absent.txt", tmp_path / "m.pt"))


@pytest.mark.parametrize("n_chars,ctx_len", [(500, 16), (1500, 2000), (1500, 128)],
                         ids=["tiny-file", "train-shorter-than-window",
                              "valid-shorter-than-window"])
def test_too_short_text(tmp_path: Path, n_chars: int, ctx_len: int) -> None:
    from conftest import random_text

    path = tmp_path / "short.txt"
    path.write_text(random_text(n_chars), encoding="utf-8")
    out = tmp_path / "m.pt"
    with pytest.raises(DataError) as info:
        train(_opts(path, out, ctx_len=ctx_len))
    assert "short.txt" in str(info.value) or str(path) in str(info.value)
    assert not out.exists()


def test_non_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(("caf\xe9 " * 400).encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        train(_opts(path, tmp_path / "m.pt"))


def test_bad_options() -> None:
    with pytest.raises(DataError, match="--width"):
        dataclasses.replace(TrainOptions(), width=0).validate()
    with pytest.raises(DataError, match="--lr"):
        dataclasses.replace(TrainOptions(), lr=0.0).validate()


# sha256 of `bible -l0 RANGE` (Debian bible-kjv 4.38) for the whole book and each split.
KJV_SHA256 = {
    "whole": "6f74f5589333c56c263963e6347dba662bae2d96861302e690aaae0b4a855eda",
    "train": "f973f06991a5e9a38984e46a34a8c2e2845a3f1b47140e76517f5d4b8b8391af",  # Gen1:1-Mal4:6
    "valid": "597210a27afb65377d554c7b733e4ad7884b7c67dbed020d6d603959180e8248",  # Mat1:1-Act28:31
    "test": "56a753a2e8f3a19f34133bcd604fa895419e5fd54b3bd3b4067496ebe68a1ca5",  # Rom1:1-Rev22:21
}


def test_kjv_splits() -> None:
    # The packaged text (docs/data.md): no system package needed.
    corpus = load_corpus("kjv")
    for split in ("train", "valid", "test"):
        assert len(corpus.split(split)) > 100_000, split
    # Old Testament for training: Genesis ... Malachi; the New Testament is held out.
    assert corpus.train.lstrip().startswith("Genesis 1\n")
    last_heading = [ln for ln in corpus.train.splitlines() if ln and not ln.startswith(" ")][-1]
    assert last_heading == "Malachi 4"
    assert corpus.train.rstrip().endswith("with a curse.")
    assert corpus.valid.lstrip().startswith("Matthew 1\n")
    assert corpus.test.lstrip().startswith("Romans 1\n")
    assert "Matthew" not in corpus.train and "Malachi 4" not in corpus.valid
    # Byte for byte what `bible -l0` prints for the whole book and for each split's range.
    whole = corpus.train + corpus.valid + corpus.test
    assert hashlib.sha256(whole.encode()).hexdigest() == KJV_SHA256["whole"] == corpus.sha256
    for split in ("train", "valid", "test"):
        assert hashlib.sha256(corpus.split(split).encode()).hexdigest() == KJV_SHA256[split]
    assert len(whole) == 4_298_239 and len(set(whole)) == 73
