"""The one table of allowed profile keys: sections, dimensions, meanings and which roles need
them. It drives the loader's validation and the reference appended to ``hw_profiles.loader``.
"""

from __future__ import annotations

import types
from typing import Mapping, NamedTuple

#: unit -> (dimension, factor to the dimension's base unit: J, W, s, bit, count, Hz)
UNITS: Mapping[str, tuple[str, float]] = types.MappingProxyType({
    "fJ": ("energy", 1e-15), "pJ": ("energy", 1e-12), "nJ": ("energy", 1e-9),
    "uJ": ("energy", 1e-6), "mJ": ("energy", 1e-3), "J": ("energy", 1.0),
    "uW": ("power", 1e-6), "mW": ("power", 1e-3), "W": ("power", 1.0),
    "ps": ("time", 1e-12), "ns": ("time", 1e-9), "us": ("time", 1e-6),
    "ms": ("time", 1e-3), "s": ("time", 1.0),
    "bit": ("size", 1.0), "B": ("size", 8.0), "KiB": ("size", 8.0 * 1024),
    "MiB": ("size", 8.0 * 1024 ** 2),
    "count": ("count", 1.0), "Hz": ("rate", 1.0),
})
KINDS = ("datasheet", "measured", "estimate", "proxy")
ROLES = ("chip", "host", "ann")
INPUT_CLASSES = ("binary", "integer", "graded", "float")
FIRE_COMPARISONS = (">", ">=")
QUANTITY_SECTIONS = ("energy", "timing", "host_ops", "capacity")
QUANTITY_FIELDS = ("value", "unit", "source", "kind", "note")


class _Field(NamedTuple):
    """One allowed key: its type (a UNITS dimension, or a plain-value type) and meaning."""

    dim: str
    doc: str
    required_for: tuple[str, ...] = ()


def _q(dim: str, doc: str, *required_for: str) -> _Field:
    return _Field(dim, doc, required_for)


_E, _P, _T, _S, _C = "energy", "power", "time", "size", "count"
_HOST_OPS = {k: _q(_E, d, *(("host", "ann") if k in ("add", "mac") else ())) for k, d in {
    "add": "FP32 add (the E_AC of the firing-rate formula)", "mul": "FP32 multiply",
    "mac": "FP32 multiply-accumulate (the E_MAC of the formula)", "div": "FP32 division",
    "exp": "FP32 exponential", "sqrt": "FP32 square root", "rsqrt": "FP32 1/sqrt",
    "sigmoid": "FP32 logistic sigmoid", "max": "FP32 max of two", "compare": "FP32 compare",
    "memory_byte": "one byte to or from memory (the default memory cost)",
    "int8_add": "INT8 add", "int8_mul": "INT8 multiply", "int32_add": "INT32 add",
    "int32_mul": "INT32 multiply", "fp16_add": "FP16 add", "fp16_mul": "FP16 multiply",
    "sram_read_64bit_8kb": "64-bit read, 8 KB SRAM", "sram_read_64bit_32kb": "64-bit read, "
    "32 KB SRAM", "sram_read_64bit_1mb": "64-bit read, 1 MB SRAM",
    "dram_read_64bit": "64-bit DRAM access"}.items()}

_SCHEMA: dict[str, dict[str, _Field]] = {
    "meta": {
        "name": _Field("str", "profile name (for built-ins, the file stem)", ROLES),
        "title": _Field("str", "human-readable name", ROLES),
        "role": _Field("role", "chip | host | ann: what the profile can price", ROLES),
        "description": _Field("str", "one paragraph on the target and the provenance", ROLES),
        "default_host": _Field("str", "the profile pricing host float ops by default", ("chip",)),
    },
    "energy": {
        "synaptic_op": _q(_E, "one spike delivered to one target (weight read, add)", "chip"),
        "synaptic_update": _q(_E, "one plastic synapse update (learning only)"),
        "neuron_update_active": _q(_E, "one neuron update in a step with input or a spike"),
        "neuron_update_idle": _q(_E, "one neuron update in a step without input"),
        "spike_local": _q(_E, "one spike message delivered within a core or tile"),
        "spike_hop": _q(_E, "one spike message, per mesh hop between tiles"),
        "graded_payload_bit": _q(_E, "extra energy per payload bit of a graded spike"),
        "static_power": _q(_P, "static (leakage) power of one chip"),
        "typical_power": _q(_P, "total chip power at a published operating point (context)"),
        "chip_io_byte": _q(_E, "moving one byte between chip and host"),
    },
    "timing": {
        "timestep": _q(_T, "a fixed timestep of a clocked target (e.g. a 1 ms tick); absent: "
                       "each timestep lasts as long as the work on its slowest core"),
        "synaptic_op": _q(_T, "one synaptic event"),
        "neuron_update": _q(_T, "one active neuron update"),
        "neuron_update_idle": _q(_T, "one idle neuron update"),
        "spike_local": _q(_T, "spike latency within a core or tile"),
        "spike_hop": _q(_T, "spike latency per mesh hop"),
        "chip_hop": _q(_T, "spike latency of one hop between two chips"),
        "barrier_sync": _q(_T, "mesh-wide barrier synchronisation ending a timestep"),
        "chip_io_crossing": _q(_T, "fixed latency of one chip-host transfer (either direction)"),
        "chip_io_byte": _q(_T, "time per byte of a chip-host transfer (1 / bandwidth)"),
        **{k: _q(_T, f"time of one {d} on the host (1 / throughput)")
           for k, d in (("add", "FP32 add"), ("mul", "FP32 multiply"),
                        ("mac", "FP32 multiply-accumulate"), ("div", "FP32 division"),
                        ("exp", "FP32 exponential"), ("sqrt", "FP32 square root"),
                        ("rsqrt", "FP32 1/sqrt"), ("sigmoid", "FP32 logistic sigmoid"),
                        ("max", "FP32 max of two"), ("compare", "FP32 compare"),
                        ("memory_byte", "byte moved to or from memory"))},
    },
    "host_ops": _HOST_OPS,
    "capacity": {
        "cores_per_chip": _q(_C, "neuromorphic cores per chip", "chip"),
        "cores_per_tile": _q(_C, "cores sharing one mesh router (a tile): a message between "
                             "them takes no hop"),
        "embedded_cores": _q(_C, "general-purpose cores on the chip (e.g. x86 Lakemont)"),
        "neurons_per_core": _q(_C, "neurons (compartments) per core"),
        "synapses_per_chip": _q(_C, "synapses per chip"),
        "synaptic_memory_per_core": _q(_S, "synaptic memory per core"),
        "fan_in_per_core": _q(_C, "input axons per core"),
        "fan_out_per_core": _q(_C, "output axons per core"),
        "weight_bits_min": _q(_S, "smallest weight precision"),
        "weight_bits_max": _q(_S, "largest weight precision"),
        "neuron_state_bits": _q(_S, "bits of a neuron state variable (u, v)"),
        "graded_spike_bits_max": _q(_S, "largest graded-spike payload (if graded_spikes)"),
    },
    "capability": {
        "chip_ops": _Field("str_list", "IR op types that may be placed on the chip", ("chip",)),
        "linear_input_classes": _Field("class_list", "input value classes of a chip Linear: "
                                       + "|".join(INPUT_CLASSES), ("chip",)),
        "graded_spikes": _Field("bool", "whether spikes can carry an integer payload", ("chip",)),
        "lif_fire_comparison": _Field("comparison", "LIF fires on v > vth or v >= vth", ("chip",)),
        "source": _Field("str", "citation for the capability claims", ("chip",)),
    },
}
#: section -> key -> field: the one table behind validation and the reference below.
SCHEMA: Mapping[str, Mapping[str, _Field]] = types.MappingProxyType(
    {section: types.MappingProxyType(keys) for section, keys in _SCHEMA.items()})
#: section -> (roles that require it, roles that may have it)
SECTION_ROLES: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = types.MappingProxyType({
    "meta": (ROLES, ROLES), "energy": (("chip",), ("chip",)), "timing": (("chip",), ROLES),
    "host_ops": (("host", "ann"), ROLES), "capacity": (("chip",), ("chip",)),
    "capability": (("chip",), ("chip",)),
})


def describe_schema() -> str:
    """The allowed sections and keys as text (appended to this module's docstring)."""
    lines = ["", "Schema (generated from SCHEMA)", "------------------------------"]
    for section, keys in SCHEMA.items():
        req, allowed = SECTION_ROLES[section]
        lines.append(f"[{section}]  roles: {', '.join(allowed)}; required for: {', '.join(req)}")
        for key, spec in keys.items():
            need = f" (required: {', '.join(spec.required_for)})" if spec.required_for else ""
            lines.append(f"    {key:<26} {spec.dim:<10} {spec.doc}{need}")
    return "\n".join(lines)
