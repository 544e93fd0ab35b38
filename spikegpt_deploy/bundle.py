"""The deployment bundle: a directory written atomically, verified by hash when loaded.

Layout (format ``spikegpt-deploy-bundle``, version 2):
    manifest.json     format version, source model sha256, config, target, policy, passes,
                      quantization, partition summary, chip weights vs model weights, crossings,
                      per-layer resources, equivalence figures, and the sha256 of every other file
    ir.json           the partitioned, quantized per-token graph (nodes, edges, attributes)
    ir_params.npz     its arrays, each once (``ir_io``): chip weights as int8 mantissas, the
                      float program's matrices as the model's own float32 matrices and factors
    tokenizer.json    the model's tokenizer (char vocabulary or tokenizers JSON)
    target.toml       the hardware profile the bundle was converted for (its sha256 is the
                      manifest's target.profile_sha256), so the bundle needs no outside file
The simulator and the profiler build from ir.json / ir_params.npz. The interop files repeat the
weights in other formats, so ``export_bundle`` (``spikegpt-deploy export``, in ``bundle_export``)
writes them on demand: host.onnx (the host partition as ONNX), spiking.nir (the spiking partition as NIR),
chip.<layer>.net (the chip layers lava-dl netx expresses, one HDF5 file each).
Version 1 bundles (int32 mantissas next to float copies, interop files inside) are refused with
a message to re-run convert.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from hw_profiles import HardwareProfile, load_profile

# the interop emitters and export (EMITTERS is looked up here when a bundle is written)
from .bundle_export import EMITTERS, EXPORT_FORMATS, export_bundle  # noqa: F401
from .convert import ConvertContext, ConvertOptions
from .data import Tokenizer, tokenizer_from_dict
from .errors import BundleError, ConversionError, DeployError, ProfileError
from .ir import IR
from .ir_io import load_ir, save_ir
from .partition import chip_weight_report, placement_summary

BUNDLE_FORMAT = "spikegpt-deploy-bundle"
BUNDLE_FORMAT_VERSION = 2
MANIFEST = "manifest.json"
PROFILE_FILE = "target.toml"   # the hardware profile the bundle was converted for
REQUIRED_FILES = ("ir.json", "ir_params.npz")
log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def refuse_existing(out: Path, force: bool) -> None:
    """A BundleError if ``out`` exists and may not be replaced."""
    if out.exists() and not force:
        raise BundleError(f"{out} already exists; pass --force to replace it or choose another -o")


def write_bundle(ctx: ConvertContext, out_dir: str | Path, force: bool = False,
                 emitters: list[str] | None = None) -> Path:
    """Write the bundle for a finished pipeline run; nothing is left half-written.

    ``emitters``: interop files to put inside the bundle too (names of ``EMITTERS``; default
    none: ``export_bundle`` writes them from the bundle when they are wanted)."""
    out = Path(out_dir)
    refuse_existing(out, force)
    if ctx.ir is None or ctx.loaded is None or ctx.profile is None:
        raise ConversionError("internal: the conversion pipeline did not finish")
    with _staging(out) as tmp:
        _writing(out, lambda: _write_files(ctx, tmp, emitters))
        _writing(out, lambda: _swap_in(tmp, out, force))
    return out


def convert_to_bundle(source: str | Path, options: ConvertOptions, out_dir: str | Path,
                      force: bool = False) -> tuple[Path, ConvertContext]:
    """``convert.run_pipeline`` and ``write_bundle`` as one job: the IR files, nearly all of the
    bundle's bytes, are written by a second thread while the steps that only read the final IR
    (``convert.READ_ONLY_STEPS``: the equivalence check) run, and the manifest once they are
    done. A failing step leaves nothing behind, as with ``write_bundle``."""
    from .convert import READ_ONLY_STEPS, run_pipeline

    out = Path(out_dir)
    refuse_existing(out, force)
    digests: dict[str, str] = {}
    with _staging(out) as tmp, ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="spikegpt-deploy-write") as pool:
        saving: list[tuple[IR, Future]] = []

        def before_step(name: str, ctx: ConvertContext) -> None:
            if name in READ_ONLY_STEPS and not saving and ctx.ir is not None:
                saving.append((ctx.ir, pool.submit(save_ir, ctx.ir, tmp, digests=digests)))

        ctx = run_pipeline(source, options, before_step=before_step)
        ir_files = None
        if saving:
            saved_ir, future = saving[0]
            ir_files = _writing(out, future.result)
            if saved_ir is not ctx.ir:  # a step changed the IR after all: write it again
                ir_files = None
        _writing(out, lambda: _write_files(ctx, tmp, None, ir_files, digests))
        _writing(out, lambda: _swap_in(tmp, out, force))
    return out, ctx


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary directory beside ``out``, removed unless it has been renamed to ``out``."""
    tmp = _writing(out, lambda: (out.parent.mkdir(parents=True, exist_ok=True),
                                 Path(tempfile.mkdtemp(prefix=f".{out.name}.",
                                                       dir=out.parent)))[1])
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _writing(out: Path, action: Callable[[], Any]) -> Any:
    """``action()``, with an OSError turned into a BundleError that says what to do."""
    try:
        return action()
    except OSError as exc:
        raise BundleError(f"cannot write the bundle {out} ({exc}); check that its parent "
                          f"directory is writable and has free space, or choose another -o"
                          ) from None


def _write_files(ctx: ConvertContext, tmp: Path, emitters: list[str] | None,
                 ir_files: list[str] | None = None, digests: dict[str, str] | None = None
                 ) -> None:
    """Every bundle file, the manifest last, into the (temporary) directory ``tmp``
    (``ir_files``: the IR files already written there, their sha256 in ``digests``)."""
    assert ctx.ir is not None
    digests = {} if digests is None else digests
    files = list(ir_files) if ir_files is not None else save_ir(ctx.ir, tmp, digests=digests)
    emitted: dict[str, Any] = {}
    wanted = emitters or []
    unknown = sorted(set(wanted) - {name for name, _ in EMITTERS})
    if unknown:
        raise ConversionError(f"unknown emitter(s) {unknown}; known: "
                              f"{', '.join(name for name, _ in EMITTERS)}")
    for name, emit in EMITTERS:
        if name not in wanted:
            continue
        try:
            emitted[name] = emit(ctx.ir, tmp)
        except DeployError as exc:
            raise ConversionError(f"emitting {name} failed: {exc}") from None
        files += [emitted[name]["file"]] if emitted[name].get("file") else []
        files += emitted[name].get("files", [])
    (tmp / PROFILE_FILE).write_bytes(_profile_bytes(ctx))
    files.append(PROFILE_FILE)
    if ctx.tokenizer is not None:
        (tmp / "tokenizer.json").write_text(json.dumps(ctx.tokenizer.to_dict()), encoding="utf-8")
        files.append("tokenizer.json")
    manifest = _manifest(ctx, emitted)
    manifest["files"] = {name: digests.get(name) or _sha256(tmp / name) for name in sorted(files)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _profile_bytes(ctx: ConvertContext) -> bytes:
    """The bytes of the target profile the pipeline used (checked against its sha256, so a file
    edited during the conversion is not embedded)."""
    assert ctx.profile is not None
    try:
        raw = Path(ctx.profile.path).read_bytes()
    except OSError as exc:
        raise ConversionError(f"{ctx.profile.path}: cannot read the target profile to embed it "
                              f"({exc.strerror})") from None
    if hashlib.sha256(raw).hexdigest() != ctx.profile.sha256:
        raise ConversionError(f"{ctx.profile.path}: changed during the conversion; run it again")
    return raw


def _swap_in(tmp: Path, out: Path, force: bool) -> None:
    """Rename ``tmp`` to ``out``. An old ``out`` is moved aside first (only with ``force``) and
    deleted only once the new one is in place, so a failure leaves the old bundle or the new
    one, never a mix. Without ``force``, a bundle that another process wrote to ``out`` since
    the check at the start is left alone: the rename fails on the non-empty directory."""
    if not force:
        try:
            os.rename(tmp, out)
        except OSError:
            if out.exists():
                raise BundleError(f"{out} already exists (written meanwhile by another "
                                  f"process); pass --force to replace it or choose another -o"
                                  ) from None
            raise
        return
    if not out.exists():
        os.replace(tmp, out)
        return
    old = tmp.with_name(tmp.name + ".old")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def _manifest(ctx: ConvertContext, emitted: dict[str, Any]) -> dict[str, Any]:
    ir = ctx.ir
    assert ir is not None and ctx.loaded is not None and ctx.profile is not None
    return {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION,
        "source_model": {"file": ctx.source.name, "sha256": ctx.loaded.sha256,
                         "format": ctx.loaded.source_format},
        "config": ir.config,
        "target": {"name": ctx.profile.name, "title": ctx.profile.title,
                   "profile_sha256": ctx.profile.sha256, "profile_file": PROFILE_FILE},
        "policy": ir.meta.get("partition", {}),
        "passes": ir.passes,
        "fold_report": ir.meta.get("fold_report", {}),
        "quantization": ir.meta.get("quantization", {}),
        "partition": placement_summary(ir),
        "chip_weights": chip_weight_report(ir, ctx.loaded.model.num_parameters()),
        "crossings": ir.meta.get("crossings", []),
        "resources": ctx.resources,
        "equivalence": ctx.equivalence,
        "emitted": emitted,
    }


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    ir: IR
    tokenizer: Tokenizer | None


def _safe_member(root: Path, name: Any, mpath: Path) -> Path:
    """The path of the manifest entry ``name`` inside ``root``, refused (before anything is
    opened) when it is absolute, climbs with '..', or resolves outside the bundle through a
    symlink."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise BundleError(f"{mpath}: file name {name!r} is not a plain relative name; re-run "
                          f"convert")
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or ".." in parts:
        raise BundleError(f"{mpath}: file name {name!r} points outside the bundle (absolute or "
                          f"'..'); refused without opening it; re-run convert")
    path = root / name
    inside = root.resolve()
    resolved = path.resolve()
    if resolved != inside and inside not in resolved.parents:
        raise BundleError(f"{path}: resolves to {resolved}, outside the bundle (a symlink); "
                          f"refused without opening it; re-run convert")
    return path


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check the manifest's format version, the file names and every file's sha256; return the
    manifest. Every name is checked before any listed file is opened."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory (run 'spikegpt-deploy convert' first)")
    mpath = root / MANIFEST
    if mpath.exists() or mpath.is_symlink():
        _safe_member(root, MANIFEST, mpath)
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{mpath}: missing; {root} is not a spikegpt-deploy bundle") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath}: not valid JSON ({exc}); re-run convert") from None
    except (OSError, RecursionError) as exc:
        raise BundleError(f"{mpath}: cannot be read ({exc}); expected the bundle's manifest file"
                          ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{mpath}: not a {BUNDLE_FORMAT} manifest")
    version = manifest.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        older = isinstance(version, int) and version < BUNDLE_FORMAT_VERSION
        raise BundleError(
            f"{mpath}: bundle format version {version!r}"
            + (" was written by an older spikegpt-deploy (it stored 32-bit mantissas next to "
               "float copies, and the interop files inside)" if older else "")
            + f"; this spikegpt-deploy reads version {BUNDLE_FORMAT_VERSION}: re-run "
            f"'spikegpt-deploy convert' on the model to write it again")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{mpath}: no 'files' table")
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise BundleError(f"{mpath}: the 'files' table lacks {missing}; re-run convert")
    paths = {name: _safe_member(root, name, mpath) for name in files}
    for name, digest in files.items():
        fpath = paths[name]
        if not fpath.is_file():
            raise BundleError(f"{fpath}: listed in the manifest but missing")
        try:
            actual = _sha256(fpath)
        except OSError as exc:
            raise BundleError(f"{fpath}: cannot be read ({exc.strerror}); re-run convert"
                              ) from None
        if actual != digest:
            raise BundleError(f"{fpath}: sha256 does not match the manifest (the file was "
                              f"changed or corrupted); re-run convert")
    return manifest


def bundle_profile(path: str | Path, manifest: dict[str, Any] | None = None) -> HardwareProfile:
    """The hardware profile the bundle was converted for, from its own ``target.toml`` (so a
    bundle converted with ``--target my.toml`` needs no copy of that file); bundles written
    before the profile was embedded fall back to the built-in profile of that name."""
    root = Path(path)
    manifest = verify_bundle(root) if manifest is None else manifest
    target = manifest.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("name"), str):
        raise BundleError(f"{root / MANIFEST}: no 'target' name; re-run convert")
    if PROFILE_FILE in manifest["files"]:
        try:
            profile = load_profile(root / PROFILE_FILE)
        except ProfileError as exc:
            raise BundleError(f"{root / PROFILE_FILE}: the bundle's target profile is invalid "
                              f"({exc}); re-run convert") from None
        if profile.sha256 != target.get("profile_sha256"):
            raise BundleError(f"{root / PROFILE_FILE}: its sha256 differs from the manifest's "
                              f"target.profile_sha256; re-run convert")
        return profile
    profile = load_profile(target["name"])
    if profile.sha256 != target.get("profile_sha256"):
        log.warning("profile %s changed since the bundle was converted", profile.name)
    return profile


def load_bundle(path: str | Path) -> Bundle:
    """Verify and load a bundle (IR and tokenizer)."""
    root = Path(path)
    manifest = verify_bundle(root)
    ir = load_ir(root)
    tok = None
    if "tokenizer.json" in manifest["files"]:
        try:
            tok = tokenizer_from_dict(json.loads((root / "tokenizer.json").read_text("utf-8")),
                                      str(root / "tokenizer.json"))
        except DeployError as exc:
            raise BundleError(str(exc)) from None
    return Bundle(root, manifest, ir, tok)
