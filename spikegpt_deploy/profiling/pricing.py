"""Energy of measured op counts on hardware profiles, with every figure's provenance.

Per token, for a chip target (all in pJ; figures from the target's TOML, host ops from its
``default_host`` profile unless overridden):

- chip dynamic = (synaptic_ops + accumulate_ops) x E[synaptic_op]
  + active x E[neuron_update_active] + idle x E[neuron_update_idle]
  + spike_messages x (E[spike_local] + hops x E[spike_hop]) + payload_bits x E[graded_payload_bit],
  with each layer's messages at its own hops (``network.py``)
- chip static = chips x P[static_power] x token latency; the latency (``latency.py``) is
  timesteps x the work-based timestep (the slowest core, network hops, barrier) + host compute
  time (host ops x the host-timing profile's time per op, default ``cpu``) + chip-host
  transfers (crossings x T[chip_io_crossing] + bytes x T[chip_io_byte]), kept as terms. A
  clocked target with a stated ``[timing] timestep`` uses that tick instead. The timesteps per
  token come from the schedule the Lava simulation runs (``simulation.schedule``), in two
  regimes: decode (a generated token waits for the previous token's logits: one timestep per
  Dense hop on the longest path; the default ``timesteps_per_token``) and prefill (prompt or
  held-out tokens enter the pipeline one after another, ``prefill_timesteps_per_token`` apart;
  time to first token = (prompt tokens - 1) x the prefill latency per token + the latency of
  one token through the pipeline's depth); chips and cores per node come from the mapping
  (``resources.map_resources``) when given.
- host = sum over kinds of count x E_host[kind] (``lookup_byte`` priced as ``memory_byte``)
- I/O = chip-host bytes x E[chip_io_byte]

The ANN baseline and the paper's formula: ``baselines.py``; figures and their provenance:
``figures.py``; profile.json: ``result.py``. A figure a profile lacks makes its term
``unsupported`` (with the key) and the total None; never zero.
"""

from __future__ import annotations

from typing import Any, Mapping

from hw_profiles import HardwareProfile
from hw_profiles import load_profile as _load_profile

from ..errors import DataError, ProfileError
from ..placement import Route
from .baselines import PAPER_FIRING_RATE, PAPER_PROFILE, paper_formula, price_ann
from .counts import OpCounts
from .figures import PRICE_KEY, Figures, load_host
from .latency import (WORK_TIMES, core_times, fixed_timestep, host_time_ns, io_time_ns,
                      timestep_latency, token_latency)
from .network import layer_routes, mapping_estimate, message_routes
from .result import ProfileResult

__all__ = ["DEFAULT_HOST_TIMING", "PAPER_FIRING_RATE", "PAPER_PROFILE", "ProfileResult",
           "layer_routes", "load_host", "mapping_estimate", "paper_formula", "price_ann",
           "price_target"]

# the prompt length the TTFT is stated for (the 500-token input of Abreu et al. 2025's Loihi 2
# time-to-first-token comparison)
DEFAULT_PROMPT_TOKENS = 500
DEFAULT_HOST_TIMING = "cpu"   # the profile whose [timing] gives the host's time per op
DEFAULT_SENSITIVITY_FACTOR = 2.0
EVENT_CLASSES = ("binary", "integer", "graded")


def _io_bytes(counts: OpCounts, rate: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for c in counts.crossings:
        if c["excluded"]:
            continue
        scale = rate if c["value_class"] in EVENT_CLASSES else 1.0
        out[c["layer"]] = out.get(c["layer"], 0.0) + c["bytes"] * scale / counts.tokens
    return out


def _latency(counts: OpCounts, chip: HardwareProfile, host_timing: HardwareProfile,
             cores: Mapping[str, int] | None, chips: int, timesteps: float,
             routes: Mapping[str, Route], rate: float, f: Figures) -> dict[str, Any]:
    """The timestep and the token's latency terms (see ``latency.py``); None where unpriced."""
    step = None
    if "timestep" in chip.timing:
        tick = f.get(chip, "timing", "timestep", "ns", "chip timestep (a fixed tick)")
        step = None if tick is None else fixed_timestep(tick)
    elif cores is None or not counts.neuron_work:
        f.missing.append({"what": "chip timestep", "profile": chip.name, "key": "mapping",
                          "reason": "the work-based timestep needs the core mapping and the "
                                    "per-neuron work of count_ops (not kept in profile.json)"})
    else:
        keys = WORK_TIMES + (("chip_hop",) if chips > 1 and "chip_hop" in chip.timing else ())
        t = {k: f.get(chip, "timing", k, "ns", f"chip {k} time") for k in keys}
        if all(v is not None for v in t.values()):
            step = timestep_latency(core_times(counts.neuron_work, cores, counts.tokens,
                                               t, rate), t, routes)  # type: ignore[arg-type]
    ops: dict[str, float] = {}
    for layer in counts.layers:
        for kind, n in counts.host_ops.get(layer, {}).items():
            ops[kind] = ops.get(kind, 0.0) + n
    op_ns = {k: f.get(host_timing, "timing", PRICE_KEY.get(k, k), "ns", f"host {k} time")
             for k, n in ops.items() if n}
    host_ns = None if any(v is None for v in op_ns.values()) else host_time_ns(
        {k: n for k, n in ops.items() if n}, op_ns)  # type: ignore[arg-type]
    nbytes = sum(_io_bytes(counts, rate).values())
    crossings = 2.0 * counts.pipeline.get("chip_segments", 0) if nbytes else 0.0
    io_ns = 0.0
    if crossings:
        per_crossing = f.get(chip, "timing", "chip_io_crossing", "ns", "chip-host crossing time")
        per_byte = f.get(chip, "timing", "chip_io_byte", "ns", "chip-host time per byte")
        io_ns = None if per_crossing is None or per_byte is None else io_time_ns(
            crossings, nbytes, per_crossing, per_byte)
    token = token_latency(timesteps, None if step is None else step.timestep_ns, host_ns, io_ns)
    return {"timestep": None if step is None else step.to_dict(), "token": token.to_dict(),
            "host_timing": host_timing.name, "host_ops": ops, "io_crossings": crossings,
            "io_bytes": nbytes}


def _price(counts: OpCounts, chip: HardwareProfile, host: HardwareProfile, timesteps: float,
           routes: Mapping[str, Route], chips: int, rate: float = 1.0,
           kind_factors: Mapping[str, float] | None = None, *,
           host_timing: HardwareProfile | None = None,
           cores: Mapping[str, int] | None = None) -> tuple[dict[str, Any], Figures]:
    f = Figures(kind_factors)

    def energy(key: str, count: float) -> float | None:
        """count x the figure; 0 for no events (no figure needed); None if the figure is missing."""
        if not count:
            return 0.0
        e = f.get(chip, "energy", key, "pJ", f"chip {key}")
        return None if e is None else count * e

    io = _io_bytes(counts, rate)
    layers: dict[str, dict[str, float | None]] = {}
    host_kind: dict[str, float] = {}
    for layer in counts.layers:
        lt = counts.per_token_layer(layer)
        neurons = lt["neuron_updates_active"] + lt["neuron_updates_idle"]
        active = min(lt["neuron_updates_active"] * rate, neurons)
        msgs, bits = lt["spike_messages"] * rate, lt["payload_bits"] * rate
        terms = {"synaptic": ((lt["synaptic_ops"] + lt["accumulate_ops"]) * rate, "synaptic_op"),
                 "neuron_active": (active, "neuron_update_active"),
                 "neuron_idle": (neurons - active, "neuron_update_idle"),
                 "spike_local": (msgs, "spike_local")}
        row: dict[str, float | None] = {name: energy(key, count)
                                        for name, (count, key) in terms.items()}
        row["_msgs"], row["_bits"] = msgs, bits
        row["host"] = 0.0
        for kind, n in counts.host_ops.get(layer, {}).items():
            price = f.get(host, "host_ops", PRICE_KEY.get(kind, kind), "pJ", f"host {kind}")
            host_kind[kind] = host_kind.get(kind, 0.0) + (n * price if price is not None else 0)
            row["host"] = None if (price is None or row["host"] is None) else row["host"] + n * price
        row["_io_bytes"] = io.get(layer, 0.0)
        layers[layer] = row
    for layer, row in layers.items():
        msgs, bits, nbytes = row.pop("_msgs"), row.pop("_bits"), row.pop("_io_bytes")
        route = routes.get(layer, Route(0.0, 0.0))
        row["spike_hop"] = energy("spike_hop", msgs * (route.hops + route.chip_hops))
        row["payload"] = energy("graded_payload_bit", bits)
        row["io"] = energy("chip_io_byte", nbytes)
        chip_terms = [row[k] for k in ("synaptic", "neuron_active", "neuron_idle", "spike_local",
                                       "spike_hop", "payload")]
        row["chip"] = sum(t for t in chip_terms if t is not None)
        row["chip_complete"] = all(t is not None for t in chip_terms)
    latency = _latency(counts, chip, host_timing or host, cores, chips, timesteps, routes,
                       rate, f)
    latency_ns = latency["token"]["total_ns"]
    p_static = f.get(chip, "energy", "static_power", "mW", "chip static power")
    static = None if (latency_ns is None or p_static is None) else chips * p_static * latency_ns
    return {"layers": layers, "host_by_kind": host_kind, "latency_ns": latency_ns,
            "latency": latency, "static": static}, f


def _total(core: dict[str, Any]) -> tuple[float, dict[str, float | None]]:
    """The priced subtotal and the parts; a part with a missing figure is None."""
    rows = core["layers"].values()
    parts: dict[str, float | None] = {
        "chip_dynamic": sum(r["chip"] for r in rows),
        "chip_static": core["static"],
        "host": sum(r["host"] or 0.0 for r in rows),
        "io": sum(r["io"] or 0.0 for r in rows)}
    subtotal = sum(v or 0.0 for v in parts.values())
    if not all(r["chip_complete"] for r in rows):
        parts["chip_dynamic"] = None
    for key in ("host", "io"):
        if any(r[key] is None for r in rows):
            parts[key] = None
    return subtotal, parts


def price_target(counts: OpCounts, chip: HardwareProfile, host: HardwareProfile | None = None,
                 timesteps: float | None = None, hops: float | None = None,
                 sensitivity_factor: float = DEFAULT_SENSITIVITY_FACTOR, *,
                 resources: Mapping[str, Any] | None = None,
                 host_timing: HardwareProfile | None = None,
                 prompt_tokens: int = DEFAULT_PROMPT_TOKENS) -> dict[str, Any]:
    """Per-token energy and latency of ``counts`` on ``chip`` (host ops on ``host``, host
    compute time on ``host_timing``, default the ``cpu`` profile); ``resources`` is
    ``map_resources`` of the partitioned IR (cores per node, chips). See the docstring."""
    if chip.role != "chip":
        raise ProfileError(f"profile {chip.name!r} is a {chip.role} profile; a chip target "
                           f"needs role = chip")
    host = host or load_host(chip)
    timing = host_timing or _load_profile(DEFAULT_HOST_TIMING)
    cores = None if resources is None else {r["node"]: int(r["cores"])
                                            for r in resources["layers"]}
    steps = float(counts.pipeline["lava_timesteps"] if timesteps is None else timesteps)
    if steps < 0 or (hops is not None and hops < 0) or sensitivity_factor <= 0:
        raise DataError("timesteps and hops must be >= 0 and the sensitivity factor > 0")
    mapping, routes = message_routes(counts, chip, resources, hops)
    chips = mapping["chips"]
    extra = {"host_timing": timing, "cores": cores}
    core, figs = _price(counts, chip, host, steps, routes, chips, **extra)
    subtotal, parts = _total(core)
    unsupported = figs.missing + [dict(u, profile=counts.target) for u in counts.unsupported]
    k = sensitivity_factor
    sens = {"factor": k}
    for label, kw in (("firing_rate_x", {"rate": k}), ("firing_rate_div", {"rate": 1 / k}),
                      ("proxy_x", {"kind_factors": {"proxy": k}}),
                      ("proxy_div", {"kind_factors": {"proxy": 1 / k}}),
                      ("estimate_x", {"kind_factors": {"estimate": k}}),
                      ("estimate_div", {"kind_factors": {"estimate": 1 / k}})):
        sens[label] = _total(_price(counts, chip, host, steps, routes, chips,
                                    **kw, **extra)[0])[0]  # type: ignore[arg-type]
    regimes = _regimes(counts, chip, host, steps, routes, chips, prompt_tokens, extra)
    return {
        "target": {"name": chip.name, "title": chip.title, "sha256": chip.sha256},
        "host": {"name": host.name, "title": host.title, "sha256": host.sha256},
        "tokens": counts.tokens, "policy": counts.policy, "partitioned_for": counts.target,
        "timesteps_per_token": steps, "latency_ns": core["latency_ns"],
        "latency": core["latency"], "regimes": regimes,
        "mapping": mapping,
        "layers": core["layers"], "host_by_kind": core["host_by_kind"],
        "per_token": {**parts, "total": None if unsupported else subtotal,
                      "priced_subtotal": subtotal},
        "complete": not unsupported, "unsupported": unsupported,
        "figures": sorted(figs.used.values(), key=lambda d: (d["profile"], d["section"],
                                                            d["key"])),
        "sensitivity": sens,
        "assumptions": [
            f"timesteps per token = {steps:g} ("
            + ("the Lava pipeline depth: Dense hops on the longest path + 1"
               if timesteps is None else "given") + ")",
            f"{mapping['hops_per_message']:.3g} hops per spike message on average ("
            + ("each layer's own, from the placement of its sources and readers"
               if mapping["placed"]
               else "mean Manhattan distance on the mapped mesh" if hops is None else "given")
            + ")",
            "token latency = chip timesteps x the work-based timestep + host compute time (on "
            f"{timing.name}) + chip-host transfers, added without overlap; static power is "
            "counted over that latency",
            "host float ops priced per op; weight memory traffic on the host is not counted",
            *mapping["notes"]],
    }


def _regimes(counts: OpCounts, chip: HardwareProfile, host: HardwareProfile, decode: float,
             routes: Mapping[str, Route], chips: int, prompt_tokens: int, extra: dict[str, Any]
             ) -> dict[str, Any]:
    """Energy and latency per token of prefill and decode, from the schedule's timesteps."""
    pipe = counts.pipeline
    prefill = float(pipe.get("prefill_timesteps_per_token", decode))
    depth = float(pipe.get("depth_timesteps", decode))
    out: dict[str, Any] = {}
    for name, steps in (("prefill", prefill), ("decode", decode)):
        core, _ = _price(counts, chip, host, steps, routes, chips, **extra)
        out[name] = {"timesteps_per_token": steps, "tokens_per_timestep": 1.0 / max(steps, 1e-9),
                     "energy_per_token_pj": _total(core)[0], "latency_per_token_ns":
                     core["latency_ns"], "static_per_token_pj": core["static"]}
    one = _price(counts, chip, host, depth, routes, chips, **extra)[0]["latency_ns"]
    ttft_steps = (max(int(prompt_tokens), 1) - 1) * prefill + depth
    pre = out["prefill"]["latency_per_token_ns"]
    out["depth_latency_ns"] = one
    out["prefill"].update(prompt_tokens=int(prompt_tokens), ttft_timesteps=ttft_steps,
                          ttft_ns=None if one is None or pre is None
                          else (max(int(prompt_tokens), 1) - 1) * pre + one)
    return out
