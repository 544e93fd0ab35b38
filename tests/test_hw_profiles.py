"""Tests for hw_profiles: built-in data, unit conversion, validation errors, mutation robustness."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import tomli
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import hw_profiles
from hw_profiles import (
    KINDS,
    ROLES,
    SCHEMA,
    UNITS,
    HardwareProfile,
    Quantity,
    builtin_profile_dir,
    describe_schema,
    list_profiles,
    load_profile,
)
from spikegpt_deploy.errors import DeployError, ProfileError
from spikegpt_deploy.profiling.latency import WORK_TIMES

BUILTINS = ["cmos45nm", "cpu", "gpu", "loihi", "loihi2", "spinnaker2", "truenorth"]
CHIPS = ["loihi", "loihi2", "spinnaker2", "truenorth"]

# A small valid chip profile; each validation case below edits one line of it.
MINIMAL = """\
[meta]
name = "toy"
title = "Toy chip"
role = "chip"
description = "A test chip."
default_host = "cmos45nm"

[energy]
synaptic_op = { value = 23.6, unit = "pJ", source = "Davies 2018, Table 2", kind = "datasheet" }
static_power = { value = 104.4, unit = "mW", source = "Frady", kind = "estimate", note = "3.34/32" }

[timing]
timestep = { value = 9.1, unit = "us", source = "Davies 2018", kind = "estimate", note = "derived" }

[capacity]
cores_per_chip = { value = 128, unit = "count", source = "Davies 2018", kind = "datasheet" }

[capability]
chip_ops = ["Linear", "LIF"]
linear_input_classes = ["binary"]
graded_spikes = false
lif_fire_comparison = ">"
source = "Davies 2018"
"""


def _write(tmp_path: Path, text: str, name: str = "toy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _edit(old: str, new: str) -> str:
    if old not in MINIMAL:  # guard: a case whose edit does not apply would pass vacuously
        raise ValueError(f"test case does not match MINIMAL: {old!r}")
    return MINIMAL.replace(old, new, 1)


# ----------------------------------------------------------------------------- built-in data
def test_builtin_names() -> None:
    assert list_profiles() == BUILTINS
    assert (builtin_profile_dir() / "loihi2.toml").is_file()


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_loads_with_provenance(name: str) -> None:
    profile = load_profile(name)
    assert isinstance(profile, HardwareProfile)
    assert profile.name == name and profile.role in ROLES and profile.title
    raw = (builtin_profile_dir() / f"{name}.toml").read_bytes()
    assert profile.sha256 == hashlib.sha256(raw).hexdigest()
    figures = list(profile.quantities())
    assert figures, "a profile without figures prices nothing"
    for section, key, q in figures:
        assert key in SCHEMA[section]
        assert q.unit in UNITS and q.source.strip() and q.kind in KINDS, (section, key)
        assert math.isfinite(q.value) and q.value >= 0
        if q.kind in ("estimate", "proxy"):
            assert q.note.strip(), f"{name} [{section}] {key}: {q.kind} without derivation"
    json.dumps(profile.to_dict())  # serialisable for the report


def test_roles() -> None:
    assert [n for n in BUILTINS if load_profile(n).role == "chip"] == CHIPS
    assert [load_profile(n).role for n in ("cmos45nm", "cpu", "gpu")] == ["host", "host", "ann"]


@pytest.mark.parametrize("name", CHIPS)
def test_chip_profiles_are_complete(name: str) -> None:
    chip = load_profile(name)
    assert chip.default_host in BUILTINS
    host = load_profile(chip.default_host)
    assert host.role == "host" and host.host_op_pj("mac") > 0
    assert chip.energy_pj("synaptic_op") > 0
    assert chip.capacity_count("cores_per_chip") > 0
    # a clocked target states its tick; an event-driven one the per-event times of the
    # work-based timestep (spikegpt_deploy/profiling/latency.py)
    assert "timestep" in chip.timing or all(chip.time_ns(k) > 0 for k in WORK_TIMES)
    assert set(chip.capability) == set(SCHEMA["capability"])
    assert chip.capability_value("lif_fire_comparison") in (">", ">=")
    if chip.capability["graded_spikes"]:
        assert chip.capacity_bits("graded_spike_bits_max") > 1


def test_published_figures() -> None:
    loihi, loihi2 = load_profile("loihi"), load_profile("loihi2")
    assert loihi.energy_pj("synaptic_op") == 23.6
    assert loihi.energy["synaptic_op"].kind == "datasheet"
    assert loihi.energy_pj("neuron_update_active") == 81
    assert loihi.energy_pj("neuron_update_idle") == 52
    assert loihi.energy_pj("spike_local") == 1.7
    assert loihi.power_mw("static_power") == pytest.approx(3340 / 32, abs=0.05)
    assert loihi.capacity_count("neurons_per_core") == 1024
    assert loihi.capacity_count("fan_in_per_core") == 4096
    assert loihi.capacity_bits("weight_bits_max") == 9
    assert loihi.capacity_bits("synaptic_memory_per_core") == 128 * 1024 * 8
    assert loihi.capability["graded_spikes"] is False
    # Loihi 2: per-op energies are labelled Loihi 1 proxies; static power is measured
    for key in ("synaptic_op", "neuron_update_active", "spike_local", "spike_hop"):
        assert loihi2.energy[key].kind == "proxy" and "Loihi 1" in loihi2.energy[key].note
        assert loihi2.energy_pj(key) == loihi.energy_pj(key)
    assert loihi2.energy["static_power"].kind == "measured"
    assert loihi2.power_mw("static_power") == 232
    assert loihi2.capacity_count("neurons_per_core") == 8192
    assert loihi2.capacity["synaptic_memory_per_core"].kind == "estimate"
    assert loihi2.capacity_bits("weight_bits_max") == 8
    assert loihi2.capacity_bits("graded_spike_bits_max") == 24
    assert loihi2.capability["lif_fire_comparison"] == ">"
    assert "graded" in loihi2.capability["linear_input_classes"]
    assert load_profile("spinnaker2").energy_pj("neuron_update_active") == pytest.approx(2190)
    assert load_profile("truenorth").energy_pj("synaptic_op") == 26


def test_paper_formula_constants() -> None:
    cmos = load_profile("cmos45nm")
    assert cmos.host_op_pj("mac") == 4.6  # E_MAC of the SpikeGPT paper
    assert cmos.host_op_pj("add") == 0.9  # E_AC
    assert cmos.host_op_pj("mac") == pytest.approx(cmos.host_op_pj("mul") + cmos.host_op_pj("add"))
    assert cmos.host_op_pj("div") == 26.3
    for op in ("exp", "sqrt", "rsqrt", "sigmoid", "mac"):
        assert cmos.host_ops[op].kind == "estimate", op
    assert cmos.host_op_pj("sigmoid") == pytest.approx(
        cmos.host_op_pj("exp") + cmos.host_op_pj("add") + cmos.host_op_pj("div"))
    assert load_profile("cpu").host_op_pj("mac") == pytest.approx(8600)
    assert load_profile("gpu").host_op_pj("mac") == pytest.approx(300)
    assert "batch" in load_profile("gpu").host_ops["mac"].note


# ------------------------------------------------------------------------- quantities, access
def test_conversions() -> None:
    q = Quantity(23.6, "pJ", "Davies 2018", "datasheet")
    assert q.to("nJ") == pytest.approx(0.0236)
    assert q.to("fJ") == pytest.approx(23600)
    assert q.dimension == "energy"
    assert Quantity(128, "KiB", "s", "datasheet").to("B") == 131072
    assert Quantity(1, "ms", "s", "datasheet").to("ns") == pytest.approx(1e6)
    assert Quantity(0.232, "W", "s", "measured").to("mW") == pytest.approx(232)
    with pytest.raises(ProfileError, match="energy"):
        q.to("mW")
    with pytest.raises(ProfileError, match="unknown unit"):
        q.to("kcal")


def test_absent_figure_is_an_error_not_zero() -> None:
    spinnaker = load_profile("spinnaker2")
    with pytest.raises(ProfileError, match=r"spinnaker2.*spike_hop"):
        spinnaker.energy_pj("spike_hop")
    with pytest.raises(ProfileError, match=r"spinnaker2.*static_power"):
        spinnaker.power_mw("static_power")
    with pytest.raises(ProfileError, match="static_power"):
        load_profile("loihi2").energy_pj("static_power")  # a power asked as an energy
    with pytest.raises(ProfileError, match="rsqrt"):
        load_profile("loihi").host_op_pj("rsqrt")
    with pytest.raises(KeyError):
        load_profile("loihi").energy_pj("synaptic_opp")  # not a schema key: a caller bug


def test_profiles_are_immutable() -> None:
    profile = load_profile("loihi2")
    with pytest.raises(TypeError):
        profile.energy["synaptic_op"] = Quantity(0, "pJ", "x", "datasheet")  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.energy["synaptic_op"].value = 0.0  # type: ignore[misc]
    assert isinstance(profile.capability["chip_ops"], tuple)
    assert hash(profile) == hash(load_profile("loihi2"))


@pytest.mark.parametrize("name", BUILTINS)
def test_path_of_a_copy_equals_builtin(name: str, tmp_path: Path) -> None:
    copied = tmp_path / f"my_{name}.toml"
    shutil.copyfile(builtin_profile_dir() / f"{name}.toml", copied)
    builtin = load_profile(name)
    assert load_profile(copied) == builtin
    assert load_profile(str(copied)) == builtin
    assert load_profile(copied).path == copied


def test_schema_docs_agree() -> None:
    text = describe_schema()
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"    {key} " in text, key
    assert text in (hw_profiles.loader.__doc__ or "")


# ----------------------------------------------------------------------------- validation
CASES = [  # (old text, new text, expected fragment of the message)
    ('[capability]', '[capabilities]', "section [capabilities]"),
    ('synaptic_op = {', 'synaptic_opp = {', "[energy] synaptic_opp"),
    ('unit = "pJ", ', '', "synaptic_op.unit"),
    ('source = "Davies 2018, Table 2", ', '', "synaptic_op.source"),
    (', kind = "datasheet" }\nstatic', ' }\nstatic', "synaptic_op.kind"),
    ('value = 23.6, ', '', "synaptic_op.value"),
    ('unit = "pJ"', 'unit = "pj"', "synaptic_op.unit"),
    ('unit = "pJ"', 'unit = "mW"', "synaptic_op.unit"),
    ('unit = "mW"', 'unit = "pJ"', "static_power.unit"),
    ('unit = "count"', 'unit = "KiB"', "cores_per_chip.unit"),
    ('kind = "datasheet" }\nstatic', 'kind = "guess" }\nstatic', "synaptic_op.kind"),
    ('value = 23.6', 'value = nan', "synaptic_op.value"),
    ('value = 23.6', 'value = inf', "synaptic_op.value"),
    ('value = 23.6', 'value = -23.6', "synaptic_op.value"),
    ('value = 23.6', 'value = "23.6"', "synaptic_op.value"),
    ('value = 23.6', 'value = true', "synaptic_op.value"),
    ('value = 23.6', 'value = 1' + '0' * 400, "synaptic_op.value"),
    ('kind = "datasheet" }\nstatic', 'kind = "datasheet", dim = 1 }\nstatic', "synaptic_op.dim"),
    ('note = "derived"', 'note = ""', "timestep.note"),
    ('note = "derived"', 'note = 3', "timestep.note"),
    ('source = "Davies 2018", kind = "estimate"', 'source = " ", kind = "estimate"',
     "timestep.source"),
    ('synaptic_op = { value', 'synaptic_op = 23.6\nsynaptic_update = { value',
     "[energy] synaptic_op: expected an inline table"),
    ('role = "chip"', 'role = "fpga"', "[meta] role"),
    ('name = "toy"\n', '', "[meta] name"),
    ('name = "toy"', 'name = ["toy"]', "[meta] name"),
    ('default_host = "cmos45nm"\n', '', "[meta] default_host"),
    ('cores_per_chip = {', 'neurons_per_core = {', "[capacity] cores_per_chip"),
    ('["binary"]', '["binary", "analog"]', "[capability] linear_input_classes"),
    ('["Linear", "LIF"]', '[]', "[capability] chip_ops"),
    ('["Linear", "LIF"]', '"Linear"', "[capability] chip_ops"),
    ('["Linear", "LIF"]', '["Linear", 3]', "[capability] chip_ops"),
    ('graded_spikes = false', 'graded_spikes = "no"', "[capability] graded_spikes"),
    ('graded_spikes = false', 'graded_spikes = true', "[capacity] graded_spike_bits_max"),
    ('lif_fire_comparison = ">"', 'lif_fire_comparison = "=>"', "[capability] lif_fire_comparison"),
    ('source = "Davies 2018"\n', 'source = "Davies 2018"\nreset = "zero"\n', "[capability] reset"),
    ('[capacity]\ncores_per_chip = { value = 128, unit = "count", source = "Davies 2018", kind = '
     '"datasheet" }\n', '', "[capacity]: expected a [capacity] section"),
    ('[capability]\nchip_ops', 'chip_ops', "[capability]: expected a [capability] section"),
    ('[meta]\n', 'meta = 1\n[metadata]\n', "[meta]: expected a table"),
    ('title = "Toy chip"', 'title = "Toy chip', "line 3"),
]


@pytest.mark.parametrize(("old", "new", "fragment"), CASES)
def test_validation_error_names_the_key(tmp_path: Path, old: str, new: str, fragment: str) -> None:
    load_profile(_write(tmp_path, MINIMAL, "valid.toml"))  # the unedited profile is valid
    path = _write(tmp_path, _edit(old, new))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert fragment in message and "toy.toml" in message
    assert "expected" in message and "fix" in message


def test_role_sections(tmp_path: Path) -> None:
    host = load_profile("cmos45nm").path.read_text(encoding="utf-8")
    with pytest.raises(ProfileError, match=r"\[energy\]"):  # a host profile with chip energies
        load_profile(_write(tmp_path, host + '\n[energy]\nsynaptic_op = { value = 1, unit = "pJ",'
                            ' source = "x", kind = "datasheet" }\n'))
    with pytest.raises(ProfileError, match=r"\[host_ops\] mac"):  # a host without E_MAC
        load_profile(_write(tmp_path, host.replace("\nmac = {", "\n# mac = {")))


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="loihi2") as info:
        load_profile("loihi3")
    assert all(name in str(info.value) for name in BUILTINS)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(MINIMAL.replace("Toy chip", "Toy chip \xe9").encode("latin-1"))
    with pytest.raises(ProfileError, match="UTF-8"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="line"):
        load_profile(_write(tmp_path, "[meta\nname = 1\n"))
    assert issubclass(ProfileError, DeployError)


# ----------------------------------------------------------------------------- property tests
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"


def _dump(data: dict[str, Any]) -> str:
    """A minimal TOML writer (top-level scalars first, then one table per section)."""
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in data.items()
             if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines.append(f"[{json.dumps(section)}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _node_paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    if isinstance(node, dict):
        for key, child in node.items():
            out.append(prefix + (key,))
            out += _node_paths(child, prefix + (key,))
    return out


JUNK = st.one_of(
    st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-10**30, max_value=10**30), st.booleans(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.sampled_from(["value", "unit", "source", "kind", "x"]),
                    st.one_of(st.text(max_size=5), st.floats(), st.integers()), max_size=4),
    st.sampled_from([-1.0, math.nan, "pJ", "mW", "estimate", "chip", ">", [], {}]),
)


def _load_or_profile_error(path: Path) -> None:
    """Any other exception type escapes and fails the property test."""
    try:
        load_profile(path)
        event("loaded")
    except ProfileError as exc:
        assert str(exc).strip()
        event("ProfileError")


@pytest.mark.parametrize("name", ["loihi2", "cmos45nm"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutations_raise_only_profile_error(name: str, data: st.DataObject,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    doc = tomli.loads((builtin_profile_dir() / f"{name}.toml").read_text(encoding="utf-8"))
    mutated = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = _node_paths(mutated)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = mutated
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["drop", "rename", "replace"]), label="action")
        if action == "drop":
            del parent[path[-1]]
        elif action == "rename":
            parent[data.draw(st.text(max_size=10), label="new key")] = parent.pop(path[-1])
        else:
            parent[path[-1]] = data.draw(JUNK, label="value")
    target = tmp_path_factory.getbasetemp() / f"mutated_{name}.toml"
    target.write_text(_dump(mutated), encoding="utf-8", errors="surrogatepass")
    _load_or_profile_error(target)


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(0, 10_000), length=st.integers(0, 40), insert=st.text(max_size=20))
def test_text_mutations_raise_only_profile_error(cut: int, length: int, insert: str,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    text = (builtin_profile_dir() / "loihi.toml").read_text(encoding="utf-8")
    cut %= len(text)
    target = tmp_path_factory.getbasetemp() / "text_mutated.toml"
    target.write_bytes((text[:cut] + insert + text[cut + length:]).encode("utf-8", "surrogatepass"))
    _load_or_profile_error(target)


def test_dump_round_trips_builtins(tmp_path: Path) -> None:
    """The property tests' writer is faithful: an unmutated dump loads to the same figures."""
    for name in BUILTINS:
        doc = tomli.loads((builtin_profile_dir() / f"{name}.toml").read_text(encoding="utf-8"))
        dumped = load_profile(_write(tmp_path, _dump(doc), f"{name}.toml"))
        original = load_profile(name)
        assert dataclasses.replace(dumped, sha256="", path=Path()) == \
            dataclasses.replace(original, sha256="", path=Path())
