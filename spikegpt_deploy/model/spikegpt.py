"""SpikeGPT in PyTorch: parallel (training) mode and RNN (one token per step) mode.

Reference: docs/model.md (cited as spec N.M). Block order (spec 2.1):
emb -> [Heaviside] -> LN0 -> L x (x += LIF1(TimeMix(LN1 x)); x += LIF2(ChannelMix(LN2 x))) ->
LN_out -> head. The LIF time axis is the token axis; its membrane is part of the RNN state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Iterator

import torch
import torch.fx
from torch import Tensor, nn

from .config import SpikeGPTConfig
from .layers import WKV_EXPONENT_INIT, ChannelMix, TimeMix, heaviside, lif_sequence, lif_step

# Leaf functions for torch.fx capture of ``step`` (see converters/capture.py).
torch.fx.wrap("heaviside")
torch.fx.wrap("lif_step")


@dataclass
class SpikeGPTState:
    """Everything that crosses tokens, each (n_layer, B, C).

    att_shift / ffn_shift: the previous token's LN1 / LN2 output (token shift; for an ffnPre
    model, att_shift[0] is ffnPre's shift). wkv_num / wkv_den / wkv_max: the WKV numerator,
    denominator and exponent offset (aa, bb, pp). lif1_v / lif2_v: the LIF membranes.
    """

    att_shift: Tensor
    ffn_shift: Tensor
    wkv_num: Tensor
    wkv_den: Tensor
    wkv_max: Tensor
    lif1_v: Tensor
    lif2_v: Tensor

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(f.name for f in fields(SpikeGPTState))

    def to_tensor(self) -> Tensor:
        """Stack into one (7, n_layer, B, C) tensor, in ``names()`` order."""
        return torch.stack([getattr(self, n) for n in self.names()])

    @classmethod
    def from_tensor(cls, packed: Tensor) -> "SpikeGPTState":
        return cls(*(packed[j] for j in range(len(cls.names()))))

    def clone(self) -> "SpikeGPTState":
        return SpikeGPTState(*(getattr(self, n).clone() for n in self.names()))


class SpikeRecorder:
    """Collects the binary outputs of every LIF population (and the Heaviside embedding).

    Names are ``emb``, ``blocks.{i}.lif1`` and ``blocks.{i}.lif2``. Each parallel forward adds a
    (B, T, C) chunk, each RNN step a (B, 1, C) chunk; ``spikes()`` concatenates them over tokens.
    """

    def __init__(self) -> None:
        self._chunks: dict[str, list[Tensor]] = {}

    def add(self, name: str, spikes: Tensor) -> None:
        self._chunks.setdefault(name, []).append(spikes.detach().to(torch.uint8))

    def spikes(self) -> dict[str, Tensor]:
        """Population name -> uint8 spikes (B, T, C), T = all tokens seen while recording."""
        return {name: torch.cat(chunks, dim=1) for name, chunks in self._chunks.items()}


class Block(nn.Module):
    def __init__(self, config: SpikeGPTConfig, layer_id: int):
        super().__init__()
        C = config.n_embd
        self.layer_id = layer_id
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)  # registered after ln2, as in the checkpoint order
        if config.block_kind(layer_id) == "ffnPre":
            self.ffnPre = ChannelMix(C, 0, config.n_layer)
        else:
            self.att = TimeMix(C, layer_id, config.n_layer)
        self.ffn = ChannelMix(C, layer_id, config.n_layer)


class SpikeGPT(nn.Module):
    """The SpikeGPT language model. ``model(idx)`` runs parallel mode; ``step`` runs RNN mode."""

    def __init__(self, config: SpikeGPTConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._recorder: SpikeRecorder | None = None

    # ---- spike recording -------------------------------------------------------------------
    @contextlib.contextmanager
    def record_spikes(self) -> Iterator[SpikeRecorder]:
        """Record the spikes of every population while the block runs (both modes)::

            with model.record_spikes() as rec:
                model(idx)
            rec.spikes()["blocks.0.lif1"]  # (B, T, C) uint8
        """
        previous, self._recorder = self._recorder, SpikeRecorder()
        try:
            yield self._recorder
        finally:
            self._recorder = previous

    def _record(self, name: str, spikes: Tensor) -> None:
        if self._recorder is not None:
            self._recorder.add(name, spikes)

    # ---- shared pieces -----------------------------------------------------------------------
    def _embed(self, idx: Tensor) -> Tensor:
        x = self.emb(idx)
        if self.config.binary_embedding:
            x = heaviside(x)
            if self._recorder is not None:
                self._record("emb", x if idx.dim() == 2 else x.unsqueeze(1))
        return x

    def _output_scale(self, layer: int) -> float:
        """2**-(layer // rescale_every): the reference's division of att.output / ffn.value."""
        k = self.config.rescale_every
        return 1.0 if k == 0 else 2.0 ** -(layer // k)

    def _halve_after(self, layer: int) -> bool:
        k = self.config.rescale_every
        return k > 0 and (layer + 1) % k == 0

    # ---- parallel mode -----------------------------------------------------------------------
    def forward(self, idx: Tensor) -> Tensor:
        """idx (B, T) int64 -> logits (B, T, V); every sequence starts from the zero state."""
        B, T = idx.shape
        C = self.config.n_embd
        x = self._embed(idx)                                          # (B, T, C)
        zeros = x.new_zeros(B, C)
        for i, block in enumerate(self.blocks):
            if i == 0:
                x = block.ln0(x)
            a = block.ln1(x)
            sub = block.ffnPre(a) if hasattr(block, "ffnPre") else block.att(a)
            x = x + self._lif_seq(f"blocks.{i}.lif1", sub * self._output_scale(i), zeros)
            x = x + self._lif_seq(f"blocks.{i}.lif2",
                                  block.ffn(block.ln2(x)) * self._output_scale(i), zeros)
            if self._halve_after(i):
                x = x / 2
        return self.head(self.ln_out(x))

    def _lif_seq(self, name: str, x: Tensor, v0: Tensor) -> Tensor:
        if not self.config.spiking:
            return x
        spikes, _ = lif_sequence(x, v0)
        self._record(name, spikes)
        return spikes

    # ---- RNN mode ----------------------------------------------------------------------------
    def init_state(self, batch_size: int = 1) -> SpikeGPTState:
        L, C = self.config.n_layer, self.config.n_embd
        p = self.head.weight
        zeros = p.new_zeros(L, batch_size, C)
        return SpikeGPTState(
            att_shift=zeros.clone(), ffn_shift=zeros.clone(), wkv_num=zeros.clone(),
            wkv_den=zeros.clone(), wkv_max=torch.full_like(zeros, WKV_EXPONENT_INIT),
            lif1_v=zeros.clone(), lif2_v=zeros.clone())

    def step(self, tokens: Tensor, state: SpikeGPTState) -> tuple[Tensor, SpikeGPTState]:
        """tokens (B,) int64 -> logits (B, V) and the next state (the input state is not mutated)."""
        x = self._embed(tokens)                                       # (B, C)
        # Index rather than unbind so that torch.fx can trace this method (converters/capture).
        L = self.config.n_layer
        new = {n: [getattr(state, n)[i] for i in range(L)] for n in SpikeGPTState.names()}
        for i, block in enumerate(self.blocks):
            if i == 0:
                x = block.ln0(x)
            a = block.ln1(x)
            if hasattr(block, "ffnPre"):
                sub = block.ffnPre.step(a, state.att_shift[i])
            else:
                sub, new["wkv_num"][i], new["wkv_den"][i], new["wkv_max"][i] = block.att.step(
                    a, state.att_shift[i], state.wkv_num[i], state.wkv_den[i], state.wkv_max[i])
            new["att_shift"][i] = a
            s1, new["lif1_v"][i] = self._lif_one(f"blocks.{i}.lif1", sub * self._output_scale(i),
                                                 state.lif1_v[i])
            x = x + s1
            c = block.ln2(x)
            sub = block.ffn.step(c, state.ffn_shift[i])
            new["ffn_shift"][i] = c
            s2, new["lif2_v"][i] = self._lif_one(f"blocks.{i}.lif2", sub * self._output_scale(i),
                                                 state.lif2_v[i])
            x = x + s2
            if self._halve_after(i):
                x = x / 2
        logits = self.head(self.ln_out(x))
        return logits, SpikeGPTState(**{n: torch.stack(v) for n, v in new.items()})

    def _lif_one(self, name: str, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if not self.config.spiking:
            return x, v
        s, v = lif_step(x, v)
        if self._recorder is not None:
            self._record(name, s.unsqueeze(1))
        return s, v

    def step_packed(self, tokens: Tensor, packed_state: Tensor) -> tuple[Tensor, Tensor]:
        """``step`` on the packed (7, n_layer, B, C) state: the form ONNX export and fx capture use."""
        state = SpikeGPTState(*(packed_state[j] for j in range(len(SpikeGPTState.names()))))
        logits, new_state = self.step(tokens, state)
        return logits, new_state.to_tensor()

    def population_names(self) -> list[str]:
        """Names of the binary populations this model records, in network order."""
        names = ["emb"] if self.config.binary_embedding else []
        if self.config.spiking:
            for i in range(self.config.n_layer):
                names += [f"blocks.{i}.lif1", f"blocks.{i}.lif2"]
        return names

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
