"""One definition per op: every op has every facet (or says why not), every table the toolchain
reads equals the registry, and an op registered once shows up in all of them (and runs in the
interpreter, the quantized emulation and the host ONNX graph), then is gone when removed."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from converters import host_onnx, nir_export
from converters.host_onnx import host_partition_to_onnx
from converters.onnx_export import ort_session
from hw_profiles import load_profile
from spikegpt_deploy import interpreter, ir as ir_module, ops, partition
from spikegpt_deploy.errors import ConversionError
from spikegpt_deploy.interpreter import Executor
from spikegpt_deploy.ir import HOST, IR, Port, infer_value_classes
from spikegpt_deploy.ops import ChipNeeds, NirForm, OpDef, Without
from spikegpt_deploy.passes import quantize
from spikegpt_deploy.profiling import op_costs

F32 = np.float32


def _tables() -> dict[str, object]:
    """Every derived table, under the name the code reads it by."""
    return {"ir.OPS": ir_module.OPS, "interpreter.FLOAT_OPS": interpreter.FLOAT_OPS,
            "quantize.QUANT_OPS": quantize.QUANT_OPS,
            "partition.CAPABILITY_OF": partition.CAPABILITY_OF,
            "partition.HOST_REASONS": partition.HOST_REASONS,
            "nir_export.CHIP_OPS": nir_export.CHIP_OPS,
            "host_onnx.TRANSLATIONS": host_onnx.TRANSLATIONS}


def _expected() -> dict[str, dict[str, object]]:
    """The same tables, computed here from the definitions."""
    defs = ops.definitions()
    return {
        "ir.OPS": {d.name: (d.inputs, d.outputs, d.doc) for d in defs},
        "interpreter.FLOAT_OPS": {d.name: d.run for d in defs if callable(d.run)},
        "quantize.QUANT_OPS": {d.name: d.fixed if callable(d.fixed) else d.run for d in defs
                               if callable(d.fixed) or callable(d.run)},
        "partition.CAPABILITY_OF": {d.name: d.chip.capability for d in defs
                                    if isinstance(d.chip, ChipNeeds)},
        "partition.HOST_REASONS": {d.name: d.chip.reason for d in defs
                                   if isinstance(d.chip, Without)},
        "nir_export.CHIP_OPS": {d.name: d.nir.node_type for d in defs
                                if isinstance(d.nir, NirForm)},
        "host_onnx.TRANSLATIONS": {d.name: d.onnx for d in defs if callable(d.onnx)}}


def test_every_op_has_every_facet_or_says_why_not() -> None:
    chip_ops = set(load_profile("loihi2").capability_value("chip_ops"))  # type: ignore[arg-type]
    assert len(ops.definitions()) >= 21
    for d in ops.definitions():
        for facet in ops.FACETS:
            value = getattr(d, facet)
            if isinstance(value, Without):
                assert value.reason.strip(), (d.name, facet)
            else:
                assert callable(value) or isinstance(value, (ChipNeeds, NirForm)), (d.name, facet)
        assert d.doc.strip() and d.outputs >= 0, d.name
        if d.plumbing:
            assert d.cost(4, None, {}) == {}, d.name
            continue
        # every computing op runs in numpy and can be written into the host ONNX graph
        assert callable(d.run) and callable(d.onnx), d.name
        assert isinstance(d.cost(4, (3, 4), {"coefficients": [1, 2], "out": 2, "binary_x0": 1,
                                             "has_counts": 1, "scale": 1.0, "has_shift": 1}),
                          dict), d.name
        if isinstance(d.chip, ChipNeeds):   # what may go on the chip: in NIR and on Loihi 2
            assert isinstance(d.nir, NirForm), d.name
            assert d.chip.capability in chip_ops, d.name
            assert d.chip.policy in partition.POLICIES, d.name
        else:                               # a host op has no chip-side form
            assert isinstance(d.nir, Without) and isinstance(d.fixed, Without), d.name


def test_each_derived_table_equals_the_registry() -> None:
    expected = _expected()
    for name, table in _tables().items():
        assert dict(table) == expected[name], name  # type: ignore[call-overload]
    assert set(op_costs.PLUMBING) == {"Input", "Output", "StateIn", "StateOut"}
    assert op_costs.op_cost("Linear", 4, (3, 4)) == ops.op_def("Linear").cost(4, (3, 4), {})
    assert op_costs.op_cost("NoSuchOp", 4) is None
    with pytest.raises(TypeError, match="register an OpDef"):
        interpreter.FLOAT_OPS["Softmax"] = _halve  # type: ignore[index]


def classes_of(ir: IR, node: str) -> list[str]:
    """The value classes ``infer_value_classes`` gives the edges out of ``node``."""
    typed = infer_value_classes(ir)
    return [d["value_class"] for _, _, d in typed.graph.out_edges(node, data=True)]


def test_value_classes_come_from_the_classes_facet() -> None:
    ir = IR({"vocab_size": 5, "n_embd": 3})
    tok = ir.add_node("tokens", "Input")
    emb = ir.add_node("emb", "Embedding", [Port(tok)], params={"weight": np.ones((5, 3), F32)})
    spikes = ir.add_node("spikes", "Heaviside", [Port(emb)])
    total = ir.add_node("total", "Add", [Port(spikes), Port(spikes)])
    mixed = ir.add_node("mixed", "Add", [Port(total), Port(emb)])
    ir.add_node("out", "Output", [Port(mixed)], attrs={"name": "logits"})
    assert [classes_of(ir, n) for n in ("tokens", "emb", "spikes", "total", "mixed")] == [
        ["index"], ["float", "float"], ["binary", "binary"], ["integer"], ["float"]]


def _halve(n: dict, ins: list[np.ndarray]) -> tuple[np.ndarray]:
    return (ins[0] * F32(n["attrs"]["factor"])).astype(F32),


def _halve_fixed(n: dict, ins: list[np.ndarray], cache: object = None) -> tuple[np.ndarray]:
    return np.rint(ins[0] * F32(n["attrs"]["factor"])).astype(F32),


TOY = OpDef(
    "ToyHalve", 1, 1, "y = factor * x (a test op)", run=_halve, fixed=_halve_fixed,
    cost=lambda n, shape, a: {"mul": n},
    chip=ChipNeeds("ToyScale", "a test op on a test capability"),
    onnx=lambda b, nid, n, ins: [b.one("Mul", [ins[0], b.const(F32(n["attrs"]["factor"]))],
                                       nid)],
    nir=NirForm("Scale", lambda ir, nid, width, dt: ({"scale": np.full(width, 0.5, F32)}, "")))


def _toy_ir() -> IR:
    ir = IR({"vocab_size": 5, "n_embd": 3})
    weight = np.arange(15, dtype=F32).reshape(5, 3) - 7
    tok = ir.add_node("tokens", "Input")
    emb = ir.add_node("emb", "Embedding", [Port(tok)], params={"weight": weight})
    toy = ir.add_node("toy", "ToyHalve", [Port(emb)], attrs={"factor": 0.5})
    ir.add_node("out", "Output", [Port(toy)], attrs={"name": "logits"})
    return ir


def test_a_registered_op_appears_everywhere_then_is_gone(tmp_path: Path) -> None:
    with ops.registered(TOY):
        for name, table in _tables().items():
            if name == "partition.HOST_REASONS":
                assert "ToyHalve" not in table       # it may go on the chip
            else:
                assert "ToyHalve" in table, name
        assert {k: dict(v) for k, v in _tables().items()} == _expected()  # type: ignore
        assert partition.CAPABILITY_OF["ToyHalve"] == "ToyScale"
        assert nir_export.CHIP_OPS["ToyHalve"] == "Scale"
        assert op_costs.op_cost("ToyHalve", 7) == {"mul": 7}

        ir = _toy_ir()
        tokens = np.array([[1, 4, 2]])
        logits, _ = Executor(ir).run(tokens)
        expected = ir.node("emb")["params"]["weight"][tokens] * F32(0.5)
        np.testing.assert_array_equal(logits, expected)
        assert classes_of(ir, "toy") == ["float"]   # no classes facet: a float output
        fixed, _ = quantize.emulator(ir).run(tokens)
        np.testing.assert_array_equal(fixed, np.rint(expected))

        for n in ir.graph:                           # the whole graph on the host
            ir.node(n)["placement"] = HOST
        info = host_partition_to_onnx(ir, tmp_path / "host.onnx")
        session = ort_session(tmp_path / "host.onnx")
        for t in range(tokens.shape[1]):
            (out,) = session.run(["logits"], {info.token_input: tokens[:, t]})
            np.testing.assert_array_equal(out, expected[:, t])
    for table in _tables().values():
        assert "ToyHalve" not in table
    assert op_costs.op_cost("ToyHalve", 7) is None
    with pytest.raises(ConversionError, match="unknown op 'ToyHalve'"):
        _toy_ir()


def test_a_definition_without_a_facet_is_refused() -> None:
    with pytest.raises(ValueError, match="nir"):
        ops.register(OpDef("Broken", 1, 1, "no NIR facet", run=_halve, fixed=_halve_fixed,
                           cost=lambda n, s, a: {}, chip=Without("host"), onnx=TOY.onnx,
                           nir=None))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="defined twice"):
        ops.register(ops.op_def("LIF"))
    assert "Broken" not in ir_module.OPS


def test_the_op_definitions_import_nothing_above_them() -> None:
    """ops/ is the bottom layer: numpy, the standard library, errors, fixed_point, folded (a
    folded linear's matrix from its factors) and threads (row blocks on the cores) only."""
    allowed_project = {"errors", "fixed_point", "folded", "threads"}
    for path in sorted((Path(ops.__file__).parent).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                continue                                 # within ops/
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert node.module in allowed_project or (
                    node.module is None and {a.name for a in node.names} <= allowed_project), \
                    (path.name, node.module)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module or ""]
                for name in names:
                    assert name.split(".")[0] not in ("spikegpt_deploy", "converters", "onnx",
                                                      "nir", "torch", "lava"), (path.name, name)
