"""The op registry: one ``OpDef`` per IR op, holding every facet of the op in one place.

A facet is one thing the toolchain needs to know about an op: its meaning (arity, outputs,
one-line semantics, value classes of the outputs), its float numpy function (the reference
executor), its fixed-point form (the quantized emulation the Lava simulation must match), its
host cost formula (profiling), what the chip needs to run it (partitioning), its ONNX
translation (the host partition) and its NIR translation (the chip partition). The tables the
rest of the code reads (``ir.OPS``, ``interpreter.FLOAT_OPS``, ``quantize.QUANT_OPS``,
``partition.CAPABILITY_OF`` / ``HOST_REASONS``, ``nir_export.CHIP_OPS``,
``host_onnx.TRANSLATIONS``, ``op_costs.op_cost``, ``ir.infer_value_classes``) are views of this
registry (``FacetView``), refreshed on every change, so an op registered here shows up in all
of them.

A facet that does not apply is never left empty: it is ``Without(reason)``, which says why (a
host op has no chip form, a plumbing op no numpy function, NIR has no division, ...).

This module sits at the bottom of the package: it imports nothing of the project, and facets
that need onnx or nir are written against a builder the converter passes in.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Iterator, Mapping, TypeVar

import numpy as np

Array = np.ndarray
# float numpy function: (node data, input values) -> output values
OpFn = Callable[[dict[str, Any], list[Array]], tuple[Array, ...]]
# host operations of one node per sample and token, by kind (see profiling/op_costs.py):
# (elements of the first input, weight shape or None, node attrs) -> {kind: count}
CostFn = Callable[[int, Any, Mapping[str, Any]], dict[str, int]]
# ONNX translation: (builder, node id, node data, input value names) -> output value names
OnnxFn = Callable[[Any, str, dict[str, Any], list[str]], list[str]]


@dataclass(frozen=True)
class Without:
    """A facet that does not apply to an op, and why."""

    reason: str


@dataclass(frozen=True)
class ChipNeeds:
    """What the chip must offer to run an op, and when the partitioner places it there.

    capability: the name a target profile lists in its ``chip_ops``. policy: 'spikes' places
    the op on the chip under every policy (a target without the capability is an error);
    'graded' only under ``--policy graded`` and only for the float-input linears that policy
    moves. checks_input_classes: the op's inputs must be among the target's
    ``linear_input_classes``. reason: why it is on the chip (``{inputs}``: its input value
    classes; ``{graded_bits}``: the graded spike width). host_reason: why it stays on the host
    when the policy leaves it there (None: the policy never does).
    """

    capability: str
    reason: str
    policy: str = "spikes"
    checks_input_classes: bool = False
    host_reason: str | None = None


@dataclass(frozen=True)
class NirForm:
    """An op's NIR node type and how to build its parameters.

    build(ir, node_id, width, dt_s) -> (keyword arguments of the nir node type, weight kind):
    width is the element count of the node's first input; the weight kind is 'lif', 'float',
    'dequantized' or '' (what the export reports about its weights)."""

    node_type: str
    build: Callable[[Any, str, int, float], tuple[dict[str, Any], str]]


@dataclass(frozen=True)
class OpDef:
    """Everything about one IR op. Facets that do not apply are ``Without(reason)``.

    name, inputs (None: variadic), outputs, doc: the op's meaning.
    plumbing: a graph interface or state node that the executors and converters move values
        through themselves (Input, Output, StateIn, StateOut).
    classes: the value classes of the outputs ('index' | 'binary' | 'integer' | 'float'),
        from the input classes and the node attrs (``ir.infer_value_classes``); None: every
        output is a float.
    run: the float32 numpy function (``interpreter.Executor``).
    fixed: the fixed-point form of a chip op (``passes.quantize.emulator``), called as
        ``fixed(node, inputs, cache=IntegerWeights | None)``; where it is ``Without`` the
        emulation runs ``run``.
    cost: host operations per sample and token by kind (``profiling.op_costs.op_cost``).
    chip: ``ChipNeeds``, or ``Without(why the op stays on the host)``.
    onnx: the host ONNX translation (``converters.host_onnx``).
    nir: ``NirForm`` of the chip partition's NIR graph (``converters.nir_export``).
    """

    name: str
    inputs: int | None
    outputs: int
    doc: str
    run: OpFn | Without
    fixed: Callable[..., tuple[Array, ...]] | Without
    cost: CostFn
    chip: ChipNeeds | Without
    onnx: OnnxFn | Without
    nir: NirForm | Without
    plumbing: bool = False
    classes: Callable[[list[str], Mapping[str, Any]], list[str]] | None = None


FACETS = tuple(f.name for f in fields(OpDef) if f.name not in ("name", "inputs", "outputs",
                                                                 "doc", "plumbing", "classes"))
_REGISTRY: dict[str, OpDef] = {}
_VIEWS: list["FacetView[Any]"] = []  # every derived table, refreshed when the registry changes


def register(op: OpDef) -> OpDef:
    """Add one op definition (a name may be defined once)."""
    if op.name in _REGISTRY:
        raise ValueError(f"op '{op.name}' is defined twice")
    missing = [f for f in FACETS if getattr(op, f) is None]
    if missing:
        raise ValueError(f"op '{op.name}': facet(s) {missing} are None; give a form or "
                         f"Without(reason)")
    _REGISTRY[op.name] = op
    _refresh_views()
    return op


def unregister(name: str) -> None:
    _REGISTRY.pop(name)
    _refresh_views()


def _refresh_views() -> None:
    for view in _VIEWS:
        view._refresh()


@contextlib.contextmanager
def registered(op: OpDef) -> Iterator[OpDef]:
    """Register ``op`` for the duration of a ``with`` block (tests of a new op)."""
    register(op)
    try:
        yield op
    finally:
        unregister(op.name)


def op_def(name: str) -> OpDef:
    """The definition of op ``name`` (KeyError if there is none)."""
    return _REGISTRY[name]


def definitions() -> tuple[OpDef, ...]:
    """Every registered op, in registration order."""
    return tuple(_REGISTRY.values())


T = TypeVar("T")


class FacetView(Dict[str, T]):
    """A read-only table derived from the registry: op name -> select(definition), for the ops
    where select gives something other than None. ``register`` / ``unregister`` refresh every
    view, so an op registered later is in all of them; a lookup is a plain dict lookup (the
    executors look ops up per node and token)."""

    def __init__(self, select: Callable[[OpDef], T | None], what: str):
        super().__init__()
        self._select = select
        self.what = what
        _VIEWS.append(self)
        self._refresh()

    def _refresh(self) -> None:
        table = {n: self._select(op) for n, op in _REGISTRY.items()}
        dict.clear(self)
        dict.update(self, {n: v for n, v in table.items() if v is not None})

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"the {self.what} table is derived from the op definitions "
                        f"(spikegpt_deploy.ops); register an OpDef instead of editing it")

    __setitem__ = __delitem__ = __ior__ = _read_only  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FacetView({self.what}: {', '.join(self)})"


def given(value: Any) -> Any:
    """``value`` unless it is ``Without`` (then None): the select of most views."""
    return None if isinstance(value, Without) else value
