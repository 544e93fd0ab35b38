"""LIF: SpikeGPT's discrete leaky integrate-and-fire neuron (spec 2.7), the chip's neuron.

Float: H = v + (x - v) / tau, s = [H >= threshold], v' = H (1 - s) (hard reset, same step).
Fixed point: Lava's bit-accurate LIF (``fixed_point.map_lif``) with the population's input
resolution ``input_scale_bits`` set by the quantizer; its input current comes from the host
(rounded to 2**-b, saturating at the 16-bit a_in) or from a chip Dense (already integer).
NIR: a nir.LIF under the discretisation stated in ``converters/nir_export.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import fixed_point as fp
from ..errors import ConversionError
from .registry import ChipNeeds, NirForm, OpDef, register

F32 = np.float32
NIR_DT_S = 1e-4  # NIR PR #164/#165: the Lava <-> NIR bridge assumes dt = 1e-4 s


def lif(n: dict[str, Any], ins: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x, v = ins
    h = v + (x - v) * F32(1.0 / n["attrs"]["tau"])
    s = (h >= F32(n["attrs"]["threshold"])).astype(F32)
    return s, (h * (F32(1.0) - s)).astype(F32)


def fixed_lif(n: dict, ins: list[np.ndarray], cache: Any = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Lava's fixed-point LIF step; membranes in Lava's integer v units. ``cache`` is unused
    (the signature of every fixed-point form)."""
    a = n["attrs"]
    if "input_scale_bits" not in a:
        return lif(n, ins)
    x, v = ins
    if a["input"] == "host_current":
        a_in = fp.quantize_current(x, 2.0 ** a["input_scale_bits"], overflow="saturate")
    else:
        a_in = np.rint(x).astype(np.int32)
    params = fp.FixedLifParams(du=a["du_fixed"], dv=a["dv_fixed"], vth=a["vth_fixed"])
    spikes, _, v_new = fp.lif_fixed_step(a_in, np.zeros_like(a_in), np.rint(v).astype(np.int32),
                                         params)
    return spikes.astype(F32), v_new.astype(F32)


def check_dt(dt_s: float) -> None:
    if not (np.isfinite(dt_s) and dt_s > 0):
        raise ConversionError(f"NIR export: dt_s={dt_s}; expected a positive number of seconds")


def lif_parameters(width: int, tau_steps: float = 2.0, threshold: float = 1.0,
                   dt_s: float = NIR_DT_S) -> dict[str, np.ndarray]:
    """NIR LIF parameters for SpikeGPT's discrete LIF (see converters/nir_export.py): float32
    arrays. tau = tau_steps * dt, r = 1, v_leak = v_reset = 0, and v_threshold the largest
    float32 below the threshold (NIR fires on v > v_threshold, SpikeGPT on H >= 1)."""
    check_dt(dt_s)
    if not tau_steps > 1:
        raise ConversionError(f"NIR export: LIF tau={tau_steps} steps; expected > 1 (the forward "
                              "Euler step dt / tau must be below 1)")
    ones = np.ones(int(width), F32)
    return {"tau": ones * F32(tau_steps * dt_s), "r": ones.copy(), "v_leak": np.zeros_like(ones),
            "v_threshold": ones * np.nextafter(F32(threshold), F32(0)),
            "v_reset": np.zeros_like(ones)}


def _lif_nir(ir: Any, node_id: str, width: int, dt_s: float) -> tuple[dict[str, Any], str]:
    a = ir.node(node_id)["attrs"]
    return lif_parameters(width, float(a.get("tau", 2.0)), float(a.get("threshold", 1.0)),
                          dt_s), "lif"


def _lif_onnx(b: Any, nid: str, n: dict[str, Any], ins: list[str]) -> list[str]:
    x, v = ins
    leak = b.one("Mul", [b.one("Sub", [x, v], nid), b.const(F32(1.0 / n["attrs"]["tau"]))], nid)
    h = b.one("Add", [v, leak], nid)
    fired = b.one("GreaterOrEqual", [h, b.const(F32(n["attrs"]["threshold"]))], nid)
    s = b.one("Cast", [fired], nid, to=b.FLOAT)
    return [s, b.one("Mul", [h, b.one("Sub", [b.const(F32(1)), s], nid)], nid)]


register(OpDef(
    "LIF", 2, 2,
    "inputs x, v; H = v + (x - v)/2, s = [H >= 1], v' = H (1 - s); outputs s, v'",
    run=lif, fixed=fixed_lif,
    # h = v + (x - v)/tau; s = h >= th; v' = h (1 - s)   (1/tau counts as precomputed)
    cost=lambda n, shape, a: {"add": 3 * n, "mul": 2 * n, "compare": n},
    chip=ChipNeeds("LIF", "LIF neurons map to the chip's LIF (spec 6.1)"),
    onnx=_lif_onnx, nir=NirForm("LIF", _lif_nir), classes=lambda ins, a: ["binary", "float"]))
