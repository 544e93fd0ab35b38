"""Host-operation formulas per IR op (what each op costs the host, by kind), and the dense
ANN baseline built from them. Each formula is the op's cost facet in ``spikegpt_deploy.ops``,
beside the numpy function it follows line by line; tests count the interpreter's own numpy
calls to check them."""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from .. import ops

PLUMBING = ops.plumbing_ops()
FLOAT_BYTES = ops.elementwise.FLOAT_BYTES
HOST_OP_KINDS = ("mac", "add", "mul", "div", "exp", "sqrt", "max", "compare", "sigmoid",
                 "lookup_byte")
WKV_PER_CHANNEL = ops.wkv.WKV_PER_CHANNEL


def op_cost(op: str, n: int, weight_shape: tuple[int, ...] | None = None,
            attrs: Mapping[str, Any] | None = None) -> dict[str, int] | None:
    """Host operations of one node per sample and token, by kind; None if the op is not defined.

    n: elements of the node's first input. weight_shape: [out, in] of a Linear, [V, C] of an
    Embedding, (len(w_one),) of a FoldCorrection. The formula is the op's cost facet
    (``spikegpt_deploy.ops``), written beside its numpy function and following it line by
    line; constants (1 - mix, 1/tau) count as precomputed.
    """
    return ops.host_cost(op, n, weight_shape, attrs)


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
