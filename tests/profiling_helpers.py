"""Shared by test_profiling_counts and test_profiling_pricing: the firing scale for width-16
tiny models, and the module-scoped tiny model and token ids that both profile."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_tiny_model

SCALE = 8.0  # x8 on att.output / ffn.value so the LIFs fire in a width-16 model


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model(n_layer=2, n_embd=16, scale=SCALE)


@pytest.fixture(scope="module")
def ids():
    return np.random.RandomState(0).randint(0, 13, 40)
