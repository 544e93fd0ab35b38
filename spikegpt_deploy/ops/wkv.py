"""WKV: RWKV's time-mixing recurrence in its numerically stabilised form (spec 2.10).

Inputs k, v and the state aa, bb, pp; outputs wkv and the next aa, bb, pp; params w (the decay,
-exp(time_decay)) and u (the bonus of the current token). It needs exp, max and division on
floats, so it runs on the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .registry import OpDef, Without, register

F32 = np.float32
# Per-channel cost of ``wkv``: ww=u+k; p=max(pp,ww); e1=exp(pp-p); e2=exp(ww-p);
# wkv=(e1 aa + e2 v)/(e1 bb + e2); ww=pp+w; p=max(ww,k); e1=exp(ww-p); e2=exp(k-p);
# aa'=e1 aa + e2 v; bb'=e1 bb + e2  ->  10 add/sub, 6 mul, 2 max, 4 exp, 1 div.
WKV_PER_CHANNEL = {"add": 10, "mul": 6, "max": 2, "exp": 4, "div": 1}


def wkv(n: dict[str, Any], ins: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    k, v, aa, bb, pp = ins
    w, u = n["params"]["w"], n["params"]["u"]
    ww = u + k
    p = np.maximum(pp, ww)
    e1, e2 = np.exp(pp - p), np.exp(ww - p)
    out = (e1 * aa + e2 * v) / (e1 * bb + e2)
    ww = pp + w
    p = np.maximum(ww, k)
    e1, e2 = np.exp(ww - p), np.exp(k - p)
    return out.astype(F32), (e1 * aa + e2 * v).astype(F32), (e1 * bb + e2).astype(F32), \
        p.astype(F32)


def _wkv_onnx(b: Any, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    """The same steps as ``wkv``."""
    k, v, aa, bb, pp = ins
    w, u = b.const(n["params"]["w"], f"{nid}.w"), b.const(n["params"]["u"], f"{nid}.u")

    def mix(a: str, c: str) -> tuple[str, str, str]:  # p = max(a, c); e^(a - p), e^(c - p)
        p = b.one("Max", [a, c], nid)
        return p, b.one("Exp", [b.one("Sub", [a, p], nid)], nid), \
            b.one("Exp", [b.one("Sub", [c, p], nid)], nid)

    _, e1, e2 = mix(pp, b.one("Add", [u, k], nid))
    e2v = b.one("Mul", [e2, v], nid)
    num = b.one("Add", [b.one("Mul", [e1, aa], nid), e2v], nid)
    den = b.one("Add", [b.one("Mul", [e1, bb], nid), e2], nid)
    out = b.one("Div", [num, den], nid)
    p, e1, e2 = mix(b.one("Add", [pp, w], nid), k)
    aa_next = b.one("Add", [b.one("Mul", [e1, aa], nid), b.one("Mul", [e2, v], nid)], nid)
    bb_next = b.one("Add", [b.one("Mul", [e1, bb], nid), e2], nid)
    return [out, aa_next, bb_next, p]


register(OpDef(
    "WKV", 5, 4,
    "inputs k, v, aa, bb, pp; outputs wkv, aa', bb', pp' (spec 2.10; params w, u)",
    run=wkv, fixed=Without("a host op: the emulation runs its float function"),
    cost=lambda n, shape, a: {k: c * n for k, c in WKV_PER_CHANNEL.items()},
    chip=Without("WKV needs exp, max and division on floats"),
    onnx=_wkv_onnx, nir=Without("NIR 1.0 has no exp, max or division")))
