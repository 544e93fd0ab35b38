"""fold_layernorm: make the linears that read LayerNorm outputs spike-driven (spec section 6.3).

For a Linear W fed by a token-shift mix (mix m) of LayerNorm outputs of the residual stream x:

    W [m * LN(x_t) + (1 - m) * LN(x_{t-1})]
        = (A x_t - mu_t A 1) / sigma_t + W (m * beta)                 (this token)
        + (B x_{t-1} - mu_{t-1} B 1) / sigma_{t-1} + W ((1 - m) * beta)  (kept from the last token)

with A = W diag(m * gamma) and B = W diag((1 - m) * gamma). The stream is
x_t = scale * (x0_t + n_t): x0 is LN0's output and n_t = sum_j c_j s_j the integer count of the
spikes of all earlier LIF populations in this token (c_j are powers of two when the reference
rescaling is on). A x_t = scale (A x0_t + A n_t): A n_t is pure accumulation over spikes (chip).
With the Heaviside embedding, x0 = LN0(b) for binary b, so A x0 = (A diag(gamma0) b -
mu0 A gamma0) / sigma0 + A beta0 is spike-driven too. What is left for the host is per-token
statistics (mu, sigma, mu0, sigma0) and a few vector operations: the FoldCorrection node, defined
with its numpy function, cost and ONNX form in ``spikegpt_deploy/ops/norm.py``.

The head (W_head LN_out(x)) is the same rewrite with m = 1 and no token shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..folded import fold_weight
from ..ir import IR, Port
from ..threads import row_blocks, thread_map

F32 = np.float32


@dataclass
class _Stream:
    """x = scale * (x0 + sum_j coefficient_j * spikes_j)."""

    x0: Port
    terms: list[tuple[Port, float]] = field(default_factory=list)
    scale: float = 1.0


def _stream_forms(ir: IR) -> dict[Port, _Stream]:
    forms: dict[Port, _Stream] = {}
    for n in ir.topological():
        data = ir.node(n)
        ins = ir.inputs(n)
        if data["op"] == "LayerNorm" and data["module"] == "blocks.0.ln0":
            forms[Port(n)] = _Stream(Port(n))
        elif data["op"] == "Add" and len(ins) == 2:
            a, b = ins
            if a in forms and ir.node(b.node)["op"] == "LIF" and b.port == 0:
                f = forms[a]
                forms[Port(n)] = _Stream(f.x0, f.terms + [(b, 1.0 / f.scale)], f.scale)
        elif data["op"] == "Scale" and ins[0] in forms:
            f = forms[ins[0]]
            forms[Port(n)] = _Stream(f.x0, list(f.terms), f.scale * data["attrs"]["factor"])
    return forms


def fold_layernorm(ir: IR) -> IR:
    """Rewrite every foldable Linear (see the module docstring); returns a new IR.

    ``ir.meta['fold_report']`` lists, per Linear, whether it became spike-driven and which spike
    populations now feed it, or why it was left as it was.
    """
    out = ir.copy()
    forms = _stream_forms(out)
    binary_x0 = bool(out.config.get("binary_embedding"))
    report: dict[str, dict] = {}
    for lin in list(out.nodes_of("Linear")):
        path = out.node(lin)["module"]
        why = _fold_one(out, lin, forms, binary_x0)
        report[path] = {"spike_driven": why is None, "reason": why or "folded (spec 6.3)"}
    out.remove_dead()
    for lin, entry in report.items():
        if entry["spike_driven"]:
            entry["spike_inputs"] = sorted({
                out.node(src.node)["module"]
                for n in out.nodes_of("SpikeLinear") if out.node(n)["module"] == lin
                for p in out.inputs(n)
                for src in (out.inputs(p.node) if out.node(p.node)["op"] == "SpikeSum" else [p])})
    out.meta["fold_report"] = report
    out.passes.append("fold_layernorm")
    return out


def _fold_one(ir: IR, lin: str, forms: dict[Port, _Stream], binary_x0: bool) -> str | None:
    """Fold one Linear in place on ``ir``; return None on success, else the reason it was not."""
    (src,) = ir.inputs(lin)
    src_node = ir.node(src.node)
    mix, prev_slot = None, None
    if src_node["op"] == "TokenShiftMix":
        ln_port, prev = ir.inputs(src.node)
        if ir.node(prev.node)["op"] != "StateIn":
            return "token-shift input is not a state slot"
        prev_slot = ir.node(prev.node)["attrs"]["state"]
        writers = [ir.inputs(m)[0] for m in ir.state_outs(prev_slot)]
        if writers != [ln_port]:
            return f"state slot {prev_slot} does not hold the previous token's LayerNorm output"
        mix = src_node["params"]["mix"]
    else:
        ln_port = src
    ln = ir.node(ln_port.node)
    if ln["op"] != "LayerNorm":
        return "input is not a LayerNorm of the residual stream (float input: stays as it is)"
    (stream_port,) = ir.inputs(ln_port.node)
    form = forms.get(stream_port)
    if form is None:
        return f"{ln['module']} does not read the residual stream"
    if not form.terms and not binary_x0:
        return ("the stream holds no spikes here (float embedding, before the first LIF): "
                "nothing to make spike-driven")
    W = ir.node(lin)["params"]["weight"]
    out_dim = W.shape[0]
    gamma, beta = ln["params"]["weight"].astype(np.float64), ln["params"]["bias"].astype(np.float64)
    m = np.ones_like(gamma) if mix is None else mix.astype(np.float64)
    # A = W diag(m gamma) and B = W diag((1 - m) gamma), stacked: column factors per half
    cols = np.stack([m * gamma] + ([(1 - m) * gamma] if mix is not None else []))
    betas = np.stack([m * beta] + ([(1 - m) * beta] if mix is not None else []))
    path = ir.node(lin)["module"]
    inputs: list[Port] = []
    x0_ln = ir.node(form.x0.node)
    g0 = x0_ln["params"]["weight"].astype(np.float64)
    b0 = x0_ln["params"]["bias"].astype(np.float64)
    # every vector product with [A; B] in one pass over W: A v = W (cols_A * v)
    vecs = [cols, betas] + ([cols * g0, cols * b0] if binary_x0 else [])
    dots = _row_dots(W, np.concatenate(vecs))                        # (out, k) float64
    halves = len(cols)

    def stacked(i: int) -> np.ndarray:  # the i-th group of vectors, as [A v; B v]
        return dots[:, i * halves:(i + 1) * halves].T.reshape(-1)

    params = {"w_one": stacked(0), "w_beta": stacked(1)}
    if form.terms:
        coeffs = [c for _, c in form.terms]
        if any(c != round(c) for c in coeffs):
            return "spike coefficients of the stream are not integers"
        acc = _spike_sum(ir, ln["module"], form)
        inputs.append(Port(ir.add_node(ir.unique_id(f"{path}.spikes"), "SpikeLinear", [acc],
                                       module=path, params=_folded_params(W, cols),
                                       attrs={"source": "stream_counts"})))
    if binary_x0:
        (b_port,) = ir.inputs(form.x0.node)
        inputs.append(Port(ir.add_node(ir.unique_id(f"{path}.emb_spikes"), "SpikeLinear",
                                       [b_port], module=path,
                                       params=_folded_params(W, cols * g0),
                                       attrs={"source": "embedding_spikes"})))
        params["w_gamma0"] = stacked(2)
        params["w_beta0"] = stacked(3)
    else:
        inputs.append(Port(ir.add_node(ir.unique_id(f"{path}.x0"), "Linear", [form.x0],
                                       module=path, params={"weight": fold_weight(W, cols)})))
    stats = _stats(ir, stream_port, ln)
    inputs += [Port(stats, 0), Port(stats, 1)]
    if binary_x0:
        stats0 = _stats(ir, ir.inputs(form.x0.node)[0], x0_ln)
        inputs += [Port(stats0, 0), Port(stats0, 1)]
    if mix is not None:
        slot = f"shift.{path}"
        inputs.append(Port(ir.add_node(f"state_in.{slot}", "StateIn", module=path,
                                       attrs={"state": slot, "init": 0.0, "width": out_dim})))
    corr = ir.add_node(ir.unique_id(f"{path}.fold"), "FoldCorrection", inputs, module=path,
                       params={k: v.astype(F32) for k, v in params.items()},
                       attrs={"out": out_dim, "scale": form.scale, "has_shift": mix is not None,
                              "has_counts": bool(form.terms), "binary_x0": binary_x0})
    if mix is not None:
        ir.add_node(f"state_out.shift.{path}", "StateOut", [Port(corr, 1)],
                    attrs={"state": f"shift.{path}"}, module=path)
    for _, v, d in list(ir.graph.out_edges(lin, data=True)):
        ir.connect(Port(corr, 0), v, d["dst_port"])
    ir.graph.remove_node(lin)
    return None


def _folded_params(source: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
    """A folded SpikeLinear's parameters: the factors its float32 matrix is made of
    (``source_weight`` is the model's own array, shared, not copied); the matrix itself is
    made where it is read (``folded.linear_weight``)."""
    return {"source_weight": source, "source_cols": np.asarray(cols, np.float64)}


def _row_dots(W: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """W @ vecs.T in float64, in row blocks of W (spread over the cores)."""
    out = np.empty((W.shape[0], vecs.shape[0]), np.float64)
    step = max(1, (1 << 16) // max(1, W.shape[1]))

    def block(span: tuple[int, int]) -> None:
        buf = np.empty((min(step, W.shape[0]), W.shape[1]), np.float64)  # reused, per thread
        for i in range(span[0], span[1], step):
            rows = W[i:min(span[1], i + step)]
            np.copyto(buf[:rows.shape[0]], rows)
            np.dot(buf[:rows.shape[0]], vecs.T, out=out[i:i + rows.shape[0]])

    thread_map(block, row_blocks(W.shape[0]), values=W.size)
    return out


def _spike_sum(ir: IR, ln_module: str, form: _Stream) -> Port:
    """One SpikeSum per LayerNorm tap, shared by the linears that read that LayerNorm."""
    nid = f"{ln_module}.counts"
    if nid not in ir.graph:
        ir.add_node(nid, "SpikeSum", [p for p, _ in form.terms], module=ln_module,
                    attrs={"coefficients": [int(round(c)) for _, c in form.terms]})
    return Port(nid)


def _stats(ir: IR, x: Port, ln: dict) -> str:
    nid = f"{ln['module']}.stats"
    if nid not in ir.graph:
        ir.add_node(nid, "LayerNormStats", [x], module=ln["module"],
                    attrs={"eps": ln["attrs"]["eps"]})
    return nid

