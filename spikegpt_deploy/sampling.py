"""Token sampling and RNN-mode text generation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .data import Tokenizer
from .errors import DataError
from .inputs import check_count, check_real, check_token_ids
from .model import SpikeGPT


@dataclass(frozen=True)
class SamplingOptions:
    """temperature 0 means greedy (argmax) decoding, so runs can be compared token for token."""

    temperature: float = 1.0
    top_p: float = 0.9
    seed: int = 0

    def validate(self) -> None:
        check_real(self.temperature, "--temperature", 0.0)
        check_real(self.top_p, "--top-p", 0.0, 1.0, above=True)
        check_count(self.seed, "--seed", 0, 2**63 - 1)


class Sampler:
    """Samples a token id from a logits vector (numpy, so every backend can share it)."""

    def __init__(self, options: SamplingOptions):
        options.validate()
        self.options = options
        self._rng = np.random.default_rng(options.seed)

    def __call__(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if self.options.temperature == 0:
            return int(np.argmax(logits))
        z = logits / self.options.temperature
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, self.options.top_p)) + 1]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[self._rng.choice(len(keep), p=kept)])


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    if not prompt:
        raise DataError("the prompt is empty; pass at least one character with --prompt")
    return tokenizer.encode(prompt, what="the prompt")


def generate_ids(model: SpikeGPT, prompt_ids: list[int], n_tokens: int,
                 options: SamplingOptions) -> Iterator[int]:
    """Feed the prompt token by token (RNN mode), then yield ``n_tokens`` sampled ids.

    The arguments are checked now, not at the first ``next()``, so a caller can report a bad
    option before it prints anything."""
    check_count(n_tokens, "--tokens")
    ids = check_token_ids(prompt_ids, model.config.vocab_size)
    if not ids:
        raise DataError("the prompt is empty; pass at least one token")
    return _generate(model, ids, n_tokens, Sampler(options))


@torch.no_grad()
def _generate(model: SpikeGPT, prompt_ids: list[int], n_tokens: int,
              sampler: Sampler) -> Iterator[int]:
    state = model.init_state(1)
    logits = None
    for tok in prompt_ids:
        logits, state = model.step(torch.tensor([tok]), state)
    for _ in range(n_tokens):
        tok = sampler(logits[0].numpy())
        yield tok
        logits, state = model.step(torch.tensor([tok]), state)
