"""One definition per IR op (``OpDef``), and the tables the toolchain reads, derived from them.

Each op is defined once, in the module of its family, with every facet: meaning, float numpy
function, fixed-point form, host cost, chip needs, ONNX and NIR translation (``registry.py``
says what each facet is). The views below are the tables the rest of the code uses; they
are refreshed whenever an op is registered or removed, so an op registered once is in all of
them; they are read-only (a write raises TypeError).

    plumbing.py     Input, Output, StateIn, StateOut
    elementwise.py  Embedding, Heaviside, TokenShiftMix, Sigmoid, ReLU, Square, Mul, Add,
                    Scale, SpikeSum
    linear.py       Linear, SpikeLinear (and the exact integer products of their fixed form)
    lif.py          LIF (and its NIR parameters)
    norm.py         LayerNorm, LayerNormStats, FoldCorrection
    wkv.py          WKV

This package is the bottom layer of the op knowledge: it imports numpy, ``errors`` and
``fixed_point`` only. Passes, profiling, simulation and converters import it, never the reverse.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from . import elementwise, lif, linear, norm, plumbing, wkv  # noqa: F401  (they register)
from .registry import (FACETS, ChipNeeds, CostFn, FacetView, NirForm, OnnxFn, OpDef, OpFn,
                       Without, definitions, given, op_def, register, registered, unregister)

# op -> (number of inputs or None for variadic, number of outputs, one-line semantics)
ARITY: FacetView[tuple[int | None, int, str]] = FacetView(
    lambda d: (d.inputs, d.outputs, d.doc), "arity")
# op -> its float32 numpy function
FLOAT: FacetView[OpFn] = FacetView(lambda d: given(d.run), "float")
# op -> the function the quantized emulation runs: the fixed-point form, else the float one
FIXED: FacetView[OpFn] = FacetView(
    lambda d: given(d.fixed) or given(d.run), "fixed point")
# op -> the capability name a target profile lists in chip_ops
CAPABILITY: FacetView[str] = FacetView(
    lambda d: d.chip.capability if isinstance(d.chip, ChipNeeds) else None, "capability")
# op -> why it stays on the host (ops that may go on the chip are not listed)
HOST_REASON: FacetView[str] = FacetView(
    lambda d: d.chip.reason if isinstance(d.chip, Without) else None, "host reason")
# op -> its host ONNX translation
ONNX: FacetView[OnnxFn] = FacetView(lambda d: given(d.onnx), "onnx")
# chip op -> its NIR node type
NIR_TYPE: FacetView[str] = FacetView(
    lambda d: d.nir.node_type if isinstance(d.nir, NirForm) else None, "nir")
# op -> its host cost formula
COST: FacetView[CostFn] = FacetView(lambda d: d.cost, "cost")


def fixed_ops(cache: Any = None) -> dict[str, OpFn]:
    """The quantized emulation's op table (``FIXED``) with ``cache`` (an
    ``ops.linear.IntegerWeights``, shared by the whole run) bound into every fixed-point form."""
    return {d.name: functools.partial(d.fixed, cache=cache) if not isinstance(d.fixed, Without)
            else d.run for d in definitions() if d.name in FIXED}


def plumbing_ops() -> tuple[str, ...]:
    """The graph interface and state ops (Input, Output, StateIn, StateOut)."""
    return tuple(d.name for d in definitions() if d.plumbing)


def host_cost(op: str, n: int, weight_shape: tuple[int, ...] | None = None,
              attrs: Mapping[str, Any] | None = None) -> dict[str, int] | None:
    """Host operations of one node per sample and token by kind (the op's cost facet); None
    for an op that is not defined."""
    if op not in COST:
        return None
    return COST[op](n, weight_shape, dict(attrs or {}))


__all__ = ["ARITY", "CAPABILITY", "COST", "FACETS", "FIXED", "FLOAT", "HOST_REASON", "NIR_TYPE",
           "ONNX", "ChipNeeds", "CostFn", "FacetView", "NirForm", "OnnxFn", "OpDef", "OpFn",
           "Without", "definitions", "fixed_ops", "host_cost", "op_def", "plumbing_ops",
           "register", "registered", "unregister"]
