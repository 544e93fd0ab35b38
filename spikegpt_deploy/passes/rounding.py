"""Low-bit weights for chip linears whose integer sums the host reads: per-output-channel scales
and error-compensating rounding.

A SpikeLinear's Dense sums signed ``bits``-bit mantissas over integer spike counts; the host
multiplies each output channel's sum by a float. Nothing on the chip depends on that float, so
each output channel (row of W) can have its own scale at no chip cost.

- ``channel_scales``: per row, the scale s with mantissas round(w / s) clipped to +-(2**(bits-1)
  - 1) that minimises the row's squared rounding error over a grid of clipping ratios (at few
  bits, clipping the largest weights a little buys a finer step for all the others). Below 8
  bits only: with 127 steps a side, clipping the largest weight by the grid's smallest step (5%)
  costs it (0.05 x 127)^2 = 40 squared steps, more than the finer step saves on a row of under
  about 4,800 weights (n x 0.0975 / 12); the search chose the unclipped scale on every row of
  the shipped model (15,762) and of the 216M shape (368,576 rows measured).
- ``gptq_round``: the optimal-brain-quantization rounding of GPTQ (Frantar et al. 2022,
  arXiv 2210.17323, Algorithm 1): input columns are rounded one at a time and the error each
  leaves, weighted by the inverse Hessian of the layer's output error (H = X^T X over the
  calibration inputs X), is pushed onto the columns not yet rounded, so that W x changes as
  little as possible on the inputs the layer really sees. Columns are visited in order of
  decreasing H_ii ("act order") and updated in blocks with one matrix product per block. Inputs
  that never fire in calibration (H_ii = 0) get zero weights.

``rounding='auto'`` (the default) is GPTQ below 8 bits and round-to-nearest at 8: on the shipped
model's held-out text, GPTQ's gain at 8 bits is a few thousandths of a bit per token, while its
cost grows as rows x inputs^2 (most of a 216M convert); below 8 bits it is what makes 4 bits
usable (README, "What chip weight precision costs").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg.blas import dger as _ger
from threadpoolctl import threadpool_limits

from ..errors import ConversionError
from ..folded import fold_rows, fold_weight

CLIP_RATIOS = np.linspace(1.0, 0.5, 11)   # grid of the per-row clipping search (below 8 bits)
CLIP_SEARCH_BELOW_BITS = 8                # see the module docstring
AUTO_GPTQ_BELOW_BITS = 8                  # rounding 'auto': GPTQ below this width, else nearest
ROUNDINGS = ("auto", "gptq", "nearest")
GPTQ_DAMP = 0.01                          # H += 1% of mean(diag H) (the paper's lambda)
GPTQ_BLOCK = 128                          # columns updated lazily per block (the paper's B)


@dataclass(frozen=True)
class ChannelQuantized:
    """W ~= mantissa * scale[:, None]; mantissas are signed ``bits``-bit integers."""

    mantissa: np.ndarray   # (out, in) int8 (int32 above 8 bits)
    scale: np.ndarray      # (out,) float64, W units per mantissa unit
    bits: int
    rounding: str          # 'nearest' | 'gptq'
    max_abs_error: float
    rms_error: float
    output_mse: float | None   # mean over calibration inputs of |(W - Q) x|^2 / out, if a gram

    @property
    def dequantized(self) -> np.ndarray:
        return self.mantissa * self.scale[:, None]


def rounding_for(rounding: str, bits: int) -> str:
    """The rounding a ``bits``-wide matrix gets: 'gptq' or 'nearest' ('auto' resolved)."""
    if rounding not in ROUNDINGS:
        raise ConversionError(f"rounding {rounding!r}: expected one of {', '.join(ROUNDINGS)}")
    if rounding == "auto":
        return "gptq" if int(bits) < AUTO_GPTQ_BELOW_BITS else "nearest"
    return rounding


def _qmax(bits: int) -> int:
    if not 2 <= int(bits) <= 8:
        raise ConversionError(f"weight bits {bits}: Lava's Dense holds 2..8-bit signed weights")
    return 2 ** (int(bits) - 1) - 1


_CHUNK_VALUES = 1 << 15     # weights per row chunk of the elementwise passes (256 KB)
# weights per row chunk of rounding to nearest (1 MB as float64): with the chip matrices spread
# over threads, smaller chunks spend their time on the GIL (2 threads: 1.1x at 2**15, 1.8-2.8x
# at 2**17-2**18, measured on 8 folded 6144 x 768 matrices)
_ROUND_CHUNK_VALUES = 1 << 17
_GPTQ_CHUNK_ROWS = 16384    # rows per GPTQ chunk: bounds its float64 copy (100 MB at 768 inputs)
GPTQ_SUB_BLOCK = 16         # columns rounded one at a time before a BLAS update of the block


def _clip(x: np.ndarray, qmax: int) -> None:
    """x clipped to +-qmax in place (torch's clamp: numpy 1.26's clip with scalar bounds is about
    four times slower, and this runs on every weight for every clipping ratio)."""
    torch.from_numpy(x).clamp_(-qmax, qmax)


def _unclipped_scale(amax: np.ndarray, qmax: int) -> np.ndarray:
    """Per-row scale max |w| / qmax (1 for an all-zero row): no weight is clipped."""
    return np.where(amax > 0, amax / qmax, 1.0)


def channel_scales(W: np.ndarray, bits: int) -> np.ndarray:
    """Per-row scale minimising the row's squared round-to-nearest error over CLIP_RATIOS (below
    8 bits; at 8, max |w| / qmax: see the module docstring).

    Rows are processed in chunks that stay in cache, with the chunk's buffers reused for every
    ratio; the error is measured in units of the scale (float64), so each ratio costs a
    multiply by one number, a rounding, a clip and a sum of squares."""
    qmax = _qmax(bits)
    rows = W.shape[0]
    scale = np.ones(rows)
    if not W.size:
        return scale
    if int(bits) >= CLIP_SEARCH_BELOW_BITS:
        step = max(1, _CHUNK_VALUES // max(1, W.shape[1]))
        for i in range(0, rows, step):
            amax = np.max(np.abs(W[i:i + step]), axis=1).astype(np.float64)
            scale[i:i + step] = _unclipped_scale(amax, qmax)
        return scale
    step = max(1, _CHUNK_VALUES // max(1, W.shape[1]))
    u = np.empty((min(step, rows), W.shape[1]))
    v, t = np.empty_like(u), np.empty_like(u)
    for i in range(0, rows, step):
        n = min(step, rows - i)
        uc, vc, tc = u[:n], v[:n], t[:n]
        np.copyto(uc, W[i:i + n])
        amax = np.max(np.abs(uc, out=tc), axis=1)
        pos = amax > 0
        sc = _unclipped_scale(amax, qmax)
        uc *= (1.0 / sc)[:, None]  # W / s at ratio 1; each ratio divides it by one number
        best = np.full(n, np.inf)
        for ratio in CLIP_RATIOS:
            s = np.where(pos, amax * ratio / qmax, 1.0)
            if ratio != 1.0:
                np.multiply(uc, 1.0 / ratio, out=vc)
            x = uc if ratio == 1.0 else vc
            np.rint(x, out=tc)
            if ratio < 1.0:  # at ratio 1, |W / s| <= qmax already
                _clip(tc, qmax)
            tc -= x
            err = np.einsum("ij,ij->i", tc, tc) * (s * s)  # |round(W/s) s - W|^2 per row
            better = err < best
            best = np.where(better, err, best)
            sc = np.where(better, s, sc)
        scale[i:i + n] = sc
    return scale


@dataclass(frozen=True)
class GptqFactor:
    """What GPTQ needs of a calibration gram, computed once for every matrix that reads the same
    inputs: the visiting order (act order), the inputs that never fired (``dead``, in the
    original order), the damping added to the diagonal and U, the upper Cholesky factor of the
    damped, reordered H^-1."""

    order: np.ndarray
    dead: np.ndarray
    damp: float
    U: np.ndarray


def gptq_factor(gram: np.ndarray, damp: float = GPTQ_DAMP) -> GptqFactor:
    """``GptqFactor`` of a gram X^T X (in, in)."""
    H = np.array(gram, dtype=np.float64)
    n_in = H.shape[0]
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    order = np.argsort(-np.diag(H), kind="stable")
    H = H[np.ix_(order, order)]
    added = damp * float(np.mean(np.diag(H))) if n_in else 0.0
    H[np.diag_indices(n_in)] += added
    try:  # U: upper Cholesky factor of H^-1, whose rows drive the error updates
        U = np.linalg.cholesky(np.linalg.inv(H)).T
    except np.linalg.LinAlgError:
        raise ConversionError("gptq_round: the calibration Hessian is not positive definite "
                              "even after damping; use more calibration tokens") from None
    return GptqFactor(order, dead, added, np.ascontiguousarray(U))


def gptq_round(W: np.ndarray, scale: np.ndarray, bits: int, gram: np.ndarray | None = None,
               damp: float = GPTQ_DAMP, block: int = GPTQ_BLOCK,
               factor: GptqFactor | None = None) -> np.ndarray:
    """Mantissas (out, in) for W with per-row ``scale``, rounded by GPTQ against ``gram`` = X^T X
    (in, in) of the calibration inputs, any positive multiple of it (see the module docstring),
    or against its ``factor`` when several matrices share it."""
    return _gptq(W, scale, bits, gram, damp, block, factor)[0]


def _gptq(W: np.ndarray, scale: np.ndarray, bits: int, gram: np.ndarray | None, damp: float,
          block: int, factor: GptqFactor | None) -> tuple[np.ndarray, float, GptqFactor]:
    """``_gptq_rows`` with one BLAS thread: its thousands of small products and rank-1 updates
    only wait on each other's threads with more (several times slower on a busy machine)."""
    with threadpool_limits(1, user_api="blas"):
        return _gptq_rows(W, scale, bits, gram, damp, block, factor)


def _gptq_rows(W: np.ndarray, scale: np.ndarray, bits: int, gram: np.ndarray | None,
               damp: float, block: int, factor: GptqFactor | None
               ) -> tuple[np.ndarray, float, GptqFactor]:
    """GPTQ mantissas (int8 up to 8 bits), the damped objective sum ||E||^2, where
    W' - Q s = E U (W' is W with the dead inputs zeroed; see ``quantize_channels``), and the
    factor used.

    Rows are independent given U, so they go in chunks; each chunk is held transposed
    (inputs x rows) so that a column of W is a contiguous row. Within a block of ``block``
    columns, ``GPTQ_SUB_BLOCK`` columns are rounded one at a time, then one matrix product
    carries their errors to the rest of the block, and one per block to the columns after it:
    the lazy batch updates of the paper at two levels. That last product, nearly all of the
    arithmetic, runs in float32 (as the paper's implementation does), the rest in float64."""
    n_out, n_in = W.shape
    if factor is None:
        if gram is None or np.shape(gram) != (n_in, n_in):
            raise ConversionError(f"gptq_round: gram {np.shape(gram)} does not match W "
                                  f"{W.shape}")
        factor = gptq_factor(gram, damp)
    elif factor.U.shape != (n_in, n_in):
        raise ConversionError(f"gptq_round: factor {factor.U.shape} does not match W {W.shape}")
    qmax = _qmax(bits)
    U, order = factor.U, factor.order
    diag = np.diag(U).copy()
    live = ~factor.dead[order]
    out = np.zeros(W.shape, np.int8 if qmax <= 127 else np.int32)
    if not live.any():  # no input ever fired: every weight is zeroed, nothing to round
        return out, 0.0, factor
    s_all = np.asarray(scale, dtype=np.float64)
    err_sq = 0.0
    sub = GPTQ_SUB_BLOCK
    back = np.argsort(order)
    U32 = U.astype(np.float32)  # the block updates to later columns: float32 BLAS
    chunk = min(n_out, _GPTQ_CHUNK_ROWS)
    QT, ET = np.empty((n_in, chunk)), np.empty((block, chunk))
    E32, upd = np.empty((block, chunk), np.float32), np.empty((n_in, chunk), np.float32)
    upd_sub = np.empty((block, chunk))
    for r0 in range(0, n_out, chunk):
        r1 = min(n_out, r0 + chunk)
        m = r1 - r0
        s = s_all[r0:r1]
        WT = np.ascontiguousarray(W[r0:r1].T[order], dtype=np.float64)  # (in, rows)
        WT[~live] = 0.0
        for i1 in range(0, n_in, block):
            i2 = min(i1 + block, n_in)
            for j1 in range(i1, i2, sub):
                j2 = min(j1 + sub, i2)
                for j in range(j1, j2):
                    w, q, e = WT[j], QT[j, :m], ET[j - i1, :m]
                    np.divide(w, s, out=q)
                    np.rint(q, out=q)
                    _clip(q, qmax)
                    np.multiply(q, s, out=e)
                    np.subtract(w, e, out=e)
                    e /= diag[j]
                    if j + 1 < j2:  # rank-1 update of the sub-block, in place
                        _ger(-1.0, e, U[j, j + 1:j2], a=WT[j + 1:j2].T, overwrite_a=1)
                if j2 < i2:
                    part = upd_sub[:i2 - j2, :m]
                    np.matmul(U[j1:j2, j2:i2].T, ET[j1 - i1:j2 - i1, :m], out=part)
                    WT[j2:i2] -= part
            eb = ET[:i2 - i1, :m]
            if i2 < n_in:
                e32 = E32[:i2 - i1, :m]
                np.copyto(e32, eb, casting="same_kind")
                part32 = upd[:n_in - i2, :m]
                np.matmul(U32[i1:i2, i2:].T, e32, out=part32)
                WT[i2:] -= part32
            flat = eb.ravel()
            err_sq += float(flat @ flat)
        out[r0:r1] = QT[:, :m].astype(out.dtype)[back].T
    return out, err_sq, factor


def _finite(W: np.ndarray) -> bool:
    step = max(1, _CHUNK_VALUES // max(1, W.shape[1])) if W.ndim == 2 else max(1, len(W))
    return all(bool(np.isfinite(W[i:i + step]).all()) for i in range(0, len(W), step))


def _nearest(W: np.ndarray, scale: np.ndarray, qmax: int) -> tuple[np.ndarray, float, float]:
    """Round-to-nearest mantissas clip(rint(W / scale), +-qmax), with the largest |error| and the
    sum of squared errors, in one pass over cache-sized row chunks (float64 arithmetic)."""
    mantissa = np.empty(W.shape, np.int8 if qmax <= 127 else np.int32)
    step = max(1, _ROUND_CHUNK_VALUES // max(1, W.shape[1]))
    bufs = np.empty((2, min(step, W.shape[0]), W.shape[1]))
    max_err, sq_err = 0.0, 0.0
    for i in range(0, W.shape[0], step):
        m, e = _nearest_chunk(W[i:i + step], scale[i:i + step], qmax, bufs,
                              mantissa[i:i + step], clip=True)
        max_err, sq_err = max(max_err, m), sq_err + e
    return mantissa, max_err, sq_err


def _nearest_chunk(rows: np.ndarray, scale: np.ndarray, qmax: int, bufs: np.ndarray,
                   out: np.ndarray, clip: bool) -> tuple[float, float]:
    """``_nearest`` of one row chunk into ``out``: (largest |error|, sum of squared errors).
    The error is taken in units of each row's scale and scaled per row at the end (two fewer
    passes over the chunk); ``clip=False`` when no |rows / scale| exceeds qmax + 1/2."""
    u, v = bufs[0, :len(rows)], bufs[1, :len(rows)]
    np.divide(rows, scale[:, None], out=u)
    np.rint(u, out=v)
    if clip:
        _clip(v, qmax)
    out[...] = v
    v -= u
    largest = np.maximum(v.max(axis=1), -v.min(axis=1))
    return float((largest * scale).max()), float(np.einsum("ij,ij->i", v, v) @ (scale * scale))


def quantize_folded(source: np.ndarray, cols: np.ndarray, bits: int,
                    gram: np.ndarray | None = None, rounding: str = "auto",
                    factor: GptqFactor | None = None) -> ChannelQuantized:
    """``quantize_channels(fold_weight(source, cols), ...)`` for a folded SpikeLinear. Rounded
    to nearest at a width without a clipping search, and with no gram to measure against, the
    folded rows are made, scaled and rounded chunk by chunk while they are in cache, and the
    folded matrix is never built; otherwise it is built for ``quantize_channels``."""
    if (rounding_for(rounding, bits) != "nearest" or gram is not None
            or int(bits) < CLIP_SEARCH_BELOW_BITS or not source.size):
        return quantize_channels(fold_weight(source, cols), bits, gram, rounding, factor)
    qmax = _qmax(bits)
    out, width = source.shape
    cols = np.asarray(cols, np.float64)
    mantissa = np.empty((len(cols) * out, width), np.int8 if qmax <= 127 else np.int32)
    scale = np.empty(len(cols) * out)
    step = max(1, _ROUND_CHUNK_VALUES // width)
    rows32 = np.empty((min(step, out), width), np.float32)
    bufs = np.empty((2, min(step, out), width))
    max_err, sq_err = 0.0, 0.0
    for h, col in enumerate(cols):
        for i in range(0, out, step):
            src = source[i:i + step]
            r = rows32[:len(src)]
            with np.errstate(over="ignore", invalid="ignore"):  # reported just below
                fold_rows(src, col, r)  # fold_weight's rows, exactly
            amax = np.max(np.abs(r), axis=1).astype(np.float64)  # NaN where a row has one
            if not np.all(np.isfinite(amax)):
                raise ConversionError(f"quantize_folded: the folded matrix ({len(cols) * out}, "
                                      f"{width}) is not finite (NaN, or beyond float32) in rows "
                                      f"{h * out + i}..{h * out + i + len(src)}")
            o = h * out + i
            scale[o:o + len(src)] = _unclipped_scale(amax, qmax)
            # scale = max |row| / qmax: no |row / scale| exceeds qmax, nothing to clip
            m, e = _nearest_chunk(r, scale[o:o + len(src)], qmax, bufs,
                                  mantissa[o:o + len(src)], clip=False)
            max_err, sq_err = max(max_err, m), sq_err + e
    return ChannelQuantized(mantissa=mantissa, scale=scale, bits=int(bits), rounding="nearest",
                            max_abs_error=max_err, rms_error=float(np.sqrt(sq_err / mantissa.size)),
                            output_mse=None)


def quantize_channels(W: np.ndarray, bits: int, gram: np.ndarray | None = None,
                      rounding: str = "auto", factor: GptqFactor | None = None
                      ) -> ChannelQuantized:
    """Per-output-channel scales and ``rounding`` ('auto' | 'gptq' | 'nearest'; GPTQ needs the
    calibration gram X^T X and without one falls back to 'nearest'). ``factor``:
    ``gptq_factor(gram)`` when several matrices read the same inputs. W is read in row chunks
    (float32 stays float32 in memory)."""
    rounding = rounding_for(rounding, bits)
    W = np.asarray(W)
    if W.dtype.kind != "f":
        W = W.astype(np.float64)
    if W.ndim != 2 or not _finite(W):
        raise ConversionError(f"quantize_channels: expected a finite (out, in) matrix, got "
                              f"shape {W.shape}")
    qmax = _qmax(bits)
    scale = channel_scales(W, bits)
    if rounding == "nearest" or gram is None or not W.size:
        mantissa, max_err, sq_err = _nearest(W, scale, qmax)
        return ChannelQuantized(mantissa=mantissa, scale=scale, bits=int(bits),
                                rounding="nearest", max_abs_error=max_err,
                                rms_error=float(np.sqrt(sq_err / W.size)) if W.size else 0.0,
                                output_mse=_output_mse(W, mantissa, scale, gram))
    mantissa, damped, factor = _gptq(W, scale, bits, gram, GPTQ_DAMP, GPTQ_BLOCK, factor)
    max_err, sq_err, live_sq = 0.0, 0.0, 0.0
    dead = factor.dead
    some_dead = bool(dead.any())
    step = max(1, _CHUNK_VALUES // max(1, W.shape[1]))
    for i in range(0, W.shape[0], step):  # the errors in cache-sized row chunks
        err = mantissa[i:i + step].astype(np.float64)
        err *= scale[i:i + step, None]
        np.subtract(W[i:i + step], err, out=err)
        max_err = max(max_err, float(err.max()), -float(err.min()))
        flat = err.ravel()
        sq = float(flat @ flat)
        sq_err += sq
        live_err = err[:, ~dead].ravel() if some_dead else flat
        live_sq += float(live_err @ live_err) if some_dead else sq
    # GPTQ's own errors give the output error without another product: with W' - Q s = E U and
    # U^T U = (G + dead + damp I)^-1, |E|^2 = err G err^T + damp |err on live inputs|^2
    mse = max(0.0, damped - factor.damp * live_sq) / W.shape[0]
    return ChannelQuantized(mantissa=mantissa, scale=scale, bits=int(bits), rounding="gptq",
                            max_abs_error=max_err, rms_error=float(np.sqrt(sq_err / W.size)),
                            output_mse=mse)


def _output_mse(W: np.ndarray, mantissa: np.ndarray, scale: np.ndarray,
                gram: np.ndarray | None) -> float | None:
    """Mean over calibration inputs of |(W - Q) x|^2 per channel, from gram = X^T X / samples."""
    if gram is None or not W.size:
        return None
    g = np.asarray(gram, np.float64)
    step = max(1, _CHUNK_VALUES // max(1, W.shape[1]))
    total = 0.0
    for i in range(0, W.shape[0], step):
        err = W[i:i + step] - mantissa[i:i + step] * scale[i:i + step, None]
        total += float(np.einsum("ij,ij->", err @ g, err))
    return total / W.shape[0]
