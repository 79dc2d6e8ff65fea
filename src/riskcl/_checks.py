"""The one checker of numbers given by a user (loss parameters, command-line options, API arguments): each error
names the option, the value and what was expected (``--bootstrap -5``, ``--targets 1.5``, ``--max-upload-mb nan``).

Example:
    >>> check_number("--alpha", 0.1, 0, 1, min_inclusive=False, max_inclusive=False)
    0.1
    >>> check_number("--targets", 1.5, 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: Expected `--targets` to be a finite number >= 0 and <= 1, but got 1.5
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any


def check_number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                 min_inclusive: bool = True, max_inclusive: bool = True) -> float:
    """``float(value)`` when it is a finite real number in range; ``ValueError`` naming ``name`` otherwise."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and minimum is not None:
        ok = value >= minimum if min_inclusive else value > minimum
    if ok and maximum is not None:
        ok = value <= maximum if max_inclusive else value < maximum
    if not ok:
        lo = "" if minimum is None else f"{'>=' if min_inclusive else '>'} {minimum:g}"
        hi = "" if maximum is None else f"{'<=' if max_inclusive else '<'} {maximum:g}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        raise ValueError(f"Expected `{name}` to be a finite number{' ' + bounds if bounds else ''}, "
                         f"but got {value!r}")
    return float(value)


def check_int(name: str, value: Any, choices: tuple[int, ...] | None = None, minimum: int | None = None) -> int:
    """``int(value)`` for an integer (among ``choices`` / ``>= minimum``); ``ValueError`` naming ``name``."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (choices is None or value in choices) and (minimum is None or value >= minimum)
    if not ok:
        want = f"one of {choices}" if choices else f"an integer >= {minimum}" if minimum is not None else "an integer"
        raise ValueError(f"Expected `{name}` to be {want}, but got {value!r}")
    return int(value)


def check_method(method: str) -> str:
    """``method`` if it is a saliency method riskcl offers, else a ``ValueError`` naming the choices."""
    from .defaults import SALIENCY_METHODS

    if method not in SALIENCY_METHODS:
        raise ValueError(f"Unknown saliency method '{method}'; expected one of {list(SALIENCY_METHODS)}")
    return method
