"""Model configuration of SpikeGPT (docs/model.md, section 1.3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import CheckpointError

MODEL_TYPES = ("RWKV", "RWKV-ffnPre")


@dataclass(frozen=True)
class SpikeGPTConfig:
    """Shape and behaviour of a SpikeGPT model.

    vocab_size, n_layer, n_embd: the sizes of the embedding, the block stack and the stream.
    ctx_len: the training window; RNN mode is not limited by it.
    model_type: 'RWKV' (time-mix in every block) or 'RWKV-ffnPre' (block 0 uses a second
        channel-mix, ``ffnPre``, instead of the time-mix).
    binary_embedding: apply Heaviside(emb >= 0) to the embedding, as training (GPT mode) does.
    rescale_every: the reference inference code's RWKV_RESCALE_LAYER: att.output and ffn.value of
        block i are divided by 2**(i // k) and the stream is halved after every k-th block. 0 turns
        it off (training mode). It is not function-preserving with LIF neurons (spec 2.11).
    spiking: False replaces every LIF by the identity: the non-spiking RWKV-4 baseline.
    """

    vocab_size: int
    n_layer: int
    n_embd: int
    ctx_len: int = 1024
    model_type: str = "RWKV"
    binary_embedding: bool = True
    rescale_every: int = 0
    spiking: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_embd", "ctx_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(
                    f"config field '{name}' must be a positive integer, found {value!r}"
                )
        if self.model_type not in MODEL_TYPES:
            raise CheckpointError(
                f"config field 'model_type' must be one of {', '.join(MODEL_TYPES)}, "
                f"found {self.model_type!r}"
            )
        if isinstance(self.rescale_every, bool) or not isinstance(self.rescale_every, int) \
                or self.rescale_every < 0:
            raise CheckpointError(
                f"config field 'rescale_every' must be an integer >= 0 (0 = off), "
                f"found {self.rescale_every!r}"
            )
        for name in ("binary_embedding", "spiking"):
            if not isinstance(getattr(self, name), bool):
                raise CheckpointError(
                    f"config field '{name}' must be true or false, found {getattr(self, name)!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "SpikeGPTConfig":
        """Build a config from a plain dict, refusing unknown keys (they signal a format mismatch)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(
                f"{source}: unknown config key(s) {unknown}; known keys are {sorted(known)}"
            )
        try:
            return cls(**data)
        except TypeError as exc:  # a required field is missing
            raise CheckpointError(f"{source}: incomplete config: {exc}") from None

    def replace(self, **overrides: Any) -> "SpikeGPTConfig":
        data = self.to_dict()
        data.update(overrides)
        return SpikeGPTConfig.from_dict(data, source="config overrides")

    def block_kind(self, layer: int) -> str:
        """'ffnPre' for block 0 of an ffnPre model, else 'att': which module feeds lif1."""
        return "ffnPre" if (layer == 0 and self.model_type == "RWKV-ffnPre") else "att"
