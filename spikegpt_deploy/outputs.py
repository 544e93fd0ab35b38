"""Where commands write: checked before the work starts, written so nothing is half-written.

A file is written to a temporary name in its folder and renamed into place (atomic on POSIX);
a folder of outputs gets each file that way, and a folder created for a failed write is removed.
An output's parent folder must exist: a typo in ``-o`` is an error, not a new directory tree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import DataError, DeployError


def check_output(path: str | Path, option: str, *, folder: bool = False) -> Path:
    """``path`` as an output of ``option``: its parent must be an existing, writable folder, and
    the path itself must not be a folder (for a file) or a file (for a folder)."""
    out = Path(path)
    parent = out.parent
    if not parent.exists():
        raise DataError(f"{option} {out}: the folder {parent} does not exist; create it first or "
                        f"choose another path")
    if not parent.is_dir():
        raise DataError(f"{option} {out}: {parent} is not a folder; choose another path")
    try:  # a real write, not os.access: permission bits do not stop root, /proc does
        fd, probe = tempfile.mkstemp(prefix=".spikegpt-deploy-probe.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(f"{option} {out}: the folder {parent} is not writable "
                        f"({exc.strerror or exc}); choose another path") from None
    if folder and out.exists() and not out.is_dir():
        raise DataError(f"{option} {out}: exists and is not a folder; choose another path")
    if not folder and out.is_dir():
        raise DataError(f"{option} {out}: is a folder; pass a file path")
    return out


def write_atomic(path: str | Path, data: str | bytes | Callable[[str], None],
                 error: type[DeployError] = DataError) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a
    reader never sees half a file. ``data`` may be a writer that fills the temporary path it is
    given (e.g. ``torch.save``). An OSError becomes ``error`` naming the path."""
    out = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, out)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise error(f"{out}: cannot write ({exc.strerror or exc}); check the folder's "
                    f"permissions and free space, or choose another path") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return out


@contextmanager
def output_folder(path: str | Path, option: str) -> Iterator[Path]:
    """Create the folder ``path`` if needed (its parent must exist) for files written with
    ``write_atomic``; a folder created here is removed again if the block fails."""
    out = check_output(path, option, folder=True)
    created = not out.exists()
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise DataError(f"{option} {out}: cannot create the folder ({exc.strerror}); choose "
                        f"another path") from None
    try:
        yield out
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
