"""Scoring images with a deployed model, a run folder or an export folder, and the prediction rows riskcl writes.

This module loads no PyTorch: an export folder (``riskcl_export.json`` + ``model.onnx``) is scored with ONNX
Runtime alone, so ``riskcl predict EXPORT_DIR`` and ``riskcl serve EXPORT_DIR`` run from the ``serve`` install
(numpy, Pillow, onnxruntime, FastAPI, uvicorn); a run folder is scored by :class:`riskcl.deploy.predict.RunModel`,
imported only when a run folder is given. Both offer the same face (:class:`Scorer`): the operating point, the
taxonomy and ``probabilities(images)`` of decoded ``uint8`` images, so every command decides from one function
(:func:`decision_rows`).

Batch prediction streams (:func:`stream_predictions`): files are expanded from folders and globs, decoded in a
small thread pool one batch ahead of the model, scored a batch at a time and written to the CSV as they come
(each batch flushed and synced), so memory stays bounded whatever the number of images. A file that cannot be
read gets a row with the decision ``unreadable`` and the reason, and the rest goes on. A rerun with the same
``--out`` skips the images already scored (and retries the unreadable ones); a CSV scored at another operating
point is refused rather than mixed.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from ..data.decoding import BadImageError, decode_rgb
from ..decision import OperatingPoint
from ..io import atomic_write_text, check_writable_target
from ..metrics.functional import malignant_probability
from ..taxonomy import Taxonomy

METADATA_FILE = "riskcl_export.json"  # an export folder is recognised by this file
CSV_HEAD = ("image", "decision", "predicted", "superclass", "p_malignant", "threshold")
ERROR_COLUMN = "error"
UNREADABLE = "unreadable"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")  # what a folder given to predict yields


class Scorer(Protocol):
    """What predict and serve need of a model: its operating point, taxonomy and class probabilities."""

    op: OperatingPoint
    taxonomy: Taxonomy
    kind: str  # "run" or "export"

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


def is_export(path: str | os.PathLike) -> bool:
    return (Path(path) / METADATA_FILE).is_file()


def read_export_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / METADATA_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the export's metadata ({exc}); re-export the run") from None


def group_by_shape(images: Sequence[np.ndarray]) -> dict[tuple, list[int]]:
    """Indices of ``images`` per array shape (an exported graph takes one image size per call), in input order."""
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape, []).append(i)
    return groups


class ExportedModel:
    """An export folder scored by ONNX Runtime (no PyTorch). The graph holds the preprocessing, the test-time
    augmentation and the temperature, so its probabilities are the ones the threshold was certified on.

    ``intra_op_threads`` / ``inter_op_threads``: ONNX Runtime's thread pools (None: its defaults, one intra-op
    thread per physical core). The session is created once; ONNX Runtime's ``run`` may be called from several
    threads at once.
    """

    kind = "export"

    def __init__(self, folder: str | os.PathLike, intra_op_threads: int | None = None,
                 inter_op_threads: int | None = None) -> None:
        self.folder = Path(folder)
        self.meta = read_export_metadata(self.folder)
        if self.meta.get("format") != "onnx":
            raise ValueError(f"{self.folder}: a {self.meta.get('format')!r} export needs PyTorch; riskcl scores ONNX "
                             f"exports (riskcl export --format onnx) or run folders")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("scoring an ONNX export needs onnxruntime: pip install 'riskcl[serve]'") from None
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        if inter_op_threads:
            options.inter_op_num_threads = int(inter_op_threads)
        model = self.folder / self.meta["file"]
        if not model.is_file():
            raise FileNotFoundError(f"{model} not found: the export folder is incomplete; re-export the run")
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.runtime = f"onnxruntime {ort.__version__}"
        self.taxonomy = Taxonomy(str(self.meta["run"].get("dataset") or "export"), tuple(self.meta["classes"]),
                                 tuple(int(v) for v in self.meta["levels"]))
        self.op = OperatingPoint.from_dict(self.meta["operating_point"])
        self.outputs = [o["name"] for o in self.meta["outputs"]]
        self.batch_size = 32
        self.encoding = None  # a fusion model's metadata encoding (its graph's second input)
        if self.meta.get("metadata_input"):
            from ..data.encoding import MetadataEncoding

            self.encoding = MetadataEncoding.from_dict(self.meta["metadata_input"]["encoding"])

    def probabilities(self, images: Sequence[np.ndarray],
                      metadata: Sequence[dict] | None = None) -> np.ndarray | list[np.ndarray]:
        """``(N, K)`` probabilities of decoded ``uint8`` ``(H, W, 3)`` images (one graph call per image size and
        batch; input order kept); a segmentation export: each image's ``(H, W)`` lesion probabilities. A fusion
        export reads ``metadata`` too (one ``{column: value}`` per image; missing: every value missing)."""
        if self.op.segmentation:
            maps: list = [None] * len(images)
            for idx in group_by_shape(images).values():
                for start in range(0, len(idx), self.batch_size):
                    part = idx[start:start + self.batch_size]
                    probs, = self.session.run(["p_lesion"], {"images": np.stack([images[i] for i in part])})
                    for i, p in zip(part, probs):
                        maps[i] = p
            return maps
        out = np.zeros((len(images), len(self.taxonomy.classes)), dtype=np.float64)
        for idx in group_by_shape(images).values():
            for start in range(0, len(idx), self.batch_size):
                part = idx[start:start + self.batch_size]
                feed = {"images": np.stack([images[i] for i in part])}
                if self.encoding is not None:
                    feed["metadata"] = np.stack([self.encoding.encode_row(metadata[i] if metadata else {})
                                                 for i in part])
                probs, = self.session.run(["probabilities"], feed)
                out[part] = probs
        return out


def open_scorer(path: str | os.PathLike, calibrated: bool | None = None, threshold: float | None = None,
                rule: str = "superclass", allow_uncertified: bool = False, allow_unfinished: bool | None = False,
                threads: int | None = None) -> Scorer:
    """A run folder (PyTorch) or an export folder (ONNX Runtime) ready to score, at its operating point.

    On an export the operating point is the one exported (its temperature and TTA are inside the graph):
    ``threshold`` or ``rule="argmax"`` may still override the decision, ``calibrated=False`` cannot undo it."""
    if is_export(path):
        scorer = ExportedModel(path, intra_op_threads=threads)
        if calibrated is False:
            raise ValueError(f"{path} is an export: its operating point (temperature included) is inside the graph "
                             f"and --default-rule cannot undo it; pass --threshold 0.5, or predict with the run folder")
        op = scorer.op
        if not op.certified and op.method in ("ltt", "crc") and not allow_uncertified:
            raise ValueError(f"{path} was exported with an uncertified operating point; pass --allow-uncertified "
                             f"to use it anyway")
        if threshold is not None:
            op = op.with_threshold(threshold)
        if rule != op.rule:
            from dataclasses import replace
            op = replace(op, rule=rule)
        scorer.op = op
        return scorer
    from .predict import RunModel  # PyTorch from here on

    return RunModel(path, calibrated, threshold, rule, allow_uncertified, allow_unfinished, threads)


def decision_rows(probs: np.ndarray, taxonomy: Taxonomy, op: OperatingPoint, strata: Sequence[str] | None = None,
                  names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per image: decision (refer / clear), class, superclass, p(malignant), threshold, probabilities.

    ``strata``: each image's group of a per-group operating point (its own threshold; unseen: the fallback)."""
    threshold = op.thresholds(strata)
    labels = op.decide(probs, taxonomy, strata) if len(probs) else np.zeros(0, dtype=int)
    p_mal = malignant_probability(probs, taxonomy) if len(probs) else np.zeros(0)
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(probs),))
    rows = []
    for k, (lab, pm, pr, threshold) in enumerate(zip(labels, p_mal, probs, thresholds)):
        malignant = bool(taxonomy.superclass[lab])
        rows.append({**({"image": str(names[k])} if names is not None else {}),
                     "decision": "refer" if malignant else "clear", "predicted": taxonomy.classes[lab],
                     "superclass": "malignant" if malignant else "benign", "p_malignant": float(pm),
                     "threshold": float(threshold), **{f"p_{c}": float(v) for c, v in zip(taxonomy.classes, pr)}})
    return rows


def csv_columns(taxonomy: Taxonomy, op: OperatingPoint | None = None) -> list[str]:
    """The prediction CSV's columns: :data:`CSV_HEAD`, one probability per class, then ``error`` (segmentation:
    :data:`riskcl.deploy.segmentation.SEGMENTATION_COLUMNS`, then ``error``)."""
    if op is not None and op.segmentation:
        from .segmentation import SEGMENTATION_COLUMNS

        return [*SEGMENTATION_COLUMNS, ERROR_COLUMN]
    return [*CSV_HEAD, *(f"p_{c}" for c in taxonomy.classes), ERROR_COLUMN]


def unreadable_row(image: str, reason: str, taxonomy: Taxonomy, op: OperatingPoint | None = None) -> dict[str, Any]:
    return {**{c: "" for c in csv_columns(taxonomy, op)}, "image": image, "decision": UNREADABLE,
            ERROR_COLUMN: reason}


def _is_prediction_csv(path: Path) -> bool:
    from .segmentation import SEGMENTATION_COLUMNS

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
    buf = io.StringIO()
    if rows or (columns and header):
        w = csv.DictWriter(buf, fieldnames=list(columns or rows[0]), lineterminator="\n", extrasaction="ignore")
        if header:
            w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def read_image_csv(path: str | os.PathLike, columns: Sequence[str], required: Sequence[str] = ()
                   ) -> dict[str, dict[str, str]]:
    """``{image: {column: value}}`` from a CSV with an ``image`` column (paths or file names; each row is found by
    either) and any of ``columns`` (``required`` ones must be there). An image given two different rows is refused
    naming the line."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            header, records = list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: cannot read it as a CSV ({exc})") from None
    if "image" not in header or any(c not in header for c in required):
        wanted = (f"columns 'image' and {list(required)}" if required
                  else f"a column 'image' and some of {list(columns)}")
        raise ValueError(f"{path}: expected {wanted}, but got {header}")
    table: dict[str, dict[str, str]] = {}
    for k, record in enumerate(records):
        image, row = record["image"], {c: record[c] for c in columns if c in record}
        for key in {str(image), Path(image).name}:
            if key in table and table[key] != row:
                raise ValueError(f"{path}: line {k + 2} gives {image} {row}, an earlier line {table[key]}; keep one "
                                 f"row per image")
            table[key] = row
    return table


def _row_of(table: Mapping[str, dict[str, str]], image: str | os.PathLike) -> dict[str, str] | None:
    return table.get(str(image), table.get(Path(image).name))


def metadata_rows(images: Sequence[str | os.PathLike], metadata: str | os.PathLike | None,
                  columns: Sequence[str]) -> list[dict[str, str]]:
    """Each image's ``{column: value}`` for a fusion model, from a CSV with an ``image`` column and any of
    ``columns`` (:func:`read_image_csv`); an image without a row, or a column the CSV lacks, counts as missing (the
    model then decides from what it has). None: every image's metadata missing."""
    if metadata is None:
        return [{} for _ in images]
    table = read_image_csv(metadata, columns)
    return [_row_of(table, img) or {} for img in images]


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
        row = _row_of(table, img)
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


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Image paths from files, folders (every image file below, sorted) and globs (``"scans/*.png"``, quoted so
    the shell leaves it, ``**`` included). A file that does not exist is kept (its row says so); a folder without
    images or a glob that matches nothing is an error naming it."""
    out: list[str] = []
    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).rglob("*")
                           if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise FileNotFoundError(f"{item}: a folder with no image files ({', '.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        elif not os.path.exists(item) and glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"{item}: the pattern matches no file")
            out.extend(found)
        else:
            out.append(item)
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]  # one row per image, first occurrence kept


class PredictionCSV:
    """A prediction CSV written a batch at a time (each batch flushed and synced: a killed run loses at most the
    batch it was writing, and a torn last line is dropped on the next open). Opening an existing prediction CSV
    resumes it: its scored images are skipped, its unreadable ones retried; a CSV with other columns or scored at
    another operating point is refused (``force`` starts it over)."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], op: OperatingPoint,
                 force: bool = False) -> None:
        self.path, self.columns = check_prediction_target(path, force), list(columns)
        self.done: set[str] = set()
        if self.path.exists() and not force:
            self._resume(op)
        else:
            atomic_write_text(self.path, rows_csv([], self.columns))

    def _resume(self, op: OperatingPoint) -> None:
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            text = text[:text.rfind("\n") + 1]  # a line torn by a kill: scored again
        records = list(csv.DictReader(io.StringIO(text)))
        head = text.split("\n", 1)[0].split(",")
        if head != self.columns:
            raise ValueError(f"{self.path}: a prediction CSV with columns {head}, but this model writes "
                             f"{self.columns}; name another --out, or pass --force to start it over")
        known = {round(float(t), 9) for t in [op.threshold, *(op.thresholds(list(op.groups)) if op.per_group
                                                                else []), op.fallback or op.threshold]}
        scored = [r for r in records if r["decision"] != UNREADABLE]
        other = sorted({r["threshold"] for r in scored if round(float(r["threshold"]), 9) not in known})
        if other:
            raise ValueError(f"{self.path}: its rows were decided at threshold(s) {other[:3]}, but the operating point "
                             f"now is {op.describe()}; name another --out, or pass --force to score everything again")
        self.done = {r["image"] for r in scored}
        if len(scored) != len(records) or len(text) != self.path.stat().st_size:
            atomic_write_text(self.path, rows_csv(scored, self.columns))  # unreadable rows are retried

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


@dataclass
class StreamSummary:
    images: int = 0
    skipped: int = 0
    scored: int = 0
    referred: int = 0
    unreadable: list[str] = field(default_factory=list)


def _decode_or_reason(path: str) -> np.ndarray | str:
    try:
        return decode_rgb(path)
    except BadImageError as exc:
        return exc.reason


def _decoded_batches(paths: Sequence[str], batch_size: int, workers: int) -> Iterator[tuple[list[str], list]]:
    """``(paths, decoded or reason)`` per batch, the next batch decoding in threads while the caller scores."""
    batches = [list(paths[i:i + batch_size]) for i in range(0, len(paths), batch_size)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = [[pool.submit(_decode_or_reason, p) for p in batches[0]]]
        for k, batch in enumerate(batches):
            if k + 1 < len(batches):
                pending.append([pool.submit(_decode_or_reason, p) for p in batches[k + 1]])
            yield batch, [f.result() for f in pending.pop(0)]


def stream_predictions(scorer: Scorer, paths: Sequence[str], sink, strata: Sequence[str] | None = None,
                       batch_size: int = 64, progress: bool = False, decode_workers: int = 2,
                       collect: list | None = None, mask_dir: str | os.PathLike | None = None,
                       metadata: Sequence[dict] | None = None) -> StreamSummary:
    """Score ``paths`` a batch at a time into ``sink`` (:class:`PredictionCSV` or :class:`StdoutCSV`), skipping
    the images ``sink.done`` holds; ``collect`` (a list) also receives every row written. A segmentation model's
    masks and outline overlays go to ``mask_dir`` (:mod:`riskcl.deploy.segmentation`)."""
    from .segmentation import segmentation_rows

    from tqdm.auto import tqdm

    group = dict(zip(paths, strata)) if strata is not None else None
    row_of = dict(zip(paths, metadata)) if metadata is not None else None
    todo = [p for p in paths if p not in sink.done]
    summary = StreamSummary(images=len(paths), skipped=len(paths) - len(todo))
    bar = tqdm(total=len(todo), desc="predicting", unit="img", disable=not progress, mininterval=1.0)
    try:
        for batch, decoded in _decoded_batches(todo, batch_size, decode_workers):
            good = [k for k, d in enumerate(decoded) if not isinstance(d, str)]
            if not good:
                probs = np.zeros((0, 0))
            elif row_of is not None:  # a fusion model reads each image's metadata
                probs = scorer.probabilities([decoded[k] for k in good], [row_of[batch[k]] for k in good])
            else:
                probs = scorer.probabilities([decoded[k] for k in good])
            if not good:
                scored = []
            elif scorer.op.segmentation:
                scored = segmentation_rows(probs, scorer.op, [batch[k] for k in good], [decoded[k] for k in good],
                                           mask_dir)
            else:
                scored = decision_rows(probs, scorer.taxonomy, scorer.op,
                                       [group[batch[k]] for k in good] if group is not None else None,
                                       names=[batch[k] for k in good])
            rows, it = [], iter(scored)
            for k, d in enumerate(decoded):
                rows.append(unreadable_row(batch[k], d, scorer.taxonomy, scorer.op) if isinstance(d, str)
                            else {**next(it), ERROR_COLUMN: ""})
            sink.write(rows)
            if collect is not None:
                collect.extend(rows)
            summary.scored += len(scored)
            summary.referred += sum(r["decision"] == "refer" for r in scored)
            summary.unreadable += [batch[k] for k, d in enumerate(decoded) if isinstance(d, str)]
            bar.update(len(batch))
    finally:
        bar.close()
    return summary


class PredictResult(NamedTuple):
    rows: list[dict[str, Any]]  # every row written (empty when ``collect=False``)
    op: OperatingPoint
    summary: StreamSummary


def predict_files(model_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                  out_csv: str | os.PathLike | None = None, calibrated: bool | None = None,
                  threshold: float | None = None, rule: str = "superclass", allow_unfinished: bool | None = False,
                  metadata: str | os.PathLike | None = None, batch_size: int = 64, allow_uncertified: bool = False,
                  force: bool = False, progress: bool = False, threads: int | None = None,
                  collect: bool = True, mask_dir: str | os.PathLike | None = None) -> PredictResult:
    """Score image files, folders and globs with a run folder or an export folder at its operating point.

    ``out_csv``: a CSV written incrementally and resumed by a rerun (see :class:`PredictionCSV`); ``"-"``: the
    CSV to standard output; None: no CSV (the rows are returned). ``calibrated``: None uses ``calibration.json``
    when it exists, True requires it, False ignores it (the 0.5 default rule); ``threshold``: a manual threshold.
    ``collect=False`` keeps no rows in memory (for archives). A segmentation model writes each image's mask and
    outline overlay to ``mask_dir`` (default: beside ``out_csv``, ``<csv name>_masks/``; none without either)."""
    from .._checks import check_int

    check_int("batch_size", batch_size, minimum=1)
    if out_csv is not None and out_csv != "-":
        check_prediction_target(out_csv, force)  # fail before any work
    paths = expand_inputs(inputs)
    scorer = open_scorer(model_dir, calibrated, threshold, rule, allow_uncertified, allow_unfinished, threads)
    strata = image_groups(scorer.op, paths, metadata) if scorer.op.per_group else None
    encoding = getattr(scorer, "encoding", None)
    rows_in = metadata_rows(paths, metadata, encoding.column_names) if encoding is not None else None
    columns = csv_columns(scorer.taxonomy, scorer.op)
    if scorer.op.segmentation and mask_dir is None and out_csv not in (None, "-"):
        mask_dir = Path(out_csv).with_name(Path(out_csv).stem + "_masks")
    if out_csv is None:
        sink: Any = _Discard()
    elif out_csv == "-":
        sink = StdoutCSV(columns)
    else:
        sink = PredictionCSV(out_csv, columns, scorer.op, force)
    rows: list[dict[str, Any]] = []
    summary = stream_predictions(scorer, paths, sink, strata, batch_size, progress,
                                 collect=rows if collect else None, mask_dir=mask_dir, metadata=rows_in)
    return PredictResult(rows, scorer.op, summary)


class _Discard:
    done: set[str] = set()

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        pass
