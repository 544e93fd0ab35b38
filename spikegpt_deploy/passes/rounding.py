"""Low-bit weights for chip linears whose integer sums the host reads: per-output-channel scales
and error-compensating rounding.

A SpikeLinear's Dense sums signed ``bits``-bit mantissas over integer spike counts; the host
multiplies each output channel's sum by a float. Nothing on the chip depends on that float, so
each output channel (row of W) can have its own scale at no chip cost.

- ``channel_scales``: per row, the scale s with mantissas round(w / s) clipped to +-(2**(bits-1)
  - 1) that minimises the row's squared rounding error over a grid of clipping ratios (at few
  bits, clipping the largest weights a little buys a finer step for all the others).
- ``gptq_round``: the optimal-brain-quantization rounding of GPTQ (Frantar et al. 2022,
  arXiv 2210.17323, Algorithm 1): input columns are rounded one at a time and the error each
  leaves, weighted by the inverse Hessian of the layer's output error (H = X^T X over the
  calibration inputs X), is pushed onto the columns not yet rounded, so that W x changes as
  little as possible on the inputs the layer really sees. Columns are visited in order of
  decreasing H_ii ("act order") and updated in blocks with one matrix product per block. Inputs
  that never fire in calibration (H_ii = 0) get zero weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConversionError

CLIP_RATIOS = np.linspace(1.0, 0.5, 11)   # grid of the per-row clipping search
GPTQ_DAMP = 0.01                          # H += 1% of mean(diag H) (the paper's lambda)
GPTQ_BLOCK = 128                          # columns updated lazily per block (the paper's B)


@dataclass(frozen=True)
class ChannelQuantized:
    """W ~= mantissa * scale[:, None]; mantissas are signed ``bits``-bit integers."""

    mantissa: np.ndarray   # (out, in) int32
    scale: np.ndarray      # (out,) float64, W units per mantissa unit
    bits: int
    rounding: str          # 'nearest' | 'gptq'
    max_abs_error: float
    rms_error: float
    output_mse: float | None   # mean over calibration inputs of |(W - Q) x|^2 / out, if a gram

    @property
    def dequantized(self) -> np.ndarray:
        return self.mantissa * self.scale[:, None]


def _qmax(bits: int) -> int:
    if not 2 <= int(bits) <= 8:
        raise ConversionError(f"weight bits {bits}: Lava's Dense holds 2..8-bit signed weights")
    return 2 ** (int(bits) - 1) - 1


def channel_scales(W: np.ndarray, bits: int) -> np.ndarray:
    """Per-row scale minimising the row's squared round-to-nearest error over CLIP_RATIOS."""
    W = np.asarray(W, dtype=np.float64)
    qmax = _qmax(bits)
    amax = np.max(np.abs(W), axis=1) if W.size else np.zeros(W.shape[0])
    best = np.full(W.shape[0], np.inf)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    for ratio in CLIP_RATIOS:
        s = np.where(amax > 0, amax * ratio / qmax, 1.0)
        err = np.sum((np.clip(np.rint(W / s[:, None]), -qmax, qmax) * s[:, None] - W) ** 2, 1)
        better = err < best
        best = np.where(better, err, best)
        scale = np.where(better, s, scale)
    return scale


def gptq_round(W: np.ndarray, scale: np.ndarray, bits: int, gram: np.ndarray,
               damp: float = GPTQ_DAMP, block: int = GPTQ_BLOCK) -> np.ndarray:
    """Mantissas (out, in) for W with per-row ``scale``, rounded by GPTQ against ``gram`` = X^T X
    (in, in) of the calibration inputs, any positive multiple of it (see the module docstring)."""
    W = np.array(W, dtype=np.float64)
    H = np.array(gram, dtype=np.float64)
    n_in = W.shape[1]
    if H.shape != (n_in, n_in):
        raise ConversionError(f"gptq_round: gram {H.shape} does not match W {W.shape}")
    qmax = _qmax(bits)
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    order = np.argsort(-np.diag(H), kind="stable")
    W, H = W[:, order], H[np.ix_(order, order)]
    H[np.diag_indices(n_in)] += damp * float(np.mean(np.diag(H)))
    try:  # U: upper Cholesky factor of H^-1, whose rows drive the error updates
        U = np.linalg.cholesky(np.linalg.inv(H)).T
    except np.linalg.LinAlgError:
        raise ConversionError("gptq_round: the calibration Hessian is not positive definite "
                              "even after damping; use more calibration tokens") from None
    s = np.asarray(scale, dtype=np.float64)[:, None]
    Q = np.zeros_like(W)
    for i1 in range(0, n_in, block):
        i2 = min(i1 + block, n_in)
        W1 = W[:, i1:i2].copy()
        E1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            q = np.clip(np.rint(W1[:, i:i + 1] / s), -qmax, qmax)
            Q[:, i1 + i] = q[:, 0]
            err = (W1[:, i] - q[:, 0] * s[:, 0]) / U1[i, i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    out = np.empty_like(Q)
    out[:, order] = Q
    return out.astype(np.int32)


def quantize_channels(W: np.ndarray, bits: int, gram: np.ndarray | None = None,
                      rounding: str = "gptq") -> ChannelQuantized:
    """Per-output-channel scales and ``rounding`` ('gptq' needs the calibration gram X^T X;
    without one it falls back to 'nearest')."""
    if rounding not in ("gptq", "nearest"):
        raise ConversionError(f"rounding {rounding!r}: expected 'gptq' or 'nearest'")
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or not np.all(np.isfinite(W)):
        raise ConversionError(f"quantize_channels: expected a finite (out, in) matrix, got "
                              f"shape {W.shape}")
    qmax = _qmax(bits)
    scale = channel_scales(W, bits)
    if rounding == "gptq" and gram is not None and W.size:
        mantissa = gptq_round(W, scale, bits, gram)
    else:
        rounding = "nearest"
        mantissa = np.clip(np.rint(W / scale[:, None]), -qmax, qmax).astype(np.int32)
    err = W - mantissa * scale[:, None]
    mse = None
    if gram is not None and W.size:  # gram = X^T X / samples: mean |err x|^2 per channel
        mse = float(np.einsum("oi,ij,oj->", err, np.asarray(gram, np.float64), err)
                    / W.shape[0])
    return ChannelQuantized(mantissa=mantissa, scale=scale, bits=int(bits), rounding=rounding,
                            max_abs_error=float(np.max(np.abs(err))) if W.size else 0.0,
                            rms_error=float(np.sqrt(np.mean(err ** 2))) if W.size else 0.0,
                            output_mse=mse)
