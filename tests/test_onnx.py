"""ONNX in both directions: step export (vs model.step), import (vs onnxruntime), host partition.

Tolerances: 1e-5 absolute on logits and state between onnxruntime and the PyTorch step / numpy IR
interpreter (same float32 arithmetic, different summation order); spikes must be identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from conftest import make_tiny_model
from converters.host_onnx import HostOnnxInfo, host_partition_to_onnx
from converters.onnx_export import (META_CONFIG, META_FORMAT, export_step_onnx, implied_spikes,
                                    ort_session, run_step_onnx, verify_step_onnx)
from converters.onnx_import import ir_from_onnx, model_from_onnx
from converters.torch_capture import capture_ir
from hw_profiles import load_profile
from spikegpt_deploy.errors import ConversionError
from spikegpt_deploy.interpreter import Executor
from spikegpt_deploy.ir import IR
from spikegpt_deploy.model import SpikeGPT, SpikeGPTConfig
from spikegpt_deploy.partition import HOST, partition
from spikegpt_deploy.passes.fold import fold_layernorm


TOL = 1e-5
VOCAB, T, B = 30, 20, 2


def _tiny(model_type: str = "RWKV", **config: object) -> SpikeGPT:
    return make_tiny_model(model_type, n_layer=2, n_embd=16, vocab_size=VOCAB, **config)


def _tokens(batch: int = B, n: int = T, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, n))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[SpikeGPT, Path]:
    model = _tiny()
    return model, export_step_onnx(model, tmp_path_factory.mktemp("onnx") / "step.onnx")


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


# ---- export ---------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", [{}, {"model_type": "RWKV-ffnPre"}, {"rescale_every": 1},
                                     {"binary_embedding": False}])
def test_export_matches_step(tmp_path: Path, variant: dict) -> None:
    model = _tiny(**variant)
    path = export_step_onnx(model, tmp_path / "step.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert SpikeGPTConfig.from_dict(json.loads(meta[META_CONFIG])) == model.config
    ops = {n.op_type for n in proto.graph.node}
    assert {"GreaterOrEqual", "Cast", "Exp", "Max", "Div"} <= ops
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step.onnx"]  # no temporary left over

    tokens = _tokens()
    check = verify_step_onnx(model, path, tokens)
    assert check.ok(TOL), check
    # The state-implied spikes are the real ones, and the LIFs do fire.
    state = model.init_state(B)
    with torch.no_grad(), model.record_spikes() as rec:
        for t in range(T):
            _, state = model.step(torch.from_numpy(tokens[:, t]), state)
            implied = implied_spikes(state.to_tensor().numpy())
            recorded = rec.spikes()
            for i in range(2):
                for j, name in enumerate(("lif1", "lif2")):
                    np.testing.assert_array_equal(
                        implied[j, i], recorded[f"blocks.{i}.{name}"][:, -1].numpy() == 1)
    rates = [v.float().mean().item() for k, v in rec.spikes().items() if k != "emb"]
    assert all(0.02 < r < 0.9 for r in rates), rates


def test_export_fixed_batch(tmp_path: Path) -> None:
    model = _tiny()
    path = export_step_onnx(model, tmp_path / "b1.onnx", batch_size=1, dynamic_batch=False)
    dims = onnx.load(str(path)).graph.input[1].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [7, 2, 1, 16]
    assert verify_step_onnx(model, path, _tokens(batch=1, n=8)).ok(TOL)


def test_export_errors(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="does not exist"):
        export_step_onnx(_tiny(), tmp_path / "missing" / "step.onnx")
    with pytest.raises(ConversionError, match="batch_size"):
        export_step_onnx(_tiny(), tmp_path / "step.onnx", batch_size=0)


# ---- import ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["RWKV", "RWKV-ffnPre"])
def test_import_matches_onnxruntime(tmp_path: Path, model_type: str) -> None:
    model = _tiny(model_type)
    path = export_step_onnx(model, tmp_path / "step.onnx")
    ir = ir_from_onnx(path)
    assert ir.passes[:2] == ["onnx_import", "capture"]
    tokens = _tokens()
    logits, spikes = Executor(ir).run(tokens)
    ort_logits, ort_states = run_step_onnx(ort_session(path), tokens,
                                           model.init_state(B).to_tensor().numpy())
    np.testing.assert_allclose(logits, ort_logits, atol=TOL, rtol=0)
    implied = np.stack([implied_spikes(s) for s in ort_states], axis=3)  # (2, L, B, T, C)
    for i in range(2):
        for j, name in enumerate(("lif1", "lif2")):
            np.testing.assert_array_equal(spikes[f"blocks.{i}.{name}"] == 1, implied[j, i])
    # The rebuilt model has the exported parameters, bit for bit.
    rebuilt = model_from_onnx(path, verify_tokens=0)
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_import_refuses_foreign_onnx(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = _save(helper.make_model(graph), tmp_path / "foreign.onnx")
    with pytest.raises(ConversionError, match="not a spikegpt-deploy step export") as err:
        ir_from_onnx(path)
    assert str(path) in str(err.value) and META_FORMAT in str(err.value)


def test_import_refuses_missing_metadata(exported: tuple, tmp_path: Path) -> None:
    proto = onnx.load(str(exported[1]))
    del proto.metadata_props[:]
    path = _save(proto, tmp_path / "nometa.onnx")
    with pytest.raises(ConversionError, match="no 'spikegpt_deploy.format' entry"):
        ir_from_onnx(path)


def test_import_refuses_wrong_and_unknown_initializers(exported: tuple, tmp_path: Path) -> None:
    proto = onnx.load(str(exported[1]))
    extra = onnx.ModelProto()
    extra.CopyFrom(proto)
    extra.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "mystery"))
    path = _save(extra, tmp_path / "extra.onnx")
    with pytest.raises(ConversionError, match=r"\['mystery'\] are not model parameters"):
        ir_from_onnx(path)

    head = next(i for i in proto.graph.initializer if i.name == "model.head.weight")
    head.CopyFrom(numpy_helper.from_array(np.zeros((VOCAB, 8), np.float32), "model.head.weight"))
    path = _save(proto, tmp_path / "shape.onnx")
    with pytest.raises(ConversionError, match=r"head.weight: \[30, 8\]") as err:
        ir_from_onnx(path)
    assert str(path) in str(err.value)


def test_import_refuses_edited_graph(exported: tuple, tmp_path: Path) -> None:
    proto = onnx.load(str(exported[1]))
    next(n for n in proto.graph.node if n.op_type == "Sigmoid").op_type = "Relu"
    path = _save(proto, tmp_path / "edited.onnx")
    with pytest.raises(ConversionError, match="does not compute the SpikeGPT step"):
        ir_from_onnx(path)


def test_import_checker_and_unreadable_files(exported: tuple, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="does not exist"):
        ir_from_onnx(tmp_path / "absent.onnx")
    data = exported[1].read_bytes()
    with pytest.raises(ConversionError, match="cannot be read as an ONNX model"):
        ir_from_onnx(_save_bytes(data[: len(data) // 2], tmp_path / "truncated.onnx"))
    proto = onnx.load(str(exported[1]))
    proto.graph.node[0].input.append("undefined_value")  # a dangling input: checker refuses
    proto.graph.node[0].op_type = "Gather"
    with pytest.raises(ConversionError, match="fails onnx.checker"):
        ir_from_onnx(_save(proto, tmp_path / "invalid.onnx"))


def _save_bytes(data: bytes, path: Path) -> Path:
    path.write_bytes(data)
    return path


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=256))
def test_import_garbage_raises_only_conversion_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(ConversionError):
        ir_from_onnx(_save_bytes(data, tmp_path / "garbage.onnx"))


# ---- host partition -------------------------------------------------------------------------

def _check_host_onnx(ir: IR, path: Path, tokens: np.ndarray) -> HostOnnxInfo:
    info = host_partition_to_onnx(ir, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort_session(path)
    ex = Executor(ir)
    state = ex.init_state(tokens.shape[0])
    host_state = {slot: state[slot] for slot in info.state_inputs}
    for t in range(tokens.shape[1]):
        ref = ex.step(tokens[:, t], state, keep_values=True)
        feed = {info.token_input: tokens[:, t]}
        feed.update({name: host_state[slot] for slot, name in info.state_inputs.items()})
        feed.update({name: ref.values[key] for name, key in info.from_chip.items()})
        out = dict(zip(info.outputs, session.run(list(info.outputs), feed)))
        np.testing.assert_allclose(out["logits"], ref.outputs["logits"], atol=TOL, rtol=TOL)
        for slot, name in info.state_outputs.items():
            np.testing.assert_allclose(out[name], ref.state[slot], atol=TOL, rtol=TOL,
                                       err_msg=slot)
            host_state[slot] = out[name]  # the host carries its own state
        for name, key in info.to_chip.items():
            np.testing.assert_allclose(out[name], ref.values[key], atol=TOL, rtol=TOL,
                                       err_msg=name)
        state = ref.state
    return info


@pytest.mark.parametrize("policy", ["spikes", "graded"])
@pytest.mark.parametrize("variant", [{}, {"model_type": "RWKV-ffnPre", "rescale_every": 1}])
def test_host_partition_matches_executor(tmp_path: Path, policy: str, variant: dict) -> None:
    ir = partition(fold_layernorm(capture_ir(_tiny(**variant))), load_profile("loihi2"), policy)
    info = _check_host_onnx(ir, tmp_path / "host.onnx", _tokens())
    crossings = ir.meta["crossings"]
    assert set(info.from_chip.values()) == {(c["source"], c["port"]) for c in crossings
                                            if c["direction"] == "chip_to_host"}
    assert set(info.to_chip.values()) == {(c["source"], c["port"]) for c in crossings
                                          if c["direction"] == "host_to_chip"}
    host_slots = {ir.node(n)["attrs"]["state"] for n in ir.nodes_of("StateIn")
                  if ir.node(n)["placement"] == HOST}
    assert set(info.state_inputs) == set(info.state_outputs) == host_slots
    assert info.model_outputs == {"logits": "logits"}


def test_host_onnx_from_imported_onnx(exported: tuple, tmp_path: Path) -> None:
    """The whole round: step .onnx -> IR -> fold -> partition -> host .onnx."""
    ir = partition(fold_layernorm(ir_from_onnx(exported[1])), load_profile("loihi2"), "spikes")
    _check_host_onnx(ir, tmp_path / "host.onnx", _tokens(batch=1, n=6))


def test_host_onnx_errors(tmp_path: Path) -> None:
    ir = fold_layernorm(capture_ir(_tiny()))
    with pytest.raises(ConversionError, match="no placement; run .*partition"):
        host_partition_to_onnx(ir, tmp_path / "host.onnx")
    placed = partition(ir, load_profile("loihi2"), "spikes")
    node = next(placed.nodes_of("WKV"))
    placed.node(node)["op"] = "Mystery"
    with pytest.raises(ConversionError, match=f"host node '{node}' \\(op 'Mystery'"):
        host_partition_to_onnx(placed, tmp_path / "host.onnx")
    assert not (tmp_path / "host.onnx").exists()
