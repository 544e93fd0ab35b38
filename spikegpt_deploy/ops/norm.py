"""LayerNorm and the two ops fold_layernorm splits it into (spec 6.3): LayerNormStats (the
per-token mean and 1 / sigma) and FoldCorrection (the host side of a folded linear). All three
need means, square roots and divisions on floats, so they run on the host.

Each op's numpy function, cost formula (counted line by line from that function) and ONNX
translation (same order of operations) are kept together here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

import numpy as np

from .registry import NirForm, OpDef, Without, register

F32 = np.float32


def layernorm_stats(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """mean and sqrt(var + eps) over the last axis, float32."""
    mean = x.mean(axis=-1, keepdims=True, dtype=F32)
    var = np.square(x - mean).mean(axis=-1, keepdims=True, dtype=F32)
    return mean.astype(F32), np.sqrt(var + F32(eps)).astype(F32)


def mean_inv_std(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """LayerNormStats: mean and 1 / sqrt(var + eps), so users multiply instead of divide."""
    mean, std = layernorm_stats(x, eps)
    return mean, (F32(1) / std).astype(F32)


def layernorm(n: dict[str, Any], ins: list[np.ndarray]) -> tuple[np.ndarray]:
    mean, std = layernorm_stats(ins[0], n["attrs"]["eps"])
    return (((ins[0] - mean) / std) * n["params"]["weight"] + n["params"]["bias"]).astype(F32),


def fold_correction(node: dict, ins: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Host side of one folded linear. Inputs: y_n, [y_b | y_x0], mu, 1/sigma, [mu0, 1/sigma0],
    [prev]; outputs: y (this token) and the shift part kept for the next token. The statistics
    come as reciprocals so that the host multiplies per element instead of dividing."""
    p, a = node["params"], node["attrs"]
    out = int(a["out"])
    it = iter(ins)
    y_n = next(it) if a["has_counts"] else None
    y_0 = next(it)
    mu, inv_sigma = next(it), next(it)
    if a["binary_x0"]:
        mu0, inv_sigma0 = next(it), next(it)
        x0_part = (y_0 - mu0 * p["w_gamma0"]) * inv_sigma0 + p["w_beta0"]
    else:
        x0_part = y_0
    total = x0_part if y_n is None else x0_part + y_n
    if a["scale"] != 1.0:
        total = F32(a["scale"]) * total
    cur = (total - mu * p["w_one"]) * inv_sigma
    y = cur[:, :out] + p["w_beta"][:out]
    if not a["has_shift"]:
        return y.astype(F32), np.zeros((y.shape[0], 0), F32)
    prev = next(it)
    return (y + prev).astype(F32), (cur[:, out:] + p["w_beta"][out:]).astype(F32)


# ---- host cost (per sample and token) ------------------------------------------------------
def _fold_correction_cost(n: int, weight_shape: Any, a: Mapping[str, Any]) -> dict[str, int]:
    """``fold_correction``: w2 = rows of A (and B) = len(w_one), out = rows of this token."""
    w2, out, c = int(weight_shape[0]), int(a["out"]), Counter()
    if a["binary_x0"]:                          # (y_0 - mu0 * w_gamma0) * inv_sigma0 + w_beta0
        c.update({"mul": 2 * w2, "add": 2 * w2})
    if a["has_counts"]:                         # x0_part + y_n
        c["add"] += w2
    if float(a["scale"]) != 1.0:                # scale * total
        c["mul"] += w2
    c.update({"mul": 2 * w2, "add": w2})        # (... - mu * w_one) * inv_sigma
    c["add"] += out                             # + w_beta[:out]
    if a["has_shift"]:                          # + prev; next shift = cur[out:] + w_beta[out:]
        c["add"] += out + (w2 - out)
    return dict(c)


# ---- ONNX -------------------------------------------------------------------------------------
def _stats_onnx(b: Any, nid: str, x: str, eps: float) -> tuple[str, str, str]:
    """mean, x - mean, sqrt(var + eps): ``layernorm_stats``."""
    mean = b.one("ReduceMean", [x], nid, axes=[-1], keepdims=1)
    centred = b.one("Sub", [x, mean], nid)
    var = b.one("ReduceMean", [b.one("Mul", [centred, centred], nid)], nid, axes=[-1], keepdims=1)
    std = b.one("Sqrt", [b.one("Add", [var, b.const(F32(eps))], nid)], nid)
    return mean, centred, std


def _layernorm_onnx(b: Any, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    _, centred, std = _stats_onnx(b, nid, ins[0], n["attrs"]["eps"])
    scaled = b.one("Mul", [b.one("Div", [centred, std], nid),
                           b.const(n["params"]["weight"], f"{nid}.weight")], nid)
    return [b.one("Add", [scaled, b.const(n["params"]["bias"], f"{nid}.bias")], nid)]


def _layernorm_stats_onnx(b: Any, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    mean, _, std = _stats_onnx(b, nid, ins[0], n["attrs"]["eps"])
    return [mean, b.one("Reciprocal", [std], nid)]


def _slice(b: Any, nid: str, x: str, start: int, end: int) -> str:
    i64 = np.int64
    return b.one("Slice", [x, b.const([start], dtype=i64), b.const([end], dtype=i64),
                           b.const([1], dtype=i64)], nid)


def _fold_correction_onnx(b: Any, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    """``fold_correction``: y = (scale (x0 part + y_n) - mu A1) (1/sigma) + W beta."""
    p, a = n["params"], n["attrs"]
    out = int(a["out"])
    it = iter(ins)
    y_n = next(it) if a["has_counts"] else None
    x0_part = next(it)
    mu, sigma = next(it), next(it)
    if a["binary_x0"]:
        mu0, sigma0 = next(it), next(it)
        centred = b.one("Sub", [x0_part, b.one("Mul", [mu0, b.const(p["w_gamma0"],
                                                                    f"{nid}.w_gamma0")], nid)],
                        nid)
        x0_part = b.one("Add", [b.one("Mul", [centred, sigma0], nid),
                                b.const(p["w_beta0"], f"{nid}.w_beta0")], nid)
    total = x0_part if y_n is None else b.one("Add", [x0_part, y_n], nid)
    if float(a["scale"]) != 1.0:
        total = b.one("Mul", [b.const(F32(a["scale"])), total], nid)
    cur = b.one("Mul", [b.one("Sub", [total, b.one("Mul", [mu, b.const(p["w_one"],
                                                                       f"{nid}.w_one")], nid)],
                              nid), sigma], nid)
    w_beta = np.asarray(p["w_beta"], dtype=F32)
    if not a["has_shift"]:
        return [b.one("Add", [cur, b.const(w_beta[:out], f"{nid}.w_beta")], nid)]
    y = b.one("Add", [_slice(b, nid, cur, 0, out), b.const(w_beta[:out], f"{nid}.w_beta")], nid)
    y = b.one("Add", [y, next(it)], nid)
    shift = b.one("Add", [_slice(b, nid, cur, out, 2 * out),
                          b.const(w_beta[out:], f"{nid}.w_beta_shift")], nid)
    return [y, shift]


_HOST = Without("a host op: the emulation runs its float function")
_NO_NIR: NirForm | Without = Without("NIR 1.0 has no mean, square root or division")

register(OpDef(
    "LayerNorm", 1, 1, "y = weight * (x - mean) / sqrt(var + eps) + bias",
    run=layernorm, fixed=_HOST,
    # stats + (x - mean) / std * w + b
    cost=lambda n, shape, a: {"add": 5 * n - 1, "mul": 2 * n, "div": n + 2, "sqrt": 1},
    chip=Without("LayerNorm needs a mean, a variance, a square root and a division"),
    onnx=_layernorm_onnx, nir=_NO_NIR))
# Produced by fold_layernorm:
register(OpDef(
    "LayerNormStats", 1, 2, "outputs mean(x) and 1 / sqrt(var(x) + eps)",
    run=lambda n, i: mean_inv_std(i[0], n["attrs"]["eps"]), fixed=_HOST,
    # mean: n-1 add, 1 div; var: n sub, n square, n-1 add, 1 div; +eps, sqrt; 1 / std: 1 div
    cost=lambda n, shape, a: {"add": 3 * n - 1, "mul": n, "div": 3, "sqrt": 1},
    chip=Without("LayerNorm statistics need a mean, a variance and a square root"),
    onnx=_layernorm_stats_onnx, nir=_NO_NIR))
register(OpDef(
    "FoldCorrection", None, 2,
    "host side of a folded linear (spec 6.3); outputs y, next shift",
    run=fold_correction, fixed=_HOST, cost=_fold_correction_cost,
    chip=Without("per-token LayerNorm corrections of a folded linear: float scalars times "
                 "vectors and a division by sigma"),
    onnx=_fold_correction_onnx, nir=_NO_NIR))
