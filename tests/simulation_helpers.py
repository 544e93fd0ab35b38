"""Shared by test_simulation_equivalence and test_simulation_errors: the repository root, the
seeded tiny SpikeGPT's training text, and the module-scoped fixtures that save that model and
convert it into a bundle (once per test module that uses them).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # lava's wheels install a top-level `tests` package
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from conftest import random_text, save_char_model  # noqa: E402
from spikegpt_deploy import api  # noqa: E402

TEXT = random_text(4000, seed=1)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_char_model(tmp_path_factory.mktemp("sim") / "tiny.pt", TEXT, seed=1)


@pytest.fixture(scope="module")
def bundle(model_file) -> Path:
    return api.convert(model_file, model_file.with_suffix(".bundle"), force=True)[0]

