"""The matrix of a folded SpikeLinear (``passes.fold`` builds them; see its docstring).

A folded SpikeLinear keeps only its factors: the model's matrix W (``source_weight``, shared)
and one column factor per half (``source_cols``). Its float matrix [W diag(c0); W diag(c1)]
holds twice the model's values, so the conversion never stores it (1.65 GB for the 216M shape):
the float op computes [W (c0 x); W (c1 x)] (``ops.linear.linear``), and what needs the matrix
itself (rounding it, a chip Dense, an export) builds it where it is read (``linear_weight``).
A loaded bundle's IR holds it, rebuilt by ``fold_weight`` bit for bit. This module sits below
the pass so that the IR loader (``ir_io``) rebuilds bundles without importing the pass. The
host side of a folded linear, the FoldCorrection op, is defined in ``ops/norm.py``.
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
            fold_rows(rows, cols[h], res[h * out + i:h * out + i + rows.shape[0]])

    thread_map(block, [(h, b) for h in range(len(cols)) for b in row_blocks(out)],
               values=res.size)
    return res


def fold_rows(rows: np.ndarray, col: np.ndarray, out: np.ndarray) -> None:
    """Rows of one half of a folded matrix into ``out`` (float32): each the float64 product of
    the model's weight and the column factor, rounded to float32. Everything that makes folded
    rows goes through here, so that they are the same bits wherever they are made."""
    np.multiply(rows, col, out=out, casting="unsafe")


def is_factored(params: dict) -> bool:
    """A folded SpikeLinear's parameters: factors, and no stored float matrix."""
    return "weight" not in params and "source_weight" in params and "source_cols" in params


def linear_weight(params: dict) -> np.ndarray:
    """A linear's float (out, in) matrix: ``params['weight']``, or a folded SpikeLinear's,
    rebuilt from its factors (``fold_weight``)."""
    if is_factored(params):
        return fold_weight(params["source_weight"], params["source_cols"])
    return params["weight"]


def has_linear_weight(params: dict) -> bool:
    """A linear's float matrix is stored or can be built (``linear_weight``)."""
    return "weight" in params or is_factored(params)


def linear_shape(params: dict) -> tuple[int, int]:
    """The shape of ``linear_weight(params)``, without building it."""
    if is_factored(params):
        src = params["source_weight"]
        return len(params["source_cols"]) * src.shape[0], src.shape[1]
    return tuple(params["weight"].shape)
