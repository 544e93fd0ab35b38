"""Chip weights in Loihi 2's fixed point: signed ``bits``-bit mantissas with a power-of-two
exponent (Lava's bit-accurate Dense), their quantization from float weights, and the exact
integer products the emulation computes with them. Split from ``fixed_point`` (the LIF and
Dense arithmetic), which re-exports every name here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from spikegpt_deploy.errors import ConversionError
from spikegpt_deploy.fixed_point import DENSE_WEIGHT_BITS

@dataclass(frozen=True)
class QuantizedWeights:
    """Weights W (out, in) as signed ``bits``-bit mantissas with one per-layer power-of-two exponent.

    mantissa * 2**exponent is the weight in integer a_in units (what the Dense adds to a fixed LIF
    per input spike); W ~= mantissa * scale in the float weight's own units, scale =
    2**exponent / input_scale. Mantissas are symmetric, -(2**(bits-1) - 1)..2**(bits-1) - 1, so
    every Lava sign mode (excitatory 0..255, inhibitory -255..0, mixed) holds them unclipped.
    """

    mantissa: np.ndarray
    exponent: int
    scale: float
    max_abs_error: float
    rms_error: float
    bits: int

    def dequantize(self) -> np.ndarray:
        """The float weights the chip effectively uses: mantissa * scale."""
        return self.mantissa.astype(np.float64) * self.scale

    def lava_dense_kwargs(self) -> dict[str, object]:
        """Arguments for ``lava.proc.dense.process.Dense`` that make its bit-accurate model use
        exactly mantissa * 2**exponent: weights = mantissa << k, weight_exp = exponent - k,
        k = 9 - bits. Lava then truncates 8 - bits (+1 if mixed) low bits, all zero here, so the
        mixed-sign LSB drop (see ``dense_effective_weights``) loses nothing. Passing the mantissa
        itself with mixed signs would lose its lowest bit.
        """
        return mantissa_dense_kwargs(self.mantissa, self.bits, self.exponent)


def mantissa_dense_kwargs(mantissa: np.ndarray, bits: int, exponent: int = 0) -> dict[str, Any]:
    """Lava ``Dense`` arguments that deliver exactly mantissa * 2**exponent (signed ``bits``-bit
    mantissas): weights = mantissa << k, weight_exp = exponent - k, k = 9 - bits (see
    ``QuantizedWeights.lava_dense_kwargs``). exponent 0 gives the exact integer sum of mantissas."""
    k = DENSE_WEIGHT_BITS + 1 - int(bits)
    return {"weights": np.left_shift(np.asarray(mantissa).astype(np.int32), k),
            "weight_exp": int(exponent) - k, "num_weight_bits": int(bits)}


def _raise_exponent_too_large(amax: float) -> None:
    raise ConversionError(
        f"quantize_weights: max |W| * input_scale = {amax:.3g} needs a weight exponent above 31 "
        "(Lava shifts int32 sums by weight_exp); scale the layer's weights down, or lower the "
        "LIF's input_scale_bits.")


def quantize_weights(W: np.ndarray, bits: int = 8, input_scale: float = 1.0,
                     mantissa_dtype: Any = np.int32) -> QuantizedWeights:
    """Quantize W (out, in) to signed ``bits``-bit mantissas and the smallest exponent that fits.

    ``input_scale`` is the integer a_in per unit of the float current (``LifMapping.input_scale``
    when the Dense feeds a fixed LIF), so that mantissa * 2**exponent ~= W * input_scale.
    Rounding is half to even; the errors are reported in W's units. ``mantissa_dtype``: np.int8
    stores the (at most 8-bit) mantissas at their width, a quarter of int32's memory.
    """
    W = np.asarray(W)
    if W.ndim != 2:
        raise ConversionError(f"quantize_weights: expected a 2-D (out, in) matrix, got shape "
                              f"{W.shape}.")
    if not 2 <= int(bits) <= DENSE_WEIGHT_BITS:
        raise ConversionError(f"quantize_weights: bits={bits}; Lava's Dense holds 2..8-bit "
                              "signed weights.")
    if not (np.isfinite(input_scale) and input_scale > 0):
        raise ConversionError(f"quantize_weights: input_scale={input_scale}; expected > 0.")
    qmax = 2 ** (int(bits) - 1) - 1
    # lava_dense_kwargs passes weight_exp = exponent - k, and Lava shifts int32 sums by it, so
    # it must stay within +-31: tinier weights get the lowest exponent (and round toward 0).
    k = DENSE_WEIGHT_BITS + 1 - int(bits)
    # Row blocks in float64: the same numbers as the whole matrix at once, without float64
    # copies of a 100M-weight matrix (the 216M model's folded head).
    blocks = [W[i:i + _BLOCK_ROWS(W)] for i in range(0, W.shape[0], _BLOCK_ROWS(W))]
    wmax = max((float(np.max(np.abs(b))) for b in blocks if b.size), default=0.0)
    if not np.isfinite(wmax):
        raise ConversionError("quantize_weights: weights contain NaN or inf.")
    with np.errstate(over="ignore"):
        amax = float(np.float64(wmax) * float(input_scale))
    exponent = k - 31
    if amax > 0:
        ratio = amax / qmax   # 0.0 for subnormal weights: those take the lowest exponent
        exponent = (1 << 20 if not np.isfinite(amax) else
                    int(np.ceil(np.log2(ratio))) if ratio > 0 else k - 31)
        if exponent > 32:
            _raise_exponent_too_large(amax)
        exponent = max(exponent, k - 31)
        while amax / 2.0 ** exponent > qmax:      # guard the log2 rounding both ways
            exponent += 1
        while exponent > k - 31 and amax / 2.0 ** (exponent - 1) <= qmax:
            exponent -= 1
        if exponent > 31:
            _raise_exponent_too_large(amax)
    scale = 2.0 ** exponent / float(input_scale)
    step = 2.0 ** exponent / float(input_scale)  # weight units per mantissa unit
    # With a power-of-two step, W / step and m * step are exact in float32 (W's own format), so
    # the mantissas are those of the float64 formula at a quarter of the memory traffic.
    exact32 = (math.frexp(step)[0] == 0.5 and W.dtype == np.float32
               and 2.0 ** -126 <= step <= 2.0 ** 100)
    mantissa = np.empty(W.shape, mantissa_dtype)
    max_err, sq_err, row = 0.0, 0.0, 0
    for b in blocks:
        if exact32:  # in place, a few passes over one block
            m = np.multiply(b, np.float32(1.0 / step))
            np.rint(m, out=m)
            np.clip(m, -qmax, qmax, out=m)
            mantissa[row:row + b.shape[0]] = m
            row += b.shape[0]
            np.multiply(m, np.float32(step), out=m)
            np.subtract(b, m, out=m)
            np.abs(m, out=m)
            if m.size:
                max_err = max(max_err, float(m.max()))
                sq_err += float(np.square(m).sum(dtype=np.float64))
            continue
        else:
            w64 = b.astype(np.float64)
            with np.errstate(over="ignore"):
                m = np.clip(np.rint(w64 * float(input_scale) / 2.0 ** exponent), -qmax, qmax)
            err = np.abs(w64 - m * scale)
        mantissa[row:row + b.shape[0]] = m
        row += b.shape[0]
        if err.size:
            max_err = max(max_err, float(err.max()))
            sq_err += float(np.dot(err.ravel(), err.ravel()))
    return QuantizedWeights(mantissa=mantissa, exponent=exponent, scale=scale,
                            max_abs_error=max_err,
                            rms_error=float(np.sqrt(sq_err / W.size)) if W.size else 0.0,
                            bits=int(bits))


def _BLOCK_ROWS(W: np.ndarray) -> int:  # noqa: N802 - rows per block of ~4M weights
    return max(1, (1 << 22) // max(1, W.shape[1]))


def exact_integer_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w.T for integer-valued x (N, in) and integer w (out, in), exactly, as float64 (N, out).

    The chip's accumulation is integer; BLAS computes it exactly in floating point while every
    product and partial sum is an integer below the format's 2**mantissa bits: float32 when
    max_n sum_i |x_ni| * max |w| < 2**24, float64 below 2**53, int64 otherwise. Weights are
    converted in row blocks, so no float copy of a large matrix is made."""
    x = np.asarray(x)
    w = np.asarray(w)
    if x.size == 0 or w.size == 0:
        return np.zeros((x.shape[0], w.shape[0]), np.float64)
    wmax = max(int(w.max()), -int(w.min()))
    bound = float(np.abs(x).sum(axis=-1).max()) * wmax
    dtype = np.float32 if bound < 2.0 ** 24 else np.float64 if bound < 2.0 ** 53 else np.int64
    xd = x.astype(dtype)
    out = np.empty((x.shape[0], w.shape[0]), np.float64)
    step = _BLOCK_ROWS(w)
    for i in range(0, w.shape[0], step):
        out[:, i:i + step] = xd @ w[i:i + step].astype(dtype).T
    return out
