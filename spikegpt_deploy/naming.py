"""Layer names of a model, read from the module paths its IR nodes carry.

The simulator groups chip processes and host stages by layer and the profiler reports per layer;
both name and order layers with these two functions.
"""

from __future__ import annotations


def layer_of(module: str) -> str:
    """'blocks.3.att.key' -> 'blocks.3'; emb -> 'emb'; head and ln_out -> 'head'; else 'other'."""
    parts = module.split(".")
    if parts[0] == "blocks" and len(parts) > 1:
        return f"blocks.{parts[1]}"
    if parts[0] in ("emb", "head", "ln_out"):
        return "head" if parts[0] == "ln_out" else parts[0]
    return "other"


def layer_rank(name: str) -> tuple[int, int]:
    """Sort key of a ``layer_of`` name: emb, blocks.0, blocks.1, ..., head, anything else."""
    if name == "emb":
        return (0, 0)
    if name.startswith("blocks."):
        return (1, int(name.split(".")[1]))
    return (2, 0) if name == "head" else (3, 0)
