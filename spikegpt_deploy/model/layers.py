"""SpikeGPT building blocks: LIF neuron, WKV, time-mix and channel-mix.

Math follows docs/model.md sections 2.3-2.7. Every op is written so that the
parallel (training) form and the one-token (RNN) form perform the same float arithmetic wherever
they can, which is what makes parallel == RNN testable to 1e-5.
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

LIF_THRESHOLD = 1.0  # spikingjelly v_threshold used by SpikeGPT (spec 2.7)
LIF_TAU = 2.0        # tau = 2: H = V + (X - V) / 2
ATAN_ALPHA = 2.0     # surrogate.ATan(alpha=2.0), training only
WKV_EXPONENT_INIT = -1e30  # initial exponent offset pp of the WKV state (spec 2.10)


class ATanHeaviside(torch.autograd.Function):
    """Heaviside(x >= 0) forward; spikingjelly's ATan surrogate gradient backward.

    g'(x) = (alpha / 2) / (1 + (pi / 2 * alpha * x)^2) with alpha = 2 (spec 2.7).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        scale = (ATAN_ALPHA / 2) / (1 + (math.pi / 2 * ATAN_ALPHA * x) ** 2)
        return grad_out * scale


def heaviside(x: Tensor) -> Tensor:
    """1 where x >= 0 (exact zeros fire, as in the reference), differentiable via ATan."""
    if torch.is_grad_enabled() and x.requires_grad:
        return ATanHeaviside.apply(x)
    return (x >= 0).to(x.dtype)


def lif_step(x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """One LIF update: H = V + (X - V)/2; S = [H >= 1]; V' = H * (1 - S) (hard reset to 0)."""
    h = v + (x - v) * (1.0 / LIF_TAU)
    s = heaviside(h - LIF_THRESHOLD)
    return s, h * (1.0 - s)


def lif_sequence(x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Run the LIF over the token axis: x (B, T, C), v (B, C) -> spikes (B, T, C), last v (B, C).

    The LIF's time axis is the token axis (spec 2.7), so this loop over T is inherent; it runs
    vectorised over batch and channels.
    """
    spikes = []
    for t in range(x.shape[1]):
        s, v = lif_step(x[:, t], v)
        spikes.append(s)
    return torch.stack(spikes, dim=1), v


def wkv_scan(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """WKV over a sequence (B, T, C) from the zero state: the stabilised recurrence, scanned over T.

    Vectorised over batch and channels. On 2 CPU cores this is about 12x faster (forward +
    backward, B=16, T=128, C=128) than the closed form below, whose cost is O(T^2), and it performs
    the very arithmetic of the RNN step, so parallel and RNN modes agree to rounding.
    """
    B, T, C = k.shape
    aa, bb = k.new_zeros(B, C), k.new_zeros(B, C)
    pp = k.new_full((B, C), WKV_EXPONENT_INIT)
    out = []
    for t in range(T):
        y, aa, bb, pp = wkv_step(w, u, k[:, t], v[:, t], aa, bb, pp)
        out.append(y)
    return torch.stack(out, dim=1)


def wkv_closed_form(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """WKV over a whole sequence, vectorised over batch, time and channels (the reference check).

    w: (C,) decay, already -exp(time_decay); u: (C,) bonus; k, v: (B, T, C).
    wkv_t = sum_i softmax_i(L[t, i]) * v_i with L[t, i] = (t-1-i) w + k_i for i < t,
    L[t, t] = u + k_t and -inf for i > t: the exp-sum formula of spec 2.4, written as a
    per-channel masked softmax so it is stable without a loop. Memory is O(B T^2 C).
    """
    T = k.shape[1]
    idx = torch.arange(T, device=k.device)
    dist = (idx[:, None] - 1 - idx[None, :]).to(k.dtype)          # (T, T): t-1-i
    logits = dist[None, :, :, None] * w + k[:, None, :, :]          # (B, T, T, C)
    diag = (u + k)                                                  # (B, T, C)
    eye = torch.eye(T, dtype=torch.bool, device=k.device)[None, :, :, None]
    logits = torch.where(eye, diag[:, :, None, :], logits)
    future = (idx[None, :] > idx[:, None])[None, :, :, None]
    logits = logits.masked_fill(future, float("-inf"))
    weights = torch.softmax(logits, dim=2)
    return torch.einsum("btic,bic->btc", weights, v)


def wkv_step(w: Tensor, u: Tensor, k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One WKV step in the reference's stabilised form (spec 2.10): returns wkv, aa', bb', pp'."""
    ww = u + k
    p = torch.maximum(pp, ww)
    e1 = torch.exp(pp - p)
    e2 = torch.exp(ww - p)
    wkv = (e1 * aa + e2 * v) / (e1 * bb + e2)
    ww = pp + w
    p = torch.maximum(ww, k)
    e1 = torch.exp(ww - p)
    e2 = torch.exp(k - p)
    return wkv, e1 * aa + e2 * v, e1 * bb + e2, p


def token_shift_mix(a: Tensor, prev: Tensor, mix: Tensor) -> Tensor:
    """mix * a_t + (1 - mix) * a_{t-1} (spec 2.3)."""
    return a * mix + prev * (1 - mix)


# torch.fx records calls of these functions as single nodes instead of tracing into them: they
# are the ops the converter reasons about (LIF, WKV, token shift, Heaviside), see converters/.
torch.fx.wrap("wkv_step")
torch.fx.wrap("token_shift_mix")


def shift_sequence(a: Tensor) -> Tensor:
    """(B, T, C) -> the previous token's vector, zeros for the first token (spec 2.3)."""
    return F.pad(a, (0, 0, 1, -1))


class TimeMix(nn.Module):
    """Spiking RWKV time-mix (spec 2.4); parameter names follow the checkpoint keys."""

    def __init__(self, n_embd: int, layer_id: int, n_layer: int):
        super().__init__()
        C = n_embd
        ratio_0_to_1 = layer_id / max(n_layer - 1, 1)
        ratio_1_to_almost0 = 1.0 - layer_id / n_layer
        h = torch.arange(C, dtype=torch.float32)
        self.time_decay = nn.Parameter(-5 + 8 * (h / max(C - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1))
        self.time_first = nn.Parameter(math.log(0.3) + 0.5 * (((h + 1) % 3) - 1))
        x = (h / C).view(1, 1, C)
        self.time_mix_k = nn.Parameter(x ** ratio_1_to_almost0)
        self.time_mix_v = nn.Parameter(x ** ratio_1_to_almost0 + 0.3 * ratio_0_to_1)
        self.time_mix_r = nn.Parameter(x ** (0.5 * ratio_1_to_almost0))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)

    def _mixes(self, a: Tensor, prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mk, mv, mr = (m.reshape(-1) for m in (self.time_mix_k, self.time_mix_v, self.time_mix_r))
        return (token_shift_mix(a, prev, mk), token_shift_mix(a, prev, mv),
                token_shift_mix(a, prev, mr))

    def forward(self, a: Tensor) -> Tensor:
        """a: LN1 output (B, T, C) -> output projection (B, T, C), before the LIF."""
        xk, xv, xr = self._mixes(a, shift_sequence(a))
        k, v = self.key(xk), self.value(xv)
        r = torch.sigmoid(self.receptance(xr))
        wkv = wkv_scan(-torch.exp(self.time_decay), self.time_first, k, v)
        return self.output(r * wkv)

    def step(self, a: Tensor, prev: Tensor, aa: Tensor, bb: Tensor, pp: Tensor
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """a, prev: (B, C) -> output (B, C) and the new aa, bb, pp."""
        xk, xv, xr = self._mixes(a, prev)
        k, v = self.key(xk), self.value(xv)
        r = torch.sigmoid(self.receptance(xr))
        wkv, aa, bb, pp = wkv_step(-torch.exp(self.time_decay), self.time_first, k, v, aa, bb, pp)
        return self.output(r * wkv), aa, bb, pp


class ChannelMix(nn.Module):
    """Spiking receptance FFN (spec 2.6): sigma(W_r xr) * (W_v relu(W_k xk)^2)."""

    def __init__(self, n_embd: int, layer_id: int, n_layer: int):
        super().__init__()
        C = n_embd
        ratio_1_to_almost0 = 1.0 - layer_id / n_layer
        x = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        self.time_mix_k = nn.Parameter(x ** ratio_1_to_almost0)
        self.time_mix_r = nn.Parameter(x ** ratio_1_to_almost0)
        self.key = nn.Linear(C, 4 * C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(4 * C, C, bias=False)

    def _core(self, a: Tensor, prev: Tensor) -> Tensor:
        mk, mr = self.time_mix_k.reshape(-1), self.time_mix_r.reshape(-1)
        xk, xr = token_shift_mix(a, prev, mk), token_shift_mix(a, prev, mr)
        k = torch.square(torch.relu(self.key(xk)))
        return torch.sigmoid(self.receptance(xr)) * self.value(k)

    def forward(self, a: Tensor) -> Tensor:
        return self._core(a, shift_sequence(a))

    def step(self, a: Tensor, prev: Tensor) -> Tensor:
        return self._core(a, prev)
