"""ChipCore and HostPipe: the two Lava processes of the pipelined network.

``ChipCore`` holds every chip population and synapse of a bundle in one Lava process (Lava runs
each Process as an OS process and synchronises all of them every timestep, so fewer processes
is what makes the simulation fast; on Loihi 2 the same neurons and synapses sit on many cores).
Its arithmetic is Lava's own:
- each LIF population is an instance of Lava's ``PyLifModelFloat`` / ``PyLifModelBitAcc`` whose
  ``subthr_dynamics``, ``spiking_activation`` and ``reset_voltage`` run in the order of Lava's
  ``run_spk``, once per token on the population's phase;
- each synapse group is Lava's ``Dense`` arithmetic: weights prepared by Lava's ``clip_weights``
  and ``truncate_weights`` (bit-accurate), the sum of the weights of the active inputs, shifted
  by ``weight_exp``, delivered one timestep later.
``HostPipe`` runs ``simulation.host.HostPipeRunner``. The schedule and the message layout are
``simulation.program``'s; nothing here decides them. No torch here: it deadlocks under fork.
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyAsyncProcessModel
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.async_protocol import AsyncProtocol
from lava.proc.lif.models import PyLifModelBitAcc, PyLifModelFloat
from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

from spikegpt_deploy.simulation.host import HostPipeRunner
from spikegpt_deploy.simulation.lava.procs.ports import add_ports, declare_ports, ports_of
from spikegpt_deploy.simulation.program import ChipProgram, HostProgram, LifSpec
from spikegpt_deploy.simulation.schedule import StepUnits

MAX_ROUNDS = 4  # port pairs per direction; a ProcessModel declares its ports statically
# below this fraction of inputs with spikes, gathering their weight rows beats a full product
SPARSE_FRACTION = 0.3


def _lava_lif(spec: LifSpec, fixed: bool) -> ty.Any:
    """A Lava LIF model instance (its Vars set as Lava's LIF process would) used for its math."""
    n = spec.width
    p = spec.params
    if fixed:
        m = PyLifModelBitAcc({})
        m.u, m.v = np.zeros(n, np.int32), np.full(n, int(p["v"]), np.int32)
        m.du, m.dv, m.vth = int(p["du"]), int(p["dv"]), int(p["vth"])
        m.bias_mant, m.bias_exp = np.zeros(n, np.int16), np.zeros(n, np.int16)
    else:
        m = PyLifModelFloat({})
        m.u, m.v = np.zeros(n), np.full(n, float(p["v"]))
        m.du, m.dv, m.vth = float(p["du"]), float(p["dv"]), float(p["vth"])
        m.bias_mant, m.bias_exp = np.zeros(n), np.zeros(n)
    return m


def _lif_step(m: ty.Any, a_in: np.ndarray, fixed: bool) -> np.ndarray:
    """Lava's LIF ``run_spk`` without its ports: returns the spikes."""
    if fixed:
        m.scale_bias()
        if not m.isthrscaled:
            m.scale_threshold()
        a_in = np.asarray(a_in).astype(np.int32)
    m.subthr_dynamics(activation_in=a_in)
    s = m.spiking_activation()
    m.reset_voltage(spike_vector=s)
    return s


def _dense_weights(w: np.ndarray, bits: int | None) -> np.ndarray:
    """Lava's bit-accurate Dense weight preparation (its first ``run_spk``); float: as given."""
    if bits is None:
        return np.asarray(w)
    w = np.asarray(w).astype(np.int32)
    mode = determine_sign_mode(w)
    return truncate_weights(clip_weights(w, mode, num_bits=8), mode, bits)


def _exact_dtype(w: np.ndarray, max_input: float) -> type:
    """float32 when every integer sum W @ x (|x| <= max_input) is exact in it, else float64."""
    bound = float(np.abs(w).sum(axis=1).max(initial=0.0)) * max_input
    return np.float32 if bound < 2 ** 24 else np.float64


def chip_weights(program: ChipProgram) -> ty.List[np.ndarray]:
    """Each synapse group's weights as the chip core reads them: Lava's Dense preparation, as
    (inputs, outputs) so that the rows of the inputs that spiked are read; integer sums exact in
    the dtype (``_exact_dtype``). Prepared once when the network is built (the forked processes
    share them), not inside the timed run."""
    fixed = program.precision == "fixed"
    out = []
    for g in program.groups:
        w = _dense_weights(g.weights, g.weight_bits)
        dtype = _exact_dtype(w, sum(abs(c) for _, c in g.pops)) if fixed else np.float32
        out.append(np.ascontiguousarray(w.T, dtype=dtype))
    return out


class ChipRunner:
    """Runs a ``ChipProgram`` (module docstring) over ports 'syn', 'cur_<r>', 'spk_<r>'; a Lava
    step exchanges one message per port and token slot (``StepUnits.slots``). ``weights``:
    ``chip_weights(program)``, prepared here when not given."""

    def __init__(self, program: ChipProgram, ports: ty.Mapping[str, ty.Any],
                 weights: ty.Optional[ty.List[np.ndarray]] = None) -> None:
        self.p, self.ports = program, ports
        self.fixed = program.precision == "fixed"
        self.units = StepUnits(program.units, program.depth)
        self.lifs = {s.node: _lava_lif(s, self.fixed) for s in program.lifs}
        self.lif_rounds = [[s for s in program.lifs if s.round == r] for r in range(program.rounds)]
        self.pops_in_round = [[e for e, rr in program.host_pops if rr == r]
                              for r in range(program.rounds)]
        self.weights = chip_weights(program) if weights is None else weights
        self.feeds: ty.Dict[str, ty.List[ty.Tuple[int, float]]] = {}
        for gi, g in enumerate(program.groups):
            for pop, coef in g.pops:
                self.feeds.setdefault(pop, []).append((gi, coef))
        self.graded_w = [_dense_weights(g.weights, g.weight_bits) for g in program.graded]
        self.graded_rounds = [[i for i, g in enumerate(program.graded) if g.round == r]
                              for r in range(program.rounds)]
        self.acc: ty.Dict[ty.Tuple[int, int], np.ndarray] = {}
        self.internal: ty.Dict[ty.Tuple[str, int], np.ndarray] = {}
        self.pending_graded: ty.List[ty.Tuple[int, int, np.ndarray]] = []  # (spec, slot, y)
        self.syn_next = np.zeros((self.units.slots(0), program.syn_width))

    def _dense(self, w: np.ndarray, x: np.ndarray, exp: int) -> np.ndarray:
        """Lava's Dense accumulation: W @ x, shifted by weight_exp under fixed precision."""
        if not self.fixed:
            return w @ x
        acc = np.rint(w @ x.astype(w.dtype)).astype(np.int64)
        return np.left_shift(acc, exp) if exp > 0 else np.right_shift(acc, -exp)

    def _synapses(self, wt: np.ndarray, counts: np.ndarray, exp: int) -> np.ndarray:
        """Lava's Dense sums for spike counts (tokens, inputs), event-driven: only the inputs
        that spiked for some token are read (the rows of W^T), a block's tokens in one matrix
        product; integer sums are exact in ``wt``'s dtype (``_exact_dtype``)."""
        nz = np.flatnonzero(counts.any(axis=0))
        x = counts[0] if counts.shape[0] == 1 else counts
        if nz.size < SPARSE_FRACTION * counts.shape[1]:
            y = x[..., nz].astype(wt.dtype) @ wt[nz]
        else:
            y = x.astype(wt.dtype) @ wt
        if not self.fixed:
            return y
        acc = np.rint(y).astype(np.int64)
        return np.left_shift(acc, exp) if exp > 0 else np.right_shift(acc, -exp)

    def _fire(self, pop: str, k: int, spikes: np.ndarray) -> None:
        if not np.any(spikes):
            return  # no spike, no synaptic event
        for gi, coef in self.feeds.get(pop, ()):
            add = spikes.astype(np.float32) * np.float32(coef)
            key = (gi, k)
            self.acc[key] = add if key not in self.acc else (self.acc[key] + add)

    def step(self, time_step: int) -> None:
        t = int(time_step) - 1
        n = self.units.slots(t)
        for i in range(n):
            self.ports["syn"].send(self.syn_next[i])
        for r in range(self.p.rounds):
            cur = [self.ports[f"cur_{r}"].recv() for _ in range(n)]
            out = np.zeros((n, self.p.spk_width[r]))
            for spec in self.lif_rounds[r]:
                for i, k in enumerate(self.units.tokens(t, spec.phase) or ()):
                    if spec.current is not None:
                        a_in = np.asarray(cur[i][spec.current.start:spec.current.stop])
                    else:
                        a_in = self.internal.pop((spec.node, k))
                    s = _lif_step(self.lifs[spec.node], a_in, self.fixed)
                    out[i, spec.spikes.start:spec.spikes.stop] = s
                    self._fire(spec.node, k, s)
            for i in range(n):
                self.ports[f"spk_{r}"].send(out[i])
            for e in self.pops_in_round[r]:
                for i, k in enumerate(self.units.tokens(t, e.phase) or ()):
                    self._fire(e.key[0], k, np.asarray(cur[i][e.start:e.stop]))
            for gi in self.graded_rounds[r]:
                g = self.p.graded[gi]
                for i, k in enumerate(self.units.tokens(t, g.input.phase) or ()):
                    y = self._dense(self.graded_w[gi],
                                    np.asarray(cur[i][g.input.start:g.input.stop]), g.weight_exp)
                    if g.to_lif is not None:
                        self.internal[(g.to_lif, k)] = y
                    else:
                        self.pending_graded.append((gi, i, y))
        self._read_out(t + 1)

    def _read_out(self, t: int) -> None:
        """The Dense outputs sent on step t: every group whose readout phase is due, for each
        token of the unit on that phase (one row per token slot)."""
        self.syn_next = np.zeros((self.units.slots(t), self.p.syn_width))
        for gi, g in enumerate(self.p.groups):
            toks = self.units.tokens(t, g.phase)
            if toks is None:
                continue
            counts = [self.acc.pop((gi, k), None) for k in toks]
            rows = [i for i, c in enumerate(counts) if c is not None]
            if not rows:
                continue  # no population fired into it: the sums are zero
            x = np.zeros((len(toks), self.weights[gi].shape[0]), np.float32)
            for i in rows:
                x[i] = counts[i]
            e = g.readout
            self.syn_next[:len(toks), e.start:e.stop] = self._synapses(self.weights[gi], x,
                                                                       g.weight_exp)
        for gi, i, y in self.pending_graded:
            e = self.p.graded[gi].readout
            self.syn_next[i, e.start:e.stop] = y
        self.pending_graded = []


class ChipCore(AbstractProcess):
    """Every chip population and synapse of a ``ChipProgram`` in one Lava process."""

    def __init__(self, *, program: ChipProgram, weights: ty.List[np.ndarray],
                 name: ty.Optional[str] = None) -> None:
        super().__init__(program=program, weights=weights, name=name)
        _ports(self, program.syn_width, program.cur_width, program.spk_width, chip=True)


class HostPipe(AbstractProcess):
    """The host partition of a ``HostProgram`` in one Lava process."""

    def __init__(self, *, program: HostProgram, buffers: ty.Dict[str, ty.Any],
                 spk_width: ty.List[int], name: ty.Optional[str] = None) -> None:
        super().__init__(program=program, buffers=buffers, name=name)
        _ports(self, program.widths["syn"], program.cur_width, spk_width, chip=False)


def _directions(chip: bool) -> ty.Dict[str, str]:
    """Ports of ChipCore (chip) or HostPipe: syn and spk_<r> go to the host, cur_<r> to the chip."""
    to_host, to_chip = ("out", "in") if chip else ("in", "out")
    return {"syn": to_host, **{f"{kind}_{r}": to_chip if kind == "cur" else to_host
                               for r in range(MAX_ROUNDS) for kind in ("cur", "spk")}}


def _ports(proc: AbstractProcess, syn: int, cur: ty.List[int], spk: ty.List[int],
           chip: bool) -> None:
    if len(cur) > MAX_ROUNDS:
        raise ValueError(f"{len(cur)} host/chip rounds per timestep; at most {MAX_ROUNDS}")
    shapes = {"syn": (max(syn, 1),), **{f"cur_{r}": (max(w, 1),) for r, w in enumerate(cur)},
              **{f"spk_{r}": (max(w, 1),) for r, w in enumerate(spk)}}
    add_ports(proc, _directions(chip), shapes)


class _PipeModel(PyAsyncProcessModel):
    """Runs its runner's ``step`` for Lava steps 1..num_steps (``StepUnits.num_steps``). The two
    processes keep the step barrier themselves: every step each receives the other's messages
    before it goes on (syn, then cur_r / spk_r per round), so Lava's per-timestep protocol round
    trips with every process (LoihiProtocol's phases) are not needed."""

    def make_runner(self, ports: ty.Dict[str, ty.Any]) -> ty.Any:
        raise NotImplementedError

    def run_async(self) -> None:
        from threadpoolctl import threadpool_limits

        rounds = range(self.proc_params["program"].rounds)
        runner = self.make_runner(ports_of(self, ["syn", *(f"cur_{r}" for r in rounds),
                                                  *(f"spk_{r}" for r in rounds)]))
        # one BLAS thread: the simulator's processes already share the cores (and a second
        # BLAS thread per process only spins against them)
        with threadpool_limits(limits=1):
            for t in range(1, self.num_steps + 1):
                runner.step(t)


class _ChipCoreModel(_PipeModel):
    def make_runner(self, ports: ty.Dict[str, ty.Any]) -> ty.Any:
        return ChipRunner(self.proc_params["program"], ports, self.proc_params["weights"])


class _HostPipeModel(_PipeModel):
    def make_runner(self, ports: ty.Dict[str, ty.Any]) -> ty.Any:
        return HostPipeRunner(self.proc_params["program"], ports, self.proc_params["buffers"])


# One model class per (process, tag): the chip core's arithmetic follows the program's
# precision; the tag only lets Lava's run config select it for either run.
@implements(proc=ChipCore, protocol=AsyncProtocol)
@requires(CPU)
@tag("floating_pt")
class PyChipCoreModelFloat(_ChipCoreModel):
    """Float LIF models and float Dense sums."""


@implements(proc=ChipCore, protocol=AsyncProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyChipCoreModelFixed(_ChipCoreModel):
    """Bit-accurate LIF models and integer Dense sums."""


@implements(proc=HostPipe, protocol=AsyncProtocol)
@requires(CPU)
@tag("floating_pt")
class PyHostPipeModelFloat(_HostPipeModel):
    """The host's numpy ops (float in both precisions: the host is a CPU)."""


@implements(proc=HostPipe, protocol=AsyncProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyHostPipeModelFixed(_HostPipeModel):
    """As the float model; chip-bound values are already integers in fixed precision."""


for _m, _chip in ((PyChipCoreModelFloat, True), (PyChipCoreModelFixed, True),
                  (PyHostPipeModelFloat, False), (PyHostPipeModelFixed, False)):
    declare_ports(_m, _directions(_chip))


def build_pipeline_network(plan: ty.Any, buffers: ty.Mapping[str, ty.Any]) -> ty.Any:
    """Create and connect the two processes of a ``simulation.program.PipelinePlan``."""
    from spikegpt_deploy.simulation.lava.runner import LavaNetwork

    chip = ChipCore(program=plan.chip, weights=chip_weights(plan.chip), name="chip")
    host = HostPipe(program=plan.host, buffers=dict(buffers), spk_width=plan.chip.spk_width,
                    name="host")
    chip.syn.connect(host.syn)
    for r in range(plan.chip.rounds):  # the other slots stay unconnected and unused
        getattr(host, f"cur_{r}").connect(getattr(chip, f"cur_{r}"))
        getattr(chip, f"spk_{r}").connect(getattr(host, f"spk_{r}"))
    return LavaNetwork(run_process=host, outputs={})
