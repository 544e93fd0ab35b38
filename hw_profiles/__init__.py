"""Hardware profiles: one TOML data file per target, plus the loader that validates them.

Every figure carries value, unit, source and kind (datasheet | measured | estimate | proxy); see
``hw_profiles.loader`` for the schema. No hardware constant lives in Python code.
"""

from __future__ import annotations

from hw_profiles.loader import (
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

__all__ = [
    "KINDS",
    "ROLES",
    "SCHEMA",
    "UNITS",
    "HardwareProfile",
    "Quantity",
    "builtin_profile_dir",
    "describe_schema",
    "list_profiles",
    "load_profile",
]
