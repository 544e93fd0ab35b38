"""The matrix of a folded SpikeLinear (``passes.fold`` builds them; see its docstring).

``fold_weight`` rebuilds it from the factors a bundle stores. It sits below the pass so that the
IR loader (``ir_io``) rebuilds bundles without importing the pass. The host side of a folded
linear, the FoldCorrection op, is defined in ``ops/norm.py``.
"""

from __future__ import annotations

import numpy as np

from .threads import row_blocks, thread_map

F32 = np.float32


def fold_weight(source: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The folded matrix [W diag(cols[0]); W diag(cols[1]); ...] in float32.

    Each element is the float64 product W[o, i] * cols[h, i] rounded to float32, computed in row
    blocks straight into the result (no float64 copy of W), the blocks spread over the cores.
    The bundle stores W and cols, not the result, and rebuilds it with this function: bit for
    bit the same matrix."""
    out, width = source.shape
    cols = np.asarray(cols, np.float64)
    res = np.empty((len(cols) * out, width), F32)
    step = max(1, (1 << 16) // max(1, width))

    def block(job: tuple[int, tuple[int, int]]) -> None:
        h, (start, stop) = job
        for i in range(start, stop, step):
            rows = source[i:min(stop, i + step)]
            np.multiply(rows, cols[h], out=res[h * out + i:h * out + i + rows.shape[0]],
                        casting="unsafe")

    thread_map(block, [(h, b) for h in range(len(cols)) for b in row_blocks(out)])
    return res
