"""The event counting behind ``counts.count_ops``: per-port events, synaptic ops, neuron
updates, messages and chip-host crossings of one partitioned IR on recorded spikes (the rules are
in ``counts``' docstring). ``count_ops`` drives a ``CountRun`` node by node in topological order.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Mapping

import numpy as np

from ..errors import ConversionError, DataError
from ..folded import has_linear_weight, linear_shape, linear_weight
from ..ir import HOST, IR, Port
from ..naming import layer_of, layer_rank
from .op_costs import PLUMBING, op_cost
from .weight_stats import linear_fan_out


def _width(ir: IR, node: str, input_port: int = 0) -> int:
    for _, _, d in ir.in_edges(node):
        if d["dst_port"] == input_port:
            if d.get("shape") is None:
                raise ConversionError(f"IR edge into '{node}' has no shape; run partition() "
                                      f"(it annotates shapes) before counting")
            return int(np.prod(d["shape"]))
    raise ConversionError(f"IR node '{node}' has no input {input_port}")


def _payload_bits(counts: np.ndarray) -> int:
    """Bits of the largest |n| (plus a sign bit if any n < 0); 0 when every n is 0 or 1.

    Called on the [min, max] a SpikeSum's coefficients allow."""
    if not counts.size:
        return 0
    hi, lo = int(counts.max()), int(counts.min())
    if lo >= 0 and hi <= 1:
        return 0
    return max(abs(hi), abs(lo)).bit_length() + (1 if lo < 0 else 0)


def _reached(active: np.ndarray, nz: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(T, out) bool: outputs that receive at least one synaptic event in each token."""
    if nz.all():
        return np.repeat(active.any(axis=1, keepdims=True), nz.shape[0], axis=1)
    nzf = nz.T.astype(np.float32)
    out = np.empty((active.shape[0], nz.shape[0]), dtype=bool)
    for s in range(0, active.shape[0], chunk):
        out[s:s + chunk] = (active[s:s + chunk].astype(np.float32) @ nzf) > 0
    return out


def _resident_slots(ir: IR) -> set[str]:
    """State slots read and written only by chip nodes (e.g. LIF membranes): they never leave."""
    chip = {n for n in ir.graph if ir.node(n).get("placement", HOST) != HOST}
    slots = set()
    for n in ir.nodes_of("StateIn"):
        slot = ir.node(n)["attrs"]["state"]
        readers = {v for v, _ in ir.consumers(n)}
        writers = [ir.inputs(m)[0].node for m in ir.nodes_of("StateOut")
                   if ir.node(m)["attrs"]["state"] == slot]
        if readers and readers <= chip and writers and set(writers) <= chip:
            slots.add(slot)
    return slots


def pipeline_of(ir: IR, order: list[str], chip: set[str]) -> dict[str, Any]:
    """Chip nodes and chip segments (chip/host alternations) along the longest path, and the
    timestep counts of the schedule the Lava simulation runs (``simulation.schedule``):
    ``depth_timesteps`` (a token's latency), ``prefill_timesteps_per_token`` (teacher-forced
    tokens enter this many timesteps apart) and ``decode_timesteps_per_token`` =
    ``lava_timesteps`` (a sampled token waits for the previous token's logits)."""
    from ..simulation.schedule import schedule_of

    depth: dict[str, int] = {}
    segs: dict[str, int] = {}

    def chip_op(n: str) -> bool:
        return n in chip and ir.node(n)["op"] not in PLUMBING

    for n in order:
        preds = [p.node for p in ir.inputs(n)]
        on = chip_op(n)
        depth[n] = max((depth[p] for p in preds), default=0) + int(on)
        segs[n] = max((segs[p] + int(on and not chip_op(p)) for p in preds), default=int(on))
    sch = schedule_of(ir, strict=False)
    return {"chip_depth": max(depth.values(), default=0),
            "chip_segments": max(segs.values(), default=0),
            "dense_depth": sch.depth - 1, "depth_timesteps": sch.depth,
            "prefill_timesteps_per_token": sch.interval,
            "decode_timesteps_per_token": sch.decode, "lava_timesteps": sch.decode}


class CountRun:
    """The state of one ``count_ops`` call: event arrays per port and the running totals."""

    def __init__(self, ir: IR, pops: dict[str, np.ndarray], T: int,
                 graded_inputs: Mapping[str, Any] | None):
        self.ir, self.pops, self.T, self.graded = ir, pops, T, graded_inputs
        self.order = ir.topological()
        self._inputs: dict[Port, tuple[np.ndarray, ...]] = {}   # see input_events
        self.chip = {n for n in self.order if ir.node(n)["placement"] != HOST}
        self.layers = sorted({layer_of(ir.node(n)["module"]) for n in self.order} - {"other"},
                             key=layer_rank)
        self.totals: dict[str, Counter] = {k: Counter() for k in self.layers + ["other"]}
        self.per_token = {k: np.zeros(T) for k in ("synaptic_ops", "spike_messages", "io_bytes")}
        self.unsupported: list[dict[str, str]] = []
        self.events: dict[Port, np.ndarray] = {}   # (T, width) events per port read on chip
        self.payload: dict[str, int] = {}
        self.populations: dict[str, dict[str, Any]] = {}
        self.linears: dict[str, dict[str, Any]] = {}
        self.accumulators: dict[str, dict[str, Any]] = {}
        self.reached: dict[str, np.ndarray] = {}   # chip LIF -> (T, C) reached by synapses
        self.mapping: Counter = Counter()
        self.messages: dict[str, dict[str, int]] = {}   # layer -> source node -> messages
        self.work: dict[str, dict[str, Any]] = {}  # chip node -> per-neuron sums over tokens

    def add_work(self, n: str, layer: str, **arrays: np.ndarray) -> None:
        """Per-neuron work of chip node ``n`` (sums over tokens; absent kinds are zero)."""
        width = len(next(iter(arrays.values())))
        zero = np.zeros(width)
        self.work[n] = {"layer": layer, "op": self.ir.node(n)["op"], **{
            k: np.asarray(arrays.get(k, zero), dtype=np.float64)
            for k in ("synaptic_ops", "active", "idle", "messages")}}

    def input_events(self, port: Port) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(T, in) bool non-zero events at ``port``, their count per input and per token
        (int64), made once per port: several linears and accumulators read one stream."""
        if port not in self._inputs:
            active = self.events[port] != 0
            self._inputs[port] = (active, active.sum(axis=0, dtype=np.int64),
                                  active.sum(axis=1, dtype=np.int64))
        return self._inputs[port]

    def skip(self, n: str, reason: str) -> None:
        self.unsupported.append({"what": f"{'chip' if n in self.chip else 'host'} node {n}",
                                 "op": self.ir.node(n)["op"], "reason": reason})

    def chip_readers(self, port: Port) -> list[str]:
        return sorted({v for v, _ in self.ir.consumers(port.node, port.port) if v in self.chip})

    def emit(self, port: Port, layer: str, bits: int = 0) -> None:
        """Messages of the events at ``port``: one per event per chip node that reads it."""
        msgs = (self.events[port] != 0).sum(axis=1) * len(self.chip_readers(port))
        total = int(msgs.sum())
        self.totals[layer]["spike_messages"] += total
        self.totals[layer]["payload_bits"] += total * bits
        by_source = self.messages.setdefault(layer, {})
        by_source[port.node] = by_source.get(port.node, 0) + total
        self.per_token["spike_messages"] += msgs

    def population(self, n: str, d: dict[str, Any], layer: str) -> None:
        name = d["module"] if d["op"] == "LIF" else "emb"
        width = _width(self.ir, n)
        if name not in self.pops:
            raise DataError(f"no spikes for population '{name}' (IR node '{n}'); recorded: "
                            f"{', '.join(sorted(self.pops)) or 'none'}")
        s = self.pops[name]
        if s.shape[1] != width:
            raise DataError(f"spikes of '{name}' have {s.shape[1]} neurons, the IR node '{n}' "
                            f"has {width}")
        self.events[Port(n, 0)] = s
        count = s.sum(axis=1)
        self.populations[name] = {
            "node": n, "op": d["op"], "layer": layer, "placement": d["placement"],
            "neurons": width, "spikes": int(count.sum()), "rate": float(count.sum()) / s.size,
            "spikes_per_token": count.astype(int).tolist()}
        self.totals[layer]["spikes"] += int(count.sum())
        if n in self.chip or self.chip_readers(Port(n, 0)):
            self.emit(Port(n, 0), layer)

    def spike_sum(self, n: str, d: dict[str, Any], layer: str) -> None:
        srcs = self.ir.inputs(n)
        if any(p not in self.events for p in srcs):
            return self.skip(n, "a SpikeSum input is not a recorded population")
        coeffs = d["attrs"]["coefficients"]
        ins = [self.input_events(p) for p in srcs]
        n_t = np.zeros(ins[0][0].shape, dtype=np.int64)
        for c, p in zip(coeffs, srcs):
            n_t += int(c) * self.events[p].astype(np.int64, copy=False)
        got = np.logical_or.reduce([active for active, _, _ in ins])
        counted = n_t != 0
        self.events[Port(n, 0)] = n_t
        # the payload width a mapping configures: the range the coefficients allow, not the
        # range one run reached (so counts of token shards add up to the whole run's counts)
        self.payload[n] = _payload_bits(np.array([sum(min(int(c), 0) for c in coeffs),
                                                  sum(max(int(c), 0) for c in coeffs)]))
        acc = sum(int(per_in.sum()) for _, per_in, _ in ins)
        active, width = int(got.sum()), n_t.shape[1]
        self.accumulators[n] = {
            "module": d["module"], "layer": layer, "neurons": width,
            "inputs": [p.node for p in srcs], "coefficients": list(coeffs), "accumulate_ops": acc,
            "events": int(counted.sum()), "max_count": int(np.abs(n_t).max()),
            "payload_bits": self.payload[n], "active": active, "idle": got.size - active,
            "readers": self.chip_readers(Port(n, 0))}
        self.totals[layer].update({"accumulate_ops": acc, "neuron_updates_active": active,
                                   "neuron_updates_idle": got.size - active})
        self.mapping.update({"neurons": width, "synapses": width * len(srcs)})
        self.emit(Port(n, 0), layer, self.payload[n])
        per_in = sum(counts for _, counts, _ in ins)
        self.add_work(n, layer, synaptic_ops=per_in, active=got.sum(axis=0),
                      idle=self.T - got.sum(axis=0), messages=counted.sum(axis=0)
                      * len(self.chip_readers(Port(n, 0))))

    def linear(self, n: str, d: dict[str, Any], layer: str) -> None:
        (src,) = self.ir.inputs(n)
        shape = linear_shape(d["params"])
        if d["op"] == "Linear":                    # graded input from the host: needs values
            x = None if self.graded is None else self.graded.get(n)
            if x is None:
                return self.skip(n, "graded synaptic ops need the float input values: pass "
                                    "graded_inputs (a value trace of the numpy Executor)")
            x = np.asarray(x).reshape(-1, shape[1])
            if x.shape[0] != self.T:
                raise DataError(f"graded inputs of '{n}' cover {x.shape[0]} tokens, the spikes "
                                f"{self.T}")
            self.events[src] = x
            kind, bits = "graded", int(d["attrs"].get("graded_bits", 8))
            self.emit(src, layer, bits)
        elif src in self.events:
            kind = "integer" if self.ir.node(src.node)["op"] == "SpikeSum" else "binary"
            bits = self.payload.get(src.node, 0)
        else:
            return self.skip(n, "its input is not a recorded population or a SpikeSum of them")
        active_in, per_in, per_token = self.input_events(src)
        fan = linear_fan_out(d["params"])
        width = shape[0]
        if fan.dense:      # every event reaches every output: no pass over the matrix
            syn = per_token * width
            token_hit = per_token > 0
            hit_per_out = np.full(width, int(token_hit.sum()), dtype=np.int64)
            per_out = np.full(width, per_in.sum(), dtype=np.int64)

            def hit() -> np.ndarray:
                return np.repeat(token_hit[:, None], width, axis=1)
        elif fan.patterns is not None:   # few distinct rows of zeros: count per row pattern
            live = np.stack([active_in[:, p].sum(axis=1, dtype=np.int64)
                             for p in fan.patterns], axis=1)                # (T, patterns)
            rows = np.bincount(fan.row_pattern, minlength=len(fan.patterns))
            syn = live @ rows
            pattern_hit = live > 0
            hit_per_out = pattern_hit.sum(axis=0, dtype=np.int64)[fan.row_pattern]
            per_out = (fan.patterns.astype(np.int64) @ per_in)[fan.row_pattern]

            def hit() -> np.ndarray:
                return pattern_hit[:, fan.row_pattern]
        else:
            nz = linear_weight(d["params"]) != 0
            syn = active_in.astype(np.int64) @ fan.column_nnz
            reached = _reached(active_in, nz)
            hit_per_out = reached.sum(axis=0)
            per_out = nz.astype(np.int64) @ per_in

            def hit() -> np.ndarray:
                return reached
        entry = {"module": d["module"], "layer": layer, "input": kind, "source": src.node,
                 "weight_shape": list(shape), "weight_nnz": fan.nnz,
                 "events": int(per_in.sum()), "synaptic_ops": int(syn.sum()),
                 "payload_bits": bits, "readout_active": 0, "readout_idle": 0}
        self.mapping["synapses"] += fan.nnz
        readers = self.chip_readers(Port(n, 0))
        for r in readers:                          # chip neurons (a LIF) integrate the output
            self.reached[r] = self.reached[r] | hit() if r in self.reached else hit().copy()
        if not readers:                            # read by the host: readout compartments
            active = int(hit_per_out.sum())
            entry.update(readout_active=active, readout_idle=self.T * width - active)
            self.totals[layer].update({"neuron_updates_active": entry["readout_active"],
                                       "neuron_updates_idle": entry["readout_idle"]})
            self.mapping["neurons"] += width
        self.linears[n] = entry
        self.add_work(n, layer, synaptic_ops=per_out,
                      **({} if readers else {"active": hit_per_out,
                                             "idle": self.T - hit_per_out}))
        self.totals[layer]["synaptic_ops"] += int(syn.sum())
        self.per_token["synaptic_ops"] += syn

    def lif_updates(self) -> None:
        """Active = received input (all, for a dense float input from the host) or spiked."""
        for name, pop in self.populations.items():
            n = pop["node"]
            if n not in self.chip or pop["op"] != "LIF":
                continue
            s = self.pops[name]
            src = self.ir.inputs(n)[0]
            from_host = src.node not in self.chip
            got = self.reached.get(n, np.full(s.shape, from_host))
            active = int((got | s).sum())
            pop.update(active_updates=active, idle_updates=s.size - active,
                       input_from="host (dense float)" if from_host else "chip")
            self.totals[pop["layer"]].update({"neuron_updates_active": active,
                                              "neuron_updates_idle": s.size - active})
            self.mapping["neurons"] += s.shape[1]
            act = (got | s).sum(axis=0)
            self.add_work(n, pop["layer"], active=act, idle=self.T - act,
                          messages=s.sum(axis=0) * len(self.chip_readers(Port(n, 0))))

    def host_ops(self) -> dict[str, Counter]:
        out: dict[str, Counter] = {k: Counter() for k in self.layers + ["other"]}
        for n in self.order:
            d = self.ir.node(n)
            if n in self.chip:
                continue
            shape = linear_shape(d["params"]) if has_linear_weight(d["params"]) else (
                (len(d["params"]["w_one"]),) if "w_one" in d["params"] else None)
            width = _width(self.ir, n) if self.ir.inputs(n) else 1
            cost = op_cost(d["op"], width, shape, d["attrs"])
            if cost is None:
                self.skip(n, f"no host cost formula for op {d['op']}")
                continue
            out[layer_of(d["module"])].update(cost)
        return out


def count_crossings(ir: IR, events: dict[Port, np.ndarray], payload: dict[str, int],
                     graded_inputs: Mapping[str, Any] | None, T: int,
                     totals: dict[str, Counter], per_token: dict[str, np.ndarray],
                     unsupported: list[dict[str, str]]) -> list[dict[str, Any]]:
    resident = _resident_slots(ir)
    out = []
    for c in ir.meta.get("crossings", []):
        src, port, width = c["source"], int(c["port"]), int(c["width"])
        sd = ir.node(src)
        readers = [ir.node(r) for r in c["readers"]]
        entry = {k: c[k] for k in ("source", "port", "direction", "value_class", "width")}
        entry.update(layer=layer_of(sd["module"]), messages=0, bytes=0.0, excluded="")
        slot = sd["attrs"].get("state") if sd["op"] == "StateIn" else None
        if slot in resident or (readers and all(r["op"] == "StateOut" and r["attrs"]["state"]
                                                in resident for r in readers)):
            entry["excluded"] = "chip-resident state (read and written only on the chip)"
            out.append(entry)
            continue
        addr = max(1, math.ceil(math.log2(width))) if width > 1 else 1
        cls = c["value_class"]
        if cls in ("binary", "integer"):
            ev = events.get(Port(src, port))
            if ev is None:
                unsupported.append({"what": f"crossing {src}:{port}", "op": sd["op"],
                                    "reason": f"{cls} crossing from a node without events"})
                continue
            msgs = (ev != 0).sum(axis=1)
            bits = msgs * (addr + (payload.get(src, 0) if cls == "integer" else 0))
        elif cls == "graded":
            x = None if graded_inputs is None else graded_inputs.get(c["readers"][0])
            if x is None:
                unsupported.append({"what": f"crossing {src}:{port}", "op": sd["op"],
                                    "reason": "graded crossing needs graded_inputs"})
                continue
            msgs = (np.asarray(x).reshape(T, -1) != 0).sum(axis=1)
            bits = msgs * (addr + int(c["bits_per_element"]))
        else:                                   # dense vector: one word per element
            msgs = np.full(T, width)
            bits = msgs * int(c["bits_per_element"])
        entry["messages"], entry["bytes"] = int(msgs.sum()), float(bits.sum()) / 8
        direction = c["direction"]
        totals[entry["layer"]][f"io_messages_{direction}"] += entry["messages"]
        totals[entry["layer"]][f"io_bytes_{direction}"] += entry["bytes"]
        per_token["io_bytes"] += bits / 8
        out.append(entry)
    return out
