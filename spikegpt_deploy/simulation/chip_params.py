"""How the IR's chip nodes become Lava parameters, for both simulated networks (``program``
builds the pipelined one, ``chip`` the per-population one).

- LIF population: Lava's LIF Vars (du, dv, vth, v) and the codec of the host current that
  drives it. float: Lava's float LIF with du = 1, dv = 1/tau and vth just below the threshold
  (Lava fires on v > vth, SpikeGPT on H >= threshold), fed 1/tau times the host current
  (``fixed_point.map_lif``); fixed: the quantize pass's du/dv/vth, fed the host's current rounded
  to the population's a_in resolution, as ``QUANT_OPS`` does.
- graded chip Linear: the codec of its graded input (fixed: the host value rounded to the
  layer's input step, ``ops.linear.graded_input``).
- a chip LIF's membrane stays on the chip: only its own StateOut may read it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SimulationError
from ..ir import IR


def require_fixed(ir: IR, n: str, *keys: str) -> None:
    """Raise unless chip node n carries the quantize pass's ``keys`` (params or attrs)."""
    d = ir.node(n)
    missing = [k for k in keys if k not in d["params"] and k not in d["attrs"]]
    if missing:
        raise SimulationError(f"chip node '{n}' ({d['op']}) has no fixed-point {missing}; "
                              "the bundle was not quantized for it: re-run convert")


def lif_vars(ir: IR, n: str, fixed: bool) -> tuple[dict[str, Any], tuple]:
    """Lava LIF Vars of LIF node n (du, dv, vth, v) and the codec of its host current."""
    a = ir.node(n)["attrs"]
    _, v = ir.inputs(n)
    init = float(ir.node(v.node)["attrs"].get("init", 0.0))
    if fixed:
        require_fixed(ir, n, "du_fixed", "dv_fixed", "vth_fixed", "input_scale_bits")
        return ({"du": a["du_fixed"], "dv": a["dv_fixed"], "vth": a["vth_fixed"],
                 "v": int(round(init))}, ("current", 2.0 ** a["input_scale_bits"]))
    tau, th = float(a["tau"]), float(a["threshold"])
    return ({"du": 1.0, "dv": 1.0 / tau, "vth": float(np.nextafter(th, 0.0)), "v": init},
            ("gain", 1.0 / tau))


def graded_input_codec(ir: IR, n: str, fixed: bool, to_lif: bool) -> tuple:
    """The codec of chip Linear n's graded input: ('graded', input step, bits) when fixed."""
    if not fixed:
        return ("float",)
    require_fixed(ir, n, "graded_bits", "input_step", "weight_bits",
                  *(("weight_lava", "weight_exp_lava") if to_lif else ()))
    a = ir.node(n)["attrs"]
    return ("graded", float(a["input_step"]), int(a["graded_bits"]))


def check_membrane_on_chip(ir: IR, n: str, host: set[str]) -> None:
    """Raise if anything but chip LIF n's own StateOut reads its membrane (output 1)."""
    for c in sorted({v for v, _ in ir.consumers(n, 1)}):
        if ir.node(c)["op"] != "StateOut" or c in host:
            raise SimulationError(f"'{c}' reads the membrane of LIF '{n}'; only the LIF itself "
                                  "may (it stays on the chip)")
