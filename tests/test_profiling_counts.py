"""Profiler counts: measured counts on a hand-checkable IR and on a real tiny model (firing
rates, synaptic ops, the row-pattern count, the fan-out cache), the host-op formulas against an
independent count of the interpreter's numpy calls, and the ANN baseline. Pricing, the paper's
formula, JSON and the CLI are in test_profiling_pricing.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from converters.torch_capture import capture_ir
from hw_profiles import load_profile
from spikegpt_deploy.errors import ConversionError, DataError
from spikegpt_deploy.folded import is_factored, linear_weight
from spikegpt_deploy.interpreter import FLOAT_OPS, Executor, annotate_shapes
from spikegpt_deploy.partition import partition
from spikegpt_deploy.passes.fold import fold_layernorm
from spikegpt_deploy.profiling import ann_op_counts, count_ops, op_cost, record_spikes_pytorch

from conftest import make_tiny_model
from profiling_helpers import SCALE, SPIKES_HAND, hand_ir, ids, tiny  # noqa: F401  (fixtures)


def _chip_ir(model):
    return partition(fold_layernorm(capture_ir(model)), load_profile("loihi2"), "spikes")


# ---- a hand-checkable IR ------------------------------------------------------------------------
def test_hand_counts_match_hand_arithmetic():
    c = count_ops(hand_ir(), SPIKES_HAND)
    # n = emb + 2 lif = [[1,2,3,0],[0,0,0,2],[1,1,1,1]]; column nnz of W = [2,0,2,1]
    lin = c.linears["head.spikes"]
    assert lin["input"] == "integer" and lin["events"] == 3 + 1 + 4
    assert lin["synaptic_ops"] == (2 + 0 + 2) + 1 + (2 + 0 + 2 + 1) == 10
    assert c.per_token["synaptic_ops"] == [4, 1, 5]
    assert lin["payload_bits"] == 2                           # max |n| = 3
    assert (lin["readout_active"], lin["readout_idle"]) == (3 + 1 + 3, 9 - 7)
    acc = c.accumulators["ln_out.counts"]
    assert acc["accumulate_ops"] == 6 + 3 and (acc["active"], acc["idle"]) == (8, 4)
    lif = c.populations["blocks.0.lif1"]
    assert (lif["active_updates"], lif["idle_updates"]) == (12, 0)   # dense float input
    assert lif["rate"] == pytest.approx(3 / 12) and c.populations["emb"]["rate"] == 0.5
    head = c.layer_totals["head"]
    assert head["spike_messages"] == 8 and head["payload_bits"] == 16
    assert c.layer_totals["emb"]["spike_messages"] == 6
    assert c.layer_totals["blocks.0"]["spike_messages"] == 3
    by_src = {(x["source"], x["direction"]): x for x in c.crossings}
    emb_in = by_src[("emb.heaviside", "host_to_chip")]
    assert (emb_in["messages"], emb_in["bytes"]) == (6, 6 * 2 / 8)   # 2 address bits
    assert (by_src[("emb", "host_to_chip")]["messages"], by_src[("emb", "host_to_chip")]["bytes"]) \
        == (12, 48.0)
    # 3 read-outs x 3 tokens, each an integer sum sent as a 24-bit graded message (loihi2)
    assert by_src[("head.spikes", "chip_to_host")]["bytes"] == 3 * 3 * 24 / 8
    assert c.host_ops["emb"] == {"lookup_byte": 16, "compare": 4}
    # one Dense hop: a token takes 2 timesteps; the next sampled token enters on the second
    assert c.pipeline == {"chip_depth": 3, "chip_segments": 1, "dense_depth": 1,
                          "depth_timesteps": 2, "prefill_timesteps_per_token": 1,
                          "decode_timesteps_per_token": 1, "lava_timesteps": 1}
    assert not c.unsupported


def test_bad_inputs_raise_our_errors():
    ir = hand_ir()
    with pytest.raises(DataError, match="no spikes for population 'blocks.0.lif1'"):
        count_ops(ir, {"emb": SPIKES_HAND["emb"]})
    with pytest.raises(DataError, match="not binary"):
        count_ops(ir, {**SPIKES_HAND, "emb": SPIKES_HAND["emb"] * 2})
    with pytest.raises(DataError, match="same tokens"):
        count_ops(ir, {**SPIKES_HAND, "emb": SPIKES_HAND["emb"][:2]})
    bare = hand_ir()
    del bare.meta["partition"]
    with pytest.raises(ConversionError, match="partitioned"):
        count_ops(bare, SPIKES_HAND)


# ---- counts on a real tiny model ----------------------------------------------------------------
def test_firing_rates_equal_the_recorders(tiny, ids):
    state = tiny.init_state(1)
    with torch.no_grad(), tiny.record_spikes() as rec:
        for t in ids:
            _, state = tiny.step(torch.tensor([int(t)]), state)
    ref = {k: v.sum().item() / v.numel() for k, v in rec.spikes().items()}
    counts = count_ops(_chip_ir(tiny), record_spikes_pytorch(tiny, ids))
    assert set(counts.populations) == set(ref) == set(tiny.population_names())
    for name, rate in ref.items():
        assert counts.populations[name]["rate"] == rate
    assert any(counts.populations[n]["rate"] > 0 for n in ref if n != "emb")


def test_synaptic_ops_equal_a_plain_loop(ids):
    model = make_tiny_model(n_layer=1, n_embd=16, scale=SCALE, seed=3)
    ir = _chip_ir(model)
    spikes = record_spikes_pytorch(model, ids)
    counts = count_ops(ir, spikes)
    for node in ir.nodes_of("SpikeLinear"):
        (src,) = ir.inputs(node)
        W = linear_weight(ir.node(node)["params"])
        if ir.node(src.node)["op"] == "SpikeSum":
            coeffs = ir.node(src.node)["attrs"]["coefficients"]
            pops = [ir.node(p.node)["module"] if ir.node(p.node)["op"] == "LIF" else "emb"
                    for p in ir.inputs(src.node)]
        else:
            coeffs, pops = [1], ["emb"]
        expected = 0
        for t in range(len(ids)):
            for i in range(W.shape[1]):
                if sum(c * int(spikes[p][t, i]) for c, p in zip(coeffs, pops)) != 0:
                    expected += sum(1 for o in range(W.shape[0]) if W[o, i] != 0)
        assert counts.linears[node]["synaptic_ops"] == expected, node
    assert count_ops(ir, spikes).to_dict() == counts.to_dict()   # a pure function


def test_row_pattern_count_equals_the_general_count(tiny, ids, monkeypatch):
    """A matrix with few distinct rows of zeros (dense, or a fold's zero columns per half) is
    counted per row pattern from per-token event counts; forcing the general path (a pass over
    the matrix) gives the same counts and per-neuron work."""
    import spikegpt_deploy.profiling.count_events as counts_module
    from spikegpt_deploy.profiling.weight_stats import FanOut, fan_out, linear_fan_out

    ir = _chip_ir(tiny)
    linears = list(ir.nodes_of("SpikeLinear"))
    for k, n in enumerate(linears[:6]):   # zero columns (as a fold makes them), scattered zeros
        W = linear_weight(ir.node(n)["params"]).copy()
        if k % 2:
            W[: len(W) // 2, ::4] = 0
        else:
            W[np.random.RandomState(k).rand(*W.shape) < 0.3] = 0
        ir.node(n)["params"] = {**ir.node(n)["params"], "weight": W}
    spikes = record_spikes_pytorch(tiny, ids)
    fast = count_ops(ir, spikes)
    fans = [fan_out(linear_weight(ir.node(n)["params"])) for n in fast.linears]
    assert any(f.dense for f in fans) and any(f.patterns is None for f in fans)
    assert any(f.patterns is not None and not f.dense for f in fans)
    monkeypatch.setattr(counts_module, "linear_fan_out",
                        lambda p: FanOut(linear_fan_out(p).column_nnz, linear_fan_out(p).nnz,
                                         None, None))
    slow = count_ops(ir, spikes)
    assert slow.to_dict() == fast.to_dict()
    for node, work in fast.neuron_work.items():
        for key in ("synaptic_ops", "active", "idle", "messages"):
            np.testing.assert_array_equal(slow.neuron_work[node][key], work[key], err_msg=node)


def test_fan_out_is_cached_per_array_and_forgotten_with_it():
    from spikegpt_deploy.profiling import weight_stats

    W = np.array([[1, 0, 2], [0, 0, 3]], dtype=np.float32)
    first = weight_stats.fan_out(W)
    assert first.column_nnz.tolist() == [1, 0, 2] and first.nnz == 3 and not first.dense
    np.testing.assert_array_equal(first.patterns[first.row_pattern], W != 0)
    halves = np.array([[1, 0, 2], [4, 0, 3], [0, 5, 6], [0, 7, 8]], dtype=np.float32)
    stats = weight_stats.fan_out(halves)
    assert len(stats.patterns) == 2
    np.testing.assert_array_equal(stats.patterns[stats.row_pattern], halves != 0)
    many = np.eye(weight_stats.MAX_PATTERNS + 1, dtype=np.float32)
    assert weight_stats.fan_out(many).patterns is None           # too many: the general count
    assert weight_stats.fan_out(W) is first                      # computed once
    assert weight_stats.fan_out(W.copy()) is not first           # another array: its own entry
    key = id(W)
    del W
    assert key not in weight_stats._CACHE                        # never keeps weights alive
    # a folded linear that keeps only its factors: its matrix is built once, then cached
    params = {"source_weight": halves[:2], "source_cols": np.array([[1.0, 0.0, 2.0]] * 2)}
    folded = weight_stats.linear_fan_out(params)
    assert weight_stats.linear_fan_out(params) is folded
    np.testing.assert_array_equal(folded.patterns[folded.row_pattern],
                                  linear_weight(params) != 0)


# ---- host-op formulas: independent count of the interpreter's numpy calls -----------------------
KIND_OF_UFUNC = {"add": "add", "subtract": "add", "multiply": "mul", "square": "mul",
                 "true_divide": "div", "divide": "div", "maximum": "max", "exp": "exp",
                 "sqrt": "sqrt", "greater_equal": "compare", "matmul": "mac", "negative": "neg"}


class Counted(np.ndarray):
    """An array that counts the elementwise numpy operations done on it (x*1 and x+0 are free)."""

    ops: Counter = Counter()

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raw = [np.asarray(x) if isinstance(x, Counted) else x for x in inputs]
        if kwargs.get("out") is not None:
            kwargs["out"] = tuple(np.asarray(o) for o in kwargs["out"])
        result = getattr(ufunc, method)(*raw, **kwargs)
        trivial = any(np.ndim(x) == 0 and ((ufunc is np.multiply and x == 1)
                                           or (ufunc is np.add and x == 0)) for x in raw)
        if not trivial:
            if method == "reduce":
                n = np.size(raw[0]) - np.size(result)
            elif ufunc is np.matmul:
                n = np.size(result) * np.shape(raw[0])[-1]
            else:
                n = np.size(result)
            Counted.ops[KIND_OF_UFUNC.get(ufunc.__name__, ufunc.__name__)] += n
        return np.asarray(result).view(Counted) if isinstance(result, np.ndarray) else result


def _expand(cost):
    out = Counter(cost)
    n = out.pop("sigmoid", 0)
    out.update({"neg": n, "exp": n, "add": n, "div": n})
    out.pop("lookup_byte", None)
    return +out


@pytest.mark.parametrize("config", [{}, {"rescale_every": 1, "n_layer": 2},
                                    {"binary_embedding": False}])
def test_host_op_formulas_equal_counted_numpy_ops(config):
    kw = {"n_layer": 1, "n_embd": 8, "scale": SCALE, **config}
    model = make_tiny_model(**kw)
    ir = _chip_ir(model)
    ir_host = annotate_shapes(capture_ir(model))      # unfolded: LayerNorm, Linear, LIF on host
    seen = set()
    for graph in (ir, ir_host):
        res = Executor(graph).step(np.array([3]), Executor(graph).init_state(1), keep_values=True)
        for n in graph.topological():
            d = graph.node(n)
            if d["op"] in ("Input", "Output", "StateIn", "StateOut", "Embedding"):
                continue
            ins = [np.asarray(res.values[(p.node, p.port)]).view(Counted) for p in graph.inputs(n)]
            if is_factored(d["params"]):  # priced as its folded matrix, as a bundle holds it
                d = {**d, "params": {**d["params"], "weight": linear_weight(d["params"])}}
            Counted.ops = Counter()
            FLOAT_OPS[d["op"]](d, ins)
            shape = d["params"]["weight"].shape if "weight" in d["params"] else (
                (len(d["params"]["w_one"]),) if "w_one" in d["params"] else None)
            width = int(np.prod([e for e in graph.in_edges(n)][0][2]["shape"]))
            assert _expand(op_cost(d["op"], width, shape, d["attrs"])) == +Counted.ops, n
            seen.add(d["op"])
    expected = {"LayerNorm", "LayerNormStats", "FoldCorrection", "WKV", "Linear", "SpikeSum",
                "LIF", "TokenShiftMix", "Sigmoid", "ReLU", "Square", "Mul", "Add"}
    expected |= {"Scale"} if config.get("rescale_every") else set()
    expected |= {"SpikeLinear", "Heaviside"} if config.get("binary_embedding", True) else set()
    assert expected <= seen


def test_op_cost_literals_and_unknown_op():
    assert op_cost("WKV", 4) == {"add": 40, "mul": 24, "max": 8, "exp": 16, "div": 4}
    assert op_cost("LayerNorm", 4) == {"add": 19, "mul": 8, "div": 6, "sqrt": 1}
    assert op_cost("Linear", 4, (3, 4)) == {"mac": 12}
    assert op_cost("Softmax", 4) is None


@pytest.mark.parametrize("config", [{}, {"model_type": "RWKV-ffnPre"},
                                    {"rescale_every": 1, "binary_embedding": False}])
def test_ann_baseline_equals_the_captured_non_spiking_model(config):
    model = make_tiny_model(n_layer=2, n_embd=8, **config)
    model = type(model)(model.config.replace(spiking=False))
    ir = annotate_shapes(capture_ir(model))
    total = Counter()
    for n in ir.topological():
        d = ir.node(n)
        shape = d["params"]["weight"].shape if "weight" in d["params"] else None
        width = int(np.prod(ir.in_edges(n)[0][2]["shape"])) if ir.inputs(n) else 1
        total.update(op_cost(d["op"], width, shape, d["attrs"]))
    ann = ann_op_counts(model.config.to_dict())
    assert ann["total"] == dict(+total)
    C, V = 8, model.config.vocab_size
    per_block = [18 if (i == 0 and config.get("model_type")) else 13 for i in range(2)]  # ffnPre: 2 x 9
    assert ann["macs"] == sum(per_block) * C * C + V * C

