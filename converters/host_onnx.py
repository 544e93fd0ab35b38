"""Host partition of a partitioned IR -> ONNX: the per-token work the host runs beside the chip.

The ONNX graph holds every node placed on ``host`` (``spikegpt_deploy.partition``). Its interface,
per token (B = a dynamic dimension ``batch``; every float value is float32 [B, width]):

    inputs   tokens                    int64 [B]
             <slot>                    a host state slot's value from the previous token
             from_chip.<node>.<port>   a chip -> host crossing value
    outputs  logits                    (one per IR Output node, named after it)
             next.<slot>               the host state slot's value for the next token
             to_chip.<node>.<port>     a host -> chip crossing value

Each IR op is written with plain ONNX operators (opset 17) in the order of operations of the numpy
reference (``spikegpt_deploy.interpreter.FLOAT_OPS``), so the two agree to float32 rounding.
FoldCorrection follows ``spikegpt_deploy.passes.fold.fold_correction``. An op without a
translation is a ConversionError naming the node. The converter reads the IR, never mutates it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters.onnx_export import OPSET, write_atomically
from spikegpt_deploy.errors import ConversionError
from spikegpt_deploy.interpreter import annotate_shapes
from spikegpt_deploy.ir import HOST, IR, Port

log = logging.getLogger(__name__)

F32 = np.float32
HOST_FORMAT = "spikegpt-deploy/host-partition"
HOST_FORMAT_VERSION = "1"
BATCH = "batch"


@dataclass(frozen=True)
class HostOnnxInfo:
    """Where the host ONNX file is and how its inputs and outputs map onto the IR."""

    path: str
    inputs: tuple[str, ...]                 # graph inputs, in order
    outputs: tuple[str, ...]                # graph outputs, in order
    state_inputs: dict[str, str]            # state slot -> graph input
    state_outputs: dict[str, str]           # state slot -> graph output (its next value)
    from_chip: dict[str, tuple[str, int]]   # graph input -> (IR node, port) on the chip
    to_chip: dict[str, tuple[str, int]]     # graph output -> (IR node, port) on the host
    model_outputs: dict[str, str]           # IR Output name -> graph output
    token_input: str | None
    n_onnx_nodes: int
    batch: str = "dynamic"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Builder:
    """Collects ONNX nodes and initializers with unique value names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._consts: dict[tuple[str, bytes], str] = {}

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}/{self._count}"

    def const(self, value: Any, hint: str = "const", dtype: Any = F32) -> str:
        """An initializer (equal constants share one)."""
        array = np.asarray(value, dtype=dtype)
        key = (f"{array.dtype}{array.shape}", array.tobytes())
        if key not in self._consts:
            name = f"param:{hint}" if hint != "const" else f"const:{len(self._consts)}"
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], hint: str, n_out: int = 1,
           outputs: list[str] | None = None, **attrs: Any) -> list[str]:
        outputs = outputs or [self.fresh(hint) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.fresh(hint),
                                           **attrs))
        return outputs

    def one(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        return self.op(op_type, inputs, hint, **attrs)[0]


Translate = Callable[[_Builder, str, dict[str, Any], list[str]], list[str]]


def _stats(b: _Builder, nid: str, x: str, eps: float) -> tuple[str, str, str]:
    """mean, x - mean, sqrt(var + eps): ``interpreter._layernorm_stats``."""
    mean = b.one("ReduceMean", [x], nid, axes=[-1], keepdims=1)
    centred = b.one("Sub", [x, mean], nid)
    var = b.one("ReduceMean", [b.one("Mul", [centred, centred], nid)], nid, axes=[-1], keepdims=1)
    std = b.one("Sqrt", [b.one("Add", [var, b.const(F32(eps))], nid)], nid)
    return mean, centred, std


def _layernorm(b: _Builder, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    _, centred, std = _stats(b, nid, ins[0], n["attrs"]["eps"])
    scaled = b.one("Mul", [b.one("Div", [centred, std], nid),
                           b.const(n["params"]["weight"], f"{nid}.weight")], nid)
    return [b.one("Add", [scaled, b.const(n["params"]["bias"], f"{nid}.bias")], nid)]


def _layernorm_stats(b: _Builder, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    mean, _, std = _stats(b, nid, ins[0], n["attrs"]["eps"])
    return [mean, b.one("Reciprocal", [std], nid)]


def _linear(b: _Builder, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    weight_t = np.ascontiguousarray(np.asarray(n["params"]["weight"], dtype=F32).T)
    return [b.one("MatMul", [ins[0], b.const(weight_t, f"{nid}.weight_t")], nid)]


def _token_shift_mix(b: _Builder, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    mix = np.asarray(n["params"]["mix"], dtype=F32)
    cur = b.one("Mul", [ins[0], b.const(mix, f"{nid}.mix")], nid)
    prev = b.one("Mul", [ins[1], b.const(F32(1) - mix, f"{nid}.one_minus_mix")], nid)
    return [b.one("Add", [cur, prev], nid)]


def _heaviside(b: _Builder, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    fired = b.one("GreaterOrEqual", [ins[0], b.const(F32(0))], nid)
    return [b.one("Cast", [fired], nid, to=TensorProto.FLOAT)]


def _wkv(b: _Builder, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    """The stabilised WKV step of ``interpreter._wkv`` (spec 2.10)."""
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
    wkv = b.one("Div", [num, den], nid)
    p, e1, e2 = mix(b.one("Add", [pp, w], nid), k)
    aa_next = b.one("Add", [b.one("Mul", [e1, aa], nid), b.one("Mul", [e2, v], nid)], nid)
    bb_next = b.one("Add", [b.one("Mul", [e1, bb], nid), e2], nid)
    return [wkv, aa_next, bb_next, p]


def _lif(b: _Builder, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    x, v = ins
    leak = b.one("Mul", [b.one("Sub", [x, v], nid), b.const(F32(1.0 / n["attrs"]["tau"]))], nid)
    h = b.one("Add", [v, leak], nid)
    fired = b.one("GreaterOrEqual", [h, b.const(F32(n["attrs"]["threshold"]))], nid)
    s = b.one("Cast", [fired], nid, to=TensorProto.FLOAT)
    return [s, b.one("Mul", [h, b.one("Sub", [b.const(F32(1)), s], nid)], nid)]


def _spike_sum(b: _Builder, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    terms = [x if c == 1 else b.one("Mul", [x, b.const(F32(c))], nid)
             for c, x in zip(n["attrs"]["coefficients"], ins)]
    total = terms[0]
    for term in terms[1:]:
        total = b.one("Add", [total, term], nid)
    return [total]


def _slice(b: _Builder, nid: str, x: str, start: int, end: int) -> str:
    i64 = np.int64
    return b.one("Slice", [x, b.const([start], dtype=i64), b.const([end], dtype=i64),
                           b.const([1], dtype=i64)], nid)


def _fold_correction(b: _Builder, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    """``passes.fold.fold_correction``: y = (scale (x0 part + y_n) - mu A1) (1/sigma) + W beta."""
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


def _unary(op_type: str) -> Translate:
    return lambda b, nid, n, ins: [b.one(op_type, ins, nid)]


TRANSLATIONS: dict[str, Translate] = {
    "Embedding": lambda b, nid, n, ins: [b.one("Gather", [b.const(n["params"]["weight"],
                                                                  f"{nid}.weight"), ins[0]],
                                               nid, axis=0)],
    "Heaviside": _heaviside,
    "LayerNorm": _layernorm,
    "TokenShiftMix": _token_shift_mix,
    "Linear": _linear,
    "SpikeLinear": _linear,
    "Sigmoid": _unary("Sigmoid"),
    "ReLU": _unary("Relu"),
    "Square": lambda b, nid, n, ins: [b.one("Mul", [ins[0], ins[0]], nid)],
    "Mul": _unary("Mul"),
    "Add": _unary("Add"),
    "Scale": lambda b, nid, n, ins: [b.one("Mul", [ins[0], b.const(F32(n["attrs"]["factor"]))],
                                           nid)],
    "WKV": _wkv,
    "LIF": _lif,
    "SpikeSum": _spike_sum,
    "LayerNormStats": _layernorm_stats,
    "FoldCorrection": _fold_correction,
}


def _value_info(name: str, elem: int, width: int | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, [BATCH] if width is None else [BATCH, width])


def host_partition_to_onnx(ir: IR, path: str | os.PathLike) -> HostOnnxInfo:
    """Write the host partition of ``ir`` (output of ``partition``) as an ONNX model (see above).

    The batch dimension is dynamic. Returns how the graph's inputs and outputs map onto the IR.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ConversionError(f"cannot write '{path}': directory '{path.parent}' does not exist")
    unplaced = [n for n, d in ir.graph.nodes(data=True) if not d.get("placement")]
    if unplaced:
        raise ConversionError(f"host_partition_to_onnx: node(s) {sorted(unplaced)[:5]} have no "
                              f"placement; run spikegpt_deploy.partition.partition first")
    b = _Builder()
    io = _translate_host(ir, b)
    order = {"tokens": 0, "state": 1, "from_chip": 2, "model": 0, "next": 1, "to_chip": 2}
    inputs = [v for _, _, v in sorted(io.inputs, key=lambda e: (order[e[0]], e[1]))]
    outputs = [v for _, _, v in sorted(io.outputs, key=lambda e: (order[e[0]], e[1]))]
    graph = helper.make_graph(b.nodes, "spikegpt_host_partition", inputs, outputs,
                              initializer=b.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="spikegpt-deploy")
    proto.ir_version = min(proto.ir_version, 8)  # opset 17 pairs with IR version 8
    info = HostOnnxInfo(str(path), tuple(i.name for i in inputs), tuple(o.name for o in outputs),
                        io.state_in, io.state_out, io.from_chip, io.to_chip, io.model_out,
                        io.token_input, len(b.nodes))
    for key, value in {"spikegpt_deploy.format": HOST_FORMAT,
                       "spikegpt_deploy.format_version": HOST_FORMAT_VERSION,
                       "spikegpt_deploy.config": json.dumps(ir.config, sort_keys=True),
                       "spikegpt_deploy.partition": json.dumps(ir.meta.get("partition", {})),
                       # the file's own path is left out: the same IR gives the same bytes
                       "spikegpt_deploy.interface": json.dumps(
                           {k: v for k, v in info.to_dict().items() if k != "path"})}.items():
        proto.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionError(f"the host-partition ONNX fails onnx.checker: {exc}") from exc
    write_atomically(path, proto.SerializeToString())
    log.info("wrote the host partition (%d ONNX nodes, %d inputs, %d outputs) to %s",
             len(b.nodes), len(inputs), len(outputs), path)
    return info


@dataclass
class _Interface:
    """The graph inputs / outputs found while translating: (group, name, value info) each."""

    inputs: list[tuple[str, str, onnx.ValueInfoProto]] = field(default_factory=list)
    outputs: list[tuple[str, str, onnx.ValueInfoProto]] = field(default_factory=list)
    state_in: dict[str, str] = field(default_factory=dict)
    state_out: dict[str, str] = field(default_factory=dict)
    from_chip: dict[str, tuple[str, int]] = field(default_factory=dict)
    to_chip: dict[str, tuple[str, int]] = field(default_factory=dict)
    model_out: dict[str, str] = field(default_factory=dict)
    token_input: str | None = None


def _widths(ir: IR) -> Callable[[Port], int | None]:
    """Per-sample width of a value (None for the scalar token id), from the edge shapes."""
    shaped = ir if all("shape" in d for _, _, d in ir.graph.edges(data=True)) \
        else annotate_shapes(ir)
    widths: dict[tuple[str, int], int | None] = {}
    for u, _, d in shaped.graph.edges(data=True):
        widths[(u, d["src_port"])] = int(d["shape"][0]) if d["shape"] else None

    def width(port: Port) -> int | None:
        if (port.node, port.port) in widths:
            return widths[(port.node, port.port)]
        return int(ir.node(port.node)["attrs"].get("width", ir.config["n_embd"]))
    return width


def _translate_host(ir: IR, b: _Builder) -> _Interface:
    """Translate the host nodes in topological order into ``b``; collect the interface."""
    width = _widths(ir)
    io = _Interface()
    env: dict[tuple[str, int], str] = {}
    host = [n for n in ir.topological() if ir.node(n)["placement"] == HOST]
    for nid in host:
        data = ir.node(nid)
        op = data["op"]
        ins = []
        for p in ir.inputs(nid):
            if ir.node(p.node)["placement"] != HOST and (p.node, p.port) not in env:
                name = env[(p.node, p.port)] = f"from_chip.{p.node}.{p.port}"
                io.from_chip[name] = (p.node, p.port)
                io.inputs.append(("from_chip", name,
                                  _value_info(name, TensorProto.FLOAT, width(p))))
            ins.append(env[(p.node, p.port)])
        if op == "Input":
            name = env[(nid, 0)] = io.token_input = data["attrs"].get("name", "tokens")
            io.inputs.append(("tokens", name, _value_info(name, TensorProto.INT64, None)))
        elif op == "StateIn":
            slot = data["attrs"]["state"]
            env[(nid, 0)] = io.state_in[slot] = slot
            io.inputs.append(("state", slot,
                              _value_info(slot, TensorProto.FLOAT, width(Port(nid)))))
        elif op in ("StateOut", "Output"):
            if op == "StateOut":
                group, name = "next", f"next.{data['attrs']['state']}"
                io.state_out[data["attrs"]["state"]] = name
            else:
                group, name = "model", data["attrs"]["name"]
                io.model_out[name] = name
            b.op("Identity", ins, nid, outputs=[name])
            io.outputs.append((group, name, _value_info(name, TensorProto.FLOAT,
                                                        width(ir.inputs(nid)[0]))))
        elif op in TRANSLATIONS:
            for port, name in enumerate(TRANSLATIONS[op](b, nid, data, ins)):
                env[(nid, port)] = name
        else:
            raise ConversionError(f"host_partition_to_onnx: host node '{nid}' (op '{op}', from "
                                  f"{data['module'] or '?'}) has no ONNX translation; translated "
                                  f"ops: {', '.join(sorted(TRANSLATIONS))}")
    for nid in host:
        for port in range(ir.node(nid)["n_out"]):
            if not any(ir.node(v)["placement"] != HOST for v, _ in ir.consumers(nid, port)):
                continue
            if (nid, port) not in env:
                raise ConversionError(f"host_partition_to_onnx: output {port} of host node "
                                      f"'{nid}' ({ir.node(nid)['op']}) feeds the chip but the "
                                      f"translation does not produce it")
            name = f"to_chip.{nid}.{port}"
            b.op("Identity", [env[(nid, port)]], nid, outputs=[name])
            io.to_chip[name] = (nid, port)
            io.outputs.append(("to_chip", name,
                               _value_info(name, TensorProto.FLOAT, width(Port(nid, port)))))
    return io
