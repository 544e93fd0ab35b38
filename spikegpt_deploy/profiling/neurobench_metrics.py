"""NeuroBench's own metrics on the PyTorch model, beside this profiler's counts, per layer.

NeuroBench (v2.3, Apache-2.0; the optional extra ``[neurobench]``) is imported only here and
only when asked for. Its metric classes are run on the same tokens as the profile:

- SynapticOperations on every ``nn.Linear`` of the PyTorch model (NeuroBench sees only
  Linear/Conv/RNN modules), one layer at a time: Effective MACs or ACs (a call counts as ACs only
  when every input is in {-1, 0, 1}) and Dense, per token;
- the same class on the chip's own linears: an ``nn.Linear`` holding each folded weight of the
  partitioned IR, fed the values the chip reads (the recorded spikes, or their integer sums),
  which must equal this profiler's synaptic operations exactly;
- Footprint and ConnectionSparsity per layer and for the whole model;
- ActivationSparsity: NeuroBench finds activations only in nn.ReLU / nn.Sigmoid / snnTorch
  modules, and SpikeGPT's LIF, ReLU and sigmoid are functions, so on the model it sees none and
  returns 0.0; each population's recorded spikes are also passed through an identity module
  registered as an activation module, which gives NeuroBench's figure per population.

A metric that raises is reported with its message (NeuroBench's Benchmark would turn it into
0.0), never as a number.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..folded import linear_weight
from ..optional import require

log = logging.getLogger(__name__)
NEEDED_BY = "--neurobench needs NeuroBench 2.3.0 (the optional extra [neurobench])"


class _SpikeProbe(nn.Identity):
    """An identity module registered as a NeuroBench activation module, fed recorded spikes."""


class _HookView:
    """The part of a NeuroBenchModel that SynapticOperations reads: its connection hooks."""

    def __init__(self, hooks: list[Any]):
        self.connection_hooks = hooks


def require_neurobench() -> dict[str, Any]:
    """NeuroBench's metric classes; DeployError with the install command if it is missing."""
    static, workload, models = (require(m, "neurobench", NEEDED_BY, constrained=True) for m in (
        "neurobench.metrics.static", "neurobench.metrics.workload", "neurobench.models"))
    return {"TorchModel": models.TorchModel, "Footprint": static.Footprint,
            "SynOps": workload.SynapticOperations,
            "ConnectionSparsity": static.ConnectionSparsity,
            "ActivationSparsity": workload.ActivationSparsity}


def _safe(fn: Callable[[], Any]) -> tuple[Any, str]:
    """(value, '') or (None, 'raised ...'): a metric that fails is reported, never a 0.0."""
    try:
        return fn(), ""
    except Exception as exc:  # noqa: BLE001 - NeuroBench's failures are reported, not hidden
        return None, f"raised {type(exc).__name__}: {exc}"


def _batch_inputs(hook: Any) -> None:
    """Stack a hook's per-token inputs into two calls: the tokens whose inputs are all in
    {-1, 0, 1} and the rest. NeuroBench's count is linear in the rows of a call and classes a
    whole call as ACs or MACs, so the figures are those of the per-token calls, much faster."""
    if not hook.inputs:
        return
    x = torch.cat([inp[0].reshape(1, -1) for inp in hook.inputs])
    spiking = ((x == 0) | (x == 1) | (x == -1)).all(dim=1)
    hook.inputs[:] = [(rows,) for rows in (x[spiking], x[~spiking]) if len(rows)]


def _synops(nb: dict[str, Any], hooks: list[Any], tokens: int) -> dict[str, float]:
    metric = nb["SynOps"]()
    out = metric(_HookView(hooks), None, (torch.zeros(tokens),))
    return {k: float(v) for k, v in out.items()}


def _chip_inputs(counts: Any, spikes: Mapping[str, np.ndarray], source: str) -> np.ndarray | None:
    """The values a chip linear reads per token: a population's spikes or a SpikeSum of them."""
    by_node = {p["node"]: name for name, p in counts.populations.items()}
    if source in by_node:
        return np.asarray(spikes[by_node[source]], dtype=np.float32)
    acc = counts.accumulators.get(source)
    if acc is None or any(i not in by_node for i in acc["inputs"]):
        return None
    return sum(float(c) * np.asarray(spikes[by_node[i]], dtype=np.float32)
               for c, i in zip(acc["coefficients"], acc["inputs"]))


def _chip_linear_synops(nb: dict[str, Any], ir: Any, counts: Any,
                        spikes: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """NeuroBench's SynapticOperations on every chip linear, summed per source module."""
    out: dict[str, dict[str, Any]] = {}
    for node, entry in counts.linears.items():
        x = _chip_inputs(counts, spikes, entry["source"])
        row = out.setdefault(entry["module"], {"effective": 0.0, "macs": 0.0, "acs": 0.0,
                                               "nodes": 0, "ours": 0.0, "skipped": []})
        row["nodes"] += 1
        row["ours"] += entry["synaptic_ops"] / counts.tokens
        if x is None:
            row["skipped"].append(node)
            continue
        W = torch.from_numpy(np.asarray(linear_weight(ir.node(node)["params"]), dtype=np.float32))
        lin = nn.Linear(W.shape[1], W.shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(W)
        view = nb["TorchModel"](nn.Sequential(lin))
        view.register_hooks()
        # NeuroBench's count is linear in the rows of a call, and it classes a whole call as ACs
        # or MACs: one call with the tokens whose inputs are all in {-1,0,1}, one with the rest,
        # gives the per-token calls' figures at a fraction of the time.
        spiking = np.isin(x, (-1.0, 0.0, 1.0)).all(axis=1)
        with torch.no_grad():
            for rows in (x[spiking], x[~spiking]):
                if len(rows):
                    lin(torch.from_numpy(np.ascontiguousarray(rows)))
        ops = _synops(nb, view.connection_hooks, x.shape[0])
        view.cleanup_hooks()
        row["macs"] += ops["Effective_MACs"]
        row["acs"] += ops["Effective_ACs"]
        row["effective"] += ops["Effective_MACs"] + ops["Effective_ACs"]
    return out


def _reason(module: str, chip: dict[str, Any] | None, ours: float, nb_eff: float,
            nb_dense: float, nb_class: str) -> str:
    if chip is None:        # a host linear: every MAC is executed
        if ours == nb_eff:
            return "equal (the host computes it densely; no input or weight is zero)"
        return (f"the host computes every MAC (ours = NeuroBench's Dense {nb_dense:,.0f}); "
                f"NeuroBench's effective {nb_class} skip zero inputs (e.g. ReLU^2 zeros) and "
                f"zero weights")
    if chip["skipped"] and len(chip["skipped"]) == chip["nodes"]:   # graded, from the host
        same = abs(ours - nb_eff) <= 1e-6 * max(ours, 1)
        return ("equal: the chip reads the same graded values as the PyTorch layer" if same
                else f"the chip reads the graded values of the IR's own run (ours {ours:,.1f}), "
                     f"NeuroBench PyTorch's ({nb_eff:,.1f} {nb_class}): a value that is zero in "
                     f"one and not the other")
    return (f"NeuroBench sees {module}'s float input (from a LayerNorm, not in {{-1,0,1}}: "
            f"{nb_class}); the chip runs the fold: {chip['nodes']} linear(s) on the spike counts "
            f"of the residual stream and the embedding spikes. NeuroBench on those chip "
            f"linears: {chip['acs']:,.1f} ACs + {chip['macs']:,.1f} MACs per token"
            + (" = ours" if abs(chip["effective"] - ours) <= 1e-6 * max(ours, 1) else
               f" (ours {ours:,.1f})")
            + (f"; not compared: {', '.join(chip['skipped'])} (graded inputs from the host, "
               f"whose values are not recorded)" if chip["skipped"] else ""))


def neurobench_compare(model: Any, token_ids: Any, ir: Any, counts: Any,
                       spikes: Mapping[str, np.ndarray],
                       resources: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run NeuroBench's metrics on ``model`` over ``token_ids`` and set them beside ``counts``
    (this profiler's counts of the partitioned ``ir`` on the same tokens); see the docstring."""
    nb = require_neurobench()
    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64).reshape(-1))
    T = int(ids.numel())
    wrapped = nb["TorchModel"](model)
    wrapped.register_hooks()
    try:
        state = model.init_state(1)
        with torch.no_grad():
            for t in range(T):
                _, state = model.step(ids[t:t + 1], state)
        linears = {id(m): name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
        for hook in wrapped.connection_hooks:
            _batch_inputs(hook)
        act, act_err = _safe(lambda: float(nb["ActivationSparsity"]()(wrapped, None, (ids,))))
        whole = {"Footprint": _safe(lambda: float(nb["Footprint"]()(wrapped))),
                 "ConnectionSparsity": _safe(lambda: float(nb["ConnectionSparsity"]()(wrapped))),
                 "ActivationSparsity": (act, act_err), "activation_hooks":
                 (len(wrapped.activation_hooks), "")}
        whole_syn, syn_err = _safe(lambda: _synops(nb, wrapped.connection_hooks, T))
        per_hook = {linears[id(h.layer)]: h for h in wrapped.connection_hooks}
        layer_syn = {name: _safe(lambda h=h: _synops(nb, [h], T))  # type: ignore[misc]
                     for name, h in per_hook.items()}
    finally:
        wrapped.cleanup_hooks()
    chip = _chip_linear_synops(nb, ir, counts, spikes)
    memory: dict[str, int] = {}
    for r in (resources or {}).get("layers", []):
        mod = ir.node(r["node"])["module"]
        memory[mod] = memory.get(mod, 0) + int(r["synaptic_memory_bytes"])
    modules = dict(model.named_modules())
    rows = []
    for name, (syn, err) in layer_syn.items():
        lin = modules[name]
        fp, fp_err = _safe(lambda lin=lin: float(nb["Footprint"]()(nb["TorchModel"](lin))))
        cs, cs_err = _safe(lambda lin=lin: float(nb["ConnectionSparsity"]()(
            nb["TorchModel"](nn.Sequential(lin)))))
        c = chip.get(name)
        ours = c["ours"] if c else float(lin.weight.numel())
        eff = None if syn is None else syn["Effective_MACs"] + syn["Effective_ACs"]
        cls = "-" if syn is None else "ACs" if syn["Effective_ACs"] and not syn[
            "Effective_MACs"] else "MACs"
        w = lin.weight.detach()
        rows.append({
            "layer": name, "placement": "chip" if c else "host", "neurobench_class": cls,
            "neurobench_effective": eff, "neurobench_dense": None if syn is None else syn["Dense"],
            "ours": ours, "ours_kind": "synaptic ops (chip)" if c else "MACs (host, dense)",
            "neurobench_on_chip_linears": c["effective"] if c else None,
            "neurobench_on_chip_linears_acs": c["acs"] if c else None,
            "footprint_neurobench_b": fp, "footprint_ours_b": memory.get(name) if c else
            int(w.numel() * w.element_size()),
            "connection_sparsity_neurobench": cs,
            "connection_sparsity_ours": float((w == 0).sum()) / w.numel(),
            "reason": err or fp_err or cs_err or _reason(name, c, ours, eff or 0.0,
                                                        syn["Dense"] if syn else 0.0, cls)})
    pops = []
    for name, s in spikes.items():
        probe = _SpikeProbe()
        view = nb["TorchModel"](nn.Sequential(probe))
        view.add_activation_module(_SpikeProbe)
        view.register_hooks()
        with torch.no_grad():
            for t in range(len(s)):
                probe(torch.as_tensor(np.asarray(s[t:t + 1], dtype=np.float32)))
        value, perr = _safe(lambda: float(nb["ActivationSparsity"]()(view, None, (ids,))))
        view.cleanup_hooks()
        ours_rate = counts.populations.get(name, {}).get("rate")
        pops.append({"population": name, "activation_sparsity_neurobench": value,
                     "activation_sparsity_ours": None if ours_rate is None else 1 - ours_rate,
                     "note": perr or "recorded spikes through an identity probe module"})
    return {"tokens": T, "whole_model": {k: {"value": v, "note": e} for k, (v, e) in
                                         whole.items()},
            "synaptic_operations": {"value": whole_syn, "note": syn_err},
            "layers": rows, "populations": pops,
            "differences": [
                "NeuroBench sees only nn.Linear-type modules: the chip's SpikeSum accumulations,"
                " the LIF updates and the host's float ops are outside its count",
                "NeuroBench counts a call as ACs only when every input is in {-1, 0, 1}; the "
                "PyTorch linears read floats, so it classes them all as MACs",
                f"ActivationSparsity on the model is {act if act is not None else act_err}: "
                "NeuroBench finds no activation module (SpikeGPT's LIF, ReLU and sigmoid are "
                "functions); per population it is measured through a probe module",
                "a NeuroBench metric that raises becomes 0.0 in its Benchmark; here it is "
                "reported with its message instead"]}
