"""The baselines beside a chip's price: the dense ANN and the SpikeGPT paper's formula.

The ANN baseline prices ``ann_op_counts`` on a host or ann profile (cmos45nm, gpu). The paper's
formula is shown beside: E_ANN = MACs x E_MAC, E_SNN = 0.15 x MACs x E_AC with E_MAC =
cmos45nm mac (4.6 pJ) and E_AC = cmos45nm add (0.9 pJ).
"""

from __future__ import annotations

from typing import Any, Mapping

from hw_profiles import HardwareProfile
from hw_profiles import load_profile as _load_profile

from ..errors import ProfileError
from .counts import OpCounts
from .figures import PRICE_KEY, Figures

PAPER_FIRING_RATE = 0.15
PAPER_PROFILE = "cmos45nm"


def price_ann(ann: Mapping[str, Any], profile: HardwareProfile) -> dict[str, Any]:
    """Per-token energy of the dense ANN (``OpCounts.ann``) on a host or ann profile."""
    f = Figures()
    by_kind: dict[str, float] = {}
    for kind, n in ann["total"].items():
        price = f.get(profile, "host_ops", PRICE_KEY.get(kind, kind), "pJ", f"ANN {kind}")
        if price is not None:
            by_kind[kind] = n * price
    layers = {}
    for layer, kinds in ann["layers"].items():
        layers[layer] = sum(by_kind.get(k, 0.0) / ann["total"][k] * n
                            for k, n in kinds.items() if ann["total"].get(k))
    subtotal = sum(by_kind.values())
    return {"profile": {"name": profile.name, "title": profile.title, "sha256": profile.sha256},
            "macs": ann["macs"], "by_kind": by_kind, "layers": layers,
            "per_token": {"total": None if f.missing else subtotal, "priced_subtotal": subtotal},
            "complete": not f.missing, "unsupported": f.missing,
            "figures": list(f.used.values())}


def paper_formula(counts: OpCounts, measured: Mapping[str, Mapping[str, Any]],
                  reference: HardwareProfile | None = None,
                  firing_rate: float = PAPER_FIRING_RATE) -> dict[str, Any]:
    """The SpikeGPT paper's E = ANN_ops x E_MAC vs firing_rate x ops x E_AC, beside the
    measured per-token totals (``measured``: target -> price_target result)."""
    ref = reference or _load_profile(PAPER_PROFILE)
    f = Figures()
    e_mac = f.get(ref, "host_ops", "mac", "pJ", "paper E_MAC")
    e_ac = f.get(ref, "host_ops", "add", "pJ", "paper E_AC")
    if e_mac is None or e_ac is None:
        raise ProfileError(f"profile {ref.name!r} needs [host_ops] mac and add for the paper's "
                           f"formula")
    macs = counts.ann["macs"]
    lif = [p for p in counts.populations.values() if p["op"] == "LIF"]
    neuron_tokens = sum(p["neurons"] for p in lif) * counts.tokens
    rate = sum(p["spikes"] for p in lif) / neuron_tokens if neuron_tokens else 0.0
    snn = firing_rate * macs * e_ac
    return {"profile": {"name": ref.name, "sha256": ref.sha256}, "firing_rate": firing_rate,
            "e_mac_pj": e_mac, "e_ac_pj": e_ac, "ann_ops": macs, "ann_pj": macs * e_mac,
            "snn_pj": snn, "ann_over_snn": (macs * e_mac) / snn if snn else None,
            "measured_lif_rate": rate, "snn_pj_at_measured_rate": rate * macs * e_ac,
            "measured": {t: {"total_pj": p["per_token"]["total"],
                             "priced_subtotal_pj": p["per_token"]["priced_subtotal"],
                             "measured_over_paper_snn":
                                 p["per_token"]["priced_subtotal"] / snn if snn else None}
                         for t, p in measured.items()},
            "figures": list(f.used.values())}
