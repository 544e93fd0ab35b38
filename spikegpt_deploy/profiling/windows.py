"""Counting a text as windows: the unit a profile is split into across processes.

A window is a run of tokens from the zero state (``--window W``; without it the whole text is one
window, one stream). ``count_targets`` records the spikes of its windows in PyTorch RNN mode and
counts them for every chip target; the counts of consecutive window shards merge exactly
(``merge.merge_counts``), so any split of the windows gives the single-process figures.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from hw_profiles import HardwareProfile

from ..errors import ConversionError, DataError
from .counts import OpCounts, count_ops, record_spikes_pytorch

log = logging.getLogger(__name__)


def split_windows(ids: Sequence[int] | np.ndarray, window: int | None) -> list[np.ndarray]:
    """Consecutive windows of ``window`` tokens (the last may be shorter); None: one window."""
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if window is None:
        return [arr]
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise DataError(f"--window must be a positive integer, got {window!r}")
    return [arr[i:i + window] for i in range(0, len(arr), window)]


def record_windows(model: Any, windows: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Spikes of every population, each window from the zero state, concatenated (sum T, C)."""
    parts = [record_spikes_pytorch(model, w) for w in windows]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _placement(ir: Any) -> tuple[tuple[str, bool], ...]:
    return tuple(sorted((n, d["placement"] == "host") for n, d in ir.graph.nodes(data=True)))


def partition_targets(folded: Any, chips: Sequence[HardwareProfile], policy: str = "spikes",
                      graded_bits: int = 8) -> dict[str, Any]:
    """The partitioned IR of every chip target, made once for counting and core mapping alike;
    a target that cannot run the model (other than the first, whose error is raised) maps to
    the partitioner's reason."""
    from ..partition import partition

    out: dict[str, Any] = {}
    for i, chip in enumerate(chips):
        try:
            out[chip.name] = partition(folded, chip, policy, graded_bits)
        except ConversionError as exc:
            if i == 0:
                raise
            out[chip.name] = str(exc)
    return out


def count_targets(model: Any, windows: Sequence[np.ndarray], chips: Sequence[HardwareProfile],
                  policy: str = "spikes", graded_bits: int = 8, folded: Any = None,
                  partitioned: dict[str, Any] | None = None) -> dict[str, OpCounts | str]:
    """Counts of ``windows`` per chip target; a target that cannot run the model (other than the
    first, whose error is raised) maps to the partitioner's reason. Targets with the same
    placement share one count. ``partitioned``: ``partition_targets``' result, when the caller
    has it (else it is made from ``folded``, else from a fresh capture of ``model``)."""
    from . import graded_input_trace

    if not windows or not sum(len(w) for w in windows):
        raise DataError("no tokens to profile")
    if partitioned is None:
        if folded is None:
            from converters.torch_capture import capture_ir

            from ..passes.fold import fold_layernorm

            folded = fold_layernorm(capture_ir(model))
        partitioned = partition_targets(folded, chips, policy, graded_bits)
    log.info("recording spikes on %d tokens in %d window(s) (RNN mode)",
             sum(len(w) for w in windows), len(windows))
    spikes = record_windows(model, windows)
    out: dict[str, OpCounts | str] = {}
    done: dict[tuple[tuple[str, bool], ...], OpCounts] = {}
    for chip in chips:
        ir = partitioned[chip.name]
        if isinstance(ir, str):
            out[chip.name] = ir
            continue
        key = _placement(ir)
        if key not in done:
            graded = None
            if policy == "graded":
                traces = [graded_input_trace(ir, w) for w in windows]
                graded = {n: np.concatenate([t[n] for t in traces]) for n in traces[0]}
            done[key] = count_ops(ir, spikes, graded)
        out[chip.name] = done[key]
    return out


# A worker process profiles many shards of one model: its partitioned IRs are made once
# (model source, targets, policy, graded bits) -> partition_targets' result.
_PARTITIONED: dict[Any, dict[str, Any]] = {}


def profile_shard(source: Any, windows: Sequence[np.ndarray], chips: Sequence[HardwareProfile],
                  policy: str, graded_bits: int) -> dict[str, OpCounts | str]:
    """One shard of a distributed profile: ``count_targets`` on the model ``source`` opens
    (a ``distributed.ModelSource``); the captured, folded and partitioned IRs are kept for the
    process's next shard."""
    model = source.open().model
    key = (source, tuple((c.name, c.sha256) for c in chips), policy, graded_bits)
    if key not in _PARTITIONED:
        from converters.torch_capture import capture_ir

        from ..passes.fold import fold_layernorm

        _PARTITIONED.clear()   # one model (and one set of options) per worker at a time
        _PARTITIONED[key] = partition_targets(fold_layernorm(capture_ir(model)), chips, policy,
                                              graded_bits)
    return count_targets(model, windows, chips, policy, graded_bits,
                         partitioned=_PARTITIONED[key])
