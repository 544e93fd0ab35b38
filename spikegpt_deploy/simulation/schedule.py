"""The one schedule of the simulated network: on which timestep each node of each token runs.

Lava's processes exchange messages once per timestep. A Dense (chip SpikeLinear or Linear) sends
the sum of the previous timestep (a one-step synaptic delay); a LIF and a host node receive and
send within one timestep. So the *phase* (timestep within a token) on which a value is ready
counts the Dense hops before it: phase(x) = max over inputs of phase(input), + 1 for a Dense.

Within a timestep, host and chip alternate in *rounds*: a host node that reads the spikes a LIF
fires on its own phase (e.g. the residual stream's spike count after the LIF) runs one round
after the host node that fed the LIF's current. Round r: the host runs its round-r nodes of
every token in flight (oldest first), sends the chip the currents and host spikes of round r,
the chip updates the LIFs of round r and sends their spikes back.

Tokens enter the pipeline at start timesteps:
- teacher-forced tokens (a prompt, held-out text) every ``interval`` timesteps: a token enters
  while the previous ones are still in deeper layers. Each layer's state (token shift, WKV, LIF
  membrane) is read and written on one phase, so it is updated in token order and the results
  are those of the sequential run; ``interval`` is 1 unless a state is written on a later phase
  than it is read;
- a generated token ``decode`` timesteps after the token whose logits it is sampled from: the
  logits arrive on phase(logits), the host samples and embeds the next token within that same
  timestep (the sampled token's way back costs no extra timestep).
``depth`` = phase(logits) + 1 is a token's latency in timesteps. The profiler prices these
counts (``regimes``); the simulator runs them.

Block prefill (``units``): the simulator may carry the work of ``block`` teacher-forced tokens in
one Lava step. Block j (tokens jB..jB+B-1) does phase p on Lava step j + p, each phase running
its B tokens in token order, so every state is still updated token by token and the results
are those of the token-by-token run; the chip's synapses read a block's spike counts in one
matrix product. A Lava step then carries B chip timesteps of each phase; the chip's own
schedule (``starts``, ``num_steps``, ``regimes``: one timestep per prompt token) is unchanged,
and generated tokens are always units of one token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import SimulationError
from ..ir import HOST, IR, Port

# Prefill tokens per Lava step: the chip's synapses read a block's spike counts in one matrix
# product, and each host phase reuses its layer's weights across the block while they are in
# cache (benchmarks/bench_simulate.py measures it)
PREFILL_BLOCK = 16
POPULATION_OPS = ("LIF", "Heaviside")
DENSE_OPS = ("SpikeLinear", "Linear")
PLUMBING_CHIP_OPS = ("LIF", "SpikeSum", "StateIn", "StateOut")


def crossing_name(crossing: dict[str, Any]) -> str:
    """'source:port:direction' of one of ``ir.meta['crossings']``: a run's traffic key."""
    return f"{crossing['source']}:{crossing['port']}:{crossing['direction']}"


@dataclass
class Schedule:
    phase: dict[str, int]               # node -> timestep within its token
    round: dict[str, int]               # node -> host/chip round within the timestep
    depth: int                          # timesteps from a token's start to its logits, + 1
    interval: int                       # timesteps between teacher-forced tokens
    decode: int                         # timesteps between a token and the one sampled from it
    rounds: int                         # rounds with a host -> chip -> host exchange
    why: list[str] = field(default_factory=list)

    def starts(self, n_forced: int, n_generated: int) -> list[int]:
        """Start timestep (0-based) of each token: ``n_forced`` teacher-forced tokens, then
        ``n_generated`` tokens each sampled from the logits of the one before."""
        out: list[int] = []
        for k in range(n_forced + n_generated):
            if k == 0:
                out.append(0)
            else:
                out.append(out[-1] + (self.interval if k < n_forced else self.decode))
        return out

    def num_steps(self, n_forced: int, n_generated: int) -> int:
        starts = self.starts(n_forced, n_generated)
        return (starts[-1] + self.depth) if starts else 0

    def units(self, n_forced: int, n_generated: int, block: int = 1) -> list[tuple[int, int, int]]:
        """(Lava step, first token, tokens) of each unit of work the simulator runs (module
        docstring): teacher-forced tokens in blocks of ``block`` on consecutive Lava steps, then
        each generated token alone, ``decode`` steps after the unit of the token before it.
        ``block`` 1, or an ``interval`` above 1, runs every token on its own start timestep."""
        if int(block) != block or block < 1:
            raise SimulationError(f"prefill block {block!r}: expected a positive integer")
        if block == 1 or self.interval != 1:
            return [(s, k, 1) for k, s in enumerate(self.starts(n_forced, n_generated))]
        out = [(j, k, min(block, n_forced - k))
               for j, k in enumerate(range(0, n_forced, int(block)))]
        for g in range(n_generated):
            out.append((out[-1][0] + self.decode if out else 0, n_forced + g, 1))
        return out

    def regimes(self, prompt_tokens: int) -> dict[str, Any]:
        """Timestep counts of the two regimes: prefill (teacher-forced) and decode."""
        ttft = (max(prompt_tokens, 1) - 1) * self.interval + self.depth
        return {"prefill": {"tokens_per_timestep": 1.0 / self.interval,
                            "timesteps_per_token": float(self.interval),
                            "prompt_tokens": int(prompt_tokens), "ttft_timesteps": ttft},
                "decode": {"timesteps_per_token": float(self.decode)},
                "depth_timesteps": self.depth}


class StepUnits:
    """Which tokens each phase works on at each Lava step, for ``Schedule.units``."""

    def __init__(self, units: list[tuple[int, int, int]], depth: int) -> None:
        self._at = {int(s): range(k, k + n) for s, k, n in units}
        self.depth = depth
        self.num_steps = max(self._at) + depth if self._at else 0

    def tokens(self, step: int, phase: int) -> range | None:
        """The tokens on ``phase`` at Lava step ``step`` (0-based), in token order."""
        return self._at.get(step - phase)

    def active(self, step: int) -> list[tuple[range, int]]:
        """(tokens, phase) of every unit in flight at ``step``, oldest first."""
        return [(self._at[step - p], p) for p in range(self.depth - 1, -1, -1)
                if step - p in self._at]

    def slots(self, step: int) -> int:
        """Messages per port at ``step``: one per token of the largest unit in flight (at
        least one: every step exchanges its messages)."""
        return max((len(toks) for toks, _ in self.active(step)), default=1)


def spike_sources(ir: IR, n: str) -> list[tuple[Port, float]]:
    """Populations (and coefficients) a SpikeLinear reads, directly or through a SpikeSum."""
    (src,) = ir.inputs(n)
    if ir.node(src.node)["op"] == "SpikeSum":
        coeffs = ir.node(src.node)["attrs"]["coefficients"]
        pops = list(zip(ir.inputs(src.node), coeffs))
    else:
        pops = [(src, 1.0)]
    for p, _ in pops:
        if ir.node(p.node)["op"] not in POPULATION_OPS or p.port != 0:
            raise SimulationError(f"SpikeLinear '{n}' reads '{p.node}' "
                                  f"({ir.node(p.node)['op']}), not the spikes of a LIF or "
                                  "Heaviside population")
    return pops


def node_phases(ir: IR, order: list[str], host: set[str], strict: bool = True
                ) -> dict[str, int]:
    """Phase of every node (module docstring); chip ops without a Lava model are refused
    (``strict``) or, for a target the simulator does not run, count no hop."""
    phase: dict[str, int] = {}
    for n in order:
        op, ins = ir.node(n)["op"], ir.inputs(n)
        if n not in host and op == "SpikeLinear":
            phase[n] = max(phase[p.node] for p, _ in spike_sources(ir, n)) + 1
        elif n not in host and op == "Linear":
            phase[n] = phase[ins[0].node] + 1
        elif n not in host and op not in PLUMBING_CHIP_OPS and strict:
            raise SimulationError(f"chip node '{n}' ({op}): the simulator has no Lava "
                                  "process for this op on the chip")
        else:
            phase[n] = max((phase[p.node] for p in ins), default=0)
    return phase


def schedule_of(ir: IR, strict: bool = True) -> Schedule:
    """The schedule of a partitioned IR (module docstring); ``strict=False`` for IRs the
    simulator does not run (other targets): their other chip ops count no hop."""
    order = ir.topological()
    host = {n for n in order if ir.node(n).get("placement", HOST) == HOST}
    phase = node_phases(ir, order, host, strict)
    op = {n: ir.node(n)["op"] for n in order}
    rnd: dict[str, int] = {}
    for n in order:
        r = 0
        for p in ir.inputs(n):
            if phase[p.node] != phase[n] or p.node not in rnd:
                continue
            from_lif = op[p.node] == "LIF" and p.node not in host
            r = max(r, rnd[p.node] + int(from_lif and n in host))
        rnd[n] = r
    # a state is read when its first reader runs, not at the token's start
    for n in order:
        if op[n] == "StateIn":
            readers = [v for v, _ in ir.consumers(n, 0)]
            if readers:
                phase[n] = min(phase[v] for v in readers)
                rnd[n] = min(rnd[v] for v in readers if phase[v] == phase[n])
    interval = 1
    why = []
    reads = {ir.node(n)["attrs"]["state"]: n for n in order if op[n] == "StateIn" and n in host}
    for n in order:
        if op[n] == "StateOut" and n in host:
            r = reads.get(ir.node(n)["attrs"]["state"])
            if r is None:
                continue
            need = phase[n] - phase[r] + int(rnd[n] > rnd[r])
            if need > interval:
                interval = need
                why.append(f"state '{ir.node(n)['attrs']['state']}' is read on phase "
                           f"{phase[r]} and written on phase {phase[n]}: interval {need}")
    outs = [n for n in order if op[n] == "Output" and ir.node(n)["attrs"].get("name") == "logits"]
    inps = [n for n in order if op[n] == "Input"]
    if len(outs) != 1 or len(inps) != 1:
        raise SimulationError("the IR needs one Input and one 'logits' Output node")
    out, inp = outs[0], inps[0]
    decode = max(interval, phase[out] - phase[inp] + int(rnd[out] > rnd[inp]), 1)
    lif_rounds = [rnd[n] for n in order if op[n] == "LIF" and n not in host]
    sent = [rnd[n] for n in order if n in host
            and any(v not in host for v, _ in ir.consumers(n, 0))]
    rounds = max(lif_rounds + sent, default=-1) + 1
    depth = phase[out] + 1
    why = [f"logits on phase {phase[out]} (one per Dense hop on the longest path): a token "
           f"takes {depth} timesteps to cross the pipeline",
           f"teacher-forced tokens enter every {interval} timestep(s)"] + why + \
          [f"a sampled token enters {decode} timesteps after the token it follows (sampled "
           "and embedded on the timestep its logits arrive)"]
    return Schedule(phase, rnd, depth, interval, decode, rounds, why)
