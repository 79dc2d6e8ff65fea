"""Clinical metadata as model input: a fixed encoding of chosen metadata columns into a float vector per image.

Fitted on the training split only and saved with the run, so validation, calibration, test and deployment encode
exactly as training did:

* a **numeric** column (every known training value parses as a number, or ``model.metadata_spec`` declares
  ``kind: numeric``) is standardised with the training mean and standard deviation; a missing value becomes 0 and
  sets the column's ``<column>=missing`` indicator. Its *accepted range* is the declared ``range`` or, without one,
  the training values' range widened by its own span on each side (never below 0 when no training value is);
  a value outside it, or not a finite number, is refused at prediction time and never reaches the model;
* a **categorical** column is one-hot over the categories seen in training plus an explicit ``unknown``; a
  missing value and a category never seen in training both encode as ``unknown`` (a category is matched ignoring
  case where that names one training category).

Dirty training data is named, never encoded silently: a column whose values are mostly numbers with a few that are
not (``"45 years"``) is refused until its kind is declared (then the odd values count as unknown); a numeric value
outside the declared range (a negative age) is impossible and encodes as unknown, with a count; without a declared
range, a value far outside the rest (more than :data:`IMPLAUSIBLE_MADS` robust standard deviations from the
median: an age of 1e9) is refused naming it, since it would squash every real value into one number.

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

import warnings

import numpy as np

from .encode_metadata import _missing as _is_missing
from .encode_metadata import _number, encode_row, match_category

UNKNOWN = "unknown"
KINDS = ("numeric", "categorical")
IMPLAUSIBLE_MADS = 50.0  # without a declared range: |x - median| > this many robust SDs (1.4826 MAD) is refused
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
    low: float | None = None          # numeric: the accepted range (values outside are refused at prediction)
    high: float | None = None

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
    def fit(cls, table: Mapping[str, Sequence[Any]], columns: Sequence[str],
            spec: Mapping[str, Mapping[str, Any]] | None = None) -> "MetadataEncoding":
        """Fit on the training split's values (``table[column]``: one value per training image). ``spec``: declared
        ``{column: {kind: numeric | categorical, range: [low, high]}}`` (``model.metadata_spec``). Impossible
        values are counted and encode as unknown (a warning names them); see the module docstring for what is
        refused."""
        spec = spec or {}
        return cls(tuple(_fit_column(name, list(table[name]), spec.get(name) or {}) for name in columns))

    @property
    def dim(self) -> int:
        return sum(len(c.names) for c in self.columns)

    @property
    def feature_names(self) -> list[str]:
        return [n for c in self.columns for n in c.names]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def encode_row(self, row: Mapping[str, Any], counts: dict | None = None) -> np.ndarray:
        """One image's ``(dim,)`` vector from ``{column: value}`` (absent columns count as missing), by
        :func:`riskcl.data.encode_metadata.encode_row`: the function an export ships. A value the model cannot
        read is refused (:class:`riskcl.data.encode_metadata.MetadataValueError`); ``counts`` receives the
        categories never seen in training."""
        return np.asarray(encode_row(self.to_dict(), row, counts=counts), dtype=np.float32)

    def encode(self, table: Mapping[str, Sequence[Any]], n: int | None = None, split: str = "") -> np.ndarray:
        """``(N, dim)`` float32 for a table of columns (absent columns count as missing): riskcl's own data, where
        an impossible value encodes as unknown and is counted in a warning naming the column (and ``split``)."""
        n = n if n is not None else len(next(iter(table.values())))
        cols = {c.name: list(table[c.name]) if c.name in table else [None] * n for c in self.columns}
        spec, counts = self.to_dict(), {}
        rows = [encode_row(spec, {k: v[i] for k, v in cols.items()}, on_invalid="missing", counts=counts)
                for i in range(n)]
        invalid = {col: k for (col, kind), k in counts.items() if kind == "invalid"}
        if invalid:
            where = f"the '{split}' split" if split else "these rows"
            warnings.warn(f"metadata: {where} has value(s) outside the accepted range or not a finite number "
                          f"({', '.join(f'{c}: {k}' for c, k in invalid.items())}); they encode as unknown",
                          UserWarning, stacklevel=2)
        return np.asarray(rows, dtype=np.float32).reshape(n, self.dim)

    def pattern(self, row: Mapping[str, Any] | None) -> str:
        """What a request carries of this encoding's columns, as the model sees it: ``complete`` (every column
        known), ``none`` (every column missing, or a category never seen in training: unknown) or ``partial``."""
        row = row or {}
        known = sum(not _is_missing(row.get(c.name)) and (c.kind == "numeric" or
                                                          match_category(c.categories, row.get(c.name)) is not None)
                    for c in self.columns)
        return "complete" if known == len(self.columns) else "none" if known == 0 else "partial"

    def missing_row(self) -> np.ndarray:
        """The encoding of an image whose metadata are all missing."""
        return self.encode_row({})

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [{**asdict(c), "categories": list(c.categories)} for c in self.columns],
                "feature_names": self.feature_names, "dim": self.dim,
                "rule": "numeric: (x - mean) / std, and <column>=missing 1 when missing (then 0); a value outside "
                        "[low, high] or not a finite number is refused; categorical: one-hot over categories + "
                        "'unknown' (missing or unseen -> unknown; matched ignoring case where unambiguous)"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MetadataEncoding":
        try:
            return cls(tuple(ColumnEncoding(c["name"], c["kind"], float(c.get("mean", 0.0)), float(c.get("std", 1.0)),
                                            tuple(c.get("categories", ())), _bound(c.get("low")), _bound(c.get("high")))
                             for c in data["columns"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a metadata encoding ({type(exc).__name__}: {exc})") from None


def attach_features(encoding: MetadataEncoding, datasets: Any) -> None:
    """Set ``features`` (the encoded metadata, ``(N, dim)``) on each dataset of ``datasets`` (a mapping or a list)."""
    for ds in (datasets.values() if isinstance(datasets, Mapping) else datasets):
        missing = [c for c in encoding.column_names if c not in ds.table.columns]
        if missing:
            raise ValueError(f"The '{ds.split}' split has no metadata column(s) {missing}: the model reads "
                             f"{encoding.column_names}")
        ds.features = encoding.encode({c: ds.table[c].tolist() for c in encoding.column_names}, len(ds), ds.split)


def _bound(value: Any) -> float | None:
    return None if value is None else float(value)


def check_metadata_spec(spec: Mapping[str, Any], columns: Sequence[str]) -> None:
    """``ValueError`` naming a ``model.metadata_spec`` entry that is not ``{kind: ..., range: [low, high]}`` of one
    of ``columns``."""
    for name, entry in spec.items():
        if name not in columns:
            raise ValueError(f"`model.metadata_spec.{name}`: not one of model.metadata {list(columns)}")
        if not isinstance(entry, Mapping) or set(entry) - {"kind", "range"}:
            raise ValueError(f"`model.metadata_spec.{name}` = {entry!r}: expected {{kind: numeric | categorical, "
                             f"range: [low, high]}}")
        if entry.get("kind") not in (None, *KINDS):
            raise ValueError(f"`model.metadata_spec.{name}.kind` = {entry['kind']!r}: expected one of {list(KINDS)}")
        rng = entry.get("range")
        if rng is not None:
            ok = isinstance(rng, (list, tuple)) and len(rng) == 2 and all(_number(v) is not None for v in rng)
            if not ok or float(rng[0]) >= float(rng[1]):
                raise ValueError(f"`model.metadata_spec.{name}.range` = {rng!r}: expected [low, high] with finite "
                                 f"low < high")
            if entry.get("kind") == "categorical":
                raise ValueError(f"`model.metadata_spec.{name}`: a range applies to a numeric column, not a "
                                 f"categorical one")


def _fit_column(name: str, raw: list, declared: Mapping[str, Any]) -> ColumnEncoding:
    """One column's encoding from its training values (see :meth:`MetadataEncoding.fit`)."""
    values = [v for v in raw if not _is_missing(v)]
    numbers = [_number(v) for v in values]
    kind = declared.get("kind") or ("numeric" if declared.get("range") is not None else None)
    if kind is None:
        odd = [v for v, x in zip(values, numbers) if x is None]
        if values and not odd:
            kind = "numeric"
        elif values and len(odd) * 2 < len(values):
            rows = [k for k, v in enumerate(raw) if not _is_missing(v) and _number(v) is None]
            raise ValueError(f"metadata column '{name}': {len(values) - len(odd)} training values are numbers but "
                             f"{len(odd)} are not ({sorted(set(map(str, odd)))[:5]}, training rows {rows[:5]}); "
                             f"fix them, or declare the column's kind: model.metadata_spec: {{{name}: {{kind: "
                             f"numeric}}}} (those values then count as unknown) or {{kind: categorical}}")
        else:
            kind = "categorical"
    if kind == "categorical":
        return ColumnEncoding(name, "categorical", categories=tuple(sorted({str(v).strip() for v in values})))
    rng = declared.get("range")
    xs = np.asarray([x for x in numbers if x is not None], dtype=np.float64)
    impossible = [str(v) for v, x in zip(values, numbers) if x is None]
    if rng is not None:
        low, high = float(rng[0]), float(rng[1])
        impossible += [f"{x:g}" for x in xs if not low <= x <= high]
        xs = xs[(xs >= low) & (xs <= high)]
    elif xs.size:
        median = float(np.median(xs))
        scale = 1.4826 * float(np.median(np.abs(xs - median)))
        far = np.abs(xs - median) > IMPLAUSIBLE_MADS * scale if scale > 0 else np.zeros(xs.size, bool)
        if far.any():
            raise ValueError(f"metadata column '{name}': implausible training value(s) "
                             f"{sorted(set(xs[far].tolist()))[:5]} (more than {IMPLAUSIBLE_MADS:g} robust SDs from "
                             f"the median {median:g}); fix them, or "
                             f"declare the column's range: model.metadata_spec: {{{name}: {{range: [low, high]}}}} "
                             f"(values outside it count as unknown)")
        span = float(xs.max() - xs.min()) or max(abs(float(xs.max())), 1.0)
        low, high = float(xs.min()) - span, float(xs.max()) + span
        if xs.min() >= 0:
            low = max(low, 0.0)
    else:
        low = high = None
    if impossible:
        warnings.warn(f"metadata column '{name}': {len(impossible)} training value(s) are impossible "
                      f"({sorted(set(impossible))[:5]}: not a finite number"
                      + (f" or outside the declared range [{low:g}, {high:g}]" if rng is not None else "")
                      + "); they encode as unknown", UserWarning, stacklevel=3)
    mean = float(xs.mean()) if xs.size else 0.0
    std = float(xs.std()) if xs.size > 1 and xs.std() > 0 else 1.0
    return ColumnEncoding(name, "numeric", mean, std, low=low, high=high)
