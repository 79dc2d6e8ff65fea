"""Encode one image's clinical metadata for an exported fusion model's ``metadata`` input (standard library only:
``riskcl export`` copies this file into the export folder beside ``riskcl_export.json``).

    import json
    import numpy as np
    from encode_metadata import encode_row

    encoding = json.load(open("riskcl_export.json"))["metadata_input"]["encoding"]
    vector = encode_row(encoding, {"age": "45-59", "sex": "female", "localization": "back"})
    metadata = np.asarray([vector], dtype=np.float32)   # the graph's second input, (N, D)

A missing column, a missing value (empty, "NA", "unknown", ...) or a category the model never saw encodes as
unknown, exactly as riskcl encoded its training data (numeric: (x - mean) / std with a missing indicator;
categorical: one-hot over the training categories and "unknown").
"""
from __future__ import annotations

import math

MISSING = {"", "nan", "none", "null", "na", "n/a", "unknown", "?"}


def _missing(value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return str(value).strip().lower() in MISSING


def _number(value):
    try:
        x = float(str(value).strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def encode_row(encoding: dict, row: dict) -> list:
    """The ``metadata`` vector of one image (``row``: ``{column: value}``) under ``encoding``."""
    out = []
    for column in encoding["columns"]:
        value = row.get(column["name"])
        if column["kind"] == "numeric":
            x = None if _missing(value) else _number(value)
            out += [0.0, 1.0] if x is None else [(x - column["mean"]) / column["std"], 0.0]
        else:
            categories = list(column["categories"])
            onehot = [0.0] * (len(categories) + 1)
            text = str(value).strip()
            onehot[categories.index(text) if not _missing(value) and text in categories else -1] = 1.0
            out += onehot
    return out
