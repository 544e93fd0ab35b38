"""Loihi 2 fixed-point numerics for SpikeGPT's LIF and Dense, emulated bit for bit in numpy.

SpikeGPT's LIF (spec 2.7, ``spikegpt_deploy.model.layers.lif_step``): H = V + (X - V)/2,
S = [H >= 1], V' = H (1 - S). Lava's LIF (lava-nc 0.10.0 ``lava/proc/lif/models.py``):
u <- u (1 - du) + a_in; v <- v (1 - dv) + u + bias; S = [v > vth]; v <- 0 where S.
With du = 1 the current u is just this step's input, so H = V/2 + X/2 is Lava's v with dv = 1/2
and a_in = X/2 (spec 6.1).

The bit-accurate model (``PyLifModelBitAcc`` / ``AbstractPyLifModelFixed``) computes, per step:

    u = wrap24( sgn(u) (|u (4096 - (du + 1))| >> 12) + (a_in << 6) )
    v = clip( sgn(v) (|v (4096 - dv)| >> 12) + u + bias, -(2**23 - 1), 2**23 - 1 )
    S = [v > vth << 6];  v <- 0 where S

and the bit-accurate Dense (``AbstractPyDenseModelBitAcc``) clips and truncates its weights once
(``lava/utils/weightutils.py``), accumulates ``W @ s``, shifts the sum by ``weight_exp`` and
delivers it one timestep later. Everything here reproduces those integer operations exactly
(tests/test_lava_backend.py checks it against Lava itself). This module imports numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spikegpt_deploy.errors import ConversionError

# Constants of Lava's bit-accurate LIF, lava/proc/lif/models.py, AbstractPyLifModelFixed.__init__
# (lava-nc 0.10.0). They describe Lava's model of the chip, not a hardware profile.
DECAY_SHIFT = 12            # decay_shift: du, dv are 12-bit fractions of 2**12
DECAY_UNITY = 1 << DECAY_SHIFT
DS_OFFSET = 1               # ds_offset: added to du, so du = 4095 means a full decay (4096)
DM_OFFSET = 0               # dm_offset: added to dv
VTH_SHIFT = 6               # vth_shift: threshold is compared as vth << 6
ACT_SHIFT = 6               # act_shift: synaptic input enters u as a_in << 6
UV_BITS = 24                # uv_bitwidth: u and v are 24-bit
UV_MAX = 1 << (UV_BITS - 1)  # max_uv_val = 2**23
DECAY_MAX = (1 << 12) - 1   # du, dv: LavaPyType(int, np.uint16, precision=12)
VTH_MAX = (1 << 17) - 1     # vth: LavaPyType(int, np.int32, precision=17) in PyLifModelBitAcc
A_IN_BITS = 16              # a_in: LavaPyType(PyInPort.VEC_DENSE, np.int16, precision=16)
A_IN_MAX = (1 << (A_IN_BITS - 1)) - 1
# Lava's bit-accurate Dense (lava/proc/dense/models.py) clips weights to 8 bits (clip_weights
# num_bits=8) and truncates to num_weight_bits (default 8); lava/utils/weightutils.py.
DENSE_WEIGHT_BITS = 8

SPIKEGPT_TAU = 2.0          # spec 2.7: MultiStepLIFNode(tau=2.)
SPIKEGPT_THRESHOLD = 1.0    # spec 2.7: v_threshold=1.


@dataclass(frozen=True)
class FloatLifParams:
    """Parameters of Lava's floating_pt LIF (``PyLifModelFloat``): a_in = input_gain * X."""

    du: float
    dv: float
    vth: float
    bias: float = 0.0
    input_gain: float = 1.0


@dataclass(frozen=True)
class FixedLifParams:
    """Parameters of Lava's bit-accurate LIF (``PyLifModelBitAcc``), all integers as programmed.

    du, dv: 12-bit decays (0..4095); vth: 17-bit threshold before its << 6; bias_mant (13-bit
    signed) and bias_exp: bias = bias_mant << bias_exp (>> -bias_exp when negative).
    """

    du: int
    dv: int
    vth: int
    bias_mant: int = 0
    bias_exp: int = 0

    def __post_init__(self) -> None:
        for name, value, hi in (("du", self.du, DECAY_MAX), ("dv", self.dv, DECAY_MAX),
                                ("vth", self.vth, VTH_MAX)):
            if not 0 <= int(value) <= hi:
                raise ConversionError(f"Lava fixed LIF parameter {name}={value} is outside "
                                      f"0..{hi} (its precision in lava/proc/lif/models.py); "
                                      "choose a smaller input scale.")

    @property
    def effective_vth(self) -> int:
        """The threshold v is compared against: vth << 6 (``scale_threshold``)."""
        return int(self.vth) << VTH_SHIFT

    @property
    def effective_bias(self) -> int:
        """bias_mant shifted by bias_exp, as ``scale_bias`` does."""
        m, e = int(self.bias_mant), int(self.bias_exp)
        return m << e if e >= 0 else m >> -e


@dataclass(frozen=True)
class LifMapping:
    """SpikeGPT's LIF (tau 2, threshold 1, hard reset to 0, fires on H >= 1) as Lava LIF parameters.

    Float (floating_pt): du = 1 (u holds only this step's input), dv = 0.5 (= 1/tau, exact in
    binary), vth = the largest float64 below 1.0 so that Lava's strict ``v > vth`` is SpikeGPT's
    ``H >= 1`` (with vth = 1.0 exact ties H == 1.0 would not fire), a_in = X / 2: the 1/tau of the
    input is kept in ``float.input_gain`` (fold it into the weights of whatever produces X).

    Fixed (fixed_pt): du = 4095 (+ ds_offset 1 = 4096: full current decay), dv = 2048
    (v (4096 - 2048) >> 12 = v/2, rounded toward zero), a_in = round(X * 2**input_scale_bits): the
    1/tau is folded into the input scale. a_in enters v as a_in << 6, so one unit of H is
    ``v_scale`` = 2**(b + 7) in v, and H = 1 is theta << 6 with theta = 2**(b + 1) in vth units.

    Threshold: Lava fires on v > vth << 6. ``inclusive=False`` (default) programs vth = theta:
    fires for v >= theta<<6 + 1, i.e. SpikeGPT's H >= 1 except the single tie v == theta<<6.
    ``inclusive=True`` programs vth = theta - 1 (the "theta - 1 turns > into >=" rule of spec 6.1):
    every tie on the 64-grid that inputs live on fires, but v has 6 more bits than vth, so v values
    in (theta<<6 - 64, theta<<6), which the halving creates, fire too: the threshold is lower by up
    to 63 / v_scale. Measured (compare_float_fixed, 2000 steps x 64 neurons of N(0.8, 1) currents,
    b = 10): 18 spike mismatches in 128,000 with vth = theta, 58 with theta - 1; b = 8: 71 vs 198.
    Hence the default; choose inclusive=True when exact ties on the input grid must fire.
    """

    float: FloatLifParams
    fixed: FixedLifParams
    input_scale_bits: int
    inclusive: bool

    @property
    def input_scale(self) -> float:
        """Integer a_in per unit of SpikeGPT's LIF input X (the factor 1/2 folded in)."""
        return float(2 ** self.input_scale_bits)

    @property
    def v_scale(self) -> float:
        """Integer v per unit of SpikeGPT's membrane H: a_in << 6 carries X/2."""
        return float(2 ** (self.input_scale_bits + ACT_SHIFT + 1))

    @property
    def max_abs_input(self) -> float:
        """Largest |X| whose current fits Lava's 16-bit a_in."""
        return A_IN_MAX / self.input_scale


def map_lif(input_scale_bits: int = 10, inclusive: bool = False) -> LifMapping:
    """Map SpikeGPT's LIF to Lava's float and bit-accurate LIF (see ``LifMapping`` for each number).

    ``input_scale_bits`` b sets the fixed-point resolution: X is quantized to steps of 2**-b and
    |X| must stay below 2**(15 - b) (16-bit a_in). b = 10: steps of 1/1024, |X| < 32. vth = 2**(b+1)
    must fit Lava's 17-bit vth, so b <= 15.
    """
    b = int(input_scale_bits)
    if not 0 <= b <= 15:
        raise ConversionError(f"input_scale_bits={input_scale_bits}: expected 0..15 (vth = 2**(b+1)"
                              f" must fit Lava's 17-bit vth, 0..{VTH_MAX}).")
    theta = 1 << (b + 1)  # threshold H = 1 in vth units: X = 2 from rest -> a_in = 2**(b+1)
    float_params = FloatLifParams(du=1.0, dv=1.0 / SPIKEGPT_TAU,
                                  vth=float(np.nextafter(SPIKEGPT_THRESHOLD, 0.0)),
                                  input_gain=1.0 / SPIKEGPT_TAU)
    # dv = 4096 * (1 - 1/tau) = 2048: v * (4096 - 2048) >> 12 halves v (DECAY_UNITY = 4096).
    dv = int(round(DECAY_UNITY / SPIKEGPT_TAU))
    fixed = FixedLifParams(du=DECAY_MAX, dv=dv, vth=theta - 1 if inclusive else theta)
    return LifMapping(float=float_params, fixed=fixed, input_scale_bits=b, inclusive=inclusive)


def _as_fixed(params: FixedLifParams | LifMapping) -> FixedLifParams:
    return params.fixed if isinstance(params, LifMapping) else params


def _decay(x: np.ndarray, decay: int) -> np.ndarray:
    """x (4096 - decay) >> 12 on the magnitude (rounds toward zero), as Lava does in int64."""
    prod = x.astype(np.int64) * (DECAY_UNITY - decay)
    return (np.sign(prod) * np.right_shift(np.abs(prod), DECAY_SHIFT)).astype(np.int32)


def lif_fixed_step(a_in_int: np.ndarray, u: np.ndarray, v: np.ndarray,
                   mapping: FixedLifParams | LifMapping
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of Lava's bit-accurate LIF: (a_in, u, v) -> (spikes bool, u, v), int32 state.

    u wraps modulo 2**24 (only above +2**23, and at or below -2**23, as Lava checks it); v
    saturates at +-(2**23 - 1). Lava does not check a_in against its 16-bit precision.
    """
    p = _as_fixed(mapping)
    a = np.asarray(a_in_int)
    if not np.issubdtype(a.dtype, np.integer):
        raise ConversionError(f"lif_fixed_step: a_in must be integers, got dtype {a.dtype}; "
                              "quantize currents with quantize_current() first.")
    u = np.asarray(u, dtype=np.int32)
    v = np.asarray(v, dtype=np.int32)
    curr = _decay(u, p.du + DS_OFFSET) + np.left_shift(a.astype(np.int32), ACT_SHIFT)
    curr = np.where(curr > UV_MAX, curr - 2 * UV_MAX, curr)
    curr = np.where(curr <= -UV_MAX, curr + 2 * UV_MAX, curr).astype(np.int32)
    volt = _decay(v, p.dv + DM_OFFSET) + curr + np.int32(p.effective_bias)
    volt = np.clip(volt, -UV_MAX + 1, UV_MAX - 1).astype(np.int32)
    spikes = volt > p.effective_vth
    return spikes, curr, np.where(spikes, 0, volt).astype(np.int32)


def lif_float_step(a_in: np.ndarray, u: np.ndarray, v: np.ndarray, params: FloatLifParams | LifMapping
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of Lava's floating_pt LIF in float64, a_in given as Lava receives it."""
    p = params.float if isinstance(params, LifMapping) else params
    u = np.asarray(u, dtype=np.float64) * (1 - p.du) + np.asarray(a_in, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64) * (1 - p.dv) + u + p.bias
    spikes = v > p.vth
    return spikes, u, np.where(spikes, 0.0, v)


def spikegpt_lif_step(x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``model.layers.lif_step`` in numpy, same float32 operations: H = V + (X - V) * 0.5."""
    x = np.asarray(x, dtype=np.float32)
    h = np.asarray(v, dtype=np.float32) + (x - v) * np.float32(1.0 / SPIKEGPT_TAU)
    s = h >= np.float32(SPIKEGPT_THRESHOLD)
    return s, np.where(s, np.float32(0.0), h).astype(np.float32)


def quantize_current(x: np.ndarray, scale: float, overflow: str = "raise") -> np.ndarray:
    """Host -> chip currents: round(x * scale) (half to even) as int32 a_in for a fixed LIF.

    ``scale`` is ``LifMapping.input_scale``. Currents beyond Lava's 16-bit a_in raise a
    ConversionError (``overflow="raise"``) or are clipped (``"saturate"``). Lava itself checks
    nothing here: a larger a_in makes u wrap modulo 2**24, which silently flips its sign.
    """
    if overflow not in ("raise", "saturate"):
        raise ConversionError(f"quantize_current: overflow={overflow!r}; expected 'raise' or "
                              "'saturate'.")
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ConversionError("quantize_current: currents contain NaN or inf.")
    q = np.rint(x * float(scale))
    if overflow == "raise" and q.size and np.max(np.abs(q)) > A_IN_MAX:
        raise ConversionError(
            f"quantize_current: |x| up to {np.max(np.abs(x)):.4g} gives a_in "
            f"{int(np.max(np.abs(q)))} > {A_IN_MAX} (16-bit a_in of Lava's fixed LIF); lower "
            "input_scale_bits in map_lif() or pass overflow='saturate'.")
    return np.clip(q, -A_IN_MAX, A_IN_MAX).astype(np.int32)


# ----------------------------------------------------------------------------------- Dense
SIGN_MODES = ("excitatory", "inhibitory", "mixed")


def dense_sign_mode(weights: np.ndarray) -> str:
    """Lava's ``determine_sign_mode``: excitatory if min >= 0, inhibitory if max <= 0, else mixed."""
    w = np.asarray(weights)
    if np.min(w) >= 0:
        return "excitatory"
    if np.max(w) <= 0:
        return "inhibitory"
    return "mixed"


def dense_effective_weights(weights: np.ndarray, num_weight_bits: int = DENSE_WEIGHT_BITS,
                            sign_mode: str | None = None) -> np.ndarray:
    """The integer weights Lava's bit-accurate Dense really uses (before ``weight_exp``).

    On its first step it applies ``clip_weights(w, sign_mode, num_bits=8)`` (mixed: -256..255,
    excitatory: 0..255, inhibitory: -255..0) and ``truncate_weights``, which drops
    ``8 - num_weight_bits + (sign_mode == mixed)`` low bits with an arithmetic shift,
    ``(w >> k) << k`` (toward -inf; inhibitory weights are negated around it). So with mixed-sign
    8-bit weights the lowest bit is lost: Loihi's mixed mode keeps the sign inside the 8 bits and
    reads weights as multiples of 2 (the Dense docstring: "the fixed point weight used for
    inference is scaled by 2").
    """
    w = np.asarray(weights).astype(np.int32)  # as Lava's int32 weights Var: floats toward zero
    mode = sign_mode or dense_sign_mode(w)
    if mode not in SIGN_MODES:
        raise ConversionError(f"sign_mode={sign_mode!r}; expected one of {SIGN_MODES}.")
    mixed = int(mode == "mixed")
    if mode == "inhibitory":
        w = -w
    w = np.clip(w, -(2 ** DENSE_WEIGHT_BITS) * mixed, 2 ** DENSE_WEIGHT_BITS - 1)
    k = DENSE_WEIGHT_BITS - int(num_weight_bits) + mixed
    w = np.left_shift(np.right_shift(w, k), k)
    return (-w if mode == "inhibitory" else w).astype(np.int32)


def dense_fixed_step(effective_weights: np.ndarray, weight_exp: int, s_in: np.ndarray) -> np.ndarray:
    """Lava's bit-accurate Dense accumulation for one step: (W @ s) shifted by weight_exp.

    A negative exponent right-shifts the accumulated sum (floor), not each weight.
    """
    acc = effective_weights.astype(np.int32) @ np.asarray(s_in).astype(np.int32)
    e = int(weight_exp)
    return (np.left_shift(acc, e) if e > 0 else np.right_shift(acc, -e)).astype(np.int32)


def dense_fixed_sequence(weights: np.ndarray, weight_exp: int, spikes: np.ndarray,
                         num_weight_bits: int = DENSE_WEIGHT_BITS,
                         sign_mode: str | None = None) -> np.ndarray:
    """Dense output for spikes (T, n_in) -> (T, n_out), with Lava's one-step delay (a_out[0] = 0)."""
    w_eff = dense_effective_weights(weights, num_weight_bits, sign_mode)
    spikes = np.asarray(spikes)
    out = np.zeros((spikes.shape[0], w_eff.shape[0]), dtype=np.int32)
    for t in range(1, spikes.shape[0]):
        out[t] = dense_fixed_step(w_eff, weight_exp, spikes[t - 1])
    return out


def lif_fixed_sequence(a_in: np.ndarray, mapping: FixedLifParams | LifMapping
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the bit-accurate LIF from rest on a_in (T, N): spikes, u, v, each (T, N), after each step."""
    a_in = np.asarray(a_in)
    u = np.zeros(a_in.shape[1:], np.int32)
    v = np.zeros(a_in.shape[1:], np.int32)
    spikes, us, vs = (np.zeros(a_in.shape, bool), np.zeros(a_in.shape, np.int32),
                      np.zeros(a_in.shape, np.int32))
    for t in range(a_in.shape[0]):
        spikes[t], u, v = lif_fixed_step(a_in[t], u, v, mapping)
        us[t], vs[t] = u, v
    return spikes, us, vs


# ------------------------------------------------------------------ float vs fixed agreement
@dataclass(frozen=True)
class SpikeAgreement:
    """How SpikeGPT's float LIF and the bit-accurate fixed LIF differ on one current sequence."""

    num_steps: int
    num_neurons: int
    float_spikes: int
    fixed_spikes: int
    mismatches: int
    agreement: float               # fraction of (step, neuron) with the same spike
    first_mismatch_step: int | None
    max_abs_v_error: float         # |V_float - v_fixed / v_scale| in H units, agreeing neurons


def compare_float_fixed(x: np.ndarray, mapping: LifMapping | None = None,
                        overflow: str = "raise") -> SpikeAgreement:
    """Run ``lif_step`` semantics (float32) and the fixed emulation on currents x (T, N) from rest.

    The fixed side sees quantize_current(x, mapping.input_scale); this states how much the
    quantization (inputs to 2**-b, v halved with rounding toward zero, the threshold band of
    ``LifMapping``) changes spikes.
    """
    mapping = mapping or map_lif()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ConversionError(f"compare_float_fixed: expected currents (T, N), got {x.shape}.")
    a = quantize_current(x, mapping.input_scale, overflow)
    fixed_s, _, fixed_v = lif_fixed_sequence(a, mapping)
    float_s = np.zeros(x.shape, bool)
    float_v = np.zeros(x.shape, np.float32)
    v = np.zeros(x.shape[1], np.float32)
    for t in range(x.shape[0]):
        float_s[t], v = spikegpt_lif_step(x[t], v)
        float_v[t] = v
    diff = float_s != fixed_s
    steps = np.nonzero(diff.any(axis=1))[0]
    same = ~diff.any(axis=0)
    verr = np.abs(float_v[:, same] - fixed_v[:, same] / mapping.v_scale)
    return SpikeAgreement(num_steps=x.shape[0], num_neurons=x.shape[1],
                          float_spikes=int(float_s.sum()), fixed_spikes=int(fixed_s.sum()),
                          mismatches=int(diff.sum()),
                          agreement=float(1.0 - diff.mean()) if x.size else 1.0,
                          first_mismatch_step=int(steps[0]) if steps.size else None,
                          max_abs_v_error=float(verr.max()) if verr.size else 0.0)


# The weight quantization lives in fixed_weights (this file's size); its names stay here too.
from spikegpt_deploy.fixed_weights import (QuantizedWeights, exact_integer_matmul,  # noqa: E402
                                           mantissa_dense_kwargs, quantize_weights)
