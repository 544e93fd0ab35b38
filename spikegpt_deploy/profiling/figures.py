"""Reading a profile's figures for a price: each one used is kept with its provenance (profile,
sha256, value, unit, kind, source), each one missing is listed (a missing figure is never zero).
"""

from __future__ import annotations

from typing import Any, Mapping

from hw_profiles import HardwareProfile
from hw_profiles import load_profile as _load_profile

from ..errors import ProfileError

PRICE_KEY = {"lookup_byte": "memory_byte"}   # host op kind -> [host_ops] key (else the same)


class Figures:
    """Reads figures, remembers each one used (with provenance) and each one missing."""

    def __init__(self, kind_factors: Mapping[str, float] | None = None):
        self.kind_factors = dict(kind_factors or {})
        self.used: dict[str, dict[str, Any]] = {}
        self.missing: list[dict[str, str]] = []

    def get(self, profile: HardwareProfile, section: str, key: str, unit: str,
            what: str) -> float | None:
        try:
            q = profile.quantity(section, key)
        except ProfileError:
            entry = {"what": what, "profile": profile.name, "key": f"[{section}] {key}",
                     "reason": f"profile {profile.name!r} has no [{section}] {key}"}
            if entry not in self.missing:
                self.missing.append(entry)
            return None
        self.used[f"{profile.name}:{section}.{key}"] = {
            "profile": profile.name, "sha256": profile.sha256, "section": section, "key": key,
            "value": q.value, "unit": q.unit, "kind": q.kind, "source": q.source}
        return q.to(unit) * self.kind_factors.get(q.kind, 1.0)


def load_host(chip: HardwareProfile, override: str | None = None) -> HardwareProfile:
    """The host profile: ``override`` (a name or path), else the chip's ``default_host``."""
    name = override or chip.default_host
    if not name:
        raise ProfileError(f"profile {chip.name!r} has no [meta] default_host; pass a host "
                           f"profile (--host-profile cmos45nm)")
    host = _load_profile(name)
    if host.role not in ("host", "ann"):
        raise ProfileError(f"host profile {host.name!r} has role {host.role!r}; expected host")
    return host
