"""The optional extras (SANA-FE, Ray, NeuroBench): imported only when a command asks for them.

``import spikegpt_deploy`` never needs an extra; the code that does calls ``require`` at the
point of use, and a missing extra is a ``DeployError`` (of the caller's subclass) naming what
needs it and the pip line that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import DeployError


def install_line(extra: str, constrained: bool = False) -> str:
    """The pip command installing ``extra``; ``constrained``: with the repository's pins."""
    pins = "-c constraints.txt " if constrained else ""
    return f"pip install {pins}'spikegpt-deploy[{extra}]'"


def require(module: str, extra: str, needed_by: str, error: type[DeployError] = DeployError,
            constrained: bool = False) -> ModuleType:
    """Import ``module`` of the optional extra ``extra``, or raise ``error``: '<needed_by>,
    which is not installed; install it with: pip install ...'."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(f"{needed_by}, which is not installed; install it with: "
                    f"{install_line(extra, constrained)}") from None
