"""The prediction CSV riskcl writes (columns, rows, resuming) and the CSVs of image metadata it reads (no PyTorch).

A prediction CSV is written a batch at a time and resumed by a rerun with the same ``--out``. Beside it,
``<name>.riskcl.json`` records which model wrote it (the weights' or the exported graph's SHA-256) and at which
operating point, so that a rerun with another model, or at another point, is refused rather than mixed into it;
each kept row is checked to be the decision its own p(malignant) and threshold give. Every text cell that a
spreadsheet would run as a formula is neutralised (:func:`riskcl.io.spreadsheet_safe`).

Metadata CSVs (``predict --metadata``): an ``image`` column (a path, a file name, or a file name without its
extension as in HAM10000's own metadata) and the model's columns, matched ignoring case where that is unambiguous;
Excel's "CSV UTF-8" (with a byte-order mark) is read as such. What does not match is counted and said, never
dropped silently.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..decision import OperatingPoint
from ..io import atomic_write_json, atomic_write_text, check_writable_target, spreadsheet_safe, spreadsheet_value
from ..taxonomy import Taxonomy

CSV_HEAD = ("image", "decision", "predicted", "superclass", "p_malignant", "threshold")
SEGMENTATION_COLUMNS = ("image", "decision", "lesion_px", "lesion_share", "mean_p_lesion", "uncertain_share",
                        "threshold", "mask")  # a segmentation model's rows (riskcl.deploy.segmentation)
INPUT_COLUMNS = ("inputs", "certified")  # a model with metadata inputs: what the request carried, and whether the
                                         # point it was decided at is certified for that
ERROR_COLUMN = "error"
UNREADABLE = "unreadable"
ERROR = "error"  # a row riskcl refuses to decide: a non-finite probability, metadata the model cannot read
NONFINITE = "the model gave a non-finite probability (NaN or infinity) for this image: refused, not decided"
IDENTITY_SUFFIX = ".riskcl.json"


def csv_columns(taxonomy: Taxonomy, op: OperatingPoint | None = None) -> list[str]:
    """The prediction CSV's columns: :data:`CSV_HEAD`, :data:`INPUT_COLUMNS` for a model with metadata inputs, one
    probability per class, then ``error`` (segmentation: :data:`SEGMENTATION_COLUMNS`, then ``error``)."""
    if op is not None and op.segmentation:
        return [*SEGMENTATION_COLUMNS, ERROR_COLUMN]
    inputs = INPUT_COLUMNS if op is not None and op.inputs is not None else ()
    return [*CSV_HEAD, *inputs, *(f"p_{c}" for c in taxonomy.classes), ERROR_COLUMN]


def failed_row(image: str, decision: str, reason: str, taxonomy: Taxonomy,
               op: OperatingPoint | None = None) -> dict[str, Any]:
    """A row without a decision: ``unreadable`` (the file) or ``error`` (the numbers), with the reason."""
    return {**{c: "" for c in csv_columns(taxonomy, op)}, "image": image, "decision": decision, ERROR_COLUMN: reason}


def unreadable_row(image: str, reason: str, taxonomy: Taxonomy, op: OperatingPoint | None = None) -> dict[str, Any]:
    return failed_row(image, UNREADABLE, reason, taxonomy, op)


def _is_prediction_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            head = tuple(fh.readline().strip().split(","))
        return head[:len(CSV_HEAD)] == CSV_HEAD or head[:len(SEGMENTATION_COLUMNS)] == SEGMENTATION_COLUMNS
    except (OSError, UnicodeDecodeError):
        return False


def check_prediction_target(out_csv: str | os.PathLike, force: bool = False) -> Path:
    """``out_csv`` may be written: a new file, or a previous riskcl prediction CSV; anything else only with
    ``force`` (an input image or a run's metrics.json is never overwritten by mistake)."""
    path = check_writable_target(out_csv)
    if path.exists() and not force and not _is_prediction_csv(path):
        raise FileExistsError(f"{path} exists and is not a riskcl prediction CSV; refusing to overwrite it (pass "
                              f"--force to overwrite, or name another --out)")
    return path


def rows_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, header: bool = True) -> str:
    """CSV text of ``rows`` (spreadsheet-safe cells)."""
    buf = io.StringIO()
    if rows or (columns and header):
        w = csv.DictWriter(buf, fieldnames=list(columns or rows[0]), lineterminator="\n", extrasaction="ignore")
        if header:
            w.writeheader()
        w.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def _read_rows(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV's header and rows (UTF-8, a byte-order mark allowed); ``ValueError`` naming the file."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            return [h.strip() for h in reader.fieldnames or []], \
                [{(k or "").strip(): v for k, v in r.items()} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: cannot read it as a CSV ({exc})") from None


def _header_map(path: str | os.PathLike, header: Sequence[str], wanted: Sequence[str]) -> dict[str, str]:
    """``{wanted column: the CSV's column}``: exact, else the one header equal to it ignoring case."""
    out = {}
    for col in wanted:
        if col in header:
            out[col] = col
            continue
        same = [h for h in header if h.casefold() == col.casefold()]
        if len(same) > 1:
            raise ValueError(f"{path}: columns {same} all match '{col}' ignoring case; keep one")
        if same:
            out[col] = same[0]
    return out


def image_keys(image: str | os.PathLike) -> list[str]:
    """The keys a metadata CSV may give an image by: its path, its file name, its file name without extension."""
    return list(dict.fromkeys([str(image), Path(image).name, Path(image).stem]))


def read_image_csv(path: str | os.PathLike, columns: Sequence[str], required: Sequence[str] = ()
                   ) -> dict[str, dict[str, str]]:
    """``{image key: {column: value}}`` from a CSV with an ``image`` column (paths, file names, or file names
    without extension) and any of ``columns`` (``required`` ones must be there; headers matched ignoring case
    where unambiguous). An image given two different rows is refused naming the line."""
    header, records = _read_rows(path)
    names = _header_map(path, header, ["image", *columns])
    if "image" not in names or any(c not in names for c in required):
        wanted = (f"columns 'image' and {list(required)}" if required
                  else f"a column 'image' and some of {list(columns)}")
        raise ValueError(f"{path}: expected {wanted}, but got {header}")
    table: dict[str, dict[str, str]] = {}
    for k, record in enumerate(records):
        image = record[names["image"]]
        row = {c: spreadsheet_value(record[names[c]]) for c in columns if c in names}
        for key in image_keys(image):
            if key in table and table[key] != row:
                raise ValueError(f"{path}: line {k + 2} gives {image} {row}, an earlier line {table[key]}; keep one "
                                 f"row per image")
            table[key] = row
    return table


def row_of(table: Mapping[str, dict[str, str]], image: str | os.PathLike) -> dict[str, str] | None:
    return next((table[k] for k in image_keys(image) if k in table), None)


def metadata_rows(images: Sequence[str | os.PathLike], metadata: str | os.PathLike | None,
                  encoding) -> list[dict[str, str]]:
    """Each image's ``{column: value}`` for a model with metadata inputs (``encoding``: its
    :class:`riskcl.data.encoding.MetadataEncoding`), from a CSV with an ``image`` column and any of its columns
    (:func:`read_image_csv`). An image without a row, or a column the CSV lacks, counts as missing; each kind of
    mismatch (images without a row, columns absent, categories never seen in training) is counted in one warning.
    None: every image's metadata missing."""
    if metadata is None:
        return [{} for _ in images]
    columns = encoding.column_names
    table = read_image_csv(metadata, columns)
    rows = [row_of(table, img) for img in images]
    notes = []
    unmatched = [str(img) for img, r in zip(images, rows) if r is None]
    if unmatched:
        notes.append(f"{len(unmatched)} of {len(images)} image(s) have no row (matched by path, file name or file "
                     f"name without extension, e.g. {Path(unmatched[0]).name}): their metadata are missing")
    present = {c for r in rows if r for c in r}
    absent = [c for c in columns if c not in present]
    if absent:
        notes.append(f"no column {absent} (the model reads {columns}): missing for every image")
    counts: dict = {}
    for r in rows:
        if r:
            try:
                encoding.encode_row(r, counts=counts)
            except ValueError:
                pass  # refused per image when it is scored (its row says why)
    unseen = {col: k for (col, kind), k in counts.items() if kind == "unseen"}
    if unseen:
        known = {c.name: list(c.categories) for c in encoding.columns if c.kind == "categorical"}
        notes.append("values the model never saw in training encode as unknown: " + "; ".join(
            f"{col}: {k} (it knows {known[col][:8]})" for col, k in unseen.items()))
    if notes:
        warnings.warn(f"{metadata}: " + "; ".join(notes), UserWarning, stacklevel=2)
    return [r or {} for r in rows]


def image_groups(op: OperatingPoint, images: Sequence[str | os.PathLike], metadata: str | os.PathLike | None
                 ) -> list[str]:
    """Each image's value of the point's ``by`` column from a metadata CSV (``image`` + the group column). A CSV
    that gives one image two different groups is refused; a group the calibration never saw gets the fallback
    threshold, with a warning naming it and the groups it knows."""
    by = op.by
    if metadata is None:
        raise ValueError(f"calibration.json holds one threshold per '{by}' group: predict needs each image's group "
                         f"(--metadata CSV with columns image,{by}), or --threshold / --default-rule")
    table = read_image_csv(metadata, [by], required=[by])
    out = []
    for img in images:
        row = row_of(table, img)
        if row is None:
            raise ValueError(f"{metadata}: no row for image {img} (column 'image' holds paths or file names)")
        out.append(str(row[by]))
    unseen = sorted(set(out) - set(op.groups or {}))
    if unseen:
        fallback = op.threshold if op.fallback is None else op.fallback
        warnings.warn(f"{metadata}: '{by}' value(s) {unseen} were not seen at calibration (it knows "
                      f"{sorted(op.groups or {})}; values are compared exactly, case included): those images get "
                      f"the fallback threshold {fallback:.4f}, with no per-group guarantee",
                      UserWarning, stacklevel=2)
    return out


def identity_file(path: str | os.PathLike) -> Path:
    """Where a prediction CSV's model identity is recorded (``preds.csv`` -> ``preds.csv.riskcl.json``)."""
    return Path(f"{path}{IDENTITY_SUFFIX}")


def _follows(row: Mapping[str, str], op: OperatingPoint) -> bool:
    """Whether a kept classification row's decision is the one its own p(malignant) and threshold give."""
    if op.segmentation or op.rule != "superclass" or row["decision"] not in ("refer", "clear"):
        return True
    try:
        refer = float(row["p_malignant"]) >= float(row["threshold"])
    except ValueError:
        return False
    return refer == (row["decision"] == "refer")


class PredictionCSV:
    """A prediction CSV written a batch at a time (each batch flushed and synced: a killed run loses at most the
    batch it was writing, and a torn last line is dropped on the next open). Opening an existing prediction CSV
    resumes it: its scored images are skipped, its unreadable ones retried. It is refused (``force`` starts it
    over) when it has other columns, when ``<name>.riskcl.json`` names another model or operating point (or is
    missing: nothing says which model wrote the rows), or when a kept row's decision does not follow from its own
    p(malignant) and threshold (the file was edited)."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], op: OperatingPoint,
                 force: bool = False, identity: str | None = None) -> None:
        self.path, self.columns = check_prediction_target(path, force), list(columns)
        self.record = {"model_sha256": identity, "operating_point": op.to_dict(), "columns": self.columns}
        self.done: set[str] = set()
        if self.path.exists() and not force:
            self._resume(op)
        else:
            atomic_write_json(identity_file(self.path), self.record)
            atomic_write_text(self.path, rows_csv([], self.columns))

    def _check_identity(self) -> None:
        side = identity_file(self.path)
        fix = "name another --out, or pass --force to score everything again"
        try:
            recorded = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ValueError(f"{self.path}: {side.name} (which model wrote these rows, at which operating point) is "
                             f"missing or unreadable, so the rows cannot be resumed safely; {fix}") from None
        was, now = str(recorded.get("model_sha256")), str(self.record["model_sha256"])
        if was != now:
            raise ValueError(f"{self.path}: its rows were scored by another model (SHA-256 {was[:12]}..., this one "
                             f"{now[:12]}...); {fix}")
        if json.dumps(recorded.get("operating_point"), sort_keys=True) != \
                json.dumps(json.loads(json.dumps(self.record["operating_point"])), sort_keys=True):
            was = (recorded.get("operating_point") or {}).get("how", "?")
            raise ValueError(f"{self.path}: its rows were decided at another operating point ({was}), but the point "
                             f"now is {self.record['operating_point']['how']}; {fix}")

    def _resume(self, op: OperatingPoint) -> None:
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            text = text[:text.rfind("\n") + 1]  # a line torn by a kill: scored again
        records = [{k: spreadsheet_value(v) for k, v in r.items()} for r in csv.DictReader(io.StringIO(text))]
        head = text.split("\n", 1)[0].split(",")
        if head != self.columns:
            raise ValueError(f"{self.path}: a prediction CSV with columns {head}, but this model writes "
                             f"{self.columns}; name another --out, or pass --force to start it over")
        self._check_identity()
        scored = [r for r in records if r["decision"] not in (UNREADABLE, ERROR)]
        edited = [r["image"] for r in scored if not _follows(r, op)]
        if edited:
            raise ValueError(f"{self.path}: {len(edited)} row(s) hold a decision that their own p_malignant and "
                             f"threshold do not give (e.g. {edited[0]}): the file was edited; name another --out, "
                             f"or pass --force to score everything again")
        self.done = {r["image"] for r in scored}
        if len(scored) != len(records) or len(text) != self.path.stat().st_size:
            atomic_write_text(self.path, rows_csv(scored, self.columns))  # failed rows are retried

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8", newline="") as fh:
            fh.write(rows_csv(rows, self.columns, header=False))
            fh.flush()
            os.fsync(fh.fileno())


class StdoutCSV:
    """The same rows to standard output (header first)."""

    def __init__(self, columns: Sequence[str], stream=None) -> None:
        self.columns, self.stream, self.done = list(columns), stream or sys.stdout, set()
        self.stream.write(rows_csv([], self.columns))

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self.stream.write(rows_csv(rows, self.columns, header=False))
        self.stream.flush()
