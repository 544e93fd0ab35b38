"""The package's import direction: only ``simulation/lava/`` imports Lava, and no module imports
one from a higher layer (lazy imports inside functions included).

Every module of ``spikegpt_deploy`` is parsed (never imported) and each of its imports resolved to
a module name; ``LAYERS`` lists, lowest first, the module prefixes of each layer. A module may
import its own layer and the layers below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "spikegpt_deploy"

LAYERS: list[tuple[str, ...]] = [
    ("errors", "naming", "signals", "processes", "optional", "threads"),
    ("ir", "ops", "fixed_point", "fixed_weights", "folded", "bits", "data", "inputs", "outputs", "model"),
    ("interpreter", "ir_io", "resources", "placement", "sampling", "checkpoint", "evaluation"),
    ("partition", "passes", "training", "model_files"),
    ("convert", "bundle", "bundle_export", "bundle_evaluation", "distributed"),
    ("simulation.backend", "simulation.schedule", "simulation.chip_params", "simulation.program"),
    ("simulation.stage", "simulation.chip", "simulation.plan", "simulation.host"),
    ("simulation.lava",),
    ("simulation.run", "simulation.pipelined", "simulation"),
    ("profiling",),
    ("crosscheck",),
    ("api", "bundle_api"),
    ("cli",),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, text: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file's text, at any depth (lazy ones
    too). ``from X import name`` counts as X.name when that is a module of the package, else X."""
    me = module_name(path)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] +
                                ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (ROOT / Path(*sub.split("."))).is_dir()
                found.append((node.lineno, sub if is_module else base))
    return found


def layer_of_module(name: str) -> int | None:
    """The layer of a module of the package (longest matching prefix), None outside it."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    if name == PACKAGE:  # its __init__ re-exports the public names: the top
        return len(LAYERS) - 1
    rel = name[len(PACKAGE) + 1:]
    best: tuple[int, int] | None = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if rel == p or rel.startswith(p + "."):
                if best is None or len(p) > best[0]:
                    best = (len(p), i)
    if best is None:
        raise AssertionError(f"{name} is in no layer of LAYERS; add it to one")
    return best[1]


def sources() -> list[Path]:
    return sorted((ROOT / PACKAGE).rglob("*.py"))


def violations_in(f: Path, text: str) -> list[str]:
    out = []
    mine = layer_of_module(module_name(f))
    for line, imported in imports_of(f, text):
        if imported == "lava" or imported.startswith("lava."):
            if not module_name(f).startswith(f"{PACKAGE}.simulation.lava"):
                out.append(f"{f.relative_to(ROOT)}:{line} imports {imported}: only "
                           f"{PACKAGE}/simulation/lava/ may import Lava")
            continue
        theirs = layer_of_module(imported)
        if theirs is not None and mine is not None and theirs > mine:
            out.append(f"{f.relative_to(ROOT)}:{line} (layer {mine}) imports {imported} "
                       f"(layer {theirs}): an import going up")
    return out


def layering_violations(files: list[Path]) -> list[str]:
    return [v for f in files for v in violations_in(f, f.read_text(encoding="utf-8"))]


def test_every_module_has_a_layer() -> None:
    for f in sources():
        assert layer_of_module(module_name(f)) is not None


def test_no_import_goes_up_and_only_simulation_lava_imports_lava() -> None:
    assert layering_violations(sources()) == []


@pytest.mark.parametrize("planted, needle", [
    ("from spikegpt_deploy.api import simulate\n", "an import going up"),
    ("def late():\n    from ..profiling import counts\n", "an import going up"),
    ("def late():\n    import lava.magma.core\n", "only spikegpt_deploy/simulation/lava/"),
])
def test_a_planted_violation_is_caught(planted: str, needle: str) -> None:
    """The check is not vacuous: an upward import (module level or lazy) or a Lava import
    planted in a low module is reported."""
    low = ROOT / PACKAGE / "simulation" / "schedule.py"
    assert violations_in(low, low.read_text(encoding="utf-8")) == []
    found = violations_in(low, low.read_text(encoding="utf-8") + "\n" + planted)
    assert any(needle in v for v in found), found
