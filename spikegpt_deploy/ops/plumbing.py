"""Plumbing ops: the graph's interface and the state slots that cross tokens.

The executors and converters move their values themselves (a token id in, logits out, a slot's
value from the previous token and for the next one), so they have no numpy function, no
fixed-point form and no host cost; their ONNX form is an interface value of the host graph.
"""

from __future__ import annotations

from .registry import OpDef, Without, register

_MOVED = Without("plumbing: the executor moves the value itself")
_INTERFACE = Without("an interface value of the host graph (graph input or output)")
_NOT_NIR = Without("not a NIR node: a chip LIF's membrane slot is the nir.LIF node's own "
                   "state, a host value crosses as nir.Input / nir.Output")

for _name, _arity, _outs, _doc, _where, _classes in (
        ("Input", 0, 1, "token id of this step (int64 scalar per sample)",
         "token ids come from the host", lambda ins, a: ["index"]),
        ("Output", 1, 0, "a graph output (attrs: name)", "logits are read by the host (sampling)",
         None),
        ("StateIn", 0, 1, "a state slot's value from the previous token (attrs: state, init)",
         "state of a host op", lambda ins, a: [a.get("value_class", "float")]),
        ("StateOut", 1, 0, "a state slot's value for the next token (attrs: state)",
         "state of a host op", None)):
    register(OpDef(_name, _arity, _outs, _doc, run=_MOVED, fixed=_MOVED,
                   cost=lambda n, shape, attrs: {}, chip=Without(_where), onnx=_INTERFACE,
                   nir=_NOT_NIR, plumbing=True, classes=_classes))
