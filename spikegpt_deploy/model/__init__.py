"""The SpikeGPT model: config, layers and the network (parallel and RNN modes)."""

from .config import MODEL_TYPES, SpikeGPTConfig
from .spikegpt import SpikeGPT, SpikeGPTState, SpikeRecorder

__all__ = ["MODEL_TYPES", "SpikeGPT", "SpikeGPTConfig", "SpikeGPTState", "SpikeRecorder"]
