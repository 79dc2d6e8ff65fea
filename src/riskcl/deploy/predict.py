"""Predicting image files with a finished run: the decision at the run's operating point, and every probability.

The operating point (:class:`riskcl.decision.OperatingPoint`, read by
:func:`riskcl.experiment.calibrate.operating_point`) is the run's calibrated one when ``calibration.json`` exists,
else the 0.5 default rule; a manual ``threshold`` or ``default_rule`` overrides it. Probabilities are computed
exactly as the point was certified on: the run's resize, its test-time augmentation and the calibration's
temperature. The decision is the superclass-first rule (:func:`riskcl.decision.decide`): *refer* (malignant) when
p(malignant) >= the threshold, then the most probable fine class within the decided superclass; ``rule="argmax"``
gives the paper's fine-class argmax instead.
"""
from __future__ import annotations

import csv
import io
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data import decode_rgb
from ..data.augment import to_model_input
from ..data.images import resize_uint8
from ..decision import OperatingPoint
from ..engine.loop import tta_logits
from ..experiment.calibrate import operating_point
from ..experiment.folder import RunFolder
from ..io import atomic_write_text, check_writable_target, read_csv
from ..metrics import malignant_probability
from ..taxonomy import Taxonomy

CSV_HEAD = ("image", "decision", "predicted", "superclass", "p_malignant", "threshold")


def missed_malignant(p_mal: np.ndarray, target: np.ndarray, taxonomy: Taxonomy,
                     threshold: float | np.ndarray) -> np.ndarray:
    """Indices of the Type II errors at ``threshold`` (one, or one per case): malignant cases with p(malignant)
    below it, lowest p(malignant) first."""
    missed = np.flatnonzero((taxonomy.superclass[target] == 1) & (p_mal < threshold))
    return missed[np.argsort(p_mal[missed], kind="stable")]


def image_logits(model: torch.nn.Module, images: Sequence[np.ndarray], image_size: int, tta: str = "none",
                 batch_size: int = 64) -> np.ndarray:
    """``(N, K)`` logits of ``uint8`` ``(H, W, 3)`` images: resized as the cache resizes them
    (:func:`riskcl.data.images.resize_uint8`), normalised, the run's test-time augmentation
    (:func:`riskcl.engine.loop.tta_logits`), one forward pass per batch."""
    model.eval()
    logits = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = np.stack([resize_uint8(im, image_size) for im in images[i:i + batch_size]])
            logits.append(tta_logits(model, to_model_input(torch.from_numpy(batch)), tta).numpy())
    return np.concatenate(logits) if logits else np.zeros((0, model.num_classes), dtype=np.float32)


def predict_arrays(model: torch.nn.Module, images: Sequence[np.ndarray], op: OperatingPoint,
                   batch_size: int = 64) -> np.ndarray:
    """``(N, K)`` class probabilities of decoded images at the operating point (its size, TTA and temperature)."""
    return op.probabilities(image_logits(model, images, op.image_size, op.tta, batch_size))


def predict_probabilities(model: torch.nn.Module, images: Sequence[str | Path], op: OperatingPoint,
                          batch_size: int = 64) -> np.ndarray:
    """``(N, K)`` class probabilities of image files (decoded and resized as the cache does)."""
    probs = [predict_arrays(model, [decode_rgb(p) for p in images[i:i + batch_size]], op, batch_size)
             for i in range(0, len(images), batch_size)]
    return np.concatenate(probs) if probs else np.zeros((0, model.num_classes))


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


def _is_prediction_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            return tuple(fh.readline().strip().split(",")[:len(CSV_HEAD)]) == CSV_HEAD
    except (OSError, UnicodeDecodeError):
        return False


def check_prediction_target(out_csv: str | Path, force: bool = False) -> Path:
    """``out_csv`` may be written: a new file, or a previous riskcl prediction CSV; anything else only with
    ``force`` (an input image or a run's metrics.json is never overwritten by mistake)."""
    path = check_writable_target(out_csv)
    if path.exists() and not force and not _is_prediction_csv(path):
        raise FileExistsError(f"{path} exists and is not a riskcl prediction CSV; refusing to overwrite it (pass "
                              f"--force to overwrite, or name another --out)")
    return path


def rows_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def write_rows_csv(rows: list[dict[str, Any]], out_csv: str | Path | None, force: bool = False) -> None:
    """The rows as CSV into ``out_csv`` (atomically, see :func:`check_prediction_target`), or to stdout."""
    if out_csv is None:
        sys.stdout.write(rows_csv(rows))
        return
    atomic_write_text(check_prediction_target(out_csv, force), rows_csv(rows))


def image_groups(op: OperatingPoint, images: Sequence[str | Path], metadata: str | Path | None) -> list[str]:
    """Each image's value of the point's ``by`` column from a metadata CSV (``image`` + the group column). A CSV
    that gives one image two different groups is refused; a group the calibration never saw gets the fallback
    threshold, with a warning naming it and the groups it knows."""
    by = op.by
    if metadata is None:
        raise ValueError(f"calibration.json holds one threshold per '{by}' group: predict needs each image's group "
                         f"(--metadata CSV with columns image,{by}), or --threshold / --default-rule")
    df = read_csv(metadata)
    if "image" not in df.columns or by not in df.columns:
        raise ValueError(f"{metadata}: expected columns 'image' and '{by}', but got {list(df.columns)}")
    group_of: dict[str, str] = {}
    for k, (image, value) in enumerate(zip(df["image"], df[by])):
        for key in {str(image), Path(image).name}:
            if key in group_of and group_of[key] != value:
                raise ValueError(f"{metadata}: line {k + 2} gives {image} the '{by}' {value!r}, an earlier line "
                                 f"{group_of[key]!r}; keep one row per image")
            group_of[key] = value
    out = []
    for img in images:
        g = group_of.get(str(img), group_of.get(Path(img).name))
        if g is None:
            raise ValueError(f"{metadata}: no row for image {img} (column 'image' holds paths or file names)")
        out.append(str(g))
    unseen = sorted(set(out) - set(op.groups or {}))
    if unseen:
        fallback = op.threshold if op.fallback is None else op.fallback
        warnings.warn(f"{metadata}: '{by}' value(s) {unseen} were not seen at calibration (it knows "
                      f"{sorted(op.groups or {})}; values are compared exactly, case included): those images get "
                      f"the fallback threshold {fallback:.4f}, with no per-group guarantee",
                      UserWarning, stacklevel=2)
    return out


def predict_files(run_dir: str | Path, images: Sequence[str | Path], out_csv: str | Path | None = None,
                  calibrated: bool | None = None, threshold: float | None = None, rule: str = "superclass",
                  allow_unfinished: bool = False, metadata: str | Path | None = None, batch_size: int = 64,
                  allow_uncertified: bool = False,
                  force: bool = False) -> tuple[list[dict[str, Any]], OperatingPoint]:
    """``(rows, operating point)``: one row per image (see :func:`decision_rows`) at the run's operating point,
    written to ``out_csv`` when given. ``calibrated``: None uses ``calibration.json`` when it exists, True requires
    it, False ignores it (the 0.5 default rule); ``threshold``: a manual threshold instead."""
    folder = RunFolder(run_dir)
    if out_csv is not None:
        check_prediction_target(out_csv, force)  # fail before any work
    folder.require_finished(allow_unfinished)
    op = operating_point(folder, calibrated, threshold, rule, allow_uncertified)
    strata = image_groups(op, images, metadata) if op.per_group else None
    taxonomy = folder.taxonomy()
    probs = predict_probabilities(folder.load_model(), images, op, batch_size)
    rows = decision_rows(probs, taxonomy, op, strata, names=images)
    if out_csv is not None:
        write_rows_csv(rows, out_csv, force)
    return rows, op
