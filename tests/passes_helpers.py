"""Shared by test_fold and test_quantize: the tiny captured models the passes are run on, their
token batches and calibration tokens, and the float / quantized executors."""

from __future__ import annotations

import numpy as np

from conftest import make_tiny_model
from converters.torch_capture import capture_ir
from hw_profiles import load_profile
from spikegpt_deploy.interpreter import Executor
from spikegpt_deploy.ir import IR
from spikegpt_deploy.passes.quantize import emulator

VOCAB, N_LAYER, N_EMBD, N_TOKENS = 30, 3, 16, 48
LOIHI2 = load_profile("loihi2")


def tokens_for(seed: int, batch: int = 2, n: int = N_TOKENS) -> np.ndarray:
    return np.random.default_rng(1000 + seed).integers(0, VOCAB, size=(batch, n))


CALIBRATION = np.random.default_rng(7).integers(0, VOCAB, size=(1, 128))


def run(ir: IR, tokens: np.ndarray, ops: str = "float") -> tuple[np.ndarray, dict]:
    return (Executor(ir) if ops == "float" else emulator(ir)).run(tokens)


def model_ir(model_type: str = "RWKV", seed: int = 0, **config: object) -> IR:
    return capture_ir(make_tiny_model(model_type, seed=seed, n_layer=N_LAYER, n_embd=N_EMBD,
                                      vocab_size=VOCAB, **config))
