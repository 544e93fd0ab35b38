"""The graph passes that keep the float arithmetic: fold_layernorm (spec 6.3), copy-on-write of
every pass, the IR's own graph walks, and partition (annotation only).

Every rewrite is checked against the numpy reference executor (outputs before == after), the fold
also against the spec 6.3 identity computed by hand on a tiny hand-built graph, and every pass
(quantize included) for copy-on-write. The quantize pass itself is in test_quantize.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from passes_helpers import CALIBRATION, LOIHI2, N_LAYER, model_ir, run, tokens_for
from spikegpt_deploy.errors import ConversionError
from spikegpt_deploy.folded import linear_weight
from spikegpt_deploy.interpreter import annotate_shapes
from spikegpt_deploy.ir import IR, Port, infer_value_classes
from spikegpt_deploy.ir_io import ir_to_json
from spikegpt_deploy.partition import partition
from spikegpt_deploy.passes.fold import fold_layernorm
from spikegpt_deploy.passes.quantize import quantize


def snapshot(ir: IR) -> tuple[str, dict[str, np.ndarray], dict[str, int]]:
    """Everything an IR holds, as JSON text + array copies + the identity of every array."""
    doc, arrays = ir_to_json(ir)
    ids = {k: id(v) for k, v in arrays.items()}
    return json.dumps(doc, sort_keys=True), {k: v.copy() for k, v in arrays.items()}, ids


def assert_unchanged(ir: IR, snap: tuple[str, dict[str, np.ndarray], dict[str, int]]) -> None:
    text, arrays, ids = snap
    doc, now = ir_to_json(ir)
    assert json.dumps(doc, sort_keys=True) == text
    assert set(now) == set(arrays)
    for k, v in arrays.items():
        assert id(now[k]) == ids[k], k            # not replaced in the input ...
        assert np.array_equal(now[k], v), k       # ... nor written into


# ---- fold_layernorm ----------------------------------------------------------------------
@pytest.mark.parametrize("binary_embedding", [True, False])
@pytest.mark.parametrize("rescale_every", [0, 2])
@pytest.mark.parametrize("model_type", ["RWKV", "RWKV-ffnPre"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fold_preserves_outputs(seed: int, model_type: str, rescale_every: int,
                                binary_embedding: bool) -> None:
    ir = model_ir(model_type, seed, rescale_every=rescale_every,
                  binary_embedding=binary_embedding)
    folded = fold_layernorm(ir)
    tokens = tokens_for(seed)
    ref_logits, ref_spikes = run(ir, tokens)
    logits, spikes = run(folded, tokens)
    assert np.max(np.abs(logits - ref_logits)) <= 1e-5   # measured: <= 7.2e-7 over this matrix
    assert list(spikes) == list(ref_spikes)
    for k in ref_spikes:
        assert np.array_equal(spikes[k], ref_spikes[k]), k
    assert all(ref_spikes[k].any() for k in ref_spikes if k != "emb")
    assert folded.passes == ["capture", "fold_layernorm"]
    # Every SpikeLinear reads spikes or spike counts, nothing float.
    classed = infer_value_classes(folded)
    for n in classed.nodes_of("SpikeLinear"):
        assert {d["value_class"] for _, _, d in classed.in_edges(n)} <= {"binary", "integer"}, n


def _expected_report(model_type: str, binary_embedding: bool) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for i in range(N_LAYER):
        if i == 0 and model_type == "RWKV-ffnPre":
            first = {f"blocks.0.ffnPre.{k}": k != "value" for k in ("key", "receptance", "value")}
        else:
            first = {f"blocks.{i}.att.{k}": k != "output"
                     for k in ("key", "value", "receptance", "output")}
        if i == 0 and not binary_embedding:  # the stream holds no spikes before the first LIF
            first = dict.fromkeys(first, False)
        out.update(first)
        out.update({f"blocks.{i}.ffn.{k}": k != "value" for k in ("key", "receptance", "value")})
    out["head"] = True
    return out


@pytest.mark.parametrize("binary_embedding", [True, False])
@pytest.mark.parametrize("model_type", ["RWKV", "RWKV-ffnPre"])
def test_fold_report(model_type: str, binary_embedding: bool) -> None:
    ir = model_ir(model_type, 0, binary_embedding=binary_embedding)
    report = fold_layernorm(ir).meta["fold_report"]
    expected = _expected_report(model_type, binary_embedding)
    assert {k: v["spike_driven"] for k, v in report.items()} == expected
    for name, entry in report.items():
        assert entry["reason"], name
        if name.endswith((".att.output", ".ffn.value", ".ffnPre.value")):
            assert "float input" in entry["reason"], entry
        elif not entry["spike_driven"]:
            assert "no spikes" in entry["reason"], entry
        else:
            assert "6.3" in entry["reason"]
    # Which populations feed each spike-driven linear: every LIF before it (plus the embedding
    # spikes when the embedding is binary).
    pops = ["emb"] if binary_embedding else []
    for i in range(N_LAYER):
        pops_before_lif1 = sorted(pops + [f"blocks.{j}.lif{k}" for j in range(i) for k in (1, 2)])
        for name, entry in report.items():
            if name.startswith(f"blocks.{i}.") and entry["spike_driven"]:
                want = pops_before_lif1 + ([f"blocks.{i}.lif1"] if ".ffn." in name else [])
                assert entry["spike_inputs"] == sorted(want), name
    everything = sorted(pops + [f"blocks.{j}.lif{k}" for j in range(N_LAYER) for k in (1, 2)])
    assert report["head"]["spike_inputs"] == everything


def _hand_built(binary: bool, C: int = 6, V: int = 7, seed: int = 0) -> tuple[IR, dict]:
    """emb -> [Heaviside] -> ln0 = x0;  s1 = LIF(W1 x0);  x1 = (x0 + s1) / 2;
    s2 = LIF(W2 x1);  x = x1 + s2 = 0.5 (x0 + 1*s1 + 2*s2);  y = W mix(LN1(x), LN1(x_prev))."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    p = {"E": rng.normal(size=(V, C)).astype(f32),
         "g0": (1 + 0.3 * rng.normal(size=C)).astype(f32),
         "b0": (0.2 * rng.normal(size=C)).astype(f32),
         "W1": (4 * rng.normal(size=(C, C)) / np.sqrt(C)).astype(f32),
         "W2": (4 * rng.normal(size=(C, C)) / np.sqrt(C)).astype(f32),
         "g1": (1 + 0.3 * rng.normal(size=C)).astype(f32),
         "b1": (0.2 * rng.normal(size=C)).astype(f32),
         "mix": rng.uniform(0.05, 0.95, size=C).astype(f32),
         "W": rng.normal(size=(5, C)).astype(f32)}
    ir = IR({"vocab_size": V, "n_embd": C, "binary_embedding": binary})
    lif = {"threshold": 1.0, "tau": 2.0}
    tok = ir.add_node("tokens", "Input", attrs={"name": "tokens"})
    e = ir.add_node("emb", "Embedding", [Port(tok)], module="emb", params={"weight": p["E"]})
    if binary:
        e = ir.add_node("emb.heaviside", "Heaviside", [Port(e)], module="emb")
    x0 = ir.add_node("blocks.0.ln0", "LayerNorm", [Port(e)], module="blocks.0.ln0",
                     params={"weight": p["g0"], "bias": p["b0"]}, attrs={"eps": 1e-5})
    d1 = ir.add_node("blocks.0.att.output", "Linear", [Port(x0)], module="blocks.0.att.output",
                     params={"weight": p["W1"]})
    v1 = ir.add_node("state_in.lif1_v.0", "StateIn", attrs={"state": "lif1_v.0", "init": 0.0})
    s1 = ir.add_node("blocks.0.lif1", "LIF", [Port(d1), Port(v1)], module="blocks.0.lif1",
                     attrs=lif)
    ir.add_node("state_out.lif1_v.0", "StateOut", [Port(s1, 1)], attrs={"state": "lif1_v.0"})
    a1 = ir.add_node("blocks.0.add", "Add", [Port(x0), Port(s1)], module="blocks.0")
    x1 = ir.add_node("blocks.0.scale", "Scale", [Port(a1)], module="blocks.0",
                     attrs={"factor": 0.5})
    d2 = ir.add_node("blocks.0.ffn.value", "Linear", [Port(x1)], module="blocks.0.ffn.value",
                     params={"weight": p["W2"]})
    v2 = ir.add_node("state_in.lif2_v.0", "StateIn", attrs={"state": "lif2_v.0", "init": 0.0})
    s2 = ir.add_node("blocks.0.lif2", "LIF", [Port(d2), Port(v2)], module="blocks.0.lif2",
                     attrs=lif)
    ir.add_node("state_out.lif2_v.0", "StateOut", [Port(s2, 1)], attrs={"state": "lif2_v.0"})
    x = ir.add_node("blocks.0.add#1", "Add", [Port(x1), Port(s2)], module="blocks.0")
    ln1 = ir.add_node("blocks.1.ln1", "LayerNorm", [Port(x)], module="blocks.1.ln1",
                      params={"weight": p["g1"], "bias": p["b1"]}, attrs={"eps": 1e-5})
    prev = ir.add_node("state_in.att_shift.1", "StateIn", attrs={"state": "att_shift.1",
                                                                 "init": 0.0})
    ir.add_node("state_out.att_shift.1", "StateOut", [Port(ln1)], attrs={"state": "att_shift.1"})
    mixed = ir.add_node("blocks.1.att.time_mix_k", "TokenShiftMix", [Port(ln1), Port(prev)],
                        module="blocks.1.att.time_mix_k", params={"mix": p["mix"]})
    y = ir.add_node("blocks.1.att.key", "Linear", [Port(mixed)], module="blocks.1.att.key",
                    params={"weight": p["W"]})
    ir.add_node("logits", "Output", [Port(y)], attrs={"name": "logits"})
    return ir, p


def _spec_63_reference(p: dict, tokens: np.ndarray, binary: bool
                       ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The hand-built graph in float64 numpy: y by definition, y by the spec 6.3 identity."""
    def ln_stats(z: np.ndarray) -> tuple[float, float]:
        mu = z.mean()
        return mu, np.sqrt(((z - mu) ** 2).mean() + 1e-5)

    def lif(x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = v + (x - v) / 2
        s = (h >= 1.0).astype(np.float64)
        return s, h * (1 - s)

    P = {k: v.astype(np.float64) for k, v in p.items()}
    W, m, g1, b1 = P["W"], P["mix"], P["g1"], P["b1"]
    A, B = W * (m * g1), W * ((1 - m) * g1)          # A = W diag(m g), B = W diag((1-m) g)
    C = W.shape[1]
    v1, v2 = np.zeros(C), np.zeros(C)
    prev_ln, prev_x = np.zeros(C), None
    by_def, by_identity, spikes = [], [], {"blocks.0.lif1": [], "blocks.0.lif2": []}
    for t in tokens:
        e = P["E"][t]
        if binary:
            e = (e >= 0).astype(np.float64)
        mu0, sd0 = ln_stats(e)
        x0 = P["g0"] * (e - mu0) / sd0 + P["b0"]
        s1, v1 = lif(P["W1"] @ x0, v1)
        x1 = (x0 + s1) * 0.5
        s2, v2 = lif(P["W2"] @ x1, v2)
        x = x1 + s2
        spikes["blocks.0.lif1"].append(s1)
        spikes["blocks.0.lif2"].append(s2)
        mu, sd = ln_stats(x)
        ln = g1 * (x - mu) / sd + b1
        by_def.append(W @ (m * ln + (1 - m) * prev_ln))
        y = (A @ x - mu * A.sum(1)) / sd + W @ (m * b1)
        if prev_x is not None:  # the shift state starts at zero: no previous-token term at t=0
            mu_p, sd_p = ln_stats(prev_x)
            y = y + (B @ prev_x - mu_p * B.sum(1)) / sd_p + W @ ((1 - m) * b1)
        by_identity.append(y)
        prev_ln, prev_x = ln, x
    return np.array(by_def), np.array(by_identity), {k: np.array(v) for k, v in spikes.items()}


@pytest.mark.parametrize("binary", [True, False])
def test_fold_matches_spec_63_identity_on_a_hand_built_graph(binary: bool) -> None:
    ir, p = _hand_built(binary)
    tokens = np.random.default_rng(3).integers(0, 7, size=40)
    by_def, by_identity, ref_spikes = _spec_63_reference(p, tokens, binary)
    assert np.max(np.abs(by_def - by_identity)) < 1e-10      # the identity itself holds
    assert all(s.any() and not s.all() for s in ref_spikes.values())  # both LIFs fire, sometimes

    snap = snapshot(ir)
    folded = fold_layernorm(ir)
    assert_unchanged(ir, snap)
    unfolded_y, unfolded_spikes = run(ir, tokens[None])
    folded_y, folded_spikes = run(folded, tokens[None])
    for name, s in ref_spikes.items():
        assert np.array_equal(unfolded_spikes[name][0], s), name
        assert np.array_equal(folded_spikes[name][0], s), name
    assert np.max(np.abs(unfolded_y[0] - by_identity)) < 1e-5
    assert np.max(np.abs(folded_y[0] - by_identity)) < 1e-5

    # The rewrite is the one spec 6.3 describes: stream = 0.5 (x0 + 1 s1 + 2 s2), the spike
    # counts accumulate with integer coefficients, A|B is the SpikeLinear's weight.
    report = folded.meta["fold_report"]
    assert report["blocks.1.att.key"]["spike_driven"]
    assert not report["blocks.0.att.output"]["spike_driven"]
    assert not report["blocks.0.ffn.value"]["spike_driven"]
    pops = ["blocks.0.lif1", "blocks.0.lif2"] + (["emb"] if binary else [])
    assert report["blocks.1.att.key"]["spike_inputs"] == sorted(pops)
    counts = folded.node("blocks.1.ln1.counts")
    assert counts["op"] == "SpikeSum" and counts["attrs"]["coefficients"] == [1, 2]
    assert [q.node for q in folded.inputs("blocks.1.ln1.counts")] == ["blocks.0.lif1",
                                                                        "blocks.0.lif2"]
    W, m, g1 = (p[k].astype(np.float64) for k in ("W", "mix", "g1"))
    AB = np.concatenate([W * (m * g1), W * ((1 - m) * g1)])
    spike_linear = folded.node("blocks.1.att.key.spikes")
    assert spike_linear["op"] == "SpikeLinear"
    assert np.array_equal(linear_weight(spike_linear["params"]), AB.astype(np.float32))
    corr = folded.node("blocks.1.att.key.fold")
    assert corr["attrs"]["scale"] == 0.5 and corr["attrs"]["has_shift"]
    assert np.allclose(corr["params"]["w_one"], AB.sum(1), atol=1e-6)
    assert "blocks.1.att.key" not in folded.graph  # the float Linear is gone
    assert "shift.blocks.1.att.key" in folded.state_slots()
    assert "att_shift.1" not in folded.state_slots()  # LN1's output no longer crosses tokens


# ---- copy-on-write ----------------------------------------------------------------------
def test_passes_do_not_mutate_their_input() -> None:
    ir = model_ir("RWKV-ffnPre", 2, rescale_every=2)
    snap = snapshot(ir)
    folded = fold_layernorm(ir)
    assert_unchanged(ir, snap)
    assert folded.graph is not ir.graph and ir.passes == ["capture"]
    for fn in (annotate_shapes, infer_value_classes):
        fn(folded)
    snap = snapshot(folded)
    placed = partition(folded, LOIHI2, "graded")
    assert_unchanged(folded, snap)
    assert all("placement" not in d for _, d in folded.graph.nodes(data=True))
    snap = snapshot(placed)
    quantized = quantize(placed, CALIBRATION[:, :32], 8)
    assert_unchanged(placed, snap)
    assert "quantization" not in placed.meta and "quantization" in quantized.meta
    assert all("weight_q" not in d["params"] for _, d in placed.graph.nodes(data=True))


def test_ir_graph_walks_equal_networkx() -> None:
    """The IR's own walks over the adjacency dicts (topological order, in-edges, consumers,
    live nodes, copy) give what networkx's views and algorithms give."""
    import networkx as nx

    for ir in (model_ir("RWKV", 2), fold_layernorm(model_ir("RWKV-ffnPre", 2))):
        g = ir.graph
        assert ir.topological() == list(nx.lexicographical_topological_sort(g))
        for n in g:
            assert ir.in_edges(n) == sorted(g.in_edges(n, data=True),
                                            key=lambda e: e[2]["dst_port"])
            assert sorted(ir.consumers(n)) == sorted((v, d["dst_port"])
                                                     for _, v, d in g.out_edges(n, data=True))
        roots = [n for n, d in g.nodes(data=True) if d["op"] in ("Output", "StateOut")]
        assert ir._live_nodes() == set(roots).union(*(nx.ancestors(g, r) for r in roots))
        copied = ir.copy()
        assert sorted(copied.graph.edges(keys=True, data=True)) == sorted(
            g.edges(keys=True, data=True)) and copied.graph.graph == g.graph
    cyclic = IR({}, nx.MultiDiGraph([("a", "b"), ("b", "a")]))
    with pytest.raises(ConversionError, match="cycle"):
        cyclic.topological()


# ---- partition only annotates --------------------------------------------------------------
@pytest.mark.parametrize("policy", ["spikes", "graded"])
@pytest.mark.parametrize("model_type", ["RWKV", "RWKV-ffnPre"])
def test_partition_preserves_outputs(model_type: str, policy: str) -> None:
    folded = fold_layernorm(model_ir(model_type, 1, rescale_every=2))
    placed = partition(folded, LOIHI2, policy)
    tokens = tokens_for(1)
    a, sa = run(folded, tokens)
    b, sb = run(placed, tokens)
    assert np.array_equal(a, b)
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    # Same graph: nodes, params (the very arrays), edges and ports; only annotations added.
    assert set(placed.graph.nodes) == set(folded.graph.nodes)
    for n, d in folded.graph.nodes(data=True):
        e = placed.node(n)
        assert e["op"] == d["op"] and e["module"] == d["module"]
        assert all(e["params"][k] is v for k, v in d["params"].items())
        assert set(e["attrs"]) - set(d["attrs"]) <= {"graded_bits"}
    def edges(ir: IR) -> list:
        return sorted((u, v, d["src_port"], d["dst_port"]) for u, v, d in ir.graph.edges(data=True))
    assert edges(placed) == edges(folded)
