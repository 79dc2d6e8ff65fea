"""The one checker of numbers given by a user (command-line options, API arguments): each error names the option,
the value and what was expected (``--bootstrap -5``, ``--targets 1.5``, ``--max-upload-mb nan``)."""
from __future__ import annotations

import math
from typing import Any


def check_number(name: str, value: Any, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
                 high_open: bool = False) -> float:
    """``value`` as a float if it is a finite real number in the interval, else a ``ValueError`` naming ``name``.

    Example:
        >>> check_number("--alpha", 0.1, 0, 1, low_open=True, high_open=True)
        0.1
        >>> check_number("--alpha", 1.5, 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: Expected `--alpha` in [0, 1], but got 1.5
    """
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    expected = f"a finite number in {interval}" if math.isinf(low) or math.isinf(high) else interval
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Expected `{name}` to be a number in {interval}, but got {value!r}")
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise ValueError(f"Expected `{name}` to be a finite number, but got {value!r}")
    if v < low or v > high or (low_open and v == low) or (high_open and v == high):
        raise ValueError(f"Expected `{name}` in {expected}, but got {value!r}")
    return v


def check_count(name: str, value: Any, minimum: int = 0) -> int:
    """``value`` if it is an integer >= ``minimum``, else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Expected `{name}` to be an integer >= {minimum}, but got {value!r}")
    return value
