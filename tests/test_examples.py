"""The example script runs against the shipped model and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_python_api_example_runs() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "python_api.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "blocks.3.lif2" in out and "greedy continuation:" in out
    assert "'ir.json'" in out and "'ir_params.npz'" in out
    assert "exported onnx: 'bundle.host.onnx'" in out and "exported nir: 'bundle.spiking.nir'" in out
    assert "equivalence: True" in out  # the bundle's float IR reproduces PyTorch's spikes
