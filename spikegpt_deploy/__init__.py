"""spikegpt-deploy: convert, simulate and profile SpikeGPT for neuromorphic hardware."""

from .checkpoint import load_model

__all__ = ["load_model"]
