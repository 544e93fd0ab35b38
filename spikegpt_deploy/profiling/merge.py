"""Exact sums of ``OpCounts`` measured on consecutive shards of the same tokens.

``count_ops`` counts every token independently of the others (the spikes of each token are
given), so the counts of a text cut into shards are the sums of the shards' counts: integer
event counts add, per-token lists concatenate in shard order, maxima take the maximum, and the
structural entries (shapes, payload widths, mapping, pipeline, host ops per token) must agree.
Rates are recomputed from the summed integers with the same division ``count_ops`` uses, so a
merged result equals the single-run result figure for figure.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import DataError
from .counts import OpCounts

# per-entry keys that add up over tokens; every other key of an entry must be equal in all shards
_SUMMED = {
    "populations": ("spikes", "active_updates", "idle_updates"),
    "linears": ("events", "synaptic_ops", "readout_active", "readout_idle"),
    "accumulators": ("accumulate_ops", "events", "active", "idle"),
    "crossings": ("messages", "bytes"),
}
_CONCATENATED = {"populations": ("spikes_per_token",)}
_MAXIMUM = {"accumulators": ("max_count",)}
_SAME = ("target", "policy", "layers", "host_ops", "pipeline", "mapping", "ann")


def _merge_entry(kind: str, name: str, parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    first = parts[0]
    merged = dict(first)
    summed, concat = _SUMMED[kind], _CONCATENATED.get(kind, ())
    maxed = _MAXIMUM.get(kind, ())
    for key in first:
        values = [p.get(key) for p in parts]
        if key in summed:
            merged[key] = sum(values)
        elif key in concat:
            merged[key] = [x for v in values for x in v]
        elif key in maxed:
            merged[key] = max(values)
        elif key != "rate" and any(v != first[key] for v in values[1:]):
            raise DataError(f"shards disagree on {kind} '{name}' {key}: {values}; the shards "
                            f"were not counted on the same model and target")
    return merged


def merge_counts(parts: Sequence[OpCounts]) -> OpCounts:
    """The counts of the concatenated tokens of ``parts`` (in order), equal to counting them in
    one ``count_ops`` call."""
    if not parts:
        raise DataError("no shard counts to merge")
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for key in _SAME:
        for p in parts[1:]:
            if getattr(p, key) != getattr(first, key):
                raise DataError(f"shards disagree on '{key}'; they were not counted on the same "
                                f"model and target")
    tokens = sum(p.tokens for p in parts)
    merged: dict[str, Any] = {}
    for kind in ("populations", "linears", "accumulators"):
        names = list(getattr(first, kind))
        if any(list(getattr(p, kind)) != names for p in parts[1:]):
            raise DataError(f"shards disagree on the {kind} they counted")
        merged[kind] = {n: _merge_entry(kind, n, [getattr(p, kind)[n] for p in parts])
                        for n in names}
    for name, pop in merged["populations"].items():   # the division count_ops makes
        pop["rate"] = float(pop["spikes"]) / (tokens * pop["neurons"])
    if any(len(p.crossings) != len(first.crossings) for p in parts[1:]):
        raise DataError("shards disagree on the chip-host crossings they counted")
    merged["crossings"] = [_merge_entry("crossings", f"{c['source']}:{c['port']}",
                                        [p.crossings[i] for p in parts])
                           for i, c in enumerate(first.crossings)]
    totals = {layer: {k: sum(p.layer_totals[layer][k] for p in parts) for k in counters}
              for layer, counters in first.layer_totals.items()}
    per_token = {k: [x for p in parts for x in p.per_token[k]] for k in first.per_token}
    unsupported: list[dict[str, str]] = []
    for p in parts:
        unsupported += [u for u in p.unsupported if u not in unsupported]
    return OpCounts(tokens=tokens, target=first.target, policy=first.policy,
                    layers=list(first.layers), layer_totals=totals, host_ops=first.host_ops,
                    per_token=per_token, pipeline=first.pipeline, mapping=first.mapping,
                    ann=first.ann, unsupported=unsupported,
                    messages=_merge_messages([p.messages for p in parts]),
                    neuron_work=_merge_work([p.neuron_work for p in parts]), **merged)


def _merge_messages(parts: Sequence[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Spike messages per layer and source: the counts add up."""
    out: dict[str, dict[str, int]] = {}
    for p in parts:
        for layer, sources in p.items():
            row = out.setdefault(layer, {})
            for source, n in sources.items():
                row[source] = row.get(source, 0) + n
    return out


def _merge_work(parts: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per-neuron work of every chip node (sums over tokens): the arrays add up elementwise."""
    first = parts[0]
    if any(set(p) != set(first) for p in parts[1:]):
        raise DataError("shards disagree on the chip nodes whose per-neuron work they counted")
    return {n: {k: (sum(p[n][k] for p in parts) if k not in ("layer", "op") else v)
                for k, v in entry.items()} for n, entry in first.items()}


def merge_targets(shards: Sequence[dict[str, OpCounts | str]]) -> dict[str, OpCounts | str]:
    """Per target, the merged counts of ``count_targets`` results of consecutive shards; targets
    that shared one count in the shards share the merged one; an unsupported target keeps its
    reason."""
    out: dict[str, OpCounts | str] = {}
    by_id: dict[int, OpCounts] = {}
    for name, first in shards[0].items():
        if isinstance(first, str):
            out[name] = first
        elif id(first) in by_id:
            out[name] = by_id[id(first)]
        else:
            by_id[id(first)] = out[name] = merge_counts([s[name] for s in shards])  # type: ignore
    return out
