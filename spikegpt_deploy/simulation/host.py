"""What the host process of the pipelined network does on each Lava step (numpy only).

``HostPipeRunner`` runs a ``simulation.program.HostProgram``: on Lava step t every unit in flight
(``schedule.StepUnits``: a token, or a block of prefill tokens, on phase t - its start) does its
phase's host nodes with the interpreter's own op functions (``FLOAT_OPS``), token by token in
token order, oldest unit first, so that a token sampled from an older token's logits is embedded
on the same step. Each token keeps its own values until its last phase; host state (token
shift, WKV) is one per layer, read and written on one phase, hence in token order. Messages per
step, one per token slot: receive ``syn`` (the Dense read-outs), then per round r run the
round's nodes, send ``cur_r`` (currents, host spikes, graded inputs, encoded as the chip reads
them) and receive ``spk_r`` (the LIF spikes); then the last round and the records.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from ..interpreter import FLOAT_OPS
from ..sampling import Sampler
from .program import Entry, HostProgram, Key
from .schedule import StepUnits
from .stage import decode, encode

F32 = np.float32


class HostPipeRunner:
    """Runs a ``HostProgram``; ``ports`` maps 'syn', 'cur_<r>', 'spk_<r>' to objects with
    recv() / send(); ``buffers`` are the shared result buffers (token-first)."""

    def __init__(self, program: HostProgram, ports: Mapping[str, Any],
                 buffers: Mapping[str, Any]) -> None:
        self.p, self.ports, self.buffers = program, ports, buffers
        self.state = {k: v.copy() for k, v in program.state_init.items()}
        self.units = StepUnits(program.units, program.depth)
        self.values: dict[int, dict[Key, np.ndarray]] = {}
        self.tokens = list(program.tokens)
        self.sampler = Sampler(program.sampling) if program.sampling is not None else None
        self.n_forced = len(program.tokens)
        self.by_phase = {name: self._group(getattr(program, name)) for name in ("syn",)}
        self.cur = [self._group(es) for es in program.cur]
        self.spk = [self._group(es) for es in program.spk]
        self.records: dict[int, list] = {}
        for key, phase, buf in program.records:
            self.records.setdefault(phase, []).append((key, buf))
        self.traffic: dict[int, list] = {}
        for index, key, phase, codec in program.traffic:
            self.traffic.setdefault(phase, []).append((index, key, codec))
        self.busy_s = 0.0

    @staticmethod
    def _group(entries: list[Entry]) -> dict[int, list[Entry]]:
        out: dict[int, list[Entry]] = {}
        for e in entries:
            out.setdefault(e.phase, []).append(e)
        return out

    def step(self, time_step: int) -> None:
        t = int(time_step) - 1
        active = self.units.active(t)
        n = self.units.slots(t)
        msgs = [self.ports["syn"].recv() for _ in range(n)]
        t0 = time.perf_counter()
        for toks, phase in active:
            for i, k in enumerate(toks):
                if phase == 0:
                    self.values[k] = {}
                vals = self.values[k]
                for e in self.by_phase["syn"].get(phase, ()):
                    vals[e.key] = decode(np.asarray(msgs[i][e.start:e.stop]),
                                         e.codec).reshape(1, -1)
        for r in range(self.p.rounds + 1):
            for toks, phase in active:
                for k in toks:
                    self._run(k, phase, r)
            if r == self.p.rounds:
                break
            out = np.zeros((n, self.p.cur_width[r]))
            for toks, phase in active:
                for i, k in enumerate(toks):
                    for e in self.cur[r].get(phase, ()):
                        enc = encode(self.values[k][e.key], e.codec).reshape(-1)
                        out[i, e.start:e.stop] = enc
                        self.values[k][("sent",) + e.key] = enc  # what crossed, for the traffic
            self.busy_s += time.perf_counter() - t0
            for i in range(n):
                self.ports[f"cur_{r}"].send(out[i])
            spikes = [self.ports[f"spk_{r}"].recv() for _ in range(n)]
            t0 = time.perf_counter()
            for toks, phase in active:
                for i, k in enumerate(toks):
                    for e in self.spk[r].get(phase, ()):
                        self.values[k][e.key] = np.asarray(spikes[i][e.start:e.stop],
                                                           dtype=F32).reshape(1, -1)
        for toks, phase in active:
            for k in toks:
                self._finish(k, phase)
        self.busy_s += time.perf_counter() - t0
        self.buffers["host_busy"].array[0, 0] = self.busy_s

    def _run(self, k: int, phase: int, r: int) -> None:
        if self.p.fault is not None and self.p.fault == (k, phase) and r == 0:
            raise RuntimeError(f"injected fault in host stage 'host' at token {k}, phase "
                               f"{phase} (test hook)")
        vals = self.values[k]
        for n in self.p.nodes.get((phase, r), ()):
            if n.op == "Input":
                out: tuple = (np.array([self.tokens[k]], dtype=np.int64),)
            elif n.op == "StateIn":
                out = (self.state[n.data["attrs"]["state"]],)
            elif n.op == "StateOut":
                self.state[n.data["attrs"]["state"]] = vals[n.inputs[0]]
                continue
            elif n.op == "Output":
                self._logits(k)
                continue
            else:
                out = FLOAT_OPS[n.op](n.data, [vals[i] for i in n.inputs])
            for port, value in enumerate(out):
                vals[(n.node, port)] = value

    def _logits(self, k: int) -> None:
        """Sample the next token from token k's logits (when it is not teacher-forced)."""
        i = k + 1 - self.n_forced
        if self.sampler is not None and 0 <= i < self.p.n_sample:
            tok = self.sampler(self.values[k][self.p.logits.key][0])
            self.tokens.append(tok)
            self.buffers["generated"].array[i, 0] = tok
        self.buffers["token_time"].array[k, 0] = time.perf_counter()
        self.buffers["progress"].array[0, 0] = k + 1  # tokens whose logits are complete

    def _finish(self, k: int, phase: int) -> None:
        vals = self.values[k]
        for key, buf in self.records.get(phase, ()):
            self.buffers[buf].write(k + 1, np.asarray(vals[key]).reshape(-1))
        for index, key, codec in self.traffic.get(phase, ()):
            v = vals.get(("sent",) + key)
            if v is None:
                v = vals[key] if codec[0] == "float" else encode(vals[key], codec)
            self.buffers["traffic"].array[k, index] = int(np.count_nonzero(v))
        if phase == self.p.depth - 1:
            del self.values[k]
