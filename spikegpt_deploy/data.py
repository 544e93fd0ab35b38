"""Text corpora and tokenizers.

``kjv`` is the King James Bible, shipped with the package (``corpora/kjv.txt.gz``: the text of
Debian's ``bible-kjv`` as ``bible -l0`` prints it; ``scripts/make-kjv-corpus`` regenerates it):
Genesis-Malachi (Old Testament) for training, Matthew-Acts for validation and Romans-Revelation
for test (docs/data.md). Any other value is a path to a UTF-8 text file, split 90 / 5 / 5 by
characters.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import DataError

# The ranges of the splits, as `bible -l0` passages (the text is that program's output).
KJV_RANGES = {"train": "Gen1:1-Mal4:6", "valid": "Mat1:1-Act28:31", "test": "Rom1:1-Rev22:21"}
# Each split starts at its first chapter heading; the text has each heading once.
KJV_SPLIT_HEADINGS = {"valid": "\nMatthew 1\n\n", "test": "\nRomans 1\n\n"}
KJV_SHA256 = "6f74f5589333c56c263963e6347dba662bae2d96861302e690aaae0b4a855eda"  # docs/data.md
KJV_RESOURCE = ("corpora", "kjv.txt.gz")


@dataclass(frozen=True)
class Corpus:
    """A corpus split into train / valid / test text, with a hash of the whole for provenance."""

    name: str
    train: str
    valid: str
    test: str
    sha256: str

    def split(self, which: str) -> str:
        if which not in ("train", "valid", "test"):
            raise DataError(f"unknown split {which!r}; use train, valid or test")
        return getattr(self, which)


def split_kjv(text: str) -> dict[str, str]:
    """The whole KJV text -> {'train', 'valid', 'test'}: cut at the splits' first headings."""
    a, b = (text.find(KJV_SPLIT_HEADINGS[k]) for k in ("valid", "test"))
    if not 0 < a < b:
        raise DataError("the packaged KJV text lacks the Matthew / Romans headings; reinstall "
                        "spikegpt-deploy or regenerate it with scripts/make-kjv-corpus")
    return {"train": text[:a], "valid": text[a:b], "test": text[b:]}


@functools.lru_cache(maxsize=1)
def _kjv_text() -> str:
    res = resources.files("spikegpt_deploy").joinpath(KJV_RESOURCE[0]).joinpath(KJV_RESOURCE[1])
    try:
        raw = gzip.decompress(res.read_bytes())
    except (OSError, EOFError) as exc:
        raise DataError(f"the packaged KJV text spikegpt_deploy/{'/'.join(KJV_RESOURCE)} cannot "
                        f"be read ({exc}); reinstall spikegpt-deploy or regenerate it with "
                        "scripts/make-kjv-corpus") from None
    if hashlib.sha256(raw).hexdigest() != KJV_SHA256:
        raise DataError(f"spikegpt_deploy/{'/'.join(KJV_RESOURCE)} is not the expected text "
                        f"(sha256 differs from {KJV_SHA256}); regenerate it with "
                        "scripts/make-kjv-corpus")
    return raw.decode("ascii")


def load_corpus(spec: str) -> Corpus:
    """``'kjv'`` or a path to a UTF-8 text file -> Corpus."""
    if spec == "kjv":
        parts = split_kjv(_kjv_text())
        return Corpus("kjv", parts["train"], parts["valid"], parts["test"], KJV_SHA256)
    path = Path(spec)
    if path.is_dir():
        raise DataError(f"data {spec!r}: is a folder; pass 'kjv' or the path of a UTF-8 text file")
    if not path.is_file():
        raise DataError(f"data {spec!r}: no such file; pass 'kjv' or the path of a UTF-8 text file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"data {spec!r}: cannot be read ({exc.strerror or exc}); pass a readable "
                        f"UTF-8 text file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    if len(text) < 1000:
        raise DataError(f"{path}: only {len(text)} characters; a corpus needs at least 1000")
    a, b = int(len(text) * 0.9), int(len(text) * 0.95)
    return Corpus(path.name, text[:a], text[a:b], text[b:], hashlib.sha256(raw).hexdigest())


class CharTokenizer:
    """Character-level tokenizer: one id per distinct character, sorted (as the reference)."""

    kind = "char"

    def __init__(self, vocab: Sequence[str]):
        if len(set(vocab)) != len(vocab) or any(len(c) != 1 for c in vocab):
            raise DataError("a char vocabulary must be a list of distinct single characters")
        self.vocab = list(vocab)
        self._ids = {c: i for i, c in enumerate(self.vocab)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, what: str = "text") -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            bad = sorted({c for c in text if c not in self._ids})
            raise DataError(
                f"{what} contains character(s) {''.join(bad)!r} ({', '.join(repr(c) for c in bad)}) "
                f"outside the model's vocabulary of {self.vocab_size}; remove or replace them"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "vocab": self.vocab}


class BPETokenizer:
    """A `tokenizers` JSON tokenizer (e.g. GPT-NeoX-20B's, vocab 50277, for the official 216M)."""

    kind = "bpe"

    def __init__(self, json_text: str):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_str(json_text)
        except Exception as exc:  # tokenizers raises its own Exception type
            raise DataError(f"not a tokenizers JSON file: {exc}") from None
        self._json = json_text

    @classmethod
    def from_file(cls, path: str | Path) -> "BPETokenizer":
        p = Path(path)
        if not p.is_file():
            raise DataError(f"--tokenizer {p}: no such file")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"--tokenizer {p}: cannot be read as UTF-8 text ({exc}); pass the "
                            f"tokenizers JSON file") from None
        try:
            return cls(text)
        except DataError as exc:
            raise DataError(f"--tokenizer {p}: {exc}") from None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str, what: str = "text") -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "bpe", "json": self._json}


Tokenizer = CharTokenizer | BPETokenizer


def tokenizer_from_dict(data: Any, source: str) -> Tokenizer:
    if not isinstance(data, dict) or data.get("type") not in ("char", "bpe"):
        raise DataError(f"{source}: 'tokenizer' must be {{'type': 'char'|'bpe', ...}}")
    if data["type"] == "char":
        vocab = data.get("vocab")
        if not isinstance(vocab, list) or not all(isinstance(c, str) for c in vocab):
            raise DataError(f"{source}: tokenizer.vocab must be a list of characters")
        return CharTokenizer(vocab)
    if not isinstance(data.get("json"), str):
        raise DataError(f"{source}: tokenizer.json must be the tokenizer's JSON text")
    return BPETokenizer(data["json"])


def encode_split(tokenizer: Tokenizer, corpus: Corpus, which: str) -> np.ndarray:
    """Token ids of one split as int64; characters the vocabulary lacks are a DataError."""
    return np.asarray(tokenizer.encode(corpus.split(which), what=f"{corpus.name} {which} split"),
                      dtype=np.int64)
