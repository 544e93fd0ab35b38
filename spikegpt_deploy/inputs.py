"""Checks of user-supplied numbers and token ids, shared by every entry point (CLI and API).

Each check raises a DataError that names the option and what it expected, so a bad value never
reaches numpy or torch (where ``int(float('inf'))`` is an OverflowError and ``--tokens
99999999999`` an allocation failure).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import DataError

# The most tokens one command generates, profiles or simulates. A bound, not a figure of
# merit: 10^6 tokens take hours in PyTorch and days in the Lava simulator.
MAX_TOKENS = 1_000_000


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _show(value: int) -> str:
    """``value`` with thousands separators; an integer too long to print is described."""
    try:
        return f"{value:,}"
    except ValueError:  # Python refuses to print integers of more than 4300 digits
        return f"an integer of {value.bit_length():,} bits"


def check_count(value: Any, option: str, minimum: int = 0, maximum: int = MAX_TOKENS) -> int:
    """``value`` as an int in [minimum, maximum]; a DataError naming ``option`` otherwise."""
    if not _is_int(value):
        raise DataError(f"{option} must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        if maximum >= 2**62:  # no practical upper bound: do not print one
            raise DataError(f"{option} must be >= {minimum:,}, got {_show(value)}")
        raise DataError(f"{option} must be between {minimum:,} and {maximum:,}, got "
                        f"{_show(value)}")
    return int(value)


def check_real(value: Any, option: str, minimum: float | None = None,
               maximum: float | None = None, *, above: bool = False) -> float:
    """``value`` as a finite float >= minimum (> minimum when ``above``) and <= maximum."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise DataError(f"{option} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise DataError(f"{option} must be a finite number, got {x}")
    if minimum is not None and (x <= minimum if above else x < minimum):
        raise DataError(f"{option} must be {'>' if above else '>='} {minimum:g}, got {x:g}")
    if maximum is not None and x > maximum:
        raise DataError(f"{option} must be <= {maximum:g}, got {x:g}")
    return x


def check_token_ids(ids: Any, vocab_size: int, what: str = "prompt token ids") -> list[int]:
    """Token ids as Python ints in [0, vocab_size): every element an integer (not a float, bool
    or string), none outside the vocabulary. An integer numpy array is checked vectorised."""
    if isinstance(ids, np.ndarray) and np.issubdtype(ids.dtype, np.integer) and ids.ndim == 1:
        values = ids.tolist()
    else:
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise DataError(f"{what} must be a sequence of integers, got {type(ids).__name__}")
        values = list(ids)
        bad = [(i, v) for i, v in enumerate(values) if not _is_int(v)]
        if bad:
            i, v = bad[0]
            raise DataError(f"{what} must be integers; element {i} is {v!r:.40} "
                            f"({type(v).__name__}); pass whole numbers in [0, {vocab_size})")
        values = [int(v) for v in values]
    out = [v for v in values if not 0 <= v < vocab_size]
    if out:
        shown = ", ".join(_show(v) for v in out[:5])
        raise DataError(f"{what} [{shown}] are outside the vocabulary [0, {vocab_size})")
    return values
