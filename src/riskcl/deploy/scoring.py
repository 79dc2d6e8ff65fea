"""Scoring images with a deployed model, a run folder or an export folder, and the decision rows riskcl writes.

This module loads no PyTorch: an export folder (``riskcl_export.json`` + ``model.onnx``) is scored with ONNX
Runtime alone, so ``riskcl predict EXPORT_DIR`` and ``riskcl serve EXPORT_DIR`` run from the ``serve`` install
(numpy, Pillow, onnxruntime, FastAPI, uvicorn); a run folder is scored by :class:`riskcl.deploy.predict.RunModel`,
imported only when a run folder is given. Both offer the same face (:class:`Scorer`): the operating point, the
taxonomy, the model's identity (SHA-256) and ``probabilities(images)`` of decoded ``uint8`` images, so every
command decides from one function (:func:`decision_rows`), which is also the one gate that refuses to decide a
non-finite probability (the row says ``error``).

An export folder is verified before it is scored (:func:`verify_export`): every file has the SHA-256 recorded at
export, the model is a plain file inside the folder, and ``riskcl_export.json`` says what the graph's own embedded
metadata say (operating point, classes, metadata encoding); an edited, swapped or damaged export is refused.

Batch prediction streams (:func:`stream_predictions`): files are expanded from folders and globs, decoded in a
small thread pool ahead of the model, scored a batch at a time and written to the CSV in input order as they come
(each batch flushed and synced), so memory stays bounded whatever the number of images. ``riskcl predict`` on an
export scores one batch per usable core at once, each in a single-threaded ONNX Runtime call: the decoding of a
batch then shares its core with that batch's model call, not with a model that already fills every core (the same
probabilities; the figures are in benchmarks/RESULTS.md). A file that cannot be read gets a row with the
decision ``unreadable`` and the reason, a row that cannot be decided (metadata the model cannot read, a non-finite
probability) the decision ``error``, and the rest goes on. A rerun with the same ``--out`` skips the images
already scored (:class:`riskcl.deploy.prediction_csv.PredictionCSV`).
"""
from __future__ import annotations

import glob
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Protocol, Sequence

import numpy as np

from ..data.decoding import IMAGE_EXTENSIONS, BadImageError, decode_bytes, decode_rgb, is_image_file
from ..data.encode_metadata import MetadataValueError
from ..decision import OperatingPoint
from ..io import IntegrityError, verify_sha256
from ..metrics.functional import malignant_probability
from ..taxonomy import Taxonomy
from .prediction_csv import (CSV_HEAD, ERROR, ERROR_COLUMN, NONFINITE, UNREADABLE, PredictionCSV,  # noqa: F401
                             StdoutCSV, check_prediction_target, csv_columns, failed_row, image_groups, metadata_rows,
                             unreadable_row)

METADATA_FILE = "riskcl_export.json"  # an export folder is recognised by this file
MODEL_FILES = ("model.onnx", "model.pt")  # what an export's model file may be called
EMBEDDED_KEY = "riskcl"  # the ONNX graph's metadata_props entry holding what riskcl_export.json holds
EMBEDDED_FIELDS = ("operating_point", "classes", "levels", "metadata_input", "weights_sha256", "task", "outputs")
REEXPORT = "re-export the run (riskcl export RUN --out DIR)"


class Scorer(Protocol):
    """What predict and serve need of a model: its operating point, taxonomy, identity and class probabilities."""

    op: OperatingPoint
    taxonomy: Taxonomy
    kind: str  # "run" or "export"
    identity: str  # the SHA-256 of the weights (a run) or of the exported graph

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


def is_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an export folder; a folder with an exported model but no ``riskcl_export.json`` is
    refused here, named as an incomplete export (not as "not a run folder")."""
    if (Path(path) / METADATA_FILE).is_file():
        return True
    if any((Path(path) / name).is_file() for name in MODEL_FILES):
        raise FileNotFoundError(f"{path} holds an exported model but no {METADATA_FILE}: an incomplete export "
                                f"folder; {REEXPORT}")
    return False


def read_export_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """``riskcl_export.json``, its fields checked (errors name the file and the field)."""
    path = Path(folder) / METADATA_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the export's metadata ({exc}); {REEXPORT}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object; {REEXPORT}")
    missing = [k for k in ("format", "file", "files_sha256", "operating_point", "classes", "levels", "outputs", "run")
               if k not in meta]
    if missing:
        raise ValueError(f"{path}: no {missing} (not a complete riskcl export); {REEXPORT}")
    try:
        OperatingPoint.from_dict(meta["operating_point"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: `operating_point` is not valid ({exc}); {REEXPORT}") from None
    return meta


def _plain_name(folder: Path, name: Any, field_name: str) -> Path:
    """``folder / name`` for a plain file name (no folder part, no ``..``): an export never reaches outside itself."""
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise IntegrityError(f"{folder / METADATA_FILE}: `{field_name}` = {name!r} is not a plain file name inside "
                             f"the export folder; {REEXPORT}")
    return folder / name


def verify_files(folder: Path, meta: dict[str, Any]) -> str:
    """Check every file the export recorded against its SHA-256 (the model first); returns the model's digest."""
    model = _plain_name(folder, meta["file"], "file")
    if model.name not in MODEL_FILES:
        raise IntegrityError(f"{folder / METADATA_FILE}: `file` = {meta['file']!r}: expected one of {MODEL_FILES}")
    recorded = meta["files_sha256"]
    if not isinstance(recorded, dict) or model.name not in recorded:
        raise IntegrityError(f"{folder / METADATA_FILE}: `files_sha256` does not record {model.name}; {REEXPORT}")
    identity = verify_sha256(model, recorded[model.name], "the exported model", REEXPORT)
    for name, digest in recorded.items():
        if name != model.name:
            verify_sha256(_plain_name(folder, name, "files_sha256"), digest, "a file of the export", REEXPORT)
    return identity


def check_embedded(model: Path, meta: dict[str, Any], embedded: str | None) -> None:
    """``riskcl_export.json`` must say what the graph's own embedded metadata say (the operating point above all:
    an edited threshold would change decisions while the output still claimed the certified one)."""
    if embedded is None:
        raise IntegrityError(f"{model}: the graph carries no riskcl metadata (not exported by riskcl, or stripped); "
                             f"{REEXPORT}")
    try:
        inside = json.loads(embedded)
    except ValueError:
        raise IntegrityError(f"{model}: the graph's riskcl metadata are not readable JSON; {REEXPORT}") from None
    for key in EMBEDDED_FIELDS:
        if json.dumps(inside.get(key), sort_keys=True) != json.dumps(meta.get(key), sort_keys=True):
            detail = ""
            if key == "operating_point":
                a, b = (inside.get(key) or {}).get("threshold"), (meta.get(key) or {}).get("threshold")
                detail = f" (threshold {b} in the JSON, {a} in the graph)" if a != b else ""
            raise IntegrityError(f"{model.parent / METADATA_FILE}: `{key}` differs from the one embedded in "
                                 f"{model.name}{detail}: the export was edited; {REEXPORT}")


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
    threads at once: :func:`stream_predictions` calls it from ``batch_workers`` threads (1 unless
    :func:`open_scorer` was asked for ``batch_parallel`` scoring).
    """

    kind = "export"
    batch_workers = 1  # batches scored at once by stream_predictions

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
        self.identity = verify_files(self.folder, self.meta)
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        if inter_op_threads:
            options.inter_op_num_threads = int(inter_op_threads)
        model = self.folder / self.meta["file"]
        try:
            self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime's own errors (a truncated or foreign file)
            raise ValueError(f"{model}: ONNX Runtime cannot load it ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); {REEXPORT}") from None
        check_embedded(model, self.meta, self.session.get_modelmeta().custom_metadata_map.get(EMBEDDED_KEY))
        self.runtime = f"onnxruntime {ort.__version__}"
        self.taxonomy = Taxonomy(str(self.meta["run"].get("dataset") or "export"), tuple(self.meta["classes"]),
                                 tuple(int(v) for v in self.meta["levels"]))
        self.op = OperatingPoint.from_dict(self.meta["operating_point"])
        self.outputs = [o["name"] for o in self.meta["outputs"]]
        self.batch_size = 32
        from ..data.dicom import DicomPolicy

        self.dicom = DicomPolicy.from_config((self.meta.get("input") or {}).get("dicom"))  # as the run read DICOM
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
                threads: int | None = None, batch_parallel: bool = False) -> Scorer:
    """A run folder (PyTorch) or an export folder (ONNX Runtime) ready to score, at its operating point.

    On an export the operating point is the one exported (its temperature and TTA are inside the graph):
    ``threshold`` or ``rule="argmax"`` may still override the decision, ``calibrated=False`` cannot undo it.
    ``threads``: the model's threads (None: the runtime's default); with ``batch_parallel`` (batch prediction)
    an export instead scores ``threads`` (None: the usable cores) batches at once, one thread each."""
    if is_export(path):
        if batch_parallel:
            from ..machine import usable_cores

            scorer = ExportedModel(path, intra_op_threads=1)
            scorer.batch_workers = max(1, int(threads or usable_cores()))
        else:
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
                  names: Sequence[str] | None = None, patterns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per image: decision (refer / clear), class, superclass, p(malignant), threshold, probabilities.

    ``strata``: each image's group of a per-group operating point (its own threshold; unseen: the fallback).
    ``patterns``: each request's metadata pattern for a model with metadata inputs (complete / none / partial): it
    is decided at the point certified for what it carries (:meth:`OperatingPoint.for_inputs`), and its row says
    which and whether it is certified. A row whose probabilities are not all finite is never decided: its
    decision is ``error`` and its ``error`` column says why."""
    n = len(probs)
    probs = np.asarray(probs, dtype=np.float64).reshape(n, -1) if n else np.zeros((0, len(taxonomy.classes)))
    finite = np.isfinite(probs).all(axis=1)
    pats = list(patterns) if patterns is not None else [None] * n
    rows: list[dict[str, Any]] = [{}] * n
    for pattern in dict.fromkeys(pats):
        idx = [k for k in range(n) if pats[k] == pattern and finite[k]]
        if not idx:
            continue
        point = op if pattern is None else op.for_inputs(pattern)
        sub = None if strata is None else [strata[k] for k in idx]
        labels = point.decide(probs[idx], taxonomy, sub)
        p_mal = malignant_probability(probs[idx], taxonomy)
        thresholds = np.broadcast_to(np.asarray(point.thresholds(sub), dtype=np.float64), (len(idx),))
        inputs = {} if pattern is None else {"inputs": pattern, "certified": "yes" if point.certified else "no"}
        for j, k in enumerate(idx):
            malignant = bool(taxonomy.superclass[labels[j]])
            rows[k] = {**({"image": str(names[k])} if names is not None else {}),
                       "decision": "refer" if malignant else "clear", "predicted": taxonomy.classes[labels[j]],
                       "superclass": "malignant" if malignant else "benign", "p_malignant": float(p_mal[j]),
                       "threshold": float(thresholds[j]), **inputs,
                       **{f"p_{c}": float(v) for c, v in zip(taxonomy.classes, probs[k])}, ERROR_COLUMN: ""}
    for k in np.flatnonzero(~finite):
        rows[k] = failed_row(str(names[k]) if names is not None else "", ERROR, NONFINITE, taxonomy, op)
        if names is None:
            rows[k].pop("image")
    return rows


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Image paths from files, folders (every image file below, sorted) and globs (``"scans/*.png"``, quoted so
    the shell leaves it, ``**`` included). A file that does not exist is kept (its row says so); a folder without
    images or a glob that matches nothing is an error naming it."""
    out: list[str] = []
    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).rglob("*")
                           if p.is_file() and is_image_file(p))
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


@dataclass
class StreamSummary:
    images: int = 0
    skipped: int = 0
    scored: int = 0
    referred: int = 0
    unreadable: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # rows riskcl refused to decide (decision "error")
    dicom: Any = None  # predict --dicom-out: the ResultsSink (what it wrote, what it could not)


def _decode_or_reason(path: str, hasher=None, dicom=None) -> tuple[np.ndarray | str, str | None]:
    """The decoded image (or why not), and with ``hasher`` (the decision log's keyed hash) that of its bytes."""
    if hasher is None:
        try:
            return decode_rgb(path, dicom), None
        except BadImageError as exc:
            return exc.reason, None
    try:
        data = Path(path).read_bytes()
    except OSError:
        return _decode_or_reason(path, None, dicom)[0], None
    try:
        return decode_bytes(data, path, dicom), hasher(data)
    except BadImageError as exc:
        return exc.reason, None


def _scored_batches(paths: Sequence[str], batch_size: int, decode_workers: int, score_workers: int, score,
                    hasher=None, dicom=None) -> Iterator[tuple[list[str], list, list, Any]]:
    """``(paths, decoded or reason, keyed hashes, score(paths, decoded))`` per batch, in input order.

    One scoring thread (a model that spreads each batch over the cores): the images decode in ``decode_workers``
    threads while it scores the batch before them. Several (one batch per core, each single-threaded): each
    decodes its own batch and scores it, so no more threads run than there are cores (a separate decoding pool
    beside them took turns with the scoring on the same cores, about 4% slower on the ISIC sample). At most
    ``score_workers + 1`` batches are in memory."""
    batches = [list(paths[i:i + batch_size]) for i in range(0, len(paths), batch_size)]
    if not batches:
        return
    score_workers = max(1, score_workers)

    def scored(batch: list[str], decoding: list | None) -> tuple[list[str], list, list, Any]:
        results = ([_decode_or_reason(p, hasher, dicom) for p in batch] if decoding is None
                   else [f.result() for f in decoding])
        decoded = [r[0] for r in results]
        return batch, decoded, [r[1] for r in results], score(batch, decoded)

    with ExitStack() as stack:  # the scorers shut down first: their batches wait on the decoders
        decoders = (stack.enter_context(ThreadPoolExecutor(max_workers=max(1, decode_workers)))
                    if score_workers == 1 else None)  # several scoring threads decode their own batches
        scorers = stack.enter_context(ThreadPoolExecutor(max_workers=score_workers))

        def submit(batch: list[str]):
            return scorers.submit(scored, batch, None if decoders is None else
                                  [decoders.submit(_decode_or_reason, p, hasher, dicom) for p in batch])

        ahead = iter(batches)
        pending = [submit(b) for b in islice(ahead, score_workers + 1)]
        while pending:
            result = pending.pop(0).result()
            following = next(ahead, None)
            if following is not None:
                pending.append(submit(following))
            yield result


def _checked_metadata(scorer: Scorer, rows: Sequence[dict]) -> tuple[list[str | None], list[str | None]]:
    """Each request's metadata pattern (:meth:`riskcl.data.encoding.MetadataEncoding.pattern`), or the reason its
    metadata cannot be read (a value that is not a finite number, or outside the column's accepted range)."""
    encoding = scorer.encoding
    patterns: list[str | None] = []
    reasons: list[str | None] = []
    for row in rows:
        try:
            encoding.encode_row(row)
        except MetadataValueError as exc:
            patterns.append(None)
            reasons.append(str(exc))
            continue
        patterns.append(encoding.pattern(row))
        reasons.append(None)
    return patterns, reasons


def score_rows(scorer: Scorer, images: Sequence[np.ndarray], names: Sequence[str],
               strata: Sequence[str] | None = None, metadata: Sequence[dict] | None = None,
               mask_dir: str | os.PathLike | None = None) -> tuple[list[dict[str, Any]], list[np.ndarray | None]]:
    """The rows of decoded images (and each one's probabilities, None where it was refused): the one path from a
    scorer to decisions that predict and the service share. A model with metadata inputs reads ``metadata`` (one
    ``{column: value}`` per image; missing: none sent); a request whose metadata it cannot read, or whose
    probabilities are not finite, gets an ``error`` row instead of a decision."""
    n = len(images)
    patterns: list[str | None] = [None] * n
    reasons: list[str | None] = [None] * n
    encoding = getattr(scorer, "encoding", None)
    if encoding is not None:
        metadata = list(metadata) if metadata is not None else [{}] * n
        patterns, reasons = _checked_metadata(scorer, metadata)
    ok = [k for k in range(n) if reasons[k] is None]
    probs_out: list[np.ndarray | None] = [None] * n
    rows: list[dict[str, Any]] = [failed_row(str(names[k]), ERROR, str(reasons[k]), scorer.taxonomy, scorer.op)
                                  if reasons[k] is not None else {} for k in range(n)]
    if not ok:
        return rows, probs_out
    if encoding is not None:
        probs = scorer.probabilities([images[k] for k in ok], [metadata[k] for k in ok])
    else:
        probs = scorer.probabilities([images[k] for k in ok])
    if scorer.op.segmentation:
        from .segmentation import segmentation_rows

        scored = segmentation_rows(probs, scorer.op, [names[k] for k in ok], [images[k] for k in ok], mask_dir)
    else:
        scored = decision_rows(probs, scorer.taxonomy, scorer.op, None if strata is None else [strata[k] for k in ok],
                               names=[names[k] for k in ok],
                               patterns=None if encoding is None else [patterns[k] for k in ok])
    for j, k in enumerate(ok):
        rows[k], probs_out[k] = scored[j], probs[j]
    return rows, probs_out


def _record(log, scorer: Scorer, rows: Sequence[dict], images: Sequence[np.ndarray], hashes: Sequence[str | None],
            metadata: Sequence[dict] | None) -> None:
    """Each decided row into the decision log (before the rows are written: no decision without its record)."""
    import getpass

    from .decision_log import decision_fields, new_request_id

    client = f"predict:{getpass.getuser()}"
    for k, row in enumerate(rows):
        if row["decision"] in (ERROR, UNREADABLE):
            continue
        point = scorer.op.for_inputs(row["inputs"]) if row.get("inputs") else scorer.op
        log.record(decision_fields(request_id=new_request_id(), client=client, source="predict",
                                   model_sha256=scorer.identity, point=point, row=row,
                                   metadata=None if metadata is None else metadata[k],
                                   width=images[k].shape[1], height=images[k].shape[0], image_hmac=hashes[k]))


def stream_predictions(scorer: Scorer, paths: Sequence[str], sink, strata: Sequence[str] | None = None,
                       batch_size: int = 64, progress: bool = False, decode_workers: int = 2,
                       collect: list | None = None, mask_dir: str | os.PathLike | None = None,
                       metadata: Sequence[dict] | None = None, log=None) -> StreamSummary:
    """Score ``paths`` a batch at a time into ``sink`` (:class:`PredictionCSV` or :class:`StdoutCSV`), skipping
    the images ``sink.done`` holds; ``collect`` (a list) also receives every row written. A segmentation model's
    masks and outline overlays go to ``mask_dir`` (:mod:`riskcl.deploy.segmentation`). ``log``: a
    :class:`riskcl.deploy.decision_log.DecisionLog` that records each decision before its row is written, in
    input order. ``scorer.batch_workers`` batches are scored at once (see :func:`open_scorer`)."""
    from tqdm.auto import tqdm

    group = dict(zip(paths, strata)) if strata is not None else None
    row_of = dict(zip(paths, metadata)) if metadata is not None else None
    todo = [p for p in paths if p not in sink.done]
    summary = StreamSummary(images=len(paths), skipped=len(paths) - len(todo))
    bar = tqdm(total=len(todo), desc="predicting", unit="img", disable=not progress, mininterval=1.0)

    def score(batch: list[str], decoded: list) -> list[dict[str, Any]]:
        good = [k for k, d in enumerate(decoded) if not isinstance(d, str)]
        return score_rows(scorer, [decoded[k] for k in good], [batch[k] for k in good],
                          [group[batch[k]] for k in good] if group is not None else None,
                          [row_of[batch[k]] for k in good] if row_of is not None else None, mask_dir)[0]

    try:
        for batch, decoded, hashes, scored in _scored_batches(
                todo, batch_size, decode_workers, getattr(scorer, "batch_workers", 1), score,
                None if log is None else log.image_hash, getattr(scorer, "dicom", None)):
            good = [k for k, d in enumerate(decoded) if not isinstance(d, str)]
            if log is not None:
                _record(log, scorer, scored, [decoded[k] for k in good], [hashes[k] for k in good],
                        [row_of[batch[k]] for k in good] if row_of is not None else None)
            rows, it = [], iter(scored)
            for k, d in enumerate(decoded):
                rows.append(unreadable_row(batch[k], d, scorer.taxonomy, scorer.op) if isinstance(d, str)
                            else next(it))
            sink.write(rows)
            if collect is not None:
                collect.extend(rows)
            decided = [r for r in scored if r["decision"] != ERROR]
            summary.scored += len(decided)
            summary.referred += sum(r["decision"] == "refer" for r in decided)
            summary.unreadable += [batch[k] for k, d in enumerate(decoded) if isinstance(d, str)]
            summary.errors += [r["image"] for r in scored if r["decision"] == ERROR]
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
                  collect: bool = True, mask_dir: str | os.PathLike | None = None,
                  log: str | os.PathLike | None = None,
                  dicom_out: str | os.PathLike | None = None) -> PredictResult:
    """Score image files, folders and globs with a run folder or an export folder at its operating point.

    ``out_csv``: a CSV written incrementally and resumed by a rerun (see :class:`PredictionCSV`); ``"-"``: the
    CSV to standard output; None: no CSV (the rows are returned). ``calibrated``: None uses ``calibration.json``
    when it exists, True requires it, False ignores it (the 0.5 default rule); ``threshold``: a manual threshold.
    ``collect=False`` keeps no rows in memory (for archives). A segmentation model writes each image's mask and
    outline overlay to ``mask_dir`` (default: beside ``out_csv``, ``<csv name>_masks/``; none without either).
    ``log``: a decision log file the service's lines are appended to (one per decision). ``dicom_out``: a folder
    for the DICOM results (SR, Segmentation, Secondary Capture) of each decided DICOM input
    (:mod:`riskcl.deploy.dicom_results`)."""
    from .._checks import check_int

    check_int("batch_size", batch_size, minimum=1)
    if out_csv is not None and out_csv != "-":
        check_prediction_target(out_csv, force)  # fail before any work
    paths = expand_inputs(inputs)
    scorer = open_scorer(model_dir, calibrated, threshold, rule, allow_uncertified, allow_unfinished, threads,
                         batch_parallel=True)
    strata = image_groups(scorer.op, paths, metadata) if scorer.op.per_group else None
    encoding = getattr(scorer, "encoding", None)
    rows_in = metadata_rows(paths, metadata, encoding) if encoding is not None else None
    columns = csv_columns(scorer.taxonomy, scorer.op)
    if scorer.op.segmentation and mask_dir is None and out_csv not in (None, "-"):
        mask_dir = Path(out_csv).with_name(Path(out_csv).stem + "_masks")
    if scorer.op.segmentation and mask_dir is None and dicom_out is not None:
        mask_dir = Path(dicom_out) / "masks"  # the Segmentation objects are made from the masks
    if out_csv is None:
        sink: Any = _Discard()
    elif out_csv == "-":
        sink = StdoutCSV(columns)
    else:
        sink = PredictionCSV(out_csv, columns, scorer.op, force, identity=scorer.identity)
    if dicom_out is not None:
        from .dicom_results import DicomResults, ResultsSink, pictures

        sink = ResultsSink(sink, DicomResults.of_scorer(scorer, dicom_out), pictures(scorer, mask_dir))
    rows: list[dict[str, Any]] = []
    from .decision_log import DecisionLog

    summary = stream_predictions(scorer, paths, sink, strata, batch_size, progress,
                                 collect=rows if collect else None, mask_dir=mask_dir, metadata=rows_in,
                                 log=DecisionLog(log) if log is not None else None)
    summary.dicom = sink if dicom_out is not None else None
    return PredictResult(rows, scorer.op, summary)


class _Discard:
    done: set[str] = set()

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        pass
