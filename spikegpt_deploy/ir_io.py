"""Saving and loading an IR: ``ir.json`` (graph, attributes) + ``ir_params.npz`` (arrays).

The format is plain JSON and a pickle-free npz (``allow_pickle=False``), so a bundle can be read
without running any code from it. Array parameters are stored under ``<node id>/<param name>``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from .errors import BundleError
from .ir import IR, OPS

IR_FORMAT = "spikegpt-deploy-ir"
IR_FORMAT_VERSION = 1


def _plain(value: Any) -> Any:
    """JSON-safe copy of attribute values (numpy scalars and tuples included)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def ir_to_json(ir: IR) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    nodes, arrays = [], {}
    for n, d in ir.graph.nodes(data=True):
        for name, arr in d["params"].items():
            arrays[f"{n}/{name}"] = np.asarray(arr)
        nodes.append({"id": n, "op": d["op"], "module": d["module"], "attrs": _plain(d["attrs"]),
                      "n_out": d["n_out"], "params": sorted(d["params"]),
                      **{k: d[k] for k in ("placement", "reason") if k in d}})
    edges = [{"src": u, "dst": v, **_plain(d)} for u, v, d in ir.graph.edges(data=True)]
    doc = {"format": IR_FORMAT, "version": IR_FORMAT_VERSION, "config": _plain(ir.config),
           "passes": ir.passes, "meta": _plain(dict(ir.meta)), "nodes": nodes, "edges": edges}
    return doc, arrays


def ir_from_json(doc: dict[str, Any], arrays: dict[str, np.ndarray], source: str) -> IR:
    if not isinstance(doc, dict):
        raise BundleError(f"{source}: expected a JSON object (a {IR_FORMAT} document), found "
                          f"{type(doc).__name__}; re-run convert")
    if doc.get("format") != IR_FORMAT or doc.get("version") != IR_FORMAT_VERSION:
        raise BundleError(f"{source}: not a version-{IR_FORMAT_VERSION} {IR_FORMAT} document "
                          f"(found format {doc.get('format')!r} version {doc.get('version')!r})")
    graph = nx.MultiDiGraph()
    try:
        graph.graph.update(doc.get("meta") or {})
        for nd in doc["nodes"]:
            if nd["op"] not in OPS:
                raise BundleError(f"{source}: node '{nd['id']}' has unknown op '{nd['op']}'")
            params = {}
            for name in nd["params"]:
                key = f"{nd['id']}/{name}"
                if key not in arrays:
                    raise BundleError(f"{source}: array '{key}' is missing from the parameters")
                params[name] = arrays[key]
            graph.add_node(nd["id"], op=nd["op"], module=nd["module"], attrs=nd["attrs"],
                           n_out=nd["n_out"], params=params,
                           **{k: nd[k] for k in ("placement", "reason") if k in nd})
        for e in doc["edges"]:
            if e["src"] not in graph or e["dst"] not in graph:
                raise BundleError(f"{source}: edge {e['src']} -> {e['dst']} names a missing node")
            attrs = {k: v for k, v in e.items() if k not in ("src", "dst")}
            graph.add_edge(e["src"], e["dst"], **attrs)
        return IR(doc["config"], graph, doc.get("passes"))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{source}: malformed IR document ({type(exc).__name__}: {exc}); "
                          f"re-run convert") from None


def save_ir(ir: IR, directory: Path, stem: str = "ir") -> list[str]:
    """Write ``<stem>.json`` and ``<stem>_params.npz``; return the file names."""
    doc, arrays = ir_to_json(ir)
    (directory / f"{stem}.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (directory / f"{stem}_params.npz").write_bytes(buf.getvalue())
    return [f"{stem}.json", f"{stem}_params.npz"]


def load_ir(directory: Path, stem: str = "ir") -> IR:
    jpath, npath = directory / f"{stem}.json", directory / f"{stem}_params.npz"
    try:
        doc = json.loads(jpath.read_text(encoding="utf-8"))
        with np.load(npath, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError as exc:
        raise BundleError(f"{exc.filename}: missing from the bundle") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{jpath}: not valid JSON ({exc})") from None
    except (ValueError, OSError) as exc:
        raise BundleError(f"{npath}: not a readable npz without pickles ({exc})") from None
    return ir_from_json(doc, arrays, str(jpath))
