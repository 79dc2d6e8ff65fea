"""Predicting image files with a finished run: the decision at the run's operating point, and every probability.

The decision is the superclass-first rule (:func:`riskcl.decision.decide`): *refer* (malignant) when
p(malignant) >= the threshold, then the most probable fine class within the decided superclass. The threshold is
0.5, or the calibrated one (``calibration.json``) with ``calibrated=True``; ``rule="argmax"`` gives the paper's
fine-class argmax instead.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data import decode_rgb
from ..data.augment import to_model_input
from ..data.images import resize_uint8
from ..decision import decide, softmax, thresholds_per_sample
from ..experiment.calibrate import operating_point
from ..experiment.folder import RunFolder
from ..io import atomic_write_text, check_writable_target, read_csv
from ..metrics import malignant_probability
from ..taxonomy import Taxonomy


def group_thresholds(op: dict[str, Any], strata: Sequence[str]) -> np.ndarray:
    """Per-sample thresholds of a per-group operating point (unseen groups get its fallback)."""
    return thresholds_per_sample(op["groups"], op.get("unseen_group_threshold", op["threshold"]), strata)


def missed_malignant(p_mal: np.ndarray, target: np.ndarray, taxonomy: Taxonomy,
                     threshold: float | np.ndarray) -> np.ndarray:
    """Indices of the Type II errors at ``threshold`` (one, or one per case): malignant cases with p(malignant)
    below it, lowest p(malignant) first."""
    missed = np.flatnonzero((taxonomy.superclass[target] == 1) & (p_mal < threshold))
    return missed[np.argsort(p_mal[missed], kind="stable")]


def predict_arrays(model: torch.nn.Module, images: Sequence[np.ndarray], image_size: int,
                   batch_size: int = 64) -> np.ndarray:
    """``(N, K)`` class probabilities of ``uint8`` ``(H, W, 3)`` images: resized as the cache resizes them
    (:func:`riskcl.data.images.resize_uint8`), normalised, one forward pass per batch."""
    logits = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = np.stack([resize_uint8(im, image_size) for im in images[i:i + batch_size]])
            logits.append(model(to_model_input(torch.from_numpy(batch))).float().numpy())
    return softmax(np.concatenate(logits)) if logits else np.zeros((0, model.num_classes))


def predict_probabilities(model: torch.nn.Module, images: Sequence[str | Path], image_size: int,
                          batch_size: int = 64) -> np.ndarray:
    """``(N, K)`` class probabilities of image files (decoded and resized as the cache does)."""
    probs = [predict_arrays(model, [decode_rgb(p) for p in images[i:i + batch_size]], image_size, batch_size)
             for i in range(0, len(images), batch_size)]
    return np.concatenate(probs) if probs else np.zeros((0, model.num_classes))


def decision_rows(probs: np.ndarray, taxonomy: Taxonomy, threshold: float | np.ndarray, rule: str = "superclass",
                  names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per image: decision (refer / clear), class, superclass, p(malignant), threshold, probabilities.

    ``threshold``: one for all images, or one per image (a per-group calibration)."""
    labels = decide(probs, taxonomy, rule, threshold) if len(probs) else np.zeros(0, dtype=int)
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


def write_rows_csv(rows: list[dict[str, Any]], out_csv: str | Path) -> None:
    check_writable_target(out_csv)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(out_csv, buf.getvalue())


def image_thresholds(op: dict[str, Any], images: Sequence[str | Path], metadata: str | Path | None) -> np.ndarray:
    """Per-image thresholds of a per-group calibration, from a metadata CSV (``image`` + the group column)."""
    by = op["by"]
    if metadata is None:
        raise ValueError(f"calibration.json holds one threshold per '{by}' group: predict --calibrated needs each "
                         f"image's group (--metadata CSV with columns image,{by})")
    df = read_csv(metadata)
    if "image" not in df.columns or by not in df.columns:
        raise ValueError(f"{metadata}: expected columns 'image' and '{by}', but got {list(df.columns)}")
    group_of = {**dict(zip(df["image"], df[by])), **{Path(i).name: g for i, g in zip(df["image"], df[by])}}
    out = []
    for img in images:
        g = group_of.get(str(img), group_of.get(Path(img).name))
        if g is None:
            raise ValueError(f"{metadata}: no row for image {img} (column 'image' holds paths or file names)")
        out.append(g)
    return group_thresholds(op, out)


def predict_files(run_dir: str | Path, images: Sequence[str | Path], out_csv: str | Path | None = None,
                  calibrated: bool = False, rule: str = "superclass", allow_unfinished: bool = False,
                  metadata: str | Path | None = None, batch_size: int = 64) -> list[dict[str, Any]]:
    """One row per image (see :func:`decision_rows`), optionally written to ``out_csv``."""
    folder = RunFolder(run_dir)
    if out_csv is not None:
        check_writable_target(out_csv)  # fail before any work
    folder.require_finished(allow_unfinished)
    op = operating_point(folder, calibrated)
    thresholds = image_thresholds(op, images, metadata) if op.get("groups") else float(op["threshold"])
    cfg, taxonomy = folder.read_config(), folder.taxonomy()
    model = folder.load_model()
    probs = predict_probabilities(model, images, cfg.data.image_size, batch_size)
    rows = decision_rows(probs, taxonomy, thresholds, rule, names=images)
    if out_csv is not None:
        write_rows_csv(rows, out_csv)
    return rows
