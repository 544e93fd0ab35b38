"""The matrix of a folded SpikeLinear (``passes.fold`` builds them; see its docstring).

``fold_weight`` rebuilds it from the factors a bundle stores. It sits below the pass so that the
IR loader (``ir_io``) rebuilds bundles without importing the pass. The host side of a folded
linear, the FoldCorrection op, is defined in ``ops/norm.py``.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def fold_weight(source: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The folded matrix [W diag(cols[0]); W diag(cols[1]); ...] in float32.

    Each element is the float64 product W[o, i] * cols[h, i] rounded to float32, computed in row
    blocks straight into the result (no float64 copy of W). The bundle stores W and cols, not the
    result, and rebuilds it with this function: bit for bit the same matrix."""
    out, width = source.shape
    res = np.empty((len(cols) * out, width), F32)
    step = max(1, (1 << 22) // max(1, width))
    for h, col in enumerate(np.asarray(cols, np.float64)):
        for i in range(0, out, step):
            rows = source[i:i + step]
            np.multiply(rows, col, out=res[h * out + i:h * out + i + rows.shape[0]],
                        casting="unsafe")
    return res
