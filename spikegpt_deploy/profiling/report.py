"""Profile reports as text: the terminal table, profile.json and one CSV per table.

The rows come from ``layer_rows`` / ``target_rows``, shared with the HTML report, so the
terminal, the CSV files and the HTML show the same numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..naming import layer_rank
from ..outputs import output_folder, write_atomic
from .pricing import PAPER_FIRING_RATE, ProfileResult

LAYER_COLUMNS = ("layer", "rate_emb", "rate_lif1", "rate_lif2", "synaptic_ops", "host_ops",
                 "chip_pj", "host_pj", "io_pj", "total_pj")


def fmt_energy(pj: float | None) -> str:
    """12345.0 -> '12.3 nJ'; None -> 'n/a'."""
    if pj is None or (isinstance(pj, float) and math.isnan(pj)):
        return "n/a"
    for unit, scale in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


def fmt_time(ns: float | None) -> str:
    """1234.0 -> '1.23 us'; None -> 'n/a'."""
    if ns is None or (isinstance(ns, float) and math.isnan(ns)):
        return "n/a"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(ns) >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def latency_terms(price: dict[str, Any]) -> list[dict[str, Any]]:
    """The token's latency as separate terms (ns), with what each rests on."""
    lat = price.get("latency") or {}
    tok, step = lat.get("token") or {}, lat.get("timestep") or {}
    crit = step.get("critical") or {}
    far = step.get("network_layer")
    hops = f" ({far}: {step.get('hops', 0):.2f} hops)" if far else ""
    how = (f"{tok.get('timesteps', 0):g} timesteps x {fmt_time(tok.get('timestep_ns'))}"
           + (f"; slowest core {crit['name']} ({crit['bound']}-bound) "
              f"{fmt_time(crit['time_ns'])} + network {fmt_time(step.get('network_ns'))}"
              f"{hops} + barrier {fmt_time(step.get('barrier_ns'))}" if crit else
              " (a fixed tick)" if step.get("model") == "fixed" else ""))
    return [{"term": "chip timesteps", "ns": tok.get("chip_ns"), "how": how},
            {"term": "host compute", "ns": tok.get("host_ns"),
             "how": f"host ops per token x time per op on {lat.get('host_timing', '?')}"},
            {"term": "chip-host transfers", "ns": tok.get("io_ns"),
             "how": f"{lat.get('io_crossings', 0):g} crossings, "
                    f"{lat.get('io_bytes', 0):,.0f} B per token"},
            {"term": "token", "ns": tok.get("total_ns"), "how": "sum of the terms (no overlap)"}]


def latency_rows(result: ProfileResult, target: str | None = None) -> list[dict[str, Any]]:
    """Per layer: its slowest core, what bounds it and its time terms (ns), per token."""
    step = (result.prices[target or result.primary].get("latency") or {}).get("timestep") or {}
    return [{"layer": layer, "critical_core": c["name"], "cores_in_node": c["cores"],
             "bound": c["bound"], "core_ns": c["time_ns"], "synapses_ns": c["synapses_ns"],
             "neurons_ns": c["neurons_ns"], "messages_ns": c["messages_ns"],
             "synaptic_ops": c["synaptic_ops"], "neuron_updates": c["neuron_active"]
             + c["neuron_idle"], "messages": c["messages"]}
            for layer, c in sorted((step.get("layers") or {}).items(),
                                   key=lambda kv: layer_rank(kv[0]))]


def fmt_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def layer_rows(result: ProfileResult, target: str | None = None) -> list[dict[str, Any]]:
    """One row per layer for ``target`` (default: the first): firing rates, per-token synaptic
    ops, host ops and energy in pJ split chip / host / I/O."""
    target = target or result.primary
    counts, price = result.counts[target], result.prices[target]
    rates: dict[str, dict[str, float]] = {}
    for name, pop in counts.populations.items():
        kind = "emb" if name == "emb" else name.rsplit(".", 1)[-1]
        rates.setdefault(pop["layer"], {})[kind] = pop["rate"]
    rows = []
    for layer in counts.layers:
        lt = counts.per_token_layer(layer)
        e = price["layers"][layer]
        host_ops = sum(counts.host_ops.get(layer, {}).values())
        parts = [e["chip"], e["host"], e["io"]]
        rows.append({"layer": layer, "rate_emb": rates.get(layer, {}).get("emb"),
                     "rate_lif1": rates.get(layer, {}).get("lif1"),
                     "rate_lif2": rates.get(layer, {}).get("lif2"),
                     "synaptic_ops": lt.get("synaptic_ops", 0.0) + lt.get("accumulate_ops", 0.0),
                     "host_ops": host_ops, "chip_pj": e["chip"], "host_pj": e["host"],
                     "io_pj": e["io"],
                     "total_pj": None if any(p is None for p in parts) or not e["chip_complete"]
                     else sum(parts)})
    return rows


def target_rows(result: ProfileResult) -> list[dict[str, Any]]:
    """Per-token totals of every target and baseline, with the ratios to the ANN baselines."""
    ann45 = result.ann.get("cmos45nm", {}).get("per_token", {}).get("priced_subtotal")
    gpu = result.ann.get("gpu", {}).get("per_token", {}).get("priced_subtotal")
    rows = []
    for name, p in result.prices.items():
        pt = p.get("per_token", {})
        sub = pt.get("priced_subtotal")
        rows.append({"name": name, "kind": "chip target", "chip_dynamic_pj": pt.get("chip_dynamic"),
                     "chip_static_pj": pt.get("chip_static"), "host_pj": pt.get("host"),
                     "io_pj": pt.get("io"), "total_pj": pt.get("total"),
                     "priced_subtotal_pj": sub, "complete": p.get("complete", False),
                     "vs_ann_45nm": sub / ann45 if sub is not None and ann45 else None,
                     "vs_gpu": sub / gpu if sub is not None and gpu else None})
    for name, a in result.ann.items():
        sub = a["per_token"]["priced_subtotal"]
        rows.append({"name": f"ANN on {name}", "kind": "dense ANN baseline",
                     "chip_dynamic_pj": None, "chip_static_pj": None, "host_pj": sub,
                     "io_pj": None, "total_pj": a["per_token"]["total"],
                     "priced_subtotal_pj": sub, "complete": a["complete"],
                     "vs_ann_45nm": sub / ann45 if ann45 else None,
                     "vs_gpu": sub / gpu if gpu else None})
    pp = result.paper
    for label, value in ((f"paper formula ANN (MACs x {pp['e_mac_pj']:g} pJ)", pp["ann_pj"]),
                         (f"paper formula SNN ({pp['firing_rate']:g} x MACs x {pp['e_ac_pj']:g} pJ)",
                          pp["snn_pj"])):
        rows.append({"name": label, "kind": "paper formula", "chip_dynamic_pj": None,
                     "chip_static_pj": None, "host_pj": None, "io_pj": None, "total_pj": value,
                     "priced_subtotal_pj": value, "complete": True,
                     "vs_ann_45nm": value / ann45 if ann45 else None,
                     "vs_gpu": value / gpu if gpu else None})
    return rows


def fmt_rate(r: float | None) -> str:
    return "-" if r is None else f"{r:.3f}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.3g}x"


def unsupported_rows(result: ProfileResult) -> list[tuple[str, dict[str, Any]]]:
    """(where, entry) for everything a target or an ANN baseline could not price."""
    rows = [(t, u) for t, p in result.prices.items() for u in p.get("unsupported", [])]
    return rows + [(f"ANN on {n}", u) for n, a in result.ann.items() for u in a["unsupported"]]


def render_table(result: ProfileResult) -> str:
    """The terminal report: per-layer table of the first target, then totals per target."""
    m, target = result.meta, result.primary
    price = result.prices[target]
    lines = [f"model {m.get('model', '?')}  tokens {m['tokens']}  policy {m['policy']}  "
             f"data {m.get('data', '?')} ({m.get('split', '?')})",
             f"target {target} (host ops on {price['host']['name']}), per token; firing rates "
             f"vs the paper's {PAPER_FIRING_RATE}", ""]
    head = (f"{'layer':<10}{'emb':>7}{'lif1':>7}{'lif2':>7}{'syn ops':>10}{'host ops':>10}"
            f"{'chip':>11}{'host':>11}{'I/O':>11}{'total':>11}")
    lines += [head, "-" * len(head)]
    for r in layer_rows(result, target):
        lines.append(f"{r['layer']:<10}{fmt_rate(r['rate_emb']):>7}{fmt_rate(r['rate_lif1']):>7}"
                     f"{fmt_rate(r['rate_lif2']):>7}{fmt_count(r['synaptic_ops']):>10}"
                     f"{fmt_count(r['host_ops']):>10}{fmt_energy(r['chip_pj']):>11}"
                     f"{fmt_energy(r['host_pj']):>11}{fmt_energy(r['io_pj']):>11}"
                     f"{fmt_energy(r['total_pj']):>11}")
    pt = price["per_token"]
    lines += ["", f"latency per token on {target} (separate terms):"]
    lines += [f"  {t['term']:<20}{fmt_time(t['ns']):>10}  {t['how']}"
              for t in latency_terms(price)]
    rows = latency_rows(result, target)
    if rows:
        head = (f"  {'layer':<10}{'slowest core':<34}{'bound':>9}{'core time':>11}{'syn ops':>9}"
                f"{'neurons':>9}{'msgs':>8}")
        lines += [head, "  " + "-" * (len(head) - 2)]
        lines += [f"  {r['layer']:<10}{r['critical_core'][:33]:<34}{r['bound']:>9}"
                  f"{fmt_time(r['core_ns']):>11}{fmt_count(r['synaptic_ops']):>9}"
                  f"{fmt_count(r['neuron_updates']):>9}{fmt_count(r['messages']):>8}"
                  for r in rows]
    lines += ["", f"static: {fmt_energy(pt['chip_static'])} per token over the "
              f"{fmt_time(price.get('latency_ns'))} latency ({price['mapping']['chips']} chip(s), "
              f"{price['mapping']['cores']} core(s), {price['mapping']['hops_per_message']:.2f} "
              f"hops/message)"]
    regimes = price.get("regimes", {})
    for name, reg in ((k, v) for k, v in regimes.items() if isinstance(v, dict)):
        ttft = ""
        if name == "prefill" and reg.get("ttft_ns") is not None:
            ttft = (f"; TTFT for {reg['prompt_tokens']} prompt tokens "
                    f"{fmt_time(reg['ttft_ns'])} ({reg['ttft_timesteps']:g} timesteps)")
        lat = reg["latency_per_token_ns"]
        lines.append(f"{name}: {reg['timesteps_per_token']:g} timestep(s) per token, "
                     f"{fmt_energy(reg['energy_per_token_pj'])} per token"
                     + ("" if lat is None else f", {fmt_time(lat)} per token") + ttft)
    lines.append("")
    head = f"{'per token':<46}{'total':>11}{'vs ANN 45nm':>13}{'vs GPU':>10}"
    lines += [head, "-" * len(head)]
    for r in target_rows(result):
        total = fmt_energy(r["total_pj"]) if r["complete"] else \
            f">={fmt_energy(r['priced_subtotal_pj'])}" if r["priced_subtotal_pj"] else "n/a"
        lines.append(f"{r['name'][:45]:<46}{total:>11}{fmt_ratio(r['vs_ann_45nm']):>13}"
                     f"{fmt_ratio(r['vs_gpu']):>10}")
    pp = result.paper
    lines += ["", f"paper formula: E_ANN / E_SNN = {pp['ann_over_snn']:.3g} at rate "
              f"{pp['firing_rate']:g}; measured LIF rate {pp['measured_lif_rate']:.4f}"]
    for t, mres in pp["measured"].items():
        lines.append(f"  {t}: measured {fmt_energy(mres['priced_subtotal_pj'])} = "
                     f"{fmt_ratio(mres['measured_over_paper_snn'])} the paper's SNN estimate")
    s = price["sensitivity"]
    k = s["factor"]
    lines.append(f"sensitivity ({target}): firing rates x{k:g} {fmt_energy(s['firing_rate_x'])}, "
                 f"/{k:g} {fmt_energy(s['firing_rate_div'])}; proxy figures x{k:g} "
                 f"{fmt_energy(s['proxy_x'])}, /{k:g} {fmt_energy(s['proxy_div'])}; estimates "
                 f"x{k:g} {fmt_energy(s['estimate_x'])}, /{k:g} {fmt_energy(s['estimate_div'])}")
    unsupported = unsupported_rows(result)
    if unsupported:
        lines += ["", "unsupported (not priced, never counted as zero):"]
        lines += [f"  {t}: {u.get('what', '')}: {u.get('reason', '')}" for t, u in unsupported]
    if result.neurobench is not None:
        lines += ["", render_neurobench(result.neurobench)]
    return "\n".join(lines)


def write_json(result: ProfileResult, path: str | Path) -> Path:
    """profile.json, written atomically (its folder must exist)."""
    return write_atomic(path, json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n")


def load_json(path: str | Path) -> ProfileResult:
    """Read a profile.json written by ``write_json``; DataError with the reason otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror}); pass the profile.json that "
                        f"spikegpt-deploy profile wrote") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a JSON file ({exc})") from None
    return ProfileResult.from_dict(data, source=str(path))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["empty"])
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(path, buf.getvalue())


def write_csvs(result: ProfileResult, out_dir: str | Path) -> list[Path]:
    """layers_<target>.csv per priced target, populations.csv, host_ops.csv and targets.csv."""
    out = Path(out_dir)
    paths = [_write_csv(out / f"layers_{t}.csv", layer_rows(result, t)) for t in result.counts]
    paths += [_write_csv(out / f"latency_{t}.csv", latency_rows(result, t))
              for t in result.counts if latency_rows(result, t)]
    counts = result.counts[result.primary]
    pops = [{"population": n, "layer": p["layer"], "placement": p["placement"],
             "neurons": p["neurons"], "spikes": p["spikes"], "firing_rate": p["rate"],
             "paper_rate": PAPER_FIRING_RATE, "active_updates": p.get("active_updates", ""),
             "idle_updates": p.get("idle_updates", "")} for n, p in counts.populations.items()]
    paths.append(_write_csv(out / "populations.csv", pops))
    kinds = sorted({k for v in counts.host_ops.values() for k in v})
    host = [{"layer": layer, **{k: counts.host_ops.get(layer, {}).get(k, 0) for k in kinds}}
            for layer in counts.layers]
    paths.append(_write_csv(out / "host_ops.csv", host))
    paths.append(_write_csv(out / "targets.csv", target_rows(result)))
    if result.neurobench is not None:
        paths.append(_write_csv(out / "neurobench_layers.csv", result.neurobench["layers"]))
        paths.append(_write_csv(out / "neurobench_populations.csv",
                                result.neurobench["populations"]))
    return paths


def write_outputs(result: ProfileResult, out_dir: str | Path) -> list[Path]:
    """profile.json plus the CSV tables in ``out_dir`` (created if missing; its parent must
    exist), each file written atomically."""
    with output_folder(out_dir, "-o/--out") as out:
        return [write_json(result, out / "profile.json"), *write_csvs(result, out)]


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}" if abs(v) < 1e3 else fmt_count(v)


def render_neurobench(nb: dict[str, Any]) -> str:
    """NeuroBench's metrics beside ours: one row per linear layer, then the populations."""
    w = nb["whole_model"]
    syn = nb["synaptic_operations"]["value"] or {}
    lines = [f"NeuroBench 2.3 metrics on the PyTorch model, {nb['tokens']} tokens, per token "
             f"(ours beside):",
             f"  whole model: Footprint {_fmt(w['Footprint']['value'])} B, ConnectionSparsity "
             f"{_fmt(w['ConnectionSparsity']['value'])}, ActivationSparsity "
             f"{_fmt(w['ActivationSparsity']['value'])} ({w['activation_hooks']['value']} "
             f"activation modules found), SynapticOperations: Effective_MACs "
             f"{_fmt(syn.get('Effective_MACs'))}, Effective_ACs {_fmt(syn.get('Effective_ACs'))}, "
             f"Dense {_fmt(syn.get('Dense'))}", ""]
    head = (f"  {'layer':<24}{'place':>6}{'NB class':>9}{'NB eff':>9}{'NB dense':>9}{'ours':>9}"
            f"{'NB chip':>9}{'NB fp B':>9}{'our fp B':>9}{'NB csp':>8}{'our csp':>8}")
    lines += [head, "  " + "-" * (len(head) - 2)]
    for r in nb["layers"]:
        lines.append(
            f"  {r['layer'][:23]:<24}{r['placement']:>6}{r['neurobench_class']:>9}"
            f"{_fmt(r['neurobench_effective']):>9}{_fmt(r['neurobench_dense']):>9}"
            f"{_fmt(r['ours']):>9}{_fmt(r['neurobench_on_chip_linears']):>9}"
            f"{_fmt(r['footprint_neurobench_b']):>9}{_fmt(r['footprint_ours_b']):>9}"
            f"{_fmt(r['connection_sparsity_neurobench']):>8}"
            f"{_fmt(r['connection_sparsity_ours']):>8}")
        lines.append(f"      {r['reason']}")
    lines += ["", f"  {'population':<16}{'NB ActivationSparsity':>23}{'ours (1 - rate)':>17}"]
    lines += [f"  {p['population']:<16}{_fmt(p['activation_sparsity_neurobench'], 4):>23}"
              f"{_fmt(p['activation_sparsity_ours'], 4):>17}" for p in nb["populations"]]
    lines += ["", "  differences:"] + [f"  - {d}" for d in nb["differences"]]
    return "\n".join(lines)
