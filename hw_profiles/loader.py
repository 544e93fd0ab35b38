"""Load and validate hardware profiles (one TOML file per target).

Why: the profiler multiplies operation counts from simulation by per-event energies, which are
only as credible as their provenance. So every number carries its unit, source (paper, table)
and kind, and a report can say which totals rest on datasheet figures and which on estimates.
No hardware constant lives in Python; ``schema.SCHEMA`` is the one table of allowed keys, their
dimensions and meanings, driving both validation and the reference appended to this docstring.

Every entry of ``[energy]``, ``[timing]``, ``[host_ops]`` and ``[capacity]`` is an inline table
``key = { value = 23.6, unit = "pJ", source = "...", kind = "datasheet", note = "..." }``:
``value`` finite and >= 0; ``unit`` from ``UNITS``, of the key's dimension; ``source`` a citation;
``kind`` one of ``datasheet`` (stated by a paper table, vendor brief or SDK source), ``measured``
(read on hardware, e.g. power rails), ``estimate`` (derived or assumed) or ``proxy`` (another
device's figure, e.g. Loihi 1 for Loihi 2); ``estimate`` and ``proxy`` need a ``note`` with the
derivation. ``value = 0`` is only a stated choice ("included in the all-in synaptic_op"); an
absent figure is never zero: the accessors raise ProfileError.

``[meta] role`` says what a profile prices: ``chip`` (a neuromorphic chip), ``host`` (host-side
float ops) or ``ann`` (dense ANN MACs, a baseline). ``[meta]`` and ``[capability]`` hold plain
values; ``[capability]`` drives the partitioner, ``[capacity]`` the resource mapper.
"""

from __future__ import annotations

import hashlib
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import tomli

from hw_profiles.schema import (FIRE_COMPARISONS, INPUT_CLASSES, KINDS, QUANTITY_FIELDS,
                                QUANTITY_SECTIONS, ROLES, SCHEMA, SECTION_ROLES, UNITS,
                                describe_schema)
from spikegpt_deploy.errors import ProfileError

__all__ = ["KINDS", "ROLES", "SCHEMA", "UNITS", "HardwareProfile", "Quantity",
           "builtin_profile_dir", "describe_schema", "list_profiles", "load_profile"]


__doc__ = (__doc__ or "") + describe_schema() + "\n"


@dataclass(frozen=True)
class Quantity:
    """A number with its unit, source, kind (datasheet|measured|estimate|proxy) and note."""

    value: float
    unit: str
    source: str
    kind: str
    note: str = ""

    @property
    def dimension(self) -> str:
        """energy, power, time, size, count or rate (from ``UNITS``)."""
        return UNITS[self.unit][0]

    def to(self, unit: str) -> float:
        """The value in ``unit``; ProfileError if the unit is unknown or of another dimension."""
        if unit not in UNITS:
            raise ProfileError(f"unknown unit {unit!r}; expected one of {', '.join(UNITS)}")
        (dim, factor), (target_dim, target_factor) = UNITS[self.unit], UNITS[unit]
        if dim != target_dim:
            raise ProfileError(f"cannot convert {self.value} {self.unit} ({dim}) to {unit} "
                               f"({target_dim}); fix: ask for a {dim} unit")
        return self.value * factor / target_factor


@dataclass(frozen=True)
class HardwareProfile:
    """A validated, immutable hardware profile. ``path`` is not part of equality."""

    name: str
    title: str
    role: str
    description: str
    default_host: str | None
    energy: Mapping[str, Quantity]
    timing: Mapping[str, Quantity]
    host_ops: Mapping[str, Quantity]
    capacity: Mapping[str, Quantity]
    capability: Mapping[str, object]
    path: Path = field(compare=False)
    sha256: str

    def __hash__(self) -> int:
        return hash((self.name, self.sha256))

    def quantity(self, section: str, key: str) -> Quantity:
        """``[section] key``; ProfileError if absent (nothing unpriced counts as zero).

        A key that the schema does not know is a programming error and raises KeyError.
        """
        if section not in QUANTITY_SECTIONS or key not in SCHEMA[section]:
            raise KeyError(f"[{section}] {key} is not a quantity key of the profile schema; "
                           f"known: {', '.join(SCHEMA.get(section, {})) or QUANTITY_SECTIONS}")
        table: Mapping[str, Quantity] = getattr(self, section)
        if key not in table:
            raise ProfileError(
                f"hardware profile {self.name!r} ({self.path}) has no figure [{section}] {key} "
                f"({SCHEMA[section][key].doc}); fix: add `{key} = {{ value = ..., unit = ..., "
                f"source = ..., kind = ... }}` to [{section}], or report it as unsupported")
        return table[key]

    def value(self, section: str, key: str, unit: str) -> float:
        """``[section] key`` in ``unit``; ProfileError if absent or of another dimension."""
        figure = self.quantity(section, key)
        try:
            return figure.to(unit)
        except ProfileError as exc:
            raise ProfileError(f"profile {self.name!r}, [{section}] {key}: {exc}") from None

    def energy_pj(self, key: str) -> float:
        """A per-event energy of ``[energy]`` in pJ."""
        return self.value("energy", key, "pJ")

    def power_mw(self, key: str) -> float:
        """A power of ``[energy]`` (static_power, typical_power) in mW."""
        return self.value("energy", key, "mW")

    def host_op_pj(self, key: str) -> float:
        """The energy of one host operation of ``[host_ops]`` in pJ."""
        return self.value("host_ops", key, "pJ")

    def time_ns(self, key: str) -> float:
        """A duration of ``[timing]`` in ns."""
        return self.value("timing", key, "ns")

    def capacity_count(self, key: str) -> int:
        """A count of ``[capacity]`` (cores, neurons, axons) as an int."""
        return int(round(self.value("capacity", key, "count")))

    def capacity_bits(self, key: str) -> int:
        """A size of ``[capacity]`` (memory, weight or payload width) in bits."""
        return int(round(self.value("capacity", key, "bit")))

    def capability_value(self, key: str) -> object:
        """A ``[capability]`` entry (lists are tuples); ProfileError if absent."""
        if key not in self.capability:
            raise ProfileError(f"hardware profile {self.name!r} ({self.path}) has no "
                               f"[capability] {key}; fix: add it (see hw_profiles.loader)")
        return self.capability[key]

    def quantities(self) -> Iterator[tuple[str, str, Quantity]]:
        """Every stated figure as (section, key, quantity), for reports and audits."""
        for section in QUANTITY_SECTIONS:
            for key, q in getattr(self, section).items():
                yield section, key, q

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (the profiler stores it with the report)."""
        out: dict[str, Any] = {"name": self.name, "title": self.title, "role": self.role,
                               "description": self.description,
                               "default_host": self.default_host,
                               "path": str(self.path), "sha256": self.sha256}
        for section in QUANTITY_SECTIONS:
            out[section] = {k: vars(q).copy() for k, q in getattr(self, section).items()}
        out["capability"] = {k: list(v) if isinstance(v, tuple) else v
                             for k, v in self.capability.items()}
        return out


def builtin_profile_dir() -> Path:
    """The folder of the built-in profiles (shipped as package data next to this module)."""
    return Path(__file__).resolve().parent


def list_profiles() -> list[str]:
    """The names of the built-in profiles, sorted."""
    return sorted(p.stem for p in builtin_profile_dir().glob("*.toml"))


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load a built-in profile by name, or a user's TOML file by path, and validate it.

    A string without a path separator and without a ``.toml`` suffix is a built-in name.
    """
    path = _resolve(name_or_path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read the profile ({exc.strerror}); fix: check "
                           f"the path, or pass a built-in name ({', '.join(list_profiles())})"
                           ) from None
    # The file is read every time (an edit is seen at once); parsing and validating the same
    # bytes again would give the same immutable profile, so that is done once per content.
    key = (str(path), hashlib.sha256(raw).hexdigest())
    if key not in _LOADED:
        if len(_LOADED) >= 64:
            _LOADED.clear()
        _LOADED[key] = _parse(raw, path, key[1])
    return _LOADED[key]


_LOADED: dict[tuple[str, str], HardwareProfile] = {}


def _parse(raw: bytes, path: Path, sha256: str) -> HardwareProfile:
    try:
        data = tomli.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: expected UTF-8 text, found a non-UTF-8 byte at offset "
                           f"{exc.start}; fix: save the file as UTF-8") from None
    except tomli.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: expected valid TOML, found a syntax error: {exc}; fix: "
                           "correct the file at that line") from None
    except RecursionError:
        raise ProfileError(f"{path}: expected flat inline tables, found TOML nested too "
                           "deeply; fix: write figures as in hw_profiles.loader") from None
    return _build(data, path, sha256)


def _resolve(name_or_path: str | Path) -> Path:
    if isinstance(name_or_path, Path):
        return name_or_path
    if not isinstance(name_or_path, str):
        raise ProfileError(f"a profile name or path was expected, found {name_or_path!r}")
    text = name_or_path
    if "/" in text or "\\" in text or text.endswith(".toml"):
        return Path(text).expanduser()
    known = list_profiles()
    if text not in known:
        raise ProfileError(f"unknown built-in hardware profile {text!r}; expected one of "
                           f"{', '.join(known)}; fix: pick one of those or pass a path to a "
                           ".toml file")
    return builtin_profile_dir() / f"{text}.toml"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(path: Path, where: str, expected: str, found: object, fix: str) -> ProfileError:
    """The standard message: file, section/key, what was expected, what was found, the fix."""
    return ProfileError(f"{path}: {where}: expected {expected}, found {_show(found)}; fix: {fix}")


def _need(ok: bool, path: Path, where: str, expected: str, found: object, fix: str) -> None:
    if not ok:
        raise _fail(path, where, expected, found, fix)


def _build(data: dict[str, Any], path: Path, sha256: str) -> HardwareProfile:
    for section, value in data.items():
        _need(section in SCHEMA, path, f"section [{section}]", f"one of {', '.join(SCHEMA)}",
              section, "rename or remove the section")
        _need(isinstance(value, dict), path, f"[{section}]", "a table", value,
              f"write it as a [{section}] table")
    meta = _plain_section(data, "meta", path, None)
    role = str(meta["role"])
    for section, (required, allowed) in SECTION_ROLES.items():
        _need(section not in data or role in allowed, path, f"[{section}]",
              f"no [{section}] in a {role!r} profile", section,
              f"remove it, or use role = one of {', '.join(allowed)}")
        _need(section in data or role not in required, path, f"[{section}]",
              f"a [{section}] section for role {role!r}", "nothing",
              f"add [{section}] (see hw_profiles.loader)")
    tables = {s: _quantity_section(data.get(s, {}), s, role, path) for s in QUANTITY_SECTIONS}
    capability = _plain_section(data, "capability", path, role) if "capability" in data else {}
    _need(capability.get("graded_spikes") is not True
          or "graded_spike_bits_max" in tables["capacity"], path,
          "[capacity] graded_spike_bits_max", "a payload width when [capability] "
          "graded_spikes = true", "nothing", "add it to [capacity]")
    frozen = {s: types.MappingProxyType(t) for s, t in tables.items()}
    default_host = meta.get("default_host")
    return HardwareProfile(
        name=str(meta["name"]), title=str(meta["title"]), role=role,
        description=str(meta["description"]),
        default_host=None if default_host is None else str(default_host),
        energy=frozen["energy"], timing=frozen["timing"], host_ops=frozen["host_ops"],
        capacity=frozen["capacity"], capability=types.MappingProxyType(capability),
        path=path, sha256=sha256)


def _check_keys(table: dict[str, Any], section: str, role: str, path: Path) -> None:
    spec = SCHEMA[section]
    for key in table:
        _need(key in spec, path, f"[{section}] {key}", f"a key of [{section}]: "
              f"{', '.join(spec)}", key, "rename or remove it (unknown keys are errors)")
    for key, fld in spec.items():
        _need(key in table or role not in fld.required_for, path, f"[{section}] {key}",
              f"{key} ({fld.doc}) for role {role!r}", "nothing", f"add it to [{section}]")


def _plain_section(data: dict[str, Any], section: str, path: Path,
                   role: str | None) -> dict[str, object]:
    """Validate a section of plain values ([meta], [capability]); lists become tuples."""
    _need(section in data, path, f"[{section}]", f"a [{section}] section", "nothing",
          f"add [{section}]")
    table = data[section]
    if role is None:  # [meta] decides the role, so check it first
        role = table.get("role")
        _need(role in ROLES, path, "[meta] role", f"one of {', '.join(ROLES)}", role,
              "set role to what the profile prices")
    _check_keys(table, section, str(role), path)
    return {key: _plain_value(value, SCHEMA[section][key].dim, f"[{section}] {key}", path)
            for key, value in table.items()}


def _plain_value(value: object, kind: str, where: str, path: Path) -> object:
    if kind == "bool":
        _need(isinstance(value, bool), path, where, "true or false", value, "write true/false")
        return value
    if kind in ("str", "role", "comparison"):
        _need(isinstance(value, str) and bool(value.strip()), path, where, "a non-empty string",
              value, 'write it as "..."')
        choices = {"role": ROLES, "comparison": FIRE_COMPARISONS}.get(kind)
        _need(choices is None or value in choices, path, where,
              f"one of {', '.join(choices or ())}", value, "use an allowed value")
        return value
    if not isinstance(value, list) or not value:
        raise _fail(path, where, "a non-empty list of strings", value, 'write ["a", "b"]')
    for item in value:
        _need(isinstance(item, str) and bool(item.strip()), path, where,
              "a list of non-empty strings", item, "quote each item")
        _need(kind != "class_list" or item in INPUT_CLASSES, path, where,
              f"items from {', '.join(INPUT_CLASSES)}", item, "use an allowed value")
    return tuple(value)


def _quantity_section(table: dict[str, Any], section: str, role: str,
                      path: Path) -> dict[str, Quantity]:
    _check_keys(table, section, role, path)
    return {key: _quantity(raw, SCHEMA[section][key].dim, f"[{section}] {key}", path)
            for key, raw in table.items()}


def _quantity(raw: object, dim: str, where: str, path: Path) -> Quantity:
    if not isinstance(raw, dict):
        raise _fail(path, where, "an inline table { value, unit, source, kind[, note] }", raw,
                    "write the figure with its unit, source and kind")
    for name in raw:
        _need(name in QUANTITY_FIELDS, path, f"{where}.{name}", "a field of "
              f"{', '.join(QUANTITY_FIELDS)}", name, "rename or remove the field")
    for name in QUANTITY_FIELDS[:4]:
        _need(name in raw, path, f"{where}.{name}", f"a {name} field", "nothing",
              f"add {name} = ... (every figure needs value, unit, source and kind)")
    value, unit, source, kind = raw["value"], raw["unit"], raw["source"], raw["kind"]
    note = raw.get("note", "")
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    _need(is_number, path, f"{where}.value", "a number", value, "write a plain number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    _need(math.isfinite(number) and number >= 0, path, f"{where}.value",
          "a finite number >= 0", value, "state the figure as a finite non-negative number")
    allowed = ", ".join(u for u, (d, _) in UNITS.items() if d == dim)
    _need(isinstance(unit, str) and unit in UNITS, path, f"{where}.unit",
          f"a {dim} unit: {allowed}", unit, "use a unit of the fixed vocabulary")
    _need(UNITS[unit][0] == dim, path, f"{where}.unit", f"a {dim} unit ({allowed}), not a "
          f"{UNITS[unit][0]} unit", unit, f"state the figure as {dim}")
    _need(isinstance(source, str) and bool(source.strip()), path, f"{where}.source",
          "a non-empty citation", source, "name the paper and table, or the measurement")
    _need(kind in KINDS, path, f"{where}.kind", f"one of {', '.join(KINDS)}", kind,
          "say how the figure was obtained")
    _need(isinstance(note, str), path, f"{where}.note", "a string", note, "quote the note")
    _need(kind not in ("estimate", "proxy") or bool(note.strip()), path, f"{where}.note",
          f"a note with the derivation for kind = {kind!r}", note,
          "say how the figure was derived or what it stands in for")
    return Quantity(number, unit, source, str(kind), note)
