"""The bundle's interop files: host.onnx (the host partition as ONNX), spiking.nir (the spiking
partition as NIR) and chip.<layer>.net (the chip layers lava-dl netx expresses). They repeat the
weights in other formats, so ``export_bundle`` (``spikegpt-deploy export``) writes them from a
bundle on demand; ``bundle.write_bundle`` can put them inside a bundle too (``emitters``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import BundleError, DeployError
from .ir import IR


def _emit_host_onnx(ir: IR, directory: Path) -> dict[str, Any]:
    from converters.host_onnx import host_partition_to_onnx
    info = host_partition_to_onnx(ir, directory / "host.onnx")
    return {"file": "host.onnx", "info": _relative(_jsonable(info), "host.onnx")}


def _emit_nir(ir: IR, directory: Path) -> dict[str, Any]:
    from converters.nir_export import chip_partition_to_nir
    info = chip_partition_to_nir(ir, directory / "spiking.nir")
    return {"file": "spiking.nir", "info": _relative(_jsonable(info), "spiking.nir")}


def _emit_netx(ir: IR, directory: Path) -> dict[str, Any]:
    # netx networks are single feed-forward chains, so each expressible layer gets its own
    # chip.<layer>.net file (see converters/netx_export.py).
    from converters.netx_export import chip_partition_to_netx
    info = chip_partition_to_netx(ir, directory / "chip.net")
    return {"files": [Path(f).name for f in info.files], "info": _jsonable(info)}


# name -> emitter; each writes its file(s) into a directory and describes them
EMITTERS: list[tuple[str, Callable[[IR, Path], dict[str, Any]]]] = [
    ("host_onnx", _emit_host_onnx),
    ("nir", _emit_nir),
    ("netx", _emit_netx),
]
EXPORT_FORMATS = {"onnx": "host_onnx", "nir": "nir", "netx": "netx"}  # export --format -> emitter


def _relative(info: Any, name: str) -> Any:
    """An emitter's ``path`` points into the temporary directory, which is renamed: record the
    file's name inside the bundle instead."""
    if isinstance(info, dict) and "path" in info:
        info["path"] = name
    return info


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict
        obj = asdict(obj)
    return json.loads(json.dumps(obj, default=str))


def export_bundle(path: str | Path, fmt: str, out: str | Path | None = None,
                  force: bool = False) -> tuple[Path, dict[str, Any]]:
    """Write one interop format of a bundle: ``onnx`` (host.onnx), ``nir`` (spiking.nir) or
    ``netx`` (a directory of chip.<layer>.net files). Default output: next to the bundle,
    ``<bundle>.host.onnx``, ``<bundle>.spiking.nir`` or ``<bundle>.netx``. Written to a
    temporary name first; nothing is left half-written."""
    from .bundle import _swap_in, load_bundle, refuse_existing  # the bundle imports this module

    if fmt not in EXPORT_FORMATS:
        raise BundleError(f"--format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    root = Path(path)
    bundle = load_bundle(root)
    default = {"onnx": "host.onnx", "nir": "spiking.nir", "netx": "netx"}[fmt]
    target = Path(out) if out else root.with_name(f"{root.name}.{default}")
    refuse_existing(target, force)
    emit = dict(EMITTERS)[EXPORT_FORMATS[fmt]]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            try:
                info = emit(bundle.ir, tmp)
            except DeployError as exc:
                raise BundleError(f"exporting {root} as {fmt} failed: {exc}") from None
            if fmt == "netx":
                _swap_in(tmp, target, force)
            else:
                produced = tmp / info["file"]
                if target.is_dir():
                    raise BundleError(f"{target} is a directory; -o names the {fmt} file")
                os.replace(produced, target)
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as exc:
        raise BundleError(f"cannot write {target} ({exc}); choose another -o") from None
    if fmt != "netx" and isinstance(info.get("info"), dict) and "path" in info["info"]:
        info["info"]["path"] = str(target)
    return target, info
