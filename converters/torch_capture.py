"""PyTorch SpikeGPT -> IR: trace one RNN step with torch.fx.

``SpikeGPT.step_packed`` is traced with nn.Linear / nn.LayerNorm / nn.Embedding as leaf modules and
the model's ``heaviside``, ``lif_step``, ``wkv_step`` and ``token_shift_mix`` as leaf functions
(``torch.fx.wrap`` in spikegpt_deploy/model). Sub-graphs that depend only on parameters (for
example ``-exp(time_decay)`` or ``time_mix_k.reshape(-1)``) are evaluated once and become node
parameters. Every other call maps to exactly one IR op; anything unknown is a ConversionError that
names the fx node. The converter reads the model and never mutates it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from spikegpt_deploy.errors import ConversionError
from spikegpt_deploy.ir import IR, Port
from spikegpt_deploy.model import SpikeGPT, SpikeGPTState
from spikegpt_deploy.model import layers as model_layers
from spikegpt_deploy.model import spikegpt as model_spikegpt

LEAF_MODULES = (nn.Linear, nn.LayerNorm, nn.Embedding)


class _StepWrapper(nn.Module):
    """fx traces ``forward``; this exposes ``step_packed`` as one. Parameters keep their names."""

    def __init__(self, model: SpikeGPT):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, packed_state: torch.Tensor):
        return self.model.step_packed(tokens, packed_state)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAF_MODULES)


@dataclass
class _Const:
    value: Any          # torch.Tensor or python scalar
    source: str = ""    # parameter path it came from, for module attribution


class _Stack:
    """The packing of the output state; resolved structurally in ``_add_outputs``."""


@dataclass
class _StateRef:
    """Partial index into the packed state: field j, then layer i."""

    field: int | None = None


def _np(t: torch.Tensor) -> np.ndarray:
    # shares the model's memory (no copy of a 216M model's weights): IR passes never write
    # into a parameter array, they store new ones
    return t.detach().cpu().numpy().astype(np.float32, copy=False)


def _scope(path: str, depth: int = 3) -> str:
    return ".".join(path.split(".")[:depth])


def capture_ir(model: SpikeGPT) -> IR:
    """Trace ``model.step`` into an IR (see the module docstring)."""
    wrapper = _StepWrapper(model)
    graph = _Tracer().trace(wrapper)
    modules = dict(wrapper.named_modules())
    names = SpikeGPTState.names()
    ir = IR(config=model.config.to_dict(), passes=["capture"])
    env: dict[fx.Node, Any] = {}
    lif_count = 0

    def module_of(args: list[Any]) -> str:
        for a in reversed(args):
            if isinstance(a, Port) and ir.node(a.node)["module"]:
                return _scope(ir.node(a.node)["module"])
            if isinstance(a, _Const) and a.source:
                return _scope(a.source)
        return ""

    for node in graph.nodes:
        args = [env[a] if isinstance(a, fx.Node) else a for a in node.args]
        where = f"fx node '{node.name}' ({node.op} {node.target})"
        if node.op == "placeholder":
            if node.target == "tokens":
                env[node] = Port(ir.add_node("tokens", "Input", attrs={"name": "tokens"}))
            else:
                env[node] = _StateRef()
        elif node.op == "get_attr":
            path = str(node.target).removeprefix("model.")
            env[node] = _Const(wrapper.get_parameter(str(node.target)).detach(), path)
        elif node.op == "call_module":
            path = str(node.target).removeprefix("model.")
            mod = modules[str(node.target)]
            env[node] = _add_module(ir, path, mod, args, where)
        elif node.op in ("call_function", "call_method"):
            if all(isinstance(a, (_Const, int, float)) for a in args) and \
                    any(isinstance(a, _Const) for a in args):
                env[node] = _fold_constant(node, args)
                continue
            if node.op == "call_function" and node.target is torch.stack:
                env[node] = _Stack()  # only the packed output state is stacked
                continue
            if node.op == "call_function" and node.target is operator.getitem:
                env[node] = _getitem(ir, args, names, where)
                continue
            if node.target is model_spikegpt.lif_step:
                block, which = divmod(lif_count, 2)
                lif_count += 1
                path = f"blocks.{block}.lif{which + 1}"
                ir.add_node(path, "LIF", args, module=path,
                            attrs={"threshold": model_layers.LIF_THRESHOLD,
                                   "tau": model_layers.LIF_TAU})
                env[node] = (Port(path, 0), Port(path, 1))
                continue
            env[node] = _add_function(ir, node, args, module_of(args), where)
        elif node.op == "output":
            _add_outputs(ir, node.args[0], env, names)
        else:  # pragma: no cover - fx has no other node kinds
            raise ConversionError(f"{where}: unsupported fx node kind")
    return ir


def _add_module(ir: IR, path: str, mod: nn.Module, args: list[Any], where: str) -> Port:
    if isinstance(mod, nn.Linear):
        if mod.bias is not None:
            raise ConversionError(f"{where}: Linear '{path}' has a bias; SpikeGPT's have none")
        nid = ir.add_node(ir.unique_id(path), "Linear", args, module=path,
                          params={"weight": _np(mod.weight)})
    elif isinstance(mod, nn.LayerNorm):
        nid = ir.add_node(ir.unique_id(path), "LayerNorm", args, module=path,
                          params={"weight": _np(mod.weight), "bias": _np(mod.bias)},
                          attrs={"eps": float(mod.eps)})
    else:  # nn.Embedding
        nid = ir.add_node(ir.unique_id(path), "Embedding", args, module=path,
                          params={"weight": _np(mod.weight)})
    return Port(nid)


def _fold_constant(node: fx.Node, args: list[Any]) -> _Const:
    vals = [a.value if isinstance(a, _Const) else a for a in args]
    kwargs = {k: (v.value if isinstance(v, _Const) else v) for k, v in node.kwargs.items()}
    source = next((a.source for a in args if isinstance(a, _Const) and a.source), "")
    with torch.no_grad():
        if node.op == "call_method":
            return _Const(getattr(vals[0], str(node.target))(*vals[1:], **kwargs), source)
        return _Const(node.target(*vals, **kwargs), source)


def _getitem(ir: IR, args: list[Any], names: tuple[str, ...], where: str) -> Any:
    base, index = args
    if isinstance(base, _StateRef):
        if base.field is None:
            return _StateRef(field=int(index))
        slot = f"{names[base.field]}.{int(index)}"
        nid = f"state_in.{slot}"
        if nid not in ir.graph:
            init = model_layers.WKV_EXPONENT_INIT if names[base.field] == "wkv_max" else 0.0
            ir.add_node(nid, "StateIn", attrs={"state": slot, "init": init},
                        module=f"blocks.{int(index)}")
        return Port(nid)
    if isinstance(base, tuple):
        return base[int(index)]
    raise ConversionError(f"{where}: indexing of a computed value is not supported")


_ELEMENTWISE = {torch.sigmoid: "Sigmoid", torch.relu: "ReLU", torch.square: "Square"}


def _add_function(ir: IR, node: fx.Node, args: list[Any], scope: str, where: str) -> Any:
    target = node.target
    if target is model_spikegpt.heaviside:
        return Port(ir.add_node(ir.unique_id("emb.heaviside"), "Heaviside", args, module="emb"))
    if target is model_layers.token_shift_mix:
        a, prev, mix = args
        if not isinstance(mix, _Const):
            raise ConversionError(f"{where}: token-shift mix must be a parameter")
        path = mix.source
        return Port(ir.add_node(ir.unique_id(path), "TokenShiftMix", [a, prev], module=path,
                                params={"mix": _np(mix.value.reshape(-1))}))
    if target is model_layers.wkv_step:
        w, u, *rest = args
        if not (isinstance(w, _Const) and isinstance(u, _Const)):
            raise ConversionError(f"{where}: WKV decay and bonus must be parameters")
        path = _scope(w.source)
        nid = ir.add_node(ir.unique_id(f"{path}.wkv"), "WKV", rest, module=path,
                          params={"w": _np(w.value), "u": _np(u.value)})
        return tuple(Port(nid, p) for p in range(4))
    if target in _ELEMENTWISE:
        op = _ELEMENTWISE[target]
        return Port(ir.add_node(ir.unique_id(f"{scope}.{op.lower()}"), op, args, module=scope))
    if target in (operator.mul, operator.truediv, operator.add):
        ports = [a for a in args if isinstance(a, Port)]
        consts = [a for a in args if not isinstance(a, Port)]
        if len(ports) == 2 and target is operator.mul:
            return Port(ir.add_node(ir.unique_id(f"{scope}.mul"), "Mul", ports, module=scope))
        if len(ports) == 2 and target is operator.add:
            return Port(ir.add_node(ir.unique_id(f"{scope}.add"), "Add", ports, module=scope))
        if len(ports) == 1 and len(consts) == 1 and isinstance(consts[0], (int, float)) \
                and target is not operator.add and isinstance(args[0], Port):
            factor = float(consts[0]) if target is operator.mul else 1.0 / float(consts[0])
            if factor == 1.0:
                return ports[0]
            return Port(ir.add_node(ir.unique_id(f"{scope}.scale"), "Scale", ports,
                                    module=scope, attrs={"factor": factor}))
    raise ConversionError(f"{where}: no IR op for this call (from {scope or 'the top level'}); "
                          f"the converter supports the SpikeGPT step as defined in "
                          f"spikegpt_deploy/model")


def _add_outputs(ir: IR, out: Any, env: dict[fx.Node, Any], names: tuple[str, ...]) -> None:
    logits, packed = out
    ir.add_node("logits", "Output", [env[logits]], attrs={"name": "logits"})
    # packed = stack([stack([per-layer values]) per field])
    fields = packed.args[0]
    for j, field_node in enumerate(fields):
        for i, value_node in enumerate(field_node.args[0]):
            slot = f"{names[j]}.{i}"
            src = env[value_node]
            if not isinstance(src, Port):
                raise ConversionError(f"state slot '{slot}' is not computed by the graph")
            ir.add_node(f"state_out.{slot}", "StateOut", [src], attrs={"state": slot},
                        module=f"blocks.{i}")
