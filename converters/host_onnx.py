"""Host partition of a partitioned IR -> ONNX: the per-token work the host runs beside the chip.

The ONNX graph holds every node placed on ``host`` (``spikegpt_deploy.partition``). Its interface,
per token (B = a dynamic dimension ``batch``; every float value is float32 [B, width]):

    inputs   tokens                    int64 [B]
             <slot>                    a host state slot's value from the previous token
             from_chip.<node>.<port>   a chip -> host crossing value
    outputs  logits                    (one per IR Output node, named after it)
             next.<slot>               the host state slot's value for the next token
             to_chip.<node>.<port>     a host -> chip crossing value

Each IR op is written with plain ONNX operators (opset 17) by its ONNX facet, which sits beside
its numpy function in the op's definition (``spikegpt_deploy.ops``) and follows its order of
operations, so the two agree to float32 rounding. An op without a translation is a
ConversionError naming the node. The converter reads the IR, never mutates it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters.onnx_export import OPSET, write_atomically
from spikegpt_deploy import ops
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
    """Collects ONNX nodes and initializers with unique value names: what an op's ONNX facet
    (``spikegpt_deploy.ops``) writes with, so that the op definitions need no onnx import."""

    FLOAT = TensorProto.FLOAT  # the ``to`` of a Cast to float32

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


# op -> its translation (written against ``_Builder``): a live view of the op definitions
# (``spikegpt_deploy.ops``), beside each op's numpy function
TRANSLATIONS: Mapping[str, ops.OnnxFn] = ops.ONNX


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
