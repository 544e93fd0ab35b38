"""The chip side of the simulated network: Lava's Dense and GatedLIF processes and their wiring.

``ChipWiring`` is a mixin of ``simulation.plan._Planner`` (it uses the planner's schedule, widths
and host-port helpers). What it plans, per precision:

- LIF population -> ``GatedLIF`` with the Vars and current codec of ``chip_params.lif_vars``.
- spike-driven linears (SpikeLinear) -> one Lava ``Dense`` per (reading host stage, layer) with
  their weights stacked. Every population a SpikeLinear reads, directly or through a SpikeSum,
  is connected to the Dense's ``s_in``; Lava's InPort adds its connections, and the populations
  fire on distinct phases, so the host reads each population's contribution on its own phase
  and adds it, times the SpikeSum coefficient, to the rows of the SpikeLinears that read it
  (the SpikeSum, realised by identity connections plus a phase-multiplexed readout). fixed: the
  weights are the quantized mantissas shifted left by k = 9 - weight_bits with weight_exp = -k
  (so Lava's mixed-sign LSB drop loses nothing and the Dense delivers the exact integer sum of
  mantissas); the host multiplies that integer by the layer's weight_scale (one per output
  channel when the quantizer gave each its own), as QUANT_OPS does.
- chip Linear (policy graded) -> its own ``Dense`` with graded input (num_message_bits > 0). Into
  a LIF (att.output): fixed uses the quantize pass's Lava weights and exponent, and the Dense's
  output is the LIF's a_in; float uses W / tau. Into the host (ffn.value): as a SpikeLinear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import fixed_point as fp
from ..errors import SimulationError
from ..folded import linear_weight
from ..ir import Port
from ..naming import layer_of
from ..passes.quantize import readout_scale
from .chip_params import check_membrane_on_chip, graded_input_codec, lif_vars, require_fixed
from .stage import PortEntry



@dataclass
class ChipProcess:
    """A Lava process on the chip side: kind 'Dense' or 'GatedLIF', with its constructor kwargs."""

    name: str
    kind: str
    kwargs: dict[str, Any]
    phase: int = 0


@dataclass
class Connection:
    src: str
    src_port: str
    dst: str
    dst_port: str


class ChipWiring:
    """Planner mixin: adds the chip processes and their connections (module docstring)."""

    ir: Any
    order: list[str]
    host: set[str]
    fixed: bool
    phase: dict[str, int]
    width: dict[tuple, int]
    stage: dict[str, str]
    stage_names: list[str]
    chip: list[ChipProcess]
    conns: list[Connection]
    # and the planner's methods op, consumers, sources, host_out, host_in

    def lifs(self) -> None:
        for n in self.order:
            if self.op(n) != "LIF" or n in self.host:
                continue
            x, _ = self.ir.inputs(n)
            kw, codec = lif_vars(self.ir, n, self.fixed)
            name = f"lif:{n}"
            self.chip.append(ChipProcess(name, "GatedLIF", {"shape": (self.width[(n, 0)],), **kw},
                                         self.phase[n]))
            if x.node in self.host:
                self.host_out(x, codec, self.fixed, name, "a_in")  # own port: zero when idle
            elif self.op(x.node) != "Linear":
                raise SimulationError(f"LIF '{n}' reads '{x.node}' ({self.op(x.node)}) on the "
                                      "chip; the simulator feeds LIFs host currents or a Dense")
            for stage in sorted({self.stage[c] for c in self.consumers(n, 0) if c in self.host},
                                key=self.stage_names.index):
                w = self.width[(n, 0)]
                self.host_in(stage, name, {self.phase[n]: [PortEntry((n, 0), 0, w)]}, w, "latch",
                             group="spikes")  # one port for all LIFs: idle ones send zeros
            check_membrane_on_chip(self.ir, n, self.host)

    def _weights(self, n: str, scale: float = 1.0, dense_bits: int | None = None
                 ) -> tuple[np.ndarray, dict, tuple]:
        """Dense weights, kwargs and readout codec for a host readout of chip linear n (held in
        a Dense of ``dense_bits`` >= its own weight bits, if given)."""
        d = self.ir.node(n)
        if not self.fixed:
            return linear_weight(d["params"]).astype(np.float64), {}, ("float",)
        require_fixed(self.ir, n, "weight_q", "weight_bits", "weight_scale")
        kw = fp.mantissa_dense_kwargs(d["params"]["weight_q"],
                                      max(int(d["attrs"]["weight_bits"]), dense_bits or 0))
        w = kw.pop("weights")  # the Dense sums mantissas exactly; the host scales the sum
        # one float for the layer, or one per output channel (readout_scale)
        return w, kw, ("scale", readout_scale(d) * scale)

    def pop_source(self, p: Port, dense: str) -> None:
        if p.node in self.host:  # the binary embedding: a host value sent as spikes
            self.host_out(p, ("float",), self.fixed, dense, "s_in")
        else:
            self.conns.append(Connection(f"lif:{p.node}", "s_out", dense, "s_in"))

    def stage_denses(self) -> None:
        """One Dense per (reading host stage, layer) of spike-driven linears."""
        groups: dict[tuple[str, str], list[str]] = {}
        for n in self.order:
            if self.op(n) != "SpikeLinear" or n in self.host:
                continue
            stages = {self.stage.get(c) for c in self.consumers(n)}
            if len(stages) != 1 or None in stages:
                raise SimulationError(f"SpikeLinear '{n}' feeds {self.consumers(n)}: expected "
                                      "host nodes of one stage")
            key = (stages.pop(), layer_of(self.ir.node(n)["module"]))
            groups.setdefault(key, []).append(n)
        for (stage, layer), sls in groups.items():
            parts, rows, r, kws = [], {}, 0, []
            # A quality budget may give a layer's linears different widths; one Dense holds them
            # at the widest: a b-bit mantissa is also a wider one, so every integer sum is the
            # same (resources still count each linear at its own width).
            widest = max((int(self.ir.node(n)["attrs"].get("weight_bits", 0)) for n in sls),
                         default=0) or None
            for n in sls:
                w, kw, codec = self._weights(n, dense_bits=widest)
                parts.append(w)
                rows[n] = (r, r + w.shape[0], codec)
                r += w.shape[0]
                kws.append(kw)
            if any(kw != kws[0] for kw in kws):
                raise SimulationError(f"stage {stage}: its spike-driven linears use different "
                                      "weight bits; one Dense cannot hold them")
            name = f"dense:{layer}"
            if any(c.name == name for c in self.chip):
                name = f"dense:{stage}:{layer}"
            weights = np.concatenate(parts)
            self.chip.append(ChipProcess(name, "Dense", {"weights": weights, **kws[0]}))
            pops: dict[Port, int] = {}
            entries: dict[int, list[PortEntry]] = {}
            for n in sls:
                for p, coef in self.sources(n):
                    if self.fixed and coef != int(coef):
                        raise SimulationError(f"'{n}': spike coefficient {coef} is not an integer")
                    pops[p] = arrival = self.phase[p.node] + 1
                    r0, r1, codec = rows[n]
                    entries.setdefault(arrival, []).append(PortEntry((n, 0), r0, r1, codec, coef))
            if len(set(pops.values())) != len(pops):
                raise SimulationError(f"{name}: two of its populations fire on the same phase, so "
                                      "its phase-multiplexed readout cannot tell them apart")
            for p in pops:
                self.pop_source(p, name)
            self.host_in(stage, name, entries, r, "accumulate")

    def graded_denses(self) -> None:
        for n in self.order:
            if self.op(n) != "Linear" or n in self.host:
                continue
            a = self.ir.node(n)["attrs"]
            (x,) = self.ir.inputs(n)
            cons = self.consumers(n)
            to_lif = len(cons) == 1 and self.op(cons[0]) == "LIF"
            name = f"dense:{n}"
            kw: dict[str, Any] = {"num_message_bits": int(a.get("graded_bits", 8))}
            in_codec = graded_input_codec(self.ir, n, self.fixed, to_lif)
            if to_lif and self.fixed:
                kw.update(weights=self.ir.node(n)["params"]["weight_lava"].astype(np.int32),
                          weight_exp=int(a["weight_exp_lava"]),
                          num_weight_bits=int(a["weight_bits"]))
            elif to_lif:
                gain = 1.0 / float(self.ir.node(cons[0])["attrs"]["tau"])
                kw["weights"] = linear_weight(self.ir.node(n)["params"]).astype(np.float64) * gain
            else:
                w, wkw, codec = self._weights(n, float(a["input_step"]) if self.fixed else 1.0)
                kw.update(weights=w, **wkw)
            self.chip.append(ChipProcess(name, "Dense", kw))
            self.host_out(x, in_codec, self.fixed, name, "s_in")
            if to_lif:
                self.conns.append(Connection(name, "a_out", f"lif:{cons[0]}", "a_in"))
                continue
            stages = {self.stage.get(c) for c in cons}
            if len(stages) != 1 or None in stages:
                raise SimulationError(f"chip Linear '{n}' feeds {cons}: expected one LIF or host "
                                      "nodes of one stage")
            w = self.width[(n, 0)]
            self.host_in(stages.pop(), name, {self.phase[n]: [PortEntry((n, 0), 0, w, codec)]},
                         w, "accumulate")
