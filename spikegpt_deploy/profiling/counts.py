"""Operation counts of a partitioned SpikeGPT IR on recorded spikes: measured, never assumed.

``count_ops(ir, spikes)`` is a pure function of the partitioned, folded IR and the binary spikes
of every population per token, so the spikes of a Lava simulation give the same counts as the
PyTorch recording when the spikes are identical. It counts, per token and per layer:

- spikes and firing rate of every LIF population and of the binary embedding;
- synaptic ops of every chip linear: input events x fan-out, the fan-out of input i being the
  number of non-zero weights in column i (weights are [out, in]). A SpikeLinear fed by a SpikeSum
  sees the non-zero entries of n_t = sum_j c_j s_j as graded events whose payload is the bits of
  the largest |n| the coefficients allow (sum of |c_j| of one sign); one fed by a population sees its spikes; a chip Linear under policy 'graded' sees the
  non-zero entries of its float input, which only a value trace (``graded_inputs``) can tell;
- neuron updates: active = neurons that received input or spiked this token, idle = the rest,
  for LIF populations, SpikeSum accumulators and the readout compartments of chip linears whose
  outputs go to the host; ``accumulate_ops`` = spikes delivered into SpikeSum accumulators;
- on-chip spike messages: each event times the number of chip nodes that read it;
- chip-host messages and bytes per direction from ``ir.meta['crossings']`` (binary: one message
  per spike, ceil(log2 width) address bits; integer / graded: one per non-zero value, address plus
  payload bits; float: one 32-bit word per element). State slots that only chip nodes read and
  write (LIF membranes) stay on the chip and are excluded, with that reason;
- host operations by kind from ``op_cost`` (the formula table below); an op without a formula is
  listed in ``unsupported``, never counted as zero;
- the dense non-spiking ANN of the same config (``ann_op_counts``), for the baselines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import ConversionError, DataError
from ..ir import IR
from ..naming import layer_of
from .op_costs import PLUMBING, ann_op_counts

LAYER_COUNTERS = ("spikes", "synaptic_ops", "accumulate_ops", "neuron_updates_active",
                  "neuron_updates_idle", "spike_messages", "payload_bits",
                  "io_messages_chip_to_host", "io_messages_host_to_chip",
                  "io_bytes_chip_to_host", "io_bytes_host_to_chip")


@dataclass
class OpCounts:
    """Everything ``count_ops`` measured; plain JSON types only (see the module docstring).

    ``layer_totals`` and ``populations`` hold sums over all ``tokens``; ``host_ops`` and ``ann``
    are per token (dense ops do not depend on the spikes).
    """

    tokens: int
    target: str
    policy: str
    layers: list[str]
    populations: dict[str, dict[str, Any]]
    linears: dict[str, dict[str, Any]]
    accumulators: dict[str, dict[str, Any]]
    crossings: list[dict[str, Any]]
    layer_totals: dict[str, dict[str, float]]
    host_ops: dict[str, dict[str, int]]
    per_token: dict[str, list[float]]
    pipeline: dict[str, Any]
    mapping: dict[str, int]
    ann: dict[str, Any]
    unsupported: list[dict[str, str]] = field(default_factory=list)
    #: layer -> source node -> on-chip spike messages it sent (sum over tokens), for the
    #: per-source hop distances of the placement; absent in files of older versions
    messages: dict[str, dict[str, int]] = field(default_factory=dict)
    #: chip node -> per-neuron work summed over tokens (numpy arrays: synaptic_ops, active, idle,
    #: messages), for the per-core timestep model; too large for profile.json, so not serialised
    neuron_work: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False,
                                                   repr=False)

    def per_token_layer(self, layer: str) -> dict[str, float]:
        """The chip and I/O counters of one layer divided by the token count."""
        return {k: v / self.tokens for k, v in self.layer_totals.get(layer, {}).items()}

    def firing_rate(self, population: str) -> float:
        return float(self.populations[population]["rate"])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("neuron_work")
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OpCounts":
        names = {f.name for f in fields(cls)} - {"neuron_work"}
        missing = sorted(names - set(data) - {"unsupported", "messages"})
        if missing:
            raise DataError(f"op counts: missing key(s) {missing}; the file was not written by "
                            f"this version of spikegpt-deploy profile")
        return cls(**{k: data[k] for k in names if k in data})


def _normalise_spikes(spikes: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    out: dict[str, np.ndarray] = {}
    tokens = None
    for name, raw in spikes.items():
        arr = raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        if arr.ndim == 3:
            arr = arr.reshape(-1, arr.shape[-1])   # (B, T, C) -> (B*T, C): B streams of T tokens
        if arr.ndim != 2:
            raise DataError(f"spikes of '{name}': expected (T, C) or (B, T, C), found shape "
                            f"{tuple(arr.shape)}")
        if arr.size and arr.dtype != bool and not (
                arr.max() <= 1 if arr.dtype == np.uint8 else ((arr == 0) | (arr == 1)).all()):
            raise DataError(f"spikes of '{name}' are not binary (found values other than 0/1)")
        if tokens is not None and arr.shape[0] != tokens:
            raise DataError(f"spikes of '{name}' cover {arr.shape[0]} tokens, others {tokens}; "
                            f"record every population over the same tokens")
        tokens = arr.shape[0]
        out[name] = arr.astype(bool)
    if not tokens:
        raise DataError("no spikes recorded (no population, or zero tokens)")
    return out, tokens


def count_ops(ir: IR, spikes: Mapping[str, Any],
              graded_inputs: Mapping[str, Any] | None = None) -> OpCounts:
    """Count the work of one partitioned IR on the given spikes (see the module docstring).

    spikes: population name (``emb``, ``blocks.{i}.lif1``, ...) -> (T, C) or (B, T, C) binary.
    graded_inputs: chip Linear node id -> (T, in) float inputs per token (policy 'graded' only).
    """
    part = ir.meta.get("partition")
    if not part or any("placement" not in d for _, d in ir.graph.nodes(data=True)):
        raise ConversionError("count_ops needs a partitioned IR: run fold_layernorm and "
                              "partition(ir, profile, policy) first")
    from .count_events import CountRun, count_crossings, pipeline_of

    pops, T = _normalise_spikes(spikes)
    run = CountRun(ir, pops, T, graded_inputs)
    for n in run.order:
        d = ir.node(n)
        if d["op"] in ("LIF", "Heaviside"):
            run.population(n, d, layer_of(d["module"]))
    for n in run.order:
        d = ir.node(n)
        if n not in run.chip or d["op"] in PLUMBING:   # chip-resident state lives in neurons
            continue
        layer = layer_of(d["module"])
        if d["op"] == "SpikeSum":
            run.spike_sum(n, d, layer)
        elif d["op"] in ("SpikeLinear", "Linear"):
            run.linear(n, d, layer)
        elif d["op"] != "LIF":
            run.skip(n, f"no chip cost model for op {d['op']}")
    run.lif_updates()
    crossings = count_crossings(ir, run.events, run.payload, graded_inputs, T, run.totals,
                                 run.per_token, run.unsupported)
    host_ops = run.host_ops()
    layers = list(run.layers)
    if run.totals["other"] or host_ops["other"]:
        layers.append("other")
    return OpCounts(
        tokens=T, target=str(part["target"]), policy=str(part["policy"]), layers=layers,
        populations=run.populations, linears=run.linears, accumulators=run.accumulators,
        crossings=crossings,
        layer_totals={k: {c: float(run.totals[k].get(c, 0)) for c in LAYER_COUNTERS}
                      for k in layers},
        host_ops={k: dict(sorted(host_ops[k].items())) for k in layers},
        per_token={k: v.tolist() for k, v in run.per_token.items()},
        pipeline=pipeline_of(ir, run.order, run.chip), mapping=dict(run.mapping),
        ann=ann_op_counts(ir.config), unsupported=run.unsupported, messages=run.messages,
        neuron_work=run.work)


@torch.no_grad()
def record_spikes_pytorch(model: Any, token_ids: Any) -> dict[str, np.ndarray]:
    """Run ``model`` in RNN mode over ``token_ids`` (one stream from the zero state) and return
    the spikes of every population as (T, C) uint8: the fast path of the profiler."""
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    vocab = int(model.config.vocab_size)
    if ids.size == 0:
        raise DataError("no tokens to record spikes on")
    if ids.min() < 0 or ids.max() >= vocab:
        raise DataError(f"token ids must be in [0, {vocab}), found {ids.min()}..{ids.max()}")
    state = model.init_state(1)
    tokens = torch.from_numpy(ids)
    with model.record_spikes() as rec:
        for t in range(len(ids)):
            _, state = model.step(tokens[t:t + 1], state)
    return {name: s[0].numpy() for name, s in rec.spikes().items()}
