"""Host-operation formulas per IR op (what each op costs the host, by kind), and the dense
ANN baseline built from them. Each formula follows the numpy code of interpreter.py /
passes/fold.py line by line; tests count the interpreter's own numpy calls to check them."""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

import numpy as np

PLUMBING = ("Input", "Output", "StateIn", "StateOut")
FLOAT_BYTES = 4
HOST_OP_KINDS = ("mac", "add", "mul", "div", "exp", "sqrt", "max", "compare", "sigmoid",
                 "lookup_byte")

# Per-channel cost of interpreter._wkv: ww=u+k; p=max(pp,ww); e1=exp(pp-p); e2=exp(ww-p);
# wkv=(e1 aa + e2 v)/(e1 bb + e2); ww=pp+w; p=max(ww,k); e1=exp(ww-p); e2=exp(k-p);
# aa'=e1 aa + e2 v; bb'=e1 bb + e2  ->  10 add/sub, 6 mul, 2 max, 4 exp, 1 div.
WKV_PER_CHANNEL = {"add": 10, "mul": 6, "max": 2, "exp": 4, "div": 1}


def op_cost(op: str, n: int, weight_shape: tuple[int, ...] | None = None,
            attrs: Mapping[str, Any] | None = None) -> dict[str, int] | None:
    """Host operations of one node per sample and token, by kind; None if the op has no formula.

    n: elements of the node's first input. weight_shape: [out, in] of a Linear, [V, C] of an
    Embedding, (len(w_one),) of a FoldCorrection. Formulas follow interpreter.py and
    passes/fold.py line by line; constants (1 - mix, 1/tau) count as precomputed.
    """
    a = dict(attrs or {})
    if op in PLUMBING:
        return {}
    if op == "Embedding":                       # one row of C float32 read from the table
        return {"lookup_byte": FLOAT_BYTES * int(weight_shape[1])}  # type: ignore[index]
    if op == "Heaviside":
        return {"compare": n}
    if op == "LayerNormStats":                  # mean: n-1 add, 1 div; var: n sub, n square,
        return {"add": 3 * n - 1, "mul": n, "div": 3, "sqrt": 1}  # n-1 add, 1 div; +eps, sqrt;
    #                                             1 / std: 1 div
    if op == "LayerNorm":                       # stats + (x - mean) / std * w + b
        return {"add": 5 * n - 1, "mul": 2 * n, "div": n + 2, "sqrt": 1}
    if op == "TokenShiftMix":                   # mix * a + (1 - mix) * prev
        return {"mul": 2 * n, "add": n}
    if op in ("Linear", "SpikeLinear"):
        return {"mac": int(np.prod(weight_shape))}  # type: ignore[arg-type]
    if op == "Sigmoid":
        return {"sigmoid": n}
    if op == "ReLU":
        return {"max": n}
    if op in ("Square", "Mul", "Scale"):
        return {"mul": n}
    if op == "Add":
        return {"add": n}
    if op == "WKV":
        return {k: v * n for k, v in WKV_PER_CHANNEL.items()}
    if op == "LIF":                             # h = v + (x - v)/tau; s = h >= th; v' = h (1 - s)
        return {"add": 3 * n, "mul": 2 * n, "compare": n}
    if op == "SpikeSum":
        coeffs = list(a.get("coefficients", []))
        return {"add": (len(coeffs) - 1) * n, "mul": n * sum(c != 1 for c in coeffs)}
    if op == "FoldCorrection":
        return _fold_correction_cost(int(weight_shape[0]), a)  # type: ignore[index]
    return None


def _fold_correction_cost(w2: int, a: Mapping[str, Any]) -> dict[str, int]:
    """passes/fold.py ``fold_correction``: w2 = rows of A (and B), out = rows of this token."""
    out, c = int(a["out"]), Counter()
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


def ann_op_counts(config: Mapping[str, Any]) -> dict[str, Any]:
    """Per-token ops of the same model as a dense non-spiking ANN (RWKV-4: LIFs are identities).

    Every linear is a MAC (13 C^2 per block, 18 C^2 for an ffnPre block 0, V C for the head), plus
    the float ops of ``op_cost``; it equals ``op_cost`` summed over the captured IR of the model
    with ``spiking = False`` (tests check this).
    """
    C, V, L = int(config["n_embd"]), int(config["vocab_size"]), int(config["n_layer"])
    k = int(config.get("rescale_every", 0))
    layers: dict[str, Counter] = {"emb": Counter(op_cost("Embedding", 1, (V, C)))}
    if config.get("binary_embedding"):
        layers["emb"].update(op_cost("Heaviside", C))
    channel_mix = [("TokenShiftMix", C, None)] * 2 + [
        ("Linear", C, (4 * C, C)), ("Linear", C, (C, C)), ("ReLU", 4 * C, None),
        ("Square", 4 * C, None), ("Linear", 4 * C, (C, 4 * C)), ("Sigmoid", C, None),
        ("Mul", C, None)]
    time_mix = [("TokenShiftMix", C, None)] * 3 + [("Linear", C, (C, C))] * 3 + [
        ("Sigmoid", C, None), ("WKV", C, None), ("Mul", C, None), ("Linear", C, (C, C))]
    for i in range(L):
        ops = [("LayerNorm", C, None)] if i == 0 else []
        ops += [("LayerNorm", C, None)]
        first = channel_mix if (i == 0 and config.get("model_type") == "RWKV-ffnPre") else time_mix
        scale = [("Scale", C, None)] if (k and i // k) else []
        ops += first + scale + [("Add", C, None), ("LayerNorm", C, None)] + channel_mix + scale
        ops += [("Add", C, None)] + ([("Scale", C, None)] if k and (i + 1) % k == 0 else [])
        layers[f"blocks.{i}"] = Counter()
        for op, n, shape in ops:
            layers[f"blocks.{i}"].update(op_cost(op, n, shape))
    layers["head"] = Counter(op_cost("LayerNorm", C)) + Counter(op_cost("Linear", C, (V, C)))
    total = sum(layers.values(), Counter())
    return {"layers": {k2: dict(sorted(v.items())) for k2, v in layers.items()},
            "total": dict(sorted(total.items())), "macs": int(total["mac"])}
