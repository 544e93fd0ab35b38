"""Cross-check of the profiler's chip energy and latency with an independent simulator, SANA-FE.

``crosscheck_bundle`` runs the bundle in Lava on the first tokens of a text (the spikes the
profiler counts), prices the counts on a chip profile (default ``loihi``: Davies et al. 2018's
per-event figures, which SANA-FE's Loihi model also uses), writes the mapped chip network in
SANA-FE's input format (``arch.yaml`` with the same per-event figures, ``snn.yaml``), runs SANA-FE
on it and returns, per layer, our chip energy and SANA-FE's. SANA-FE's events are attributed to
layers from its own traces (messages per source group, synaptic events per destination core,
neuron updates per group), and the attribution must add up to SANA-FE's reported totals.

SANA-FE is GPL-3.0 and an optional extra (``pip install 'spikegpt-deploy[crosscheck]'``): it
is imported here, when the cross-check runs, and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from hw_profiles import HardwareProfile, load_profile

from ..errors import DataError
from ..optional import install_line, require
from ..placement import mesh_of
from .sanafe_net import EPS, CrossCheckError, Group, arch_description, assign_cores, \
    chip_groups, core_of_neurons, write_arch

__all__ = ["CrossCheckError", "INSTALL_HINT", "crosscheck_bundle", "import_sanafe",
           "render_table", "run_sanafe", "write_result"]

log = logging.getLogger(__name__)
INSTALL_HINT = install_line("crosscheck")
COMPARED_TERMS = ("synaptic", "neuron_active", "neuron_idle", "spike_local", "spike_hop")


def import_sanafe() -> Any:
    return require("sanafe", "crosscheck", "--simulator sanafe needs SANA-FE (GPL-3.0)",
                   CrossCheckError)


def _build(sanafe: Any, groups: list[Group], arch: Any, per_core: int) -> Any:
    """The SANA-FE network of ``groups`` on ``arch``'s cores (core id = placement core)."""
    cores = arch.cores()
    net = sanafe.Network()
    made: dict[str, Any] = {}
    receiver = {"threshold": EPS, "reverse_threshold": -EPS, "reset": 0.0,
                "reverse_reset": 0.0, "reset_mode": "hard", "reverse_reset_mode": "hard",
                "leak_decay": 0.0}
    for g in groups:
        if g.trains is not None:
            grp = net.create_neuron_group(g.name, g.neurons, model_attributes={})
            for i, neuron in enumerate(grp.neurons):
                neuron.set_attributes(soma_hw_name=f"replay[{i % per_core}]",
                                      model_attributes={"spikes": g.trains[:, i].tolist()})
        else:
            attrs = dict(receiver, force_update=True) if g.force_update else receiver
            grp = net.create_neuron_group(g.name, g.neurons, model_attributes=attrs,
                                          soma_hw_name="lif", log_spikes=True)
        for neuron, core in zip(grp.neurons, core_of_neurons(g)):
            neuron.map_to_core(cores[core])
        made[g.name] = grp
    for g in groups:
        for source, pairs in g.inputs:
            made[source].connect_neurons_sparse(made[g.name], {"weight": [1.0] * pairs.shape[1]},
                                                list(zip(pairs[0].tolist(), pairs[1].tolist())))
    return net


def run_sanafe(groups: list[Group], profile: HardwareProfile, tokens: int,
               out_dir: Path, placement: dict[str, Any]) -> dict[str, Any]:
    """Write arch.yaml and snn.yaml into ``out_dir`` (groups on the cores of ``placement``,
    ``placement.place``), simulate ``tokens`` + 1 timesteps (the last integrates the last
    token's messages) and attribute SANA-FE's events to layers."""
    sanafe = import_sanafe()
    per_core = int(profile.quantity("capacity", "neurons_per_core").to("count"))
    assign_cores(groups, placement)
    arch_path = write_arch(arch_description(profile, mesh_of(placement)),
                           out_dir / "arch.yaml")
    arch = sanafe.load_arch(str(arch_path))
    net = _build(sanafe, groups, arch, per_core)
    net.save(str(out_dir / "snn.yaml"))
    chip = sanafe.SpikingChip(arch)
    chip.load(net)
    with _stdout_to_stderr():   # SANA-FE prints progress on stdout; keep it for our output
        res = chip.sim(tokens + 1, perf_trace=True, message_trace=True, spike_trace=True,
                       processing_threads=1)
    return _attribute(res, groups, profile, tokens)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):   # it prints through Python and C
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _attribute(res: dict[str, Any], groups: list[Group], profile: HardwareProfile,
               tokens: int) -> dict[str, Any]:
    e = {k: profile.quantity("energy", k).to("pJ") for k in (
        "synaptic_op", "neuron_update_active", "neuron_update_idle", "spike_local", "spike_hop")}
    by_name = {g.name: g for g in groups}
    core_layer = {c: g.layer for g in groups if g.trains is None for c in g.cores}
    layers = list(dict.fromkeys(g.layer for g in groups))
    rows = {layer: {"synaptic": 0.0, "neuron": 0.0, "messages": 0.0, "synaptic_events": 0,
                    "neuron_updates": 0, "packets": 0, "hops": 0} for layer in layers}
    for step in res["message_trace"]:
        for m in step:
            if m["placeholder"]:
                continue
            src = rows[by_name[m["src_neuron_group_id"]].layer]
            src["packets"] += 1
            src["hops"] += int(m["hops"])
            rows[core_layer[int(m["dest_core_id"])]]["synaptic_events"] += int(m["spikes"])
    fired: dict[str, int] = {}
    for step in res["spike_trace"][1:]:       # timestep 1 only fills the pipeline
        for address in step:
            fired[address.group_name] = fired.get(address.group_name, 0) + 1
    for g in groups:
        if g.trains is None:
            updates = g.neurons * tokens if g.force_update else fired.get(g.name, 0)
            rows[g.layer]["neuron_updates"] += updates
            rows[g.layer]["neuron"] += (g.neurons * tokens * e["neuron_update_idle"] + updates * (
                e["neuron_update_active"] - e["neuron_update_idle"])) / tokens
    for row in rows.values():
        row["synaptic"] = row["synaptic_events"] * e["synaptic_op"] / tokens
        row["messages"] = (row["packets"] * e["spike_local"] + row["hops"] * e["spike_hop"]
                           ) / tokens
        row["chip"] = row["synaptic"] + row["neuron"] + row["messages"]
    perf = res["perf_trace"]
    sim = {"synaptic": sum(perf["synapse_energy"]) * 1e12 / tokens,
           "neuron": sum(perf["soma_energy"][1:]) * 1e12 / tokens,
           "messages": sum(perf["network_energy"]) * 1e12 / tokens}
    for key, total in sim.items():
        ours = sum(r[key] for r in rows.values())
        if not math.isclose(ours, total, rel_tol=1e-6, abs_tol=1e-6):
            raise CrossCheckError(f"SANA-FE's {key} energy {total:.6g} pJ/token differs from its "
                                  f"events attributed to layers ({ours:.6g}); the mapping is "
                                  f"not the one this cross-check assumes")
    return {"layers": rows, "per_token_pj": {**sim, "chip": sum(sim.values())},
            "latency_ns": sum(perf["sim_time"]) * 1e9 / tokens,
            "timesteps": int(res["timesteps_executed"]),
            "cores": len({c for g in groups for c in g.cores}),
            "neurons": sum(g.neurons for g in groups),
            "synapses": sum(p.shape[1] for g in groups for _, p in g.inputs)}


def _ours(counts: Any, profile: HardwareProfile, timesteps: float,
          resources: Any = None) -> dict[str, Any]:
    """Our per-layer chip energy and the chip time of one token's work: the work-based timestep
    (slowest core + network + barrier), which is what one SANA-FE timestep per token measures."""
    from ..profiling.pricing import price_target

    price = price_target(counts, profile, None, timesteps, resources=resources)
    step = (price.get("latency") or {}).get("timestep") or {}
    layers = {}
    for layer, row in price["layers"].items():
        parts = {k: row.get(k) or 0.0 for k in COMPARED_TERMS}
        layers[layer] = {"synaptic": parts["synaptic"],
                         "neuron": parts["neuron_active"] + parts["neuron_idle"],
                         "messages": parts["spike_local"] + parts["spike_hop"],
                         "payload": row.get("payload"), "chip": sum(parts.values())}
    return {"layers": layers, "latency_ns": step.get("timestep_ns"),
            "hops_per_message": price["mapping"]["hops_per_message"],
            "hops_per_layer": price["mapping"]["hops_per_layer"],
            "timesteps_per_token": price["timesteps_per_token"]}


def crosscheck_bundle(bundle_path: str | Path, data: str, tokens: int,
                      simulator: str = "sanafe", profile: str | Path = "loihi",
                      precision: str = "fixed", split: str = "valid",
                      out_dir: str | Path | None = None) -> dict[str, Any]:
    """Per layer: our chip energy per token and SANA-FE's, their ratio; latency per token."""
    from ..bundle import load_bundle
    from ..data import encode_split, load_corpus
    from ..profiling.counts import count_ops
    from ..simulation import simulate

    if simulator != "sanafe":
        raise CrossCheckError(f"unknown simulator {simulator!r}; available: sanafe")
    import_sanafe()                                    # fail before the Lava run, not after
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise DataError(f"--tokens must be a positive integer, got {tokens!r}")
    prof = load_profile(profile)
    bundle = load_bundle(bundle_path)
    if bundle.tokenizer is None:
        raise DataError(f"{bundle_path}: the bundle has no tokenizer.json; it cannot read {data}")
    ids = encode_split(bundle.tokenizer, load_corpus(data), split)[:tokens]
    if len(ids) < tokens:
        raise DataError(f"the {split} split of {data} has {len(ids)} tokens, fewer than "
                        f"--tokens {tokens}")
    run = simulate(bundle_path, [int(t) for t in ids], 0, precision)
    counts = count_ops(bundle.ir, run.spikes)
    from ..profiling import core_mapping

    mapping = core_mapping(bundle.ir, prof)
    if mapping is None:
        raise CrossCheckError(f"profile {prof.name!r} cannot map the bundle onto cores (a "
                              f"[capacity] figure is missing); the cross-check needs the mapping")
    ours = _ours(counts, prof, float(run.timesteps_per_token), mapping)
    groups = chip_groups(bundle.ir, run.spikes)
    files: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        theirs = run_sanafe(groups, prof, tokens, Path(tmp), mapping["placement"])
        if out_dir is not None:                       # only after SANA-FE ran
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            for f in sorted(Path(tmp).iterdir()):
                files.append(str(shutil.move(str(f), Path(out_dir) / f.name)))
    rows = []
    for layer in ours["layers"]:
        a = ours["layers"][layer]["chip"]
        b = theirs["layers"].get(layer, {}).get("chip", 0.0)
        mine = ours["hops_per_layer"].get(layer, {})
        sim = theirs["layers"].get(layer, {})
        rows.append({"layer": layer, "ours_pj": a, "sanafe_pj": b,
                     "ratio": a / b if b else None,
                     "ours_hops": mine.get("hops", 0.0) + mine.get("chip_hops", 0.0),
                     "sanafe_hops": sim["hops"] / sim["packets"] if sim.get("packets") else 0.0,
                     "ours": ours["layers"][layer], "sanafe": theirs["layers"].get(layer)})
    total_ours = sum(r["ours_pj"] for r in rows)
    total_theirs = theirs["per_token_pj"]["chip"]
    return {"bundle": str(bundle_path), "data": data, "split": split, "tokens": tokens,
            "precision": precision, "profile": {"name": prof.name, "sha256": prof.sha256},
            "simulator": {"name": "sanafe", "version": _version()},
            "layers": rows,
            "total": {"ours_pj": total_ours, "sanafe_pj": total_theirs,
                      "ratio": total_ours / total_theirs if total_theirs else None},
            "latency": {"ours_ns": ours["latency_ns"], "sanafe_ns": theirs["latency_ns"],
                        "ratio": (ours["latency_ns"] / theirs["latency_ns"]
                                  if ours["latency_ns"] and theirs["latency_ns"] else None),
                        "ours_timesteps_per_token": ours["timesteps_per_token"]},
            "mapping": {"sanafe_cores": theirs["cores"], "sanafe_neurons": theirs["neurons"],
                        "sanafe_synapses": theirs["synapses"],
                        "ours_hops_per_message": ours["hops_per_message"]},
            "files": files}


def render_table(result: dict[str, Any]) -> str:
    """The per-layer table of a ``crosscheck_bundle`` result, as text."""
    lines = [f"{result['bundle']}: {result['tokens']} tokens of {result['data']}, chip energy "
             f"per token on the {result['profile']['name']} profile's per-event figures, ours vs "
             f"SANA-FE {result['simulator']['version']}",
             f"  {'layer':<10} {'ours (nJ)':>11} {'SANA-FE (nJ)':>13} {'ratio':>7} "
             f"{'hops/msg ours':>14} {'SANA-FE':>8}"]
    for r in [*result["layers"], {"layer": "total", **result["total"]}]:
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "-"
        hops = (f" {r['ours_hops']:>14.3f} {r['sanafe_hops']:>8.3f}" if "ours_hops" in r
                else "")
        lines.append(f"  {r['layer']:<10} {r['ours_pj'] / 1e3:>11,.2f} "
                     f"{r['sanafe_pj'] / 1e3:>13,.2f} {ratio:>7}{hops}")
    lat = result["latency"]
    ours = f"{lat['ours_ns'] / 1e3:,.1f} us" if lat["ours_ns"] is not None else "-"
    ratio = f"{lat['ratio']:.3f}" if lat["ratio"] is not None else "-"
    lines.append(f"  chip time of one token's work: ours {ours} (work-based timestep), SANA-FE {lat['sanafe_ns'] / 1e3:,.1f} us, "
                 f"ratio {ratio}")
    m = result["mapping"]
    lines.append(f"  SANA-FE network: {m['sanafe_cores']} cores, {m['sanafe_neurons']:,} neurons, "
                 f"{m['sanafe_synapses']:,} synapses")
    return "\n".join(lines)


def write_result(result: dict[str, Any], out_dir: str | Path) -> Path:
    """crosscheck.json beside SANA-FE's input files (written atomically)."""
    import json

    from ..outputs import write_atomic

    return write_atomic(Path(out_dir) / "crosscheck.json", json.dumps(result, indent=2))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sanafe")
    except PackageNotFoundError:
        return "unknown"

