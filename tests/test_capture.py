"""torch.fx capture (converters/torch_capture.py) -> IR, run by the numpy reference executor.

Equivalence: the IR interpreter against the PyTorch RNN step, for both model types, with and
without the reference rescaling and the Heaviside embedding. Structure: explicit state slots,
value classes on every edge, only known ops. Side effects: capture leaves the model untouched.
Persistence: ``ir_io`` save/load is an identity (also as a hypothesis property), and an
official-layout .pth converts exactly like the model it was written from.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_tiny_model
from converters.torch_capture import capture_ir
from spikegpt_deploy.checkpoint import load_checkpoint, save_model, save_official_state_dict
from spikegpt_deploy.convert import ConvertOptions, run_pipeline
from spikegpt_deploy.data import CharTokenizer
from spikegpt_deploy.interpreter import Executor
from spikegpt_deploy.ir import IR, OPS, infer_value_classes
from spikegpt_deploy.ir_io import ir_to_json, load_ir, save_ir
from spikegpt_deploy.model import SpikeGPT, SpikeGPTState
from spikegpt_deploy.model.layers import WKV_EXPONENT_INIT

VOCAB = 30
N_LAYER = 3
N_EMBD = 16
N_TOKENS = 48
VALUE_CLASSES = {"index", "binary", "integer", "float"}
TOKENIZER = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz .,\n"))
assert TOKENIZER.vocab_size == VOCAB


def tokens_for(seed: int, batch: int = 2, n: int = N_TOKENS, vocab: int = VOCAB) -> np.ndarray:
    return np.random.default_rng(1000 + seed).integers(0, vocab, size=(batch, n))


@torch.no_grad()
def torch_rnn(model: SpikeGPT, tokens: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The PyTorch RNN step over the tokens: logits (B, T, V) and spikes per population."""
    state = model.init_state(tokens.shape[0])
    logits = []
    with model.record_spikes() as rec:
        for t in range(tokens.shape[1]):
            out, state = model.step(torch.from_numpy(tokens[:, t]), state)
            logits.append(out.numpy())
    return np.stack(logits, 1), {k: v.numpy() for k, v in rec.spikes().items()}


def ir_snapshot(ir: IR) -> tuple[dict, dict[str, np.ndarray]]:
    """The IR as plain JSON-able data (tuples become lists) plus copies of its arrays."""
    doc, arrays = ir_to_json(ir)
    return json.loads(json.dumps(doc)), {k: np.array(v, copy=True) for k, v in arrays.items()}


def assert_same_ir(a: IR, b: IR) -> None:
    """Same nodes (op, module, attrs, n_out, placement), same edges (as a multiset), same arrays
    (values and dtypes), same config, passes and meta."""
    assert set(a.graph.nodes) == set(b.graph.nodes)
    for n, da in a.graph.nodes(data=True):
        db = b.graph.nodes[n]
        for key in ("op", "module", "n_out", "placement", "reason"):
            assert da.get(key) == db.get(key), (n, key)
        assert json.loads(json.dumps(da["attrs"])) == json.loads(json.dumps(db["attrs"])), n
        assert sorted(da["params"]) == sorted(db["params"]), n
        for name, arr in da["params"].items():
            other = db["params"][name]
            assert arr.dtype == other.dtype and arr.shape == other.shape, (n, name)
            assert np.array_equal(arr, other), (n, name)

    def edges(ir: IR) -> list[str]:
        return sorted(json.dumps([u, v, d], sort_keys=True)
                      for u, v, d in ir.graph.edges(data=True))
    assert edges(a) == edges(b)
    assert a.config == b.config
    assert a.passes == b.passes
    assert json.loads(json.dumps(dict(a.meta))) == json.loads(json.dumps(dict(b.meta)))


# ---- equivalence with the PyTorch RNN step --------------------------------------------------
@pytest.mark.parametrize("binary_embedding", [True, False])
@pytest.mark.parametrize("rescale_every", [0, 2])
@pytest.mark.parametrize("model_type", ["RWKV", "RWKV-ffnPre"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interpreter_equals_pytorch_rnn(seed: int, model_type: str, rescale_every: int,
                                        binary_embedding: bool) -> None:
    model = make_tiny_model(model_type, seed=seed, n_layer=N_LAYER, n_embd=N_EMBD,
                            vocab_size=VOCAB, rescale_every=rescale_every,
                            binary_embedding=binary_embedding)
    tokens = tokens_for(seed)
    ref_logits, ref_spikes = torch_rnn(model, tokens)
    logits, spikes = Executor(capture_ir(model)).run(tokens)

    assert logits.shape == ref_logits.shape == (2, N_TOKENS, VOCAB)
    assert np.max(np.abs(logits - ref_logits)) <= 1e-5
    assert list(spikes) == model.population_names() == list(ref_spikes)
    for name in ref_spikes:
        assert np.array_equal(spikes[name], ref_spikes[name].astype(np.float32)), name
    # Not vacuous: every LIF population fires, though not all the time.
    rates = {k: float(v.mean()) for k, v in spikes.items() if k != "emb"}
    assert all(r > 0 for r in rates.values()), rates
    assert 0.02 < float(np.mean(list(rates.values()))) < 0.6, rates


# ---- structure --------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["RWKV", "RWKV-ffnPre"])
def test_state_slots_are_explicit(model_type: str) -> None:
    model = make_tiny_model(model_type, seed=0, n_layer=N_LAYER, n_embd=N_EMBD, vocab_size=VOCAB)
    ir = capture_ir(model)
    expected = {f"{name}.{i}" for name in SpikeGPTState.names() for i in range(N_LAYER)}
    assert len(expected) == 7 * N_LAYER
    ins = [ir.node(n)["attrs"]["state"] for n in ir.nodes_of("StateIn")]
    outs = [ir.node(n)["attrs"]["state"] for n in ir.nodes_of("StateOut")]
    # One StateIn and one StateOut per slot, nothing else crosses tokens.
    assert sorted(ins) == sorted(outs) == sorted(expected)
    for n in ir.nodes_of("StateIn"):
        attrs = ir.node(n)["attrs"]
        want = WKV_EXPONENT_INIT if attrs["state"].startswith("wkv_max") else 0.0
        assert attrs["init"] == want
    # The executor's zero state is the model's zero state.
    init = Executor(ir).init_state(2)
    packed = model.init_state(2)
    for j, name in enumerate(SpikeGPTState.names()):
        for i in range(N_LAYER):
            assert np.array_equal(init[f"{name}.{i}"], getattr(packed, name)[i].numpy())

    # Pass-throughs: a slot whose StateIn only feeds its own StateOut. Only an ffnPre model's
    # block 0 (no time-mix, so no WKV state) has them.
    def passthrough(n: str) -> bool:
        slot = ir.node(n)["attrs"]["state"]
        return all(ir.node(v)["op"] == "StateOut" and ir.node(v)["attrs"]["state"] == slot
                   for v, _ in ir.consumers(n))
    through = {ir.node(n)["attrs"]["state"] for n in ir.nodes_of("StateIn") if passthrough(n)}
    want_through = ({"wkv_num.0", "wkv_den.0", "wkv_max.0"} if model_type == "RWKV-ffnPre"
                    else set())
    assert through == want_through
    # remove_dead drops exactly the pass-throughs and changes no output.
    pruned = ir.copy()
    pruned.remove_dead()
    assert set(pruned.state_slots()) == expected - want_through
    assert len(list(pruned.nodes_of("StateOut"))) == len(expected - want_through)
    tokens = tokens_for(0, n=8)
    a, sa = Executor(ir).run(tokens)
    b, sb = Executor(pruned).run(tokens)
    assert np.array_equal(a, b) and all(np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("binary_embedding", [True, False])
@pytest.mark.parametrize("model_type", ["RWKV", "RWKV-ffnPre"])
def test_ops_known_and_every_edge_has_a_value_class(model_type: str,
                                                   binary_embedding: bool) -> None:
    model = make_tiny_model(model_type, seed=1, n_layer=2, n_embd=N_EMBD, vocab_size=VOCAB,
                            rescale_every=1, binary_embedding=binary_embedding)
    ir = capture_ir(model)
    for n, d in ir.graph.nodes(data=True):
        assert d["op"] in OPS, (n, d["op"])
        arity, n_out, _ = OPS[d["op"]]
        if arity is not None:
            assert ir.graph.in_degree(n) == arity, n
            assert [e["dst_port"] for _, _, e in ir.in_edges(n)] == list(range(arity))
        assert d["n_out"] == n_out, n
    # Only the ops a captured step can have (pass-made ops come later).
    assert set(ir.op_counts()) <= set(OPS) - {"SpikeSum", "SpikeLinear", "LayerNormStats",
                                              "FoldCorrection"}
    assert ir.op_counts()["LIF"] == 2 * 2
    assert ir.op_counts().get("Heaviside", 0) == int(binary_embedding)
    # rescale_every=1: the stream is halved after each of the 2 blocks, and block 1 scales both
    # LIF inputs by 2**-1 (block 0's factor is 1: no node).
    assert ir.op_counts()["Scale"] == 2 + 2

    classed = infer_value_classes(ir)
    assert classed.graph.number_of_edges() == ir.graph.number_of_edges()
    for u, v, d in classed.graph.edges(data=True):
        assert d.get("value_class") in VALUE_CLASSES, (u, v, d)
        op = classed.node(u)["op"]
        if op == "Input":
            assert d["value_class"] == "index"
        elif op == "Heaviside" or (op == "LIF" and d["src_port"] == 0):
            assert d["value_class"] == "binary", (u, v)
        elif op == "LIF":
            assert d["value_class"] == "float", (u, v)  # the membrane
    # Spec 2.9: before the LayerNorm fold, no Linear reads spikes.
    for n in classed.nodes_of("Linear"):
        assert [d["value_class"] for _, _, d in classed.in_edges(n)] == ["float"], n
    # infer_value_classes returns a new IR: the captured one has no classes.
    assert all("value_class" not in d for _, _, d in ir.graph.edges(data=True))


def test_capture_does_not_mutate_the_model() -> None:
    model = make_tiny_model("RWKV", seed=3, n_layer=2, n_embd=N_EMBD, vocab_size=VOCAB)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    tokens = tokens_for(3, n=12)
    ref_before = torch_rnn(model, tokens)
    capture_ir(model)
    capture_ir(model)
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].dtype == v.dtype and after[k].shape == v.shape
        assert after[k].numpy().tobytes() == v.numpy().tobytes(), k
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert not model.training
    ref_after = torch_rnn(model, tokens)
    assert np.array_equal(ref_before[0], ref_after[0])


# ---- ir_io round trip -----------------------------------------------------------------------
def test_ir_io_round_trip_is_identity(tmp_path: Path) -> None:
    model = make_tiny_model("RWKV-ffnPre", seed=4, n_layer=2, n_embd=N_EMBD, vocab_size=VOCAB,
                            rescale_every=1)
    ir = capture_ir(model)
    files = save_ir(ir, tmp_path)
    assert files == ["ir.json", "ir_params.npz"]
    loaded = load_ir(tmp_path)
    assert_same_ir(ir, loaded)
    tokens = tokens_for(4, n=10)
    a, sa = Executor(ir).run(tokens)
    b, sb = Executor(loaded).run(tokens)
    assert np.array_equal(a, b) and all(np.array_equal(sa[k], sb[k]) for k in sa)
    # Saving the loaded IR again gives the same bytes.
    again = tmp_path / "again"
    again.mkdir()
    save_ir(loaded, again)
    assert (again / "ir.json").read_bytes() == (tmp_path / "ir.json").read_bytes()


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(seed=st.integers(0, 10_000), model_type=st.sampled_from(["RWKV", "RWKV-ffnPre"]),
       n_layer=st.integers(1, 2), n_embd=st.sampled_from([4, 8]), vocab=st.integers(3, 12),
       rescale_every=st.integers(0, 2), binary_embedding=st.booleans())
def test_ir_io_round_trip_property(seed: int, model_type: str, n_layer: int, n_embd: int,
                                   vocab: int, rescale_every: int,
                                   binary_embedding: bool) -> None:
    model = make_tiny_model(model_type, seed=seed, n_layer=n_layer, n_embd=n_embd,
                            vocab_size=vocab, rescale_every=rescale_every,
                            binary_embedding=binary_embedding)
    ir = capture_ir(model)
    with tempfile.TemporaryDirectory() as tmp:
        save_ir(ir, Path(tmp))
        loaded = load_ir(Path(tmp))
    assert_same_ir(ir, loaded)


# ---- official-layout checkpoints ------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["RWKV", "RWKV-ffnPre"])
def test_official_pth_converts_like_its_model(tmp_path: Path, model_type: str) -> None:
    # The official layout carries no config: infer_config gives the defaults (Heaviside
    # embedding on, no rescaling), so the model uses them too.
    model = make_tiny_model(model_type, seed=5, n_layer=2, n_embd=N_EMBD, vocab_size=VOCAB)
    pth, pt = tmp_path / "official.pth", tmp_path / "model.pt"
    save_official_state_dict(model, pth)
    save_model(model, pt, TOKENIZER)
    loaded = load_checkpoint(pth)
    assert loaded.source_format == "official-state-dict"
    assert loaded.model.config == model.config
    assert_same_ir(capture_ir(model), capture_ir(loaded.model))

    options = ConvertOptions(calibration_tokens=32, check_tokens=8)
    from_pth = run_pipeline(pth, options, stop_after="map_resources")
    from_pt = run_pipeline(pt, options, stop_after="map_resources")
    assert from_pth.steps_done == from_pt.steps_done == [
        "load", "capture", "fold_layernorm", "partition", "quantize", "map_resources"]
    assert_same_ir(from_pth.ir, from_pt.ir)  # type: ignore[arg-type]
    assert from_pth.resources == from_pt.resources
    tokens = tokens_for(5, batch=1, n=16)
    a, _ = Executor(from_pth.ir).run(tokens)  # type: ignore[arg-type]
    b, _ = Executor(capture_ir(model)).run(tokens)
    ref, _ = torch_rnn(model, tokens)
    assert np.max(np.abs(a - ref)) <= 1e-5 and np.max(np.abs(b - ref)) <= 1e-5
