"""A self-contained HTML profile report: tables plus matplotlib plots as base64 PNG.

Nothing is fetched when the file is opened (no scripts, fonts or styles from the network), so
it can be mailed or archived with the profile.json it was made from.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Iterable

from ..outputs import check_output, write_atomic
from .pricing import PAPER_FIRING_RATE, ProfileResult
from .report import (fmt_count, fmt_energy, fmt_rate, fmt_ratio, fmt_time, latency_rows,
                     latency_terms, layer_rows, target_rows,
                     unsupported_rows)

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th { background: #eee; } td.l, th.l { text-align: left; }
.warn { color: #a00; } img { max-width: 100%; } code { background: #f4f4f4; }
"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return ('<img alt="plot" src="data:image/png;base64,'
            + base64.b64encode(buf.getvalue()).decode("ascii") + '">')


def _plots(result: ProfileResult) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    target = result.primary
    rows = layer_rows(result, target)
    out = []
    fig, ax = plt.subplots(figsize=(9, 3.5))
    x = np.arange(len(rows))
    for i, (key, label) in enumerate((("rate_emb", "embedding"), ("rate_lif1", "lif1"),
                                      ("rate_lif2", "lif2"))):
        vals = [r[key] if r[key] is not None else np.nan for r in rows]
        ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=label)
    ax.axhline(PAPER_FIRING_RATE, color="k", ls="--", label=f"paper's {PAPER_FIRING_RATE}")
    ax.set_xticks(x, [r["layer"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("firing rate (spikes / neuron / token)")
    ax.set_title("Measured firing rate per layer vs the paper's assumed 0.15")
    ax.legend(fontsize=8)
    out.append(_png(fig))

    fig, ax = plt.subplots(figsize=(9, 3.5))
    bottom = np.zeros(len(rows))
    for key, label in (("chip_pj", "chip dynamic"), ("host_pj", "host"), ("io_pj", "chip-host I/O")):
        vals = np.array([(r[key] or 0.0) / 1e3 for r in rows])
        ax.bar(x, vals, 0.6, bottom=bottom, label=label)
        bottom += vals
    ax.set_xticks(x, [r["layer"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("nJ per token")
    ax.set_title(f"Energy per layer on {target} (static power not split by layer)")
    ax.legend(fontsize=8)
    out.append(_png(fig))

    trows = [r for r in target_rows(result) if r["priced_subtotal_pj"]]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(trows) + 1.2))
    y = np.arange(len(trows))
    colors = {"chip target": "tab:blue", "dense ANN baseline": "tab:orange",
              "paper formula": "tab:gray"}
    ax.barh(y, [r["priced_subtotal_pj"] / 1e3 for r in trows],
            color=[colors.get(r["kind"], "tab:green") for r in trows])
    ax.set_yticks(y, [r["name"] + ("" if r["complete"] else " (incomplete)") for r in trows])
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("nJ per token (log scale)")
    ax.set_title("Targets compared")
    out.append(_png(fig))
    return out


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]], left: int = 1,
           left_last: bool = False) -> str:
    """An HTML table; the first ``left`` columns (and the last, with ``left_last``) align left."""
    hs = list(headers)

    def cls(i: int) -> str:
        return "l" if i < left or (left_last and i == len(hs) - 1) else ""

    parts = ["<table><tr>" + "".join(
        f'<th class="{cls(i)}">{html.escape(h)}</th>' for i, h in enumerate(hs)) + "</tr>"]
    for row in rows:
        parts.append("<tr>" + "".join(
            f'<td class="{cls(i)}">{html.escape(str(v))}</td>'
            for i, v in enumerate(row)) + "</tr>")
    return "\n".join(parts) + "</table>"


def _neurobench_html(nb: dict[str, Any]) -> list[str]:
    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"

    return [f"<h2>NeuroBench's metrics beside ours ({nb['tokens']} tokens, per token)</h2>",
            _table(["layer", "placement", "NeuroBench class", "NeuroBench effective",
                    "NeuroBench dense", "ours", "NeuroBench on the chip linears",
                    "footprint NB (B)", "footprint ours (B)", "conn. sparsity NB",
                    "conn. sparsity ours", "why they differ"],
                   [[r["layer"], r["placement"], r["neurobench_class"],
                     num(r["neurobench_effective"]), num(r["neurobench_dense"]), num(r["ours"]),
                     num(r["neurobench_on_chip_linears"]), num(r["footprint_neurobench_b"]),
                     num(r["footprint_ours_b"]), num(r["connection_sparsity_neurobench"]),
                     num(r["connection_sparsity_ours"]), r["reason"]] for r in nb["layers"]],
                   left=3, left_last=True),
            _table(["population", "NeuroBench ActivationSparsity", "ours (1 - rate)"],
                   [[p["population"], num(p["activation_sparsity_neurobench"]),
                     num(p["activation_sparsity_ours"])] for p in nb["populations"]]),
            "<ul>" + "".join(f"<li>{html.escape(d)}</li>" for d in nb["differences"]) + "</ul>"]


def render_html(result: ProfileResult) -> str:
    """The report as one HTML string (see the module docstring)."""
    m, target = result.meta, result.primary
    price = result.prices[target]
    e = html.escape
    def meta(key: str, n: int = 64) -> str:
        return e(str(m.get(key) or "?")[:n])

    body = [f"<h1>SpikeGPT deployment profile: {e(target)}</h1>",
            f"<p>Model <code>{meta('model')}</code> (sha256 <code>{meta('model_sha256', 16)}"
            f"</code>), data {meta('data')} ({meta('split')}, sha256 <code>"
            f"{meta('data_sha256', 16)}</code>), {m['tokens']} tokens, policy <b>"
            f"{e(m['policy'])}</b>, host ops on {e(price['host']['name'])}. Counts are measured "
            f"on the recorded spikes; energies are per token.</p>"]
    plots = _plots(result)
    body += ["<h2>Firing rates</h2>", plots[0], "<h2>Per layer</h2>", plots[1]]
    body.append(_table(
        ["layer", "emb rate", "lif1 rate", "lif2 rate", "synaptic ops", "host ops", "chip",
         "host", "I/O", "total"],
        [[r["layer"], *(fmt_rate(r[k]) for k in ("rate_emb", "rate_lif1", "rate_lif2")),
          fmt_count(r["synaptic_ops"]), fmt_count(r["host_ops"]), fmt_energy(r["chip_pj"]),
          fmt_energy(r["host_pj"]), fmt_energy(r["io_pj"]), fmt_energy(r["total_pj"])]
         for r in layer_rows(result, target)]))
    body.append(f"<h2>Latency per token on {e(target)}</h2>")
    body.append(_table(["term", "time", "what it rests on"],
                       [[t["term"], fmt_time(t["ns"]), t["how"]] for t in latency_terms(price)],
                       left_last=True))
    body.append(_table(
        ["layer", "slowest core", "bound", "core time", "synapses", "neurons", "messages",
         "synaptic ops", "neuron updates", "spikes sent"],
        [[r["layer"], r["critical_core"], r["bound"], fmt_time(r["core_ns"]),
          fmt_time(r["synapses_ns"]), fmt_time(r["neurons_ns"]), fmt_time(r["messages_ns"]),
          fmt_count(r["synaptic_ops"]), fmt_count(r["neuron_updates"]), fmt_count(r["messages"])]
         for r in latency_rows(result, target)], left=3))
    body += ["<h2>Targets compared</h2>", plots[2]]
    body.append(_table(
        ["", "chip dynamic", "chip static", "host", "I/O", "total", "vs ANN 45 nm", "vs GPU"],
        [[r["name"], fmt_energy(r["chip_dynamic_pj"]), fmt_energy(r["chip_static_pj"]),
          fmt_energy(r["host_pj"]), fmt_energy(r["io_pj"]),
          fmt_energy(r["total_pj"]) if r["complete"]
          else f">= {fmt_energy(r['priced_subtotal_pj'])} (incomplete)"
          if r["priced_subtotal_pj"] is not None else "n/a (unsupported)",
          fmt_ratio(r["vs_ann_45nm"]), fmt_ratio(r["vs_gpu"])] for r in target_rows(result)]))
    regimes = [(name, reg) for t in result.prices.values()
               for name, reg in [(f"{t['target']['name']}: {k}", v)
                                 for k, v in t.get("regimes", {}).items()
                                 if isinstance(v, dict)]]
    if regimes:
        body.append("<h2>Prefill and decode</h2><p>Timesteps per token from the schedule the "
                    "simulator runs: prompt tokens enter the pipeline one after another, a "
                    "generated token waits for the previous token's logits.</p>")
        body.append(_table(
            ["", "timesteps / token", "energy / token", "latency / token", "time to first token"],
            [[name, f"{reg['timesteps_per_token']:g}", fmt_energy(reg["energy_per_token_pj"]),
              "n/a" if reg["latency_per_token_ns"] is None
              else f"{reg['latency_per_token_ns'] / 1e3:.4g} us",
              "" if reg.get("ttft_ns") is None else
              f"{reg['ttft_ns'] / 1e3:.4g} us ({reg['prompt_tokens']} prompt tokens)"]
             for name, reg in regimes]))
    pp = result.paper
    body.append(f"<p>The paper's formula: E<sub>ANN</sub> = {pp['ann_ops']:,} MACs x "
                f"{pp['e_mac_pj']:g} pJ = {fmt_energy(pp['ann_pj'])}; E<sub>SNN</sub> = "
                f"{pp['firing_rate']:g} x MACs x {pp['e_ac_pj']:g} pJ = {fmt_energy(pp['snn_pj'])}"
                f" (ratio {pp['ann_over_snn']:.3g}). Measured mean LIF rate "
                f"{pp['measured_lif_rate']:.4f}.</p>")
    s = price["sensitivity"]
    k = s["factor"]
    body.append(_table(["sensitivity on " + target, f"x{k:g}", f"/{k:g}"], [
        ["all firing rates", fmt_energy(s["firing_rate_x"]), fmt_energy(s["firing_rate_div"])],
        ["proxy figures", fmt_energy(s["proxy_x"]), fmt_energy(s["proxy_div"])],
        ["estimate figures", fmt_energy(s["estimate_x"]), fmt_energy(s["estimate_div"])]]))
    if result.neurobench is not None:
        body += _neurobench_html(result.neurobench)
    unsupported = unsupported_rows(result)
    body.append("<h2>Unsupported (not priced, never zero)</h2>")
    body.append(_table(["where", "what", "key", "reason"],
                       [[t, u.get("what", ""), u.get("key", ""), u.get("reason", "")]
                        for t, u in unsupported], left=4) if unsupported else "<p>None.</p>")
    body.append("<h2>Assumptions</h2><ul>" + "".join(
        f"<li>{e(a)}</li>" for a in price.get("assumptions", [])) + "</ul>")
    figs = [f for p in result.prices.values() for f in p.get("figures", [])]
    figs += [f for a in result.ann.values() for f in a["figures"]] + pp["figures"]
    seen, uniq = set(), []
    for f in figs:
        key = (f["profile"], f["section"], f["key"])
        if key not in seen:
            seen.add(key)
            uniq.append(f)
    body.append("<h2>Figures used</h2>")
    body.append(_table(["profile", "sha256", "figure", "value", "kind", "source"],
                       [[f["profile"], f["sha256"][:12], f"[{f['section']}] {f['key']}",
                         f"{f['value']:g} {f['unit']}", f["kind"], f["source"]] for f in uniq],
                       left=6))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>SpikeGPT profile: {e(target)}</title><style>{_STYLE}</style></head>"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_html(result: ProfileResult, path: str | Path) -> Path:
    """Write ``render_html(result)`` to ``path`` atomically (its folder must exist)."""
    return write_atomic(check_output(path, "--html"), render_html(result))
