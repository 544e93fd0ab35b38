"""Saving and loading an IR: ``ir.json`` (graph, attributes) + ``ir_params.npz`` (arrays).

The format is plain JSON and a pickle-free npz (``allow_pickle=False``), so a bundle can be read
without running any code from it. Array parameters are stored under ``<node id>/<param name>``,
each array once:
- an array that several nodes share (a folded linear's ``source_weight``, the model's own
  matrix, read by its stream and its embedding SpikeLinear) is stored under its first key; the
  other nodes name that key in ``shared``;
- an array that others determine is not stored; the node lists it in ``derived`` and loading
  rebuilds it bit for bit (``DERIVED``): a folded SpikeLinear's float ``weight`` from
  ``source_weight`` and ``source_cols`` (``folded.fold_weight``), a graded chip Linear's
  ``weight_lava`` from its mantissas ``weight_q``.
Quantized mantissas keep their integer width (int8 for Lava's 2..8-bit weights).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from .errors import BundleError
from .folded import fold_weight, is_factored
from .ir import IR, OPS

IR_FORMAT = "spikegpt-deploy-ir"
IR_FORMAT_VERSION = 2


def _fold_weight(params: dict[str, np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return fold_weight(params["source_weight"], params["source_cols"])


def _lava_weight(params: dict[str, np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    from .fixed_point import mantissa_dense_kwargs
    return np.asarray(mantissa_dense_kwargs(params["weight_q"], int(attrs["weight_bits"]))
                      ["weights"], dtype=np.int32)


# param name -> (the params it is made of, how)
DERIVED: dict[str, tuple[tuple[str, ...], Any]] = {
    "weight": (("source_weight", "source_cols"), _fold_weight),
    "weight_lava": (("weight_q",), _lava_weight),
}
_SAMPLE_ROWS = 16  # rows of a derived array compared with the stored one before it is dropped


def _is_derived(name: str, params: dict[str, np.ndarray], attrs: dict[str, Any]) -> bool:
    """True when ``params[name]`` is what ``DERIVED`` rebuilds (checked on a sample of rows:
    a pass that changed the array without its factors keeps it stored)."""
    if name not in DERIVED or not all(k in params for k in DERIVED[name][0]):
        return False
    arr = params[name]
    if name == "weight":
        src, cols = params["source_weight"], params["source_cols"]
        if arr.shape != (len(cols) * src.shape[0], src.shape[1]):
            return False
        rows = np.linspace(0, arr.shape[0] - 1, min(_SAMPLE_ROWS, arr.shape[0])).astype(int)
        for r in rows:
            h, o = divmod(int(r), src.shape[0])
            if not np.array_equal(fold_weight(src[o:o + 1], cols[h:h + 1])[0], arr[r]):
                return False
        return arr.dtype == np.float32
    try:
        return bool(np.array_equal(DERIVED[name][1](params, attrs), arr))
    except (KeyError, TypeError, ValueError):
        return False


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


def _narrow(arr: np.ndarray) -> np.ndarray:
    """Integer arrays (quantized mantissas) at the width their values need: int8 for Lava's
    2..8-bit weights, whatever dtype a pass kept them in."""
    if arr.dtype.kind in "iu" and arr.dtype.itemsize > 1 and arr.size:
        info = np.iinfo(np.int8)
        if info.min <= int(arr.min()) and int(arr.max()) <= info.max:
            return arr.astype(np.int8)
    return arr


def ir_to_json(ir: IR) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    nodes, arrays = [], {}
    stored: dict[int, str] = {}  # id(array) -> its key, so that a shared array is stored once
    for n, d in ir.graph.nodes(data=True):
        shared, derived = {}, []
        for name, arr in d["params"].items():
            if _is_derived(name, d["params"], d["attrs"]):
                derived.append(name)
            elif id(arr) in stored:
                shared[name] = stored[id(arr)]
            else:
                stored[id(arr)] = f"{n}/{name}"
                arrays[f"{n}/{name}"] = _narrow(np.asarray(arr))
        names = sorted(d["params"])
        if is_factored(d["params"]):  # its float matrix: rebuilt on load, as when it is kept
            derived.append("weight")
            names = sorted([*names, "weight"])
        extra = {"shared": shared} if shared else {}
        if derived:
            extra["derived"] = sorted(derived)
        nodes.append({"id": n, "op": d["op"], "module": d["module"], "attrs": _plain(d["attrs"]),
                      "n_out": d["n_out"], "params": names, **extra,
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
            derived = nd.get("derived", [])
            for name in nd["params"]:
                if name in derived:
                    continue
                key = (nd.get("shared") or {}).get(name, f"{nd['id']}/{name}")
                if key not in arrays:
                    raise BundleError(f"{source}: array '{key}' is missing from the parameters")
                params[name] = arrays[key]
            for name in derived:
                if name not in DERIVED or not all(k in params for k in DERIVED[name][0]):
                    raise BundleError(f"{source}: node '{nd['id']}': cannot rebuild '{name}' "
                                      f"(unknown, or its factors are missing); re-run convert")
                params[name] = DERIVED[name][1](params, nd["attrs"])
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


class _HashingWriter(io.RawIOBase):
    """A write-only, non-seekable file that hashes what passes through: zipfile then streams
    (data descriptors instead of seeking back), so the npz is hashed as it is written."""

    def __init__(self, f: Any) -> None:
        super().__init__()
        self._f, self._pos, self.sha256 = f, 0, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        self._f.write(view)
        self.sha256.update(view)
        self._pos += view.nbytes
        return view.nbytes


def savez_stream(f: Any, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez(f, **arrays)``, byte for byte, but each contiguous array goes to the zip member
    as one buffer: np.savez copies every 16 MB twice on the way (a buffered iterator, then
    ``tobytes``), most of the time of writing a 216M-shape bundle's 1.3 GB."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            arr = np.asanyarray(value)
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                if arr.dtype.hasobject or not arr.flags.c_contiguous:
                    np.lib.format.write_array(member, arr, allow_pickle=False)
                    continue
                np.lib.format.write_array_header_1_0(
                    member, np.lib.format.header_data_from_array_1_0(arr))
                if arr.size:
                    member.write(memoryview(arr.reshape(-1)).cast("B"))


def save_ir(ir: IR, directory: Path, stem: str = "ir",
            digests: dict[str, str] | None = None) -> list[str]:
    """Write ``<stem>.json`` and ``<stem>_params.npz``; return the file names (and put their
    sha256 into ``digests`` when given)."""
    doc, arrays = ir_to_json(ir)
    text = json.dumps(doc, indent=1).encode("utf-8")
    (directory / f"{stem}.json").write_bytes(text)
    with open(directory / f"{stem}_params.npz", "wb") as f:  # streamed: no copy in memory
        out = _HashingWriter(f)
        savez_stream(out, arrays)
    if digests is not None:
        digests[f"{stem}.json"] = hashlib.sha256(text).hexdigest()
        digests[f"{stem}_params.npz"] = out.sha256.hexdigest()
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
