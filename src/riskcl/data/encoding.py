"""Clinical metadata as model input: a fixed encoding of chosen metadata columns into a float vector per image.

Fitted on the training split only and saved with the run, so validation, calibration, test and deployment encode
exactly as training did:

* a **numeric** column (every known training value parses as a number) is standardised with the training mean
  and standard deviation; a missing value becomes 0 and sets the column's ``<column>=missing`` indicator;
* a **categorical** column is one-hot over the categories seen in training plus an explicit ``unknown``; a
  missing value and a category never seen in training both encode as ``unknown``.

Missing means any spelling :func:`riskcl.data.registry.normalise_missing` maps to ``unknown`` (NaN, "", "NA",
"unknown", ...). A row with every column missing encodes as :meth:`MetadataEncoding.missing_row`: what a model sees
when a clinic sends no metadata (and what metadata dropout trains it on).

Columns derived from the label can never be inputs (the model would read the answer): ``dx`` and ``dx_type`` (on
HAM10000 histopathology confirmation goes with malignancy), riskcl's own columns, and whatever the adapter marks
(:attr:`DataIndex.label_derived`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .encode_metadata import _missing as _is_missing
from .encode_metadata import _number, encode_row

UNKNOWN = "unknown"
ALWAYS_LABEL_DERIVED = ("label", "dx", "dx_type", "diagnosis", "class", "target")
FUSION_HEADS = ("late", "film")  # how a model combines the image with these vectors (riskcl.models.FusionNet)
METADATA_ONLY = "metadata-only"  # model.name of the reference that reads these vectors alone (no image)


def label_derived_reason(column: str) -> str:
    """Why ``column`` may not be a model input (it is derived from the label)."""
    if column == "dx_type":
        return "on HAM10000 histopathology confirmation goes with malignancy, so the model would read the answer"
    return "it is derived from the label, so the model would read the answer"


def check_input_columns(columns: Sequence[str], available: Sequence[str], label_derived: Sequence[str] = ()) -> None:
    """``ValueError`` naming a column that is not the data's metadata, or that is derived from the label."""
    for c in columns:
        if c in ALWAYS_LABEL_DERIVED or c in label_derived:
            raise ValueError(f"`model.metadata`: '{c}' cannot be a model input: {label_derived_reason(c)}")
        if c not in available:
            raise ValueError(f"`model.metadata`: '{c}' is not a metadata column of this data set (it has "
                             f"{list(available) or 'none'})")
    if len(set(columns)) != len(columns):
        raise ValueError(f"`model.metadata`: a column is named twice in {list(columns)}")


@dataclass(frozen=True)
class ColumnEncoding:
    name: str
    kind: str                         # "numeric" or "categorical"
    mean: float = 0.0
    std: float = 1.0
    categories: tuple[str, ...] = ()  # categorical: the training categories; "unknown" is appended

    @property
    def names(self) -> list[str]:
        if self.kind == "numeric":
            return [self.name, f"{self.name}=missing"]
        return [f"{self.name}={c}" for c in (*self.categories, UNKNOWN)]


@dataclass(frozen=True)
class MetadataEncoding:
    """The fitted encoding (see the module docstring): ``encode(rows)`` -> ``(N, dim)`` float32."""

    columns: tuple[ColumnEncoding, ...]

    @classmethod
    def fit(cls, table: Mapping[str, Sequence[Any]], columns: Sequence[str]) -> "MetadataEncoding":
        """Fit on the training split's values (``table[column]``: one value per training image)."""
        out = []
        for name in columns:
            values = [v for v in table[name] if not _is_missing(v)]
            numbers = [_number(v) for v in values]
            if values and all(x is not None for x in numbers):
                arr = np.asarray(numbers, dtype=np.float64)
                std = float(arr.std()) if arr.size > 1 and arr.std() > 0 else 1.0
                out.append(ColumnEncoding(name, "numeric", float(arr.mean()), std))
            else:
                out.append(ColumnEncoding(name, "categorical", categories=tuple(sorted({str(v).strip()
                                                                                        for v in values}))))
        return cls(tuple(out))

    @property
    def dim(self) -> int:
        return sum(len(c.names) for c in self.columns)

    @property
    def feature_names(self) -> list[str]:
        return [n for c in self.columns for n in c.names]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def encode_row(self, row: Mapping[str, Any]) -> np.ndarray:
        """One image's ``(dim,)`` vector from ``{column: value}`` (absent columns count as missing), by
        :func:`riskcl.data.encode_metadata.encode_row`: the function an export ships."""
        return np.asarray(encode_row(self.to_dict(), row), dtype=np.float32)

    def encode(self, table: Mapping[str, Sequence[Any]], n: int | None = None) -> np.ndarray:
        """``(N, dim)`` float32 for a table of columns (absent columns count as missing)."""
        n = n if n is not None else len(next(iter(table.values())))
        cols = {c.name: list(table[c.name]) if c.name in table else [None] * n for c in self.columns}
        spec = self.to_dict()
        rows = [encode_row(spec, {k: v[i] for k, v in cols.items()}) for i in range(n)]
        return np.asarray(rows, dtype=np.float32).reshape(n, self.dim)

    def missing_row(self) -> np.ndarray:
        """The encoding of an image whose metadata are all missing."""
        return self.encode_row({})

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [{**asdict(c), "categories": list(c.categories)} for c in self.columns],
                "feature_names": self.feature_names, "dim": self.dim,
                "rule": "numeric: (x - mean) / std, and <column>=missing 1 when missing (then 0); categorical: "
                        "one-hot over categories + 'unknown' (missing or unseen -> unknown)"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MetadataEncoding":
        try:
            return cls(tuple(ColumnEncoding(c["name"], c["kind"], float(c.get("mean", 0.0)), float(c.get("std", 1.0)),
                                            tuple(c.get("categories", ()))) for c in data["columns"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a metadata encoding ({type(exc).__name__}: {exc})") from None


def attach_features(encoding: MetadataEncoding, datasets: Any) -> None:
    """Set ``features`` (the encoded metadata, ``(N, dim)``) on each dataset of ``datasets`` (a mapping or a list)."""
    for ds in (datasets.values() if isinstance(datasets, Mapping) else datasets):
        missing = [c for c in encoding.column_names if c not in ds.table.columns]
        if missing:
            raise ValueError(f"The '{ds.split}' split has no metadata column(s) {missing}: the model reads "
                             f"{encoding.column_names}")
        ds.features = encoding.encode({c: ds.table[c].tolist() for c in encoding.column_names}, len(ds))
