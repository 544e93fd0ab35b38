"""The chip layers that lava-dl netx expresses exactly, as netx HDF5 ``.net`` files.

netx (lava-dl 0.6.0, ``lava/lib/dl/netx/hdf5.py``) loads a feed-forward chain of layers; a
``dense`` layer is a Dense synapse followed by a CUBA neuron, i.e. Lava's LIF with
du = iDecay - 1, dv = vDecay, vth = vThMant, bias_exp = 6. Its weights are read as integers
(``NetDict`` casts them) and ``optimize_weight_bits`` re-derives the Dense exponent from them, so
a netx Dense computes exactly ``W_int @ x`` for integer weights in Loihi's 8-bit synapse range
(mixed signs -256..254, excitatory 0..255, inhibitory -256..0); ``neuron/wgtExp`` is not read.
Graded input is a property of the loader call (``Network(..., input_message_bits=b)``), not of
the file.

Which SpikeGPT chip layers netx expresses exactly (spec 6.1 LIF mapping; fixed_point.py):

- a LIF fed by a chip Linear (policy graded: att.output -> lif1, output 'lif_current'): a dense
  layer with weights W_int = the quantized Dense's effective integer weights (Lava's
  clip/truncate applied) times 2**weight_exp_lava, and a CUBA neuron iDecay = du + 1 = 4096
  (the current is this step's input only), vDecay = 2048 (v halves), vThMant = the quantized
  vth. Exact only if W_int is an integer matrix inside netx's range: a negative exponent that
  would right-shift the accumulated sum (floor(W @ x / 2**k)) is not expressible, because netx
  computes W_int @ x and has no exponent of its own.
- a LIF fed by currents from the host (input 'host_current'): the same CUBA neuron behind an
  identity Dense (weights I); its input is a_in = quantize_current(x, 2**b) as 16-bit graded
  spikes, which the identity passes unchanged.

Not expressible, listed in ``NetxInfo.omitted`` and kept only in the bundle's documented array
format (ir.json + ir_params.npz): SpikeLinear and host-read chip Linears (the host needs the
integer sum W @ s of this token, a netx layer only emits spikes; netx's only graded read-out, the
SDNN Sigma neuron, sums over time steps, i.e. over tokens), and SpikeSum (several populations
into one accumulator: a netx network is a single chain).

Because the expressible layers are independent (each is fed by the host and read by the host),
each becomes its own netx network: ``<stem>.<lif node>.net`` next to ``path``. Each file has
layer 0 'input' (shape only, no neuron: the graded input goes straight into the Dense), layer 1
'dense', ``simulation/{Ts, tSample}``, and a ``spikegpt`` group (ignored by netx) naming the IR
nodes and the input encoding. Lava delivers the Dense output one step later: the neuron's spikes
for token t appear at step t + 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spikegpt_deploy import fixed_point as fp
from spikegpt_deploy.errors import ConversionError
from spikegpt_deploy.ir import HOST, IR
from spikegpt_deploy.passes.quantize import graded_input

ARRAY_FORMAT = "ir.json + ir_params.npz"
NETX_MIXED_RANGE = (-256, 254)     # optimize_weight_bits keeps these with weight_exponent 0..-k
NETX_EXCITATORY_MAX = 255
NETX_INHIBITORY_MIN = -256
HOST_CURRENT_MESSAGE_BITS = fp.A_IN_BITS  # a_in is Lava's 16-bit LIF input
DENSE_DELAY_STEPS = 1              # Lava Dense delivers its output one step later


@dataclass(frozen=True)
class NetxLayer:
    """One expressible chip layer, written as its own netx network."""

    lif: str                   # IR LIF node (the CUBA neuron)
    linear: str | None         # IR chip Linear feeding it, None for the identity synapse
    synapse: str               # 'chip_linear' | 'identity'
    file: str
    in_features: int
    out_features: int
    input_message_bits: int    # pass as Network(net_config=file, input_message_bits=...)
    input_encoding: str        # how the host turns its float value into the graded input
    i_decay: int
    v_decay: int
    v_th_mant: int
    delay_steps: int = DENSE_DELAY_STEPS


@dataclass(frozen=True)
class NetxOmitted:
    """A chip node netx cannot express exactly, and why."""

    node: str
    op: str
    module: str
    reason: str
    kept_in: str = ARRAY_FORMAT


@dataclass
class NetxInfo:
    """What ``chip_partition_to_netx`` wrote (``written`` is False when nothing is expressible)."""

    expressible: list[NetxLayer] = field(default_factory=list)
    omitted: list[NetxOmitted] = field(default_factory=list)
    written: bool = False
    files: list[str] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------ weight analysis
def netx_integer_weights(weights: np.ndarray, weight_exp: int, num_weight_bits: int
                         ) -> tuple[np.ndarray | None, str]:
    """The integer matrix W_int with netx Dense(W_int) @ x == Lava Dense(weights, weight_exp,
    num_weight_bits) @ x for every integer x, or (None, why not)."""
    w = fp.dense_effective_weights(np.asarray(weights), int(num_weight_bits)).astype(np.int64)
    e = int(weight_exp)
    if e >= 0:
        w_int = w << e
    else:
        k = -e
        if np.any(w % (1 << k)):
            return None, (f"the quantized Dense right-shifts its accumulated sum by {k} bits "
                          f"(floor(W @ x / 2**{k})) and its weights are not multiples of 2**{k}; "
                          "netx reads integer weights and has no weight exponent of its own "
                          "(neuron/wgtExp is not read), so it computes W_int @ x only. Use fewer "
                          "--weight-bits or --graded-bits to get an exponent >= 0")
        w_int = w >> k
    lo, hi = int(w_int.min()), int(w_int.max())
    if lo == hi == 0:
        return None, "all weights are zero (netx's optimize_weight_bits divides by the largest)"
    if lo < 0 < hi:
        ok, limits = NETX_MIXED_RANGE[0] <= lo and hi <= NETX_MIXED_RANGE[1], NETX_MIXED_RANGE
    elif lo >= 0:
        ok, limits = hi <= NETX_EXCITATORY_MAX, (0, NETX_EXCITATORY_MAX)
    else:
        ok, limits = lo >= NETX_INHIBITORY_MIN, (NETX_INHIBITORY_MIN, 0)
    if not ok:
        return None, (f"integer weights span {lo}..{hi}, outside netx's 8-bit synapse range "
                      f"{limits[0]}..{limits[1]} (lava-dl netx/utils.py optimize_weight_bits)")
    return w_int, ""


def _lif_neuron(ir: IR, lif: str) -> tuple[dict[str, int] | None, str]:
    a = ir.node(lif)["attrs"]
    if "vth_fixed" not in a:
        return None, "LIF is not quantized (run the quantize pass: netx needs integer parameters)"
    return {"iDecay": int(a["du_fixed"]) + fp.DS_OFFSET, "vDecay": int(a["dv_fixed"]),
            "vThMant": int(a["vth_fixed"])}, ""


def _plan(ir: IR) -> tuple[list[dict[str, Any]], list[NetxOmitted]]:
    """Decide, per chip node, expressible layer or omitted (with the reason)."""
    layers: list[dict[str, Any]] = []
    omitted: list[NetxOmitted] = []
    covered: set[str] = set()

    def omit(n: str, reason: str) -> None:
        d = ir.node(n)
        omitted.append(NetxOmitted(n, d["op"], d["module"], reason))
        covered.add(n)

    for n in ir.topological():
        d = ir.node(n)
        if d.get("placement", HOST) == HOST or d["op"] != "LIF":
            continue
        (x_src, *_) = ir.inputs(n)
        neuron, why = _lif_neuron(ir, n)
        src = ir.node(x_src.node)
        if neuron is None:
            omit(n, why)
            continue
        if d["attrs"].get("input") == "chip_current":
            if src["op"] != "Linear" or src.get("placement", HOST) == HOST:
                omit(n, f"LIF input 'chip_current' but its input '{x_src.node}' is not a chip "
                        "Linear")
                continue
            a = src["attrs"]
            w_int, why = netx_integer_weights(src["params"]["weight_lava"],
                                              a["weight_exp_lava"], a["weight_bits"])
            if w_int is None:
                omit(x_src.node, why)
                omit(n, f"fed by '{x_src.node}', which netx cannot express: see its entry")
                continue
            g = int(a["graded_bits"])
            layers.append({"lif": n, "linear": x_src.node, "synapse": "chip_linear",
                           "weight": w_int, "neuron": neuron, "input_message_bits": g,
                           "input_encoding": f"clip(rint(x / {a['input_step']!r}), "
                                             f"-{2 ** (g - 1) - 1}, {2 ** (g - 1) - 1}): "
                                             f"{g}-bit graded spikes of x = {x_src.node}"})
            covered |= {n, x_src.node}
        elif d["attrs"].get("input") == "host_current":
            width = int(ir.in_edges(n)[0][2]["shape"][0])
            b = int(d["attrs"]["input_scale_bits"])
            layers.append({"lif": n, "linear": None, "synapse": "identity",
                           "weight": np.eye(width, dtype=np.int64), "neuron": neuron,
                           "input_message_bits": HOST_CURRENT_MESSAGE_BITS,
                           "input_encoding": f"quantize_current(x, 2**{b}, overflow='saturate'): "
                                             f"16-bit a_in of x = {x_src.node}"})
            covered.add(n)
        else:
            omit(n, f"LIF input kind {d['attrs'].get('input')!r} is unknown to the netx export")
    reasons = {
        "SpikeLinear": "the host reads this token's integer sum W @ s; a netx layer emits only "
                       "spikes, and netx's graded read-out (SDNN Sigma) sums over time steps, "
                       "i.e. over tokens",
        "Linear": "read by the host (output 'host_readout'): the host needs the integer sum "
                  "W @ x; a netx layer emits only spikes",
        "SpikeSum": "accumulates spikes of several populations into one count vector; a netx "
                    "network is a single feed-forward chain with one input",
    }
    for n in ir.topological():
        d = ir.node(n)
        if d.get("placement", HOST) == HOST or n in covered or d["op"] in ("StateIn", "StateOut"):
            continue
        omit(n, reasons.get(d["op"], f"no netx layer type for chip op {d['op']}"))
    return layers, omitted


# ------------------------------------------------------------------------------- writing
def _write_net(path: Path, layer: dict[str, Any], ir: IR) -> None:
    import h5py
    str_dt = h5py.string_dtype()
    w = layer["weight"]
    out_f, in_f = (int(s) for s in w.shape)
    with h5py.File(path, "w") as f:
        l0 = f.create_group("layer/0")
        l0.create_dataset("type", (1,), "S10", [b"input"])
        l0.create_dataset("shape", data=np.array([in_f], np.int64))
        l1 = f.create_group("layer/1")
        l1.create_dataset("type", (1,), "S10", [b"dense"])
        l1.create_dataset("shape", data=np.array([out_f], np.int64))
        l1.create_dataset("inFeatures", data=np.int64(in_f))
        l1.create_dataset("outFeatures", data=np.int64(out_f))
        l1.create_dataset("weight", data=w.astype(np.float32))  # integers, exact in float32
        neuron = l1.create_group("neuron")
        neuron.create_dataset("type", data="CUBA", dtype=str_dt)
        for key in ("iDecay", "vDecay", "vThMant"):
            neuron.create_dataset(key, data=np.int64(layer["neuron"][key]))
        neuron.create_dataset("refDelay", data=np.int64(1))      # no refractory period
        neuron.create_dataset("wgtExp", data=np.int64(0))        # weights already scaled
        neuron.create_dataset("gradedSpike", data=np.bool_(False))
        f.create_dataset("simulation/Ts", data=np.int64(1))      # one token per time step
        f.create_dataset("simulation/tSample", data=np.int64(ir.config.get("ctx_len", 1)))
        info = f.create_group("spikegpt")                         # not read by netx
        for key in ("lif", "synapse", "input_encoding"):
            info.create_dataset(key, data=str(layer[key]), dtype=str_dt)
        info.create_dataset("linear", data=str(layer["linear"] or ""), dtype=str_dt)
        info.create_dataset("input_message_bits", data=np.int64(layer["input_message_bits"]))
        info.create_dataset("delay_steps", data=np.int64(DENSE_DELAY_STEPS))


def chip_partition_to_netx(ir: IR, path: str | Path) -> NetxInfo:
    """Write every chip layer netx expresses exactly as ``<stem>.<lif node>.net`` next to
    ``path`` (one netx network per layer; see the module docstring). Never mutates the IR."""
    if any(d.get("placement") is None for _, d in ir.graph.nodes(data=True)):
        raise ConversionError("netx export: the IR is not partitioned (nodes without placement); "
                              "run partition() and quantize() first")
    try:
        import h5py  # noqa: F401
    except ImportError:
        raise ConversionError("netx export needs h5py; install it with "
                              "`pip install h5py`") from None
    layers, omitted = _plan(ir)
    info = NetxInfo(omitted=omitted)
    if not layers:
        info.reason = ("no chip layer is expressible exactly in netx" if omitted else
                       "the IR has no chip layers") + "; nothing written"
        return info
    path = Path(path)
    for layer in layers:
        file = path.with_name(f"{path.stem}.{layer['lif']}{path.suffix or '.net'}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_net(file, layer, ir)
        except OSError as exc:
            raise ConversionError(f"netx export: cannot write {file}: {exc}") from None
        out_f, in_f = layer["weight"].shape
        info.expressible.append(NetxLayer(
            lif=layer["lif"], linear=layer["linear"], synapse=layer["synapse"], file=str(file),
            in_features=int(in_f), out_features=int(out_f),
            input_message_bits=int(layer["input_message_bits"]),
            input_encoding=layer["input_encoding"], i_decay=layer["neuron"]["iDecay"],
            v_decay=layer["neuron"]["vDecay"], v_th_mant=layer["neuron"]["vThMant"]))
        info.files.append(str(file))
    info.written = True
    info.reason = (f"{len(layers)} layer(s) written, one netx network each; "
                   f"{len(omitted)} chip node(s) kept only in {ARRAY_FORMAT}")
    return info


def encode_layer_input(ir: IR, layer: NetxLayer, x: np.ndarray) -> np.ndarray:
    """The integer graded input of a written layer for host values x (T, in): what the
    quantized emulation feeds that layer (``passes/quantize.py``)."""
    x = np.asarray(x)
    if layer.synapse == "identity":
        bits = int(ir.node(layer.lif)["attrs"]["input_scale_bits"])
        return fp.quantize_current(x, 2.0 ** bits, overflow="saturate")
    a = ir.node(layer.linear)["attrs"]
    return graded_input(x, a["input_step"], a["graded_bits"])
