"""Place every IR node on the chip or the host, with a recorded reason.

What may go on the chip comes from the target profile's capability table (``hw_profiles/``):
``chip_ops`` (op kinds), ``linear_input_classes`` (what a chip Linear can consume) and
``graded_spikes`` / ``graded_spike_bits_max``; what each op needs of it is the op's chip facet
(``spikegpt_deploy.ops``). Policies:

- ``spikes`` (default): spike-driven linears (SpikeLinear after fold_layernorm), the spike-count
  accumulators (SpikeSum) and the LIF populations on chip; every float op on the host.
- ``graded``: additionally the float-input linears att.output and ffn.value (and ffnPre.value) on
  chip, fed by graded spikes of ``graded_bits`` bits (their inputs are quantized on the host).

Crossings (values that move between chip and host) are listed per token in
``ir.meta['crossings']``; each value crosses once per direction however many nodes read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hw_profiles import HardwareProfile

from . import ops
from .errors import ConversionError
from .folded import has_linear_weight, linear_shape
from .interpreter import annotate_shapes
from .ir import HOST, IR, annotate_value_classes

POLICIES = ("spikes", "graded")
# IR op -> the capability name a profile lists in chip_ops; op -> why it stays on the host (the
# fallback names the op). Both are live views of the op definitions' chip facet (``ops``).
CAPABILITY_OF = ops.CAPABILITY
HOST_REASONS = ops.HOST_REASON
GRADED_LINEAR_SUFFIXES = (".att.output", ".ffn.value", ".ffnPre.value")
VALUE_BITS = {"binary": 1, "index": 64, "float": 32}


@dataclass(frozen=True)
class Crossing:
    """One value that moves between chip and host every token."""

    source: str          # producing node
    port: int
    direction: str       # 'chip_to_host' | 'host_to_chip'
    width: int           # elements per token (neurons or vector length)
    value_class: str     # binary | integer | float | graded
    bits_per_element: int
    readers: tuple[str, ...]


def partition(ir: IR, profile: HardwareProfile, policy: str = "spikes",
              graded_bits: int = 8) -> IR:
    """Return a new IR whose nodes carry ``placement`` and ``reason`` (see module docstring)."""
    if policy not in POLICIES:
        raise ConversionError(f"unknown policy '{policy}'; choose one of {', '.join(POLICIES)}")
    if profile.role != "chip":
        raise ConversionError(f"target '{profile.name}' is a {profile.role} profile, not a chip; "
                              f"pick a neuromorphic target (e.g. loihi2)")
    chip_ops = tuple(profile.capability_value("chip_ops"))  # type: ignore[arg-type]
    input_classes = tuple(profile.capability_value("linear_input_classes"))  # type: ignore
    graded_ok = bool(profile.capability_value("graded_spikes"))
    if policy == "graded":
        if not graded_ok or "graded" not in input_classes:
            raise ConversionError(f"target '{profile.name}' has no graded spikes, so --policy "
                                  f"graded cannot place att.output / ffn.value; use --policy spikes")
        max_bits = profile.capacity_bits("graded_spike_bits_max")
        if not 1 <= graded_bits <= max_bits:
            raise ConversionError(f"--graded-bits {graded_bits} is outside 1..{max_bits} "
                                  f"(graded_spike_bits_max of '{profile.name}')")
    out = annotate_value_classes(annotate_shapes(ir))   # annotate_shapes returns a new IR
    chip = profile.name
    for n in out.topological():
        data = out.node(n)
        op = data["op"]
        placement, reason = HOST, HOST_REASONS.get(op, f"{op} is a float op")
        need = ops.op_def(op).chip
        in_classes = [d["value_class"] for _, _, d in out.in_edges(n)]
        if isinstance(need, ops.ChipNeeds) and need.policy == "spikes":
            if need.capability not in chip_ops:
                raise ConversionError(f"node '{n}' ({op}, from {data['module']}): target "
                                      f"'{profile.name}' cannot run {need.capability} (chip_ops: "
                                      f"{', '.join(chip_ops)}), which policy '{policy}' needs")
            if need.checks_input_classes and not set(in_classes) <= set(input_classes):
                raise ConversionError(f"node '{n}' ({op}, from {data['module']}): target "
                                      f"'{profile.name}' takes {input_classes} into a "
                                      f"{need.capability}, the node reads {in_classes}")
            placement, reason = chip, need.reason.format(inputs="/".join(in_classes))
        elif isinstance(need, ops.ChipNeeds):   # policy 'graded': the graded float linears
            if policy == "graded" and data["module"].endswith(GRADED_LINEAR_SUFFIXES):
                if need.capability not in chip_ops:
                    raise ConversionError(f"node '{n}' ({op}, from {data['module']}): target "
                                          f"'{profile.name}' cannot run {need.capability}")
                placement = chip
                reason = need.reason.format(graded_bits=graded_bits)
                data["attrs"] = {**data["attrs"], "graded_bits": graded_bits}
            else:
                reason = ("float-input linear: stays on the host under policy 'spikes' "
                          "(--policy graded moves att.output / ffn.value on chip)"
                          if data["module"].endswith(GRADED_LINEAR_SUFFIXES) else
                          need.host_reason or reason)
        data["placement"], data["reason"] = placement, reason
    _place_state(out)
    readout_bits = (profile.capacity_bits("graded_spike_bits_max") if graded_ok else
                    VALUE_BITS["float"])
    out.meta["crossings"] = [asdict(c) for c in _crossings(out, readout_bits)]
    out.meta["partition"] = {"target": profile.name, "policy": policy,
                             "graded_bits": graded_bits if policy == "graded" else None}
    out.passes.append("partition")
    return out


def _place_state(ir: IR) -> None:
    """A state slot lives where the op that reads it lives (LIF membranes stay on chip)."""
    for n in list(ir.nodes_of("StateIn")):
        readers = [v for v, _ in ir.consumers(n) if ir.node(v)["op"] != "StateOut"]
        places = {ir.node(v)["placement"] for v in readers}
        if len(places) != 1 or HOST in places:
            continue
        place = places.pop()
        slot = ir.node(n)["attrs"]["state"]
        for m in [n, *ir.state_outs(slot)]:
            ir.node(m)["placement"] = place
            ir.node(m)["reason"] = "state of a chip op: stays on chip between tokens"


def _crossings(ir: IR, readout_bits: int) -> list[Crossing]:
    """Values that change placement, once per (source, port, direction).

    The output of a chip linear read by the host is its integer accumulation, sent as one
    graded message per element of ``readout_bits`` (the target's graded-spike payload; 32 bits
    where the target has no graded spikes).
    """
    found: dict[tuple[str, int, str], list[str]] = {}
    edges: dict[tuple[str, int, str], dict[str, Any]] = {}
    for u, v, d in ir.graph.edges(data=True):
        pu, pv = ir.node(u)["placement"], ir.node(v)["placement"]
        if pu == pv:
            continue
        key = (u, d["src_port"], "chip_to_host" if pu != HOST else "host_to_chip")
        found.setdefault(key, []).append(v)
        edges[key] = d
    out = []
    for key, readers in sorted(found.items()):
        d = edges[key]
        cls = d.get("value_class", "float")
        dst = ir.node(readers[0])
        if key[2] == "host_to_chip" and "graded_bits" in dst["attrs"]:
            cls, bits = "graded", int(dst["attrs"]["graded_bits"])
        elif cls == "integer":
            bits = 8  # spike counts: small integers (the profiler measures the real range)
        elif key[2] == "chip_to_host" and ir.node(key[0])["op"] in ("SpikeLinear", "Linear"):
            bits = readout_bits
        else:
            bits = VALUE_BITS.get(cls, 32)
        width = int(d["shape"][0]) if d.get("shape") else int(ir.config["n_embd"])
        out.append(Crossing(key[0], key[1], key[2], width, cls, bits, tuple(sorted(readers))))
    return out


def _deployed_parameters(data: dict[str, Any]) -> int:
    """Values a node holds where it runs: a quantized chip linear its mantissas (not the float
    weight it was made from, nor the per-channel ``weight_scale`` the host multiplies its sums
    by), a folded linear not the model matrix it shares (``source_*``)."""
    params = data["params"]
    names = [k for k in params if not k.startswith("source_")]
    if "weight_q" in params:
        names = [k for k in names if k not in ("weight", "weight_lava", "weight_scale")]
    return int(sum(params[k].size for k in names))


def placement_summary(ir: IR) -> dict[str, dict[str, int]]:
    """Per placement: node count, parameter count (as deployed) and node count per op."""
    summary: dict[str, dict[str, Any]] = {}
    for n, data in ir.graph.nodes(data=True):
        p = data.get("placement", "unplaced")
        s = summary.setdefault(p, {"nodes": 0, "parameters": 0, "ops": {}})
        s["nodes"] += 1
        s["parameters"] += _deployed_parameters(data)
        s["ops"][data["op"]] = s["ops"].get(data["op"], 0) + 1
    return summary


CHIP_WEIGHTS_WHY = (
    "The LayerNorm fold (spec 6.3) turns a linear W (out x in) fed by a token-shift mix into "
    "[A; B] (2 out x in): A = W diag(mix * gamma) multiplies this token's spike counts of the "
    "residual stream, B = W diag((1 - mix) * gamma) the same counts for the next token's shift "
    "(the host keeps B's result for one token). With the Heaviside embedding each folded "
    "linear also reads the embedding spikes through [A; B] diag(gamma0), a second copy. So a "
    "model matrix becomes up to 4 chip matrices: 2 for the head (no token shift) and for "
    "layer 0's attention (no stream spikes yet, only the embedding copy).")


def chip_weight_report(ir: IR, model_parameters: int | None = None) -> dict[str, Any]:
    """The chip's weight matrices per model linear, and why they outnumber the model's weights,
    so that a user can check the synaptic memory (resources: synapses x weight bits)."""
    per_linear: dict[str, dict[str, Any]] = {}
    for n, d in sorted(ir.graph.nodes(data=True)):
        if d.get("placement", HOST) == HOST or d["op"] not in ("SpikeLinear", "Linear"):
            continue
        params = d["params"]
        if "weight_q" in params:
            shape = params["weight_q"].shape
        elif has_linear_weight(params):
            shape = linear_shape(params)
        else:
            continue
        src = params.get("source_weight")
        halves = len(params["source_cols"]) if "source_cols" in params else 1
        model_shape = list(src.shape) if src is not None else [shape[0] // halves, shape[1]]
        entry = per_linear.setdefault(d["module"], {"model_shape": model_shape, "matrices": []})
        entry["matrices"].append({"node": n, "input": d["attrs"].get("source", "graded values"),
                                  "shape": list(shape), "halves": halves,
                                  "values": int(np.prod(shape))})
    for entry in per_linear.values():
        entry["model_values"] = int(np.prod(entry["model_shape"]))
        entry["chip_values"] = sum(m["values"] for m in entry["matrices"])
        entry["factor"] = entry["chip_values"] / entry["model_values"]
    chip = sum(e["chip_values"] for e in per_linear.values())
    model_linears = sum(e["model_values"] for e in per_linear.values())
    return {"chip_weight_values": chip, "model_values_of_these_linears": model_linears,
            "model_parameters": model_parameters, "why": CHIP_WEIGHTS_WHY,
            "per_linear": per_linear}
