"""Encode one image's clinical metadata for an exported fusion model's ``metadata`` input (standard library only:
``riskcl export`` copies this file into the export folder beside ``riskcl_export.json``).

    import json
    import numpy as np
    from encode_metadata import encode_row

    encoding = json.load(open("riskcl_export.json"))["metadata_input"]["encoding"]
    vector = encode_row(encoding, {"age": "45-59", "sex": "female", "localization": "back"})
    metadata = np.asarray([vector], dtype=np.float32)   # the graph's second input, (N, D)

A missing column or a missing value (empty, "NA", "unknown", ...) encodes as missing, exactly as riskcl encoded its
training data (numeric: (x - mean) / std with a missing indicator; categorical: one-hot over the training
categories and "unknown"). A category is matched exactly, else ignoring case and surrounding spaces when that names
one training category; a category never seen in training encodes as unknown. A numeric value that is not a finite
number, or lies outside the column's accepted range ``[low, high]``, is refused (:class:`MetadataValueError`): it
never reaches the model, whose output it could turn into NaN. ``on_invalid="missing"`` (riskcl's own data
loading) encodes such a value as missing instead and counts it in ``counts``.
"""
from __future__ import annotations

import math

MISSING = {"", "nan", "none", "null", "na", "n/a", "unknown", "?"}
FLOAT32_LIMIT = 1e30  # an encoded value beyond this would not survive the model's float32 input as a finite number


class MetadataValueError(ValueError):
    """A metadata value the model cannot read (not a finite number, or outside the accepted range)."""


def _missing(value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return str(value).strip().lower() in MISSING


def _number(value):
    """The value as a finite float, or None (not a number, or infinite)."""
    try:
        x = float(str(value).strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def match_category(categories, value):
    """The index of ``value`` among ``categories``: exact, else the one category equal to it ignoring case and
    surrounding spaces; None when there is none (or several)."""
    text = str(value).strip()
    if text in categories:
        return list(categories).index(text)
    folded = [k for k, c in enumerate(categories) if str(c).strip().casefold() == text.casefold()]
    return folded[0] if len(folded) == 1 else None


def numeric_problem(column: dict, value):
    """Why a present value of a numeric column cannot be encoded, or None when it can."""
    x = _number(value)
    if x is None:
        return "not a finite number"
    low, high = column.get("low"), column.get("high")
    if (low is not None and x < low) or (high is not None and x > high):
        return f"outside the accepted range [{low:g}, {high:g}]"
    if abs((x - column["mean"]) / column["std"]) > FLOAT32_LIMIT:
        return "too large to encode as a finite number"
    return None


def encode_row(encoding: dict, row: dict, on_invalid: str = "raise", counts: dict | None = None) -> list:
    """The ``metadata`` vector of one image (``row``: ``{column: value}``) under ``encoding``.

    ``on_invalid``: ``"raise"`` refuses a numeric value that is not a finite number or is out of range
    (:class:`MetadataValueError` naming the column, the value and what was expected); ``"missing"`` encodes it as
    missing. ``counts`` (a dict), when given, receives ``{(column, "invalid" | "unseen"): count}``: values encoded
    as missing, and categories never seen in training (encoded as unknown)."""
    out = []
    for column in encoding["columns"]:
        name = column["name"]
        value = row.get(name)
        if column["kind"] == "numeric":
            why = None if _missing(value) else numeric_problem(column, value)
            if why is not None:
                if on_invalid == "raise":
                    low, high = column.get("low"), column.get("high")
                    accepted = f"a number in [{low:g}, {high:g}]" if low is not None and high is not None \
                        else "a finite number"
                    raise MetadataValueError(f"metadata '{name}' = {value!r} is {why}; expected {accepted}, or no "
                                             f"value (missing)")
                if counts is not None:
                    counts[(name, "invalid")] = counts.get((name, "invalid"), 0) + 1
            x = None if _missing(value) or why is not None else _number(value)
            out += [0.0, 1.0] if x is None else [(x - column["mean"]) / column["std"], 0.0]
        else:
            categories = list(column["categories"])
            onehot = [0.0] * (len(categories) + 1)
            k = None if _missing(value) else match_category(categories, value)
            if k is None and not _missing(value) and counts is not None:
                counts[(name, "unseen")] = counts.get((name, "unseen"), 0) + 1
            onehot[-1 if k is None else k] = 1.0
            out += onehot
    return out
