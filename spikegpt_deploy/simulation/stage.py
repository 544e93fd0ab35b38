"""What one host stage of the simulated network does on each Lava timestep (numpy only).

A host stage is one Lava process on the CPU (``simulation/lava/procs/host_stage.py``) that runs a
slice of the IR's host partition with the interpreter's own op functions (``FLOAT_OPS``), so the
host math is the IR's. Token k occupies Lava timesteps k*D+1 .. (k+1)*D (D = ``period``); every
host node, value and port entry has a fixed *phase* (0..D-1) inside that window, computed by
``simulation.plan``. On each timestep the stage:

1. sends zeros at once on every out port that carries nothing on this phase (so that no reader
   waits on this stage when it has nothing to say), then receives its ``early`` port (the chain
   message of the previous stage, layout 'layers') and latches what arrives on this phase;
2. runs the nodes of this phase in topological order; before a node it receives any port that
   delivers one of its inputs on this phase (e.g. the spikes of a LIF it has just driven), after
   it sends every out port whose values for this phase are all ready (a LIF waits for its
   current);
3. records spikes / logits / traffic into shared buffers and samples the next token (the stage
   with the logits);
4. receives the ports it has not read yet (their values wait for a later phase).

Every port is received and sent exactly once per timestep, as Lava's LoihiProtocol requires.
Inside a timestep data only move forward (a stage waits on the previous stage and on the chip
processes it feeds), so this order cannot deadlock; the sampled token is latched at the end of
the timestep and used on the next token.

Port entries are latched (one value per token) or accumulated (a Dense readout: the partial sums
that arrive on the phases of the populations feeding it, times each population's coefficient).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .. import fixed_point as fp
from ..interpreter import FLOAT_OPS
from ..ops.linear import graded_input
from ..sampling import Sampler, SamplingOptions

Key = tuple  # (node id, output port)
F32 = np.float32
TOKEN_KEY: Key = ("__token__", 0)
# Port slots of a HostStage process per direction ('chip': to Lava's Dense / GatedLIF, 'host': to
# other stages). A ProcessModel declares its ports statically, so the number is fixed.
SLOTS = {"chip": 64, "host": 2}


@dataclass
class HostNode:
    """One IR node run by a stage: the node's attributes as the interpreter reads them."""

    node: str
    op: str
    data: dict[str, Any]
    inputs: list[Key]
    phase: int


@dataclass
class PortEntry:
    """A slice [start, stop) of a port message that carries ``key``.

    codec, outgoing: ('float',) | ('gain', g): g * x | ('current', scale): Lava fixed a_in |
    ('graded', step, bits): graded spike payload. Incoming: ('float',) | ('scale', s): an integer
    Dense sum times s (the fixed-point readout). coef: the population coefficient of an
    accumulated readout entry.
    """

    key: Key
    start: int
    stop: int
    codec: tuple = ("float",)
    coef: float = 1.0


@dataclass
class InSlot:
    slot: str
    width: int
    mode: str                                  # 'latch' | 'accumulate'
    entries: dict[int, list[PortEntry]]        # arrival phase -> entries
    early: bool = False                        # received first on every timestep (chain message)
    group: str = ""                            # planner: slots of one group may share a port


@dataclass
class OutSlot:
    slot: str
    width: int
    entries: dict[int, list[PortEntry]]        # sending phase -> entries
    integer: bool = False                      # int32 payload (into a bit-accurate process)
    group: str = ""                            # planner: slots of one group may share a port


@dataclass
class StageProgram:
    """Everything a host stage needs; built by ``simulation.plan``, run by ``StageRunner``."""

    name: str
    period: int
    num_tokens: int
    precision: str
    nodes: list[HostNode]
    ins: list[InSlot]
    outs: list[OutSlot]
    state_init: dict[str, np.ndarray] = field(default_factory=dict)
    records: list[tuple[Key, str]] = field(default_factory=list)        # key -> buffer name
    traffic: list[tuple[int, Key]] = field(default_factory=list)       # crossing index, key
    prompt: list[int] | None = None           # embedding stage: the prompt token ids
    sampling: SamplingOptions | None = None   # head stage: sample after the prompt
    logits_key: Key | None = None
    sample_from: int = 0                      # head stage: first token index whose logits sample
    fault: tuple[int, int] | None = None      # test hook: raise at (token, phase)
    index: int = 0                            # this stage's column in the 'host_busy' buffer


def encode(x: np.ndarray, codec: tuple) -> np.ndarray:
    """A host value as it goes onto a port (see ``PortEntry``)."""
    kind = codec[0]
    if kind == "float":
        return np.asarray(x, dtype=np.float64)
    if kind == "gain":
        return np.asarray(x, dtype=np.float64) * codec[1]
    if kind == "current":  # as QUANT_OPS' LIF: saturating round to the 16-bit a_in
        return fp.quantize_current(x, codec[1], overflow="saturate")
    if kind == "graded":   # as QUANT_OPS' graded Linear
        return graded_input(x, codec[1], codec[2])
    raise ValueError(f"unknown port codec {codec!r}")


def decode(acc: np.ndarray, codec: tuple) -> np.ndarray:
    """A received (accumulated) value as the IR's float32 value."""
    if codec[0] == "scale":  # host reads the integer Dense sum and scales it, as QUANT_OPS
        return (acc.astype(np.int64) * codec[1]).astype(F32)
    return np.asarray(acc).astype(F32)


class StageRunner:
    """Runs a ``StageProgram``; ``ports`` maps slot names to objects with recv() / send()."""

    def __init__(self, program: StageProgram, ports: Mapping[str, Any],
                 buffers: Mapping[str, Any]) -> None:
        self.p = program
        self.ports = ports
        self.buffers = buffers
        self.values: dict[Key, np.ndarray] = {}
        self.acc: dict[Key, np.ndarray] = {}
        self.state = {k: v.copy() for k, v in program.state_init.items()}
        self.by_phase: dict[int, list[HostNode]] = {}
        for n in program.nodes:
            self.by_phase.setdefault(n.phase, []).append(n)
        self.arrival: dict[Key, tuple[str, int]] = {}  # key -> (slot, phase it is complete on)
        self.first_arrival: dict[Key, int] = {}
        for s in program.ins:
            for phase, entries in s.entries.items():
                for e in entries:
                    if e.key not in self.arrival or self.arrival[e.key][1] < phase:
                        self.arrival[e.key] = (s.slot, phase)
                    self.first_arrival[e.key] = min(phase, self.first_arrival.get(e.key, phase))
        # outgoing codec of each key sent encoded (not 'float'): what _nonzero counts
        self._out_codec: dict[Key, tuple] = {}
        for spec in program.outs:
            for entries in spec.entries.values():
                for e in entries:
                    if e.codec[0] != "float":
                        self._out_codec.setdefault(e.key, e.codec)
        self.token_latch = 0
        self.sampler = Sampler(program.sampling) if program.sampling is not None else None
        self._in = {s.slot: s for s in program.ins}
        self._out = {s.slot: s for s in program.outs}
        self._received: set[str] = set()
        self._sent: set[str] = set()
        self._fresh: set[Key] = set()
        self.busy_s = 0.0  # time spent computing (not waiting on ports)

    # ---- ports -------------------------------------------------------------------------------
    def _recv(self, slot: str, phase: int) -> None:
        msg = self.ports[slot].recv()
        self._received.add(slot)
        spec = self._in[slot]
        for e in spec.entries.get(phase, ()):
            part = np.asarray(msg[e.start:e.stop])
            if spec.mode == "latch":
                self.values[e.key] = decode(part, e.codec).reshape(1, -1)
            else:
                contrib = part.astype(np.int64 if e.codec[0] == "scale" else np.float64)
                if e.coef != 1:
                    contrib = contrib * (int(e.coef) if e.codec[0] == "scale" else e.coef)
                if phase == self.first_arrival[e.key]:
                    self.acc[e.key] = contrib
                else:
                    self.acc[e.key] = self.acc[e.key] + contrib
                self.values[e.key] = decode(self.acc[e.key], e.codec).reshape(1, -1)
            self._fresh.add(e.key)

    @staticmethod
    def _zeros(spec: OutSlot) -> np.ndarray:
        return np.zeros(spec.width, dtype=np.int32 if spec.integer else np.float64)

    def _message(self, spec: OutSlot, phase: int) -> np.ndarray:
        msg = self._zeros(spec)
        for e in spec.entries.get(phase, ()):
            msg[e.start:e.stop] = encode(self.values[e.key], e.codec).reshape(-1)
        return msg

    def _send_ready(self, phase: int) -> None:
        for slot, spec in self._out.items():
            if slot in self._sent:
                continue
            entries = spec.entries.get(phase)
            if entries and all(e.key in self._fresh for e in entries):
                self.ports[slot].send(self._message(spec, phase))
                self._sent.add(slot)

    def _ensure(self, key: Key, phase: int) -> None:
        where = self.arrival.get(key)
        if where is not None and where[1] == phase and where[0] not in self._received:
            self._recv(where[0], phase)

    # ---- one timestep ------------------------------------------------------------------------
    def step(self, time_step: int) -> None:
        D = self.p.period
        token, phase = divmod(int(time_step) - 1, D)
        self._received.clear()
        self._sent.clear()
        self._fresh.clear()
        active = token < self.p.num_tokens
        for slot, spec in self._out.items():  # nothing to carry on this phase: send at once,
            if not (active and spec.entries.get(phase)):  # so that no reader waits on us
                self.ports[slot].send(self._zeros(spec))
                self._sent.add(slot)
        for s in self.p.ins:
            if s.early:
                self._recv(s.slot, phase)
        if active:
            if self.p.fault is not None and self.p.fault == (token, phase):
                raise RuntimeError(f"injected fault in host stage '{self.p.name}' at token "
                                   f"{token}, phase {phase} (test hook)")
            for n in self.by_phase.get(phase, ()):
                for key in n.inputs:
                    self._ensure(key, phase)
                t0 = time.perf_counter()
                self._run(n, token)
                self.busy_s += time.perf_counter() - t0
                self._send_ready(phase)
            t0 = time.perf_counter()
            self._finish_phase(token, phase)
            self.busy_s += time.perf_counter() - t0
            self._send_ready(phase)
            self.buffers["host_busy"].array[0, self.p.index] = self.busy_s
        for slot, spec in self._out.items():
            if slot not in self._sent:
                self.ports[slot].send(self._zeros(spec))
        for s in self.p.ins:
            if s.slot not in self._received:
                self._recv(s.slot, phase)
        if active:  # after the last receive: a read-out no node reads on arrival crossed too
            for index, key in self.p.traffic:
                if key in self._fresh:
                    self.buffers["traffic"].array[token, index] = self._nonzero(key)
        if TOKEN_KEY in self._fresh and self.p.prompt is not None:
            self.token_latch = int(round(float(self.values[TOKEN_KEY].reshape(-1)[0])))

    def _run(self, n: HostNode, token: int) -> None:
        if n.op == "Input":
            prompt = self.p.prompt or []
            tok = prompt[token] if token < len(prompt) else self.token_latch
            out: tuple = (np.array([tok], dtype=np.int64),)
        elif n.op == "StateIn":
            out = (self.state[n.data["attrs"]["state"]],)
        elif n.op == "StateOut":
            self.state[n.data["attrs"]["state"]] = self.values[n.inputs[0]]
            return
        elif n.op == "Output":
            return
        else:
            out = FLOAT_OPS[n.op](n.data, [self.values[k] for k in n.inputs])
        for port, value in enumerate(out):
            self.values[(n.node, port)] = value
            self._fresh.add((n.node, port))

    def _finish_phase(self, token: int, phase: int) -> None:
        for key, name in self.p.records:
            if key in self._fresh:
                self.buffers[name].write(token + 1, np.asarray(self.values[key]).reshape(-1))
        lk = self.p.logits_key
        if lk is not None and lk in self._fresh:
            self._sample(token)

    def _nonzero(self, key: Key) -> int:
        """Elements of ``key`` that crossed as non-zero (after encoding, for outgoing values)."""
        codec = self._out_codec.get(key)
        value = self.values[key] if codec is None else encode(self.values[key], codec)
        return int(np.count_nonzero(value))

    def _sample(self, token: int) -> None:
        if self.sampler is not None and token >= self.p.sample_from:
            tok = self.sampler(self.values[self.p.logits_key][0])
            self.buffers["generated"].array[token - self.p.sample_from, 0] = tok
            self.values[TOKEN_KEY] = np.array([[float(tok)]])
            self._fresh.add(TOKEN_KEY)
        self.buffers["progress"].array[0, 0] = token + 1  # tokens whose logits are complete
