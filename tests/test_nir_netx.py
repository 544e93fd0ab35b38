"""The chip partition as NIR (converters/nir_export.py) and as lava-dl netx HDF5 (netx_export.py).

NIR: read-back identity, one NIR node per chip node, and the LIF discretisation against the IR's
LIF and the NIR paper's Norse trace. netx: schema against lava-dl's own tiny.net / mnist.net,
which layers are expressible, and two written layers run in Lava (fixed_pt) against the
quantized emulation, spike for spike (a few seconds each on 2 cores).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # lava's wheels install a top-level `tests` package
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from converters.netx_export import (chip_partition_to_netx, encode_layer_input,  # noqa: E402
                                    netx_integer_weights)
from converters.nir_export import (NIR_DT_S, chip_partition_nir_graph,  # noqa: E402
                                   chip_partition_to_nir, simulate_lif)
from converters.torch_capture import capture_ir  # noqa: E402
from hw_profiles import load_profile  # noqa: E402
from spikegpt_deploy.errors import ConversionError  # noqa: E402
from spikegpt_deploy.folded import linear_weight  # noqa: E402
from spikegpt_deploy.interpreter import FLOAT_OPS  # noqa: E402
from spikegpt_deploy.ir import IR  # noqa: E402
from spikegpt_deploy.model import SpikeGPT, SpikeGPTConfig  # noqa: E402
from spikegpt_deploy.partition import partition  # noqa: E402
from spikegpt_deploy.passes.fold import fold_layernorm  # noqa: E402
from spikegpt_deploy.passes.quantize import emulator, quantize  # noqa: E402

import nir  # noqa: E402
NIR_PAPER = ROOT / "tests" / "data" / "nir-paper-01-lif"
NIR_TYPE = {"LIF": "LIF", "SpikeLinear": "Linear", "Linear": "Linear", "SpikeSum": "Scale"}
VOCAB = 30


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def folded() -> IR:
    torch.manual_seed(1)
    m = SpikeGPT(SpikeGPTConfig(vocab_size=VOCAB, n_layer=2, n_embd=32)).eval()
    with torch.no_grad():
        for b in m.blocks:
            b.att.output.weight.mul_(8)
            b.ffn.value.weight.mul_(8)
    return fold_layernorm(capture_ir(m))


@pytest.fixture(scope="module")
def irs(folded: IR) -> dict[str, IR]:
    """Partitioned + quantized IRs: 'spikes', 'graded' (8-bit weights: att.output right-shifts
    its sum) and 'graded6' (6-bit weights: exponent >= 0, netx-expressible)."""
    profile = load_profile("loihi2")
    calib = np.random.default_rng(0).integers(0, VOCAB, (1, 128))
    spikes = partition(folded, profile, "spikes")
    graded = partition(folded, profile, "graded")
    return {"spikes_float": spikes, "spikes": quantize(spikes, calib),
            "graded": quantize(graded, calib), "graded6": quantize(graded, calib, weight_bits=6)}


def _membrane_nodes(ir: IR) -> set[str]:
    lifs = set(ir.nodes_of("LIF"))
    return {n for n in ir.nodes_of("StateIn", "StateOut")
            if any(v in lifs for v, _ in ir.consumers(n))
            or any(p.node in lifs and p.port == 1 for p in ir.inputs(n))}


def _chip_nodes(ir: IR) -> list[str]:
    skip = _membrane_nodes(ir)
    return [n for n in ir.topological() if ir.node(n)["placement"] != "host" and n not in skip]


# ----------------------------------------------------------------------------------- NIR
def _fields(node) -> dict:
    skip = {"input_type", "output_type", "metadata"}
    return {k: v for k, v in vars(node).items() if k not in skip}


@pytest.mark.parametrize("policy", ["spikes", "graded"])
def test_nir_read_round_trip(irs, tmp_path, policy):
    ir = irs[policy]
    path = tmp_path / "spiking.nir"
    info = chip_partition_to_nir(ir, path)
    back = nir.read(str(path))
    assert set(back.nodes) == set(info.nodes)
    assert sorted(map(tuple, back.edges)) == sorted(info.edges)
    for name, kind in info.nodes.items():
        assert type(back.nodes[name]).__name__ == kind
    # the graph as built in memory equals the one read back, field by field
    again, _ = chip_partition_nir_graph(ir)
    assert sorted(map(tuple, again.edges)) == sorted(map(tuple, back.edges))
    assert again.metadata == back.metadata
    for name, node in back.nodes.items():
        a, b = _fields(node), _fields(again.nodes[name])
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), (name, k)
        assert node.metadata == again.nodes[name].metadata
    for n in _chip_nodes(ir):
        d = ir.node(n)
        assert back.nodes[n].metadata == {"ir_op": d["op"], "module": d["module"]}
        if d["op"] == "SpikeLinear":
            scale = (d["params"]["weight_scale"][:, None] if "weight_scale" in d["params"]
                     else d["attrs"]["weight_scale"])
            expect = (d["params"]["weight_q"] * scale).astype(np.float32)
            assert np.array_equal(back.nodes[n].weight, expect)
    assert back.metadata["dt_s"] == NIR_DT_S
    assert info.weights == "dequantized"


@pytest.mark.parametrize("policy", ["spikes", "graded"])
def test_nir_nodes_match_chip_partition(irs, tmp_path, policy):
    ir = irs[policy]
    info = chip_partition_to_nir(ir, tmp_path / "spiking.nir")
    chip = _chip_nodes(ir)
    counts: dict[str, int] = {}
    for n in chip:
        counts[NIR_TYPE[ir.node(n)["op"]]] = counts.get(NIR_TYPE[ir.node(n)["op"]], 0) + 1
        assert info.nodes[info.chip_nodes[n]] == NIR_TYPE[ir.node(n)["op"]]
    # coefficients are all 1 here (no rescaling), so no helper Scale nodes
    crossing_nodes = {k: v for k, v in info.nodes.items() if v in ("Input", "Output")}
    assert {k: v for k, v in info.nodes.items() if k not in crossing_nodes} == \
        {n: NIR_TYPE[ir.node(n)["op"]] for n in chip}
    # every crossing of the partition except LIF membranes is one Input / Output node
    mem = _membrane_nodes(ir)
    crossings = [c for c in ir.meta["crossings"] if c["source"] not in mem
                 and not (ir.node(c["source"])["op"] == "LIF" and c["port"] == 1)]
    assert len(info.inputs) == sum(c["direction"] == "host_to_chip" for c in crossings)
    assert len(info.outputs) == sum(c["direction"] == "chip_to_host" for c in crossings)
    assert {c.source for c in info.inputs} == \
        {c["source"] for c in crossings if c["direction"] == "host_to_chip"}
    assert info.internal_state == sorted(f"lif{i}_v.{b}" for i in (1, 2) for b in (0, 1))
    hosts = [n for n in ir.graph if ir.node(n)["placement"] == "host"
             and n not in _membrane_nodes(ir)]
    assert sorted(o.node for o in info.omitted) == sorted(hosts)
    assert all(o.reason for o in info.omitted)
    assert {"WKV", "LayerNormStats", "FoldCorrection", "Mul"} <= {o.op for o in info.omitted}


def test_nir_float_ir_keeps_float_weights(irs, tmp_path):
    ir = irs["spikes_float"]
    info = chip_partition_to_nir(ir, tmp_path / "f.nir")
    back = nir.read(str(tmp_path / "f.nir"))
    n = next(iter(ir.nodes_of("SpikeLinear")))
    assert info.weights == "float"
    assert np.array_equal(back.nodes[n].weight, linear_weight(ir.node(n)["params"]))


def test_nir_lif_reproduces_ir_lif(irs, tmp_path):
    """One population: the NIR LIF parameters, run with the documented discretisation, give the
    IR's LIF spikes; ties H == 1 (which SpikeGPT fires on) are in the input on purpose."""
    ir = irs["spikes"]
    chip_partition_to_nir(ir, tmp_path / "s.nir")
    lif = nir.read(str(tmp_path / "s.nir")).nodes["blocks.0.lif1"]
    assert np.allclose(lif.tau, 2 * NIR_DT_S) and np.all(lif.r == 1) and np.all(lif.v_leak == 0)
    assert np.all(lif.v_reset == 0) and np.all(lif.v_threshold == np.float32(1 - 2 ** -24))
    assert np.float32(NIR_DT_S) / lif.tau[0] == np.float32(0.5)
    rng = np.random.default_rng(7)
    x = rng.normal(0.8, 1.0, (300, 32)).astype(np.float32)
    x[::5, :8] = 2.0                      # from V = 0 after a reset or rest: H = 1 exactly
    x[1::5, :8] = 1.0
    node = ir.node("blocks.0.lif1")
    v = np.zeros((1, 32), np.float32)
    ref = np.zeros(x.shape, bool)
    ties = 0
    for t in range(x.shape[0]):
        ties += int(np.sum(v + (x[t] - v) * np.float32(0.5) == 1.0))
        s, v = FLOAT_OPS["LIF"](node, [x[t][None], v])
        ref[t] = s[0] > 0
    spikes, _ = simulate_lif(lif, x)
    assert ties > 50 and ref.sum() > 1000
    assert np.array_equal(spikes, ref)
    # NIR's strict '>' against threshold 1.0 itself would miss every tie
    naive = nir.LIF(tau=lif.tau, r=lif.r, v_leak=lif.v_leak, v_threshold=np.ones(32, np.float32))
    assert not np.array_equal(simulate_lif(naive, x)[0], ref)


def test_nir_discretisation_matches_norse_reference():
    """Outside check: the NIR paper's Norse LIF trace is this same-step forward Euler."""
    g = nir.read(str(NIR_PAPER / "lif_norse.nir"))
    trace = np.loadtxt(NIR_PAPER / "lif_norse.csv", delimiter=",")  # input, v, output spike
    x = (trace[:, :1] * g.nodes["0"].weight[0, 0]).astype(np.float32)
    spikes, v = simulate_lif(g.nodes["1"], x, 1e-4)
    assert np.array_equal(spikes[:, 0], trace[:, 2] > 0) and spikes.sum() == 4
    assert np.allclose(v[:, 0], trace[:, 1], atol=1e-6)


def test_nir_spike_sum_coefficients_become_scale_nodes(irs, tmp_path):
    ir = irs["spikes"].copy()
    ir.node("blocks.1.ln1.counts")["attrs"]["coefficients"] = [1, 2]   # as with rescaling
    info = chip_partition_to_nir(ir, tmp_path / "c.nir")
    g = nir.read(str(tmp_path / "c.nir"))
    helper = "blocks.1.ln1.counts.term1"
    assert info.nodes[helper] == "Scale" and np.all(g.nodes[helper].scale == 2)
    edges = set(map(tuple, g.edges))
    assert {("blocks.0.lif2", helper), (helper, "blocks.1.ln1.counts"),
            ("blocks.0.lif1", "blocks.1.ln1.counts")} <= edges
    assert ("blocks.0.lif2", "blocks.1.ln1.counts") not in edges


def test_nir_refuses_unpartitioned(folded, tmp_path):
    with pytest.raises(ConversionError, match="not partitioned"):
        chip_partition_to_nir(folded, tmp_path / "x.nir")


# ---------------------------------------------------------------------------------- netx
def test_netx_integer_weights():
    q = np.array([[3, -5], [7, 0]])
    lava = q << 1                      # what quantize stores for 8-bit mantissas (weight_lava)
    assert np.array_equal(netx_integer_weights(lava, 1, 8)[0], q * 4)
    assert np.array_equal(netx_integer_weights(lava, -1, 8)[0], q)
    # Lava's 8-bit mixed-sign Dense drops the LSB (fixed_point.dense_effective_weights): 3 -> 2
    assert np.array_equal(netx_integer_weights(q, 0, 8)[0], np.array([[2, -6], [6, 0]]))
    none, why = netx_integer_weights(np.array([[6, -2]]), -2, 8)
    assert none is None and "right-shifts" in why
    none, why = netx_integer_weights(np.array([[254, -2]]), 1, 8)
    assert none is None and "range" in why
    assert netx_integer_weights(np.zeros((2, 2), int), 0, 8)[0] is None
    assert np.array_equal(netx_integer_weights(np.array([[255, 3]]), 0, 8)[0], [[255, 3]])


def _covered(info) -> list[str]:
    return [l.lif for l in info.expressible] + [l.linear for l in info.expressible if l.linear]


@pytest.mark.parametrize("policy,layers", [
    ("spikes", {"blocks.0.lif1": "identity", "blocks.0.lif2": "identity",
                "blocks.1.lif1": "identity", "blocks.1.lif2": "identity"}),
    ("graded", {"blocks.0.lif2": "identity", "blocks.1.lif2": "identity"}),
    ("graded6", {"blocks.0.lif1": "chip_linear", "blocks.0.lif2": "identity",
                 "blocks.1.lif1": "chip_linear", "blocks.1.lif2": "identity"}),
])
def test_netx_expressible_layers(irs, tmp_path, policy, layers):
    ir = irs[policy]
    info = chip_partition_to_netx(ir, tmp_path / "chip.net")
    assert info.written and {l.lif: l.synapse for l in info.expressible} == layers
    assert [Path(f).name for f in info.files] == [f"chip.{lif}.net" for lif in layers]
    assert all(Path(f).is_file() for f in info.files)
    # every chip node is written or omitted (with a reason), exactly once
    names = _covered(info) + [o.node for o in info.omitted]
    assert sorted(names) == sorted(_chip_nodes(ir))
    omitted = {o.node: o for o in info.omitted}
    assert all(o.reason and o.kept_in == "ir.json + ir_params.npz" for o in omitted.values())
    assert all(o.op in ("SpikeLinear", "SpikeSum", "Linear", "LIF") for o in omitted.values())
    if policy == "graded":
        assert "right-shifts" in omitted["blocks.0.att.output"].reason
        assert "blocks.0.att.output" in omitted["blocks.0.lif1"].reason
    for layer in info.expressible:
        lif = ir.node(layer.lif)["attrs"]
        assert (layer.i_decay, layer.v_decay, layer.v_th_mant) == \
            (lif["du_fixed"] + 1, lif["dv_fixed"], lif["vth_fixed"]) == \
            (4096, 2048, lif["vth_fixed"])


def test_netx_nothing_expressible_without_quantization(irs, tmp_path):
    info = chip_partition_to_netx(irs["spikes_float"], tmp_path / "chip.net")
    assert not info.written and info.expressible == [] and info.files == []
    assert "nothing written" in info.reason and not list(tmp_path.iterdir())
    assert all("not quantized" in o.reason for o in info.omitted if o.op == "LIF")


def _site_packages() -> Path:
    """Where lava is installed, found without importing it (Lava sets the multiprocessing start
    method on import; only the runner's child may import it)."""
    spec = importlib.util.find_spec("lava")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("lava-nc is a dependency of this project but is not installed")
    return Path(list(spec.submodule_search_locations)[0]).parent


def _lava_dl_reference(name: str) -> Path:
    path = _site_packages() / "tests" / "lava" / "lib" / "dl" / "netx" / name
    if not path.is_file():
        pytest.skip(f"lava-dl's reference {name} is not installed")
    return path


def _datasets(path: Path) -> dict[str, tuple[str, str]]:
    """'<layer type>/<dataset>' (neuron fields: 'neuron/<field>', whatever the layer type) ->
    (dtype kind, dtype str), over layer/* and simulation/*."""
    import h5py
    out: dict[str, tuple[str, str]] = {}
    with h5py.File(path, "r") as f:
        for i in f["layer"]:
            g = f["layer"][i]
            kind = g["type"][0].decode()

            def visit(name, obj, kind=kind):
                if isinstance(obj, h5py.Dataset):
                    key = name if name.startswith("neuron/") else f"{kind}/{name}"
                    out[key] = (obj.dtype.kind, str(obj.dtype))
            g.visititems(visit)
        for name, obj in f["simulation"].items():
            out[f"simulation/{name}"] = (obj.dtype.kind, str(obj.dtype))
    return out


def test_netx_schema_matches_lava_dl_files(irs, tmp_path):
    """Every dataset we write under layer/ and simulation/ exists with the same dtype in
    lava-dl's own tiny.net (input layer, neuron fields, simulation) or mnist.net (CUBA dense)."""
    info = chip_partition_to_netx(irs["graded6"], tmp_path / "chip.net")
    tiny = _datasets(_lava_dl_reference("tiny.net"))
    mnist = _datasets(_lava_dl_reference("mnist.net"))
    for file in info.files:
        ours = _datasets(Path(file))
        assert set(ours) <= set(tiny) | set(mnist), set(ours) - set(tiny) - set(mnist)
        for key, dtype in ours.items():
            assert dtype == tiny.get(key, mnist.get(key)), key
            if key in tiny and key in mnist:
                assert tiny[key] == mnist[key]
        assert {"input/type", "input/shape", "dense/type", "dense/shape", "dense/weight",
                "dense/inFeatures", "neuron/type", "neuron/iDecay", "neuron/vDecay",
                "neuron/vThMant", "neuron/wgtExp", "simulation/Ts",
                "simulation/tSample"} <= set(ours)


# ------------------------------------------------------------------------- Lava (fixed_pt)
def _emulated(ir: IR, tokens: np.ndarray) -> list[dict]:
    ex = emulator(ir)
    state, values = ex.init_state(1), []
    for t in range(tokens.shape[1]):
        res = ex.step(tokens[:, t], state, keep_values=True)
        state = res.state
        values.append(res.values)
    return values


@pytest.mark.parametrize("lif", ["blocks.0.lif1", "blocks.1.lif2"])
def test_netx_layer_in_lava_matches_emulation(irs, tmp_path, lif):
    """The written .net loads in netx and, run in Lava fixed_pt on the emulation's own inputs
    for 32 tokens, spikes exactly as the quantized emulation, one step later (Dense delay)."""
    if not (_site_packages() / "lava" / "lib" / "dl" / "netx" / "hdf5.py").is_file():
        pytest.skip("lava-dl netx is not installed")
    from spikegpt_deploy.simulation.lava.runner import LavaNetwork, LavaRunner
    ir = irs["graded6"]
    info = chip_partition_to_netx(ir, tmp_path / "chip.net")
    layer = next(l for l in info.expressible if l.lif == lif)
    T = 32
    values = _emulated(ir, np.random.default_rng(3).integers(0, VOCAB, (1, T)))
    x_port = ir.inputs(layer.linear)[0] if layer.linear else ir.inputs(lif)[0]
    x = np.stack([v[(x_port.node, x_port.port)][0] for v in values])
    expect = np.stack([v[(lif, 0)][0] for v in values]) > 0
    graded = encode_layer_input(ir, layer, x)
    assert expect.sum() >= 3 and np.any(np.abs(graded) > 1)
    data = np.concatenate([graded, np.zeros((1, graded.shape[1]), np.int32)])  # + 1 delay step

    def build(inputs, num_steps, file=layer.file, bits=layer.input_message_bits):
        # runs in the runner's child: Lava and netx are never imported by the test process
        from lava.lib.dl.netx import hdf5
        from lava.proc.io.sink import RingBuffer as Sink
        from lava.proc.io.source import RingBuffer as Source
        if len(hdf5.Network(net_config=file)) != 1:              # loads as written, 1 layer
            raise ConversionError(f"{file}: expected one netx layer")
        net = hdf5.Network(net_config=file, input_message_bits=bits)
        source = Source(data=inputs["x"].T.astype(np.int32))       # (N, T), time last
        sink = Sink(shape=net.out.shape, buffer=num_steps)
        source.s_out.connect(net.inp)
        net.out.connect(sink.a_in)
        return LavaNetwork(run_process=net, outputs={"spikes": sink})

    # LavaRunner runs the network in a supervised child: stop() after the run, and on any
    # error or timeout the child's whole process group is ended and its shm segments removed.
    with LavaRunner(build, select_tag="fixed_pt", timeout_s=240) as runner:
        res = runner.run(T + layer.delay_steps, {"x": data})
        assert runner.leftovers() == ([], [])
    got = res.outputs["spikes"] > 0
    assert not got[0].any()
    assert np.array_equal(got[layer.delay_steps:], expect)
