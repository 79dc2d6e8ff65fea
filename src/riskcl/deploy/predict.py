"""A finished run folder as a scorer (PyTorch): probabilities of decoded images at the run's operating point.

Prediction rows, CSV streaming and export folders live in :mod:`riskcl.deploy.scoring` (no PyTorch).

The operating point (:class:`riskcl.decision.OperatingPoint`, read by
:func:`riskcl.experiment.calibrate.operating_point`) is the run's calibrated one when ``calibration.json`` exists,
else the 0.5 default rule; a manual ``threshold`` or ``default_rule`` overrides it. Probabilities are computed
exactly as the point was certified on: the run's resize, its test-time augmentation and the calibration's
temperature. The decision is the superclass-first rule (:func:`riskcl.decision.decide`): *refer* (malignant) when
p(malignant) >= the threshold, then the most probable fine class within the decided superclass; ``rule="argmax"``
gives the paper's fine-class argmax instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import dicom_policy
from ..data.augment import to_model_input
from ..data.images import resize_uint8
from ..decision import OperatingPoint
from ..engine.loop import tta_logits
from ..experiment.calibrate import operating_point
from ..experiment.folder import RunFolder
from ..taxonomy import Taxonomy


def missed_malignant(p_mal: np.ndarray, target: np.ndarray, taxonomy: Taxonomy,
                     threshold: float | np.ndarray) -> np.ndarray:
    """Indices of the Type II errors at ``threshold`` (one, or one per case): malignant cases with p(malignant)
    below it, lowest p(malignant) first."""
    missed = np.flatnonzero((taxonomy.superclass[target] == 1) & (p_mal < threshold))
    return missed[np.argsort(p_mal[missed], kind="stable")]


def image_logits(model: torch.nn.Module, images: Sequence[np.ndarray], image_size: int, tta: str = "none",
                 batch_size: int = 64, metadata: np.ndarray | None = None) -> np.ndarray:
    """``(N, K)`` logits (segmentation: ``(N, s, s)`` lesion logit maps) of ``uint8`` ``(H, W, 3)`` images:
    resized as the cache resizes them
    (:func:`riskcl.data.images.resize_uint8`), normalised, the run's test-time augmentation
    (:func:`riskcl.engine.loop.tta_logits`), one forward pass per batch. ``metadata``: a fusion model's encoded
    metadata ``(N, D)`` (None: every image's metadata missing)."""
    model.eval()
    if getattr(model, "raw_input", False):  # a model trained elsewhere: its own declared preprocessing
        return model.logits_of(images, batch_size)
    logits = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = np.stack([resize_uint8(im, image_size) for im in images[i:i + batch_size]])
            x = to_model_input(torch.from_numpy(batch))
            if metadata is not None:
                x = (x, torch.from_numpy(np.asarray(metadata[i:i + batch_size], dtype=np.float32)))
            logits.append(tta_logits(model, x, tta).numpy())
    if logits:
        return np.concatenate(logits)
    return np.zeros((0, getattr(model, "num_classes", 1)), dtype=np.float32)


def predict_arrays(model: torch.nn.Module, images: Sequence[np.ndarray], op: OperatingPoint,
                   batch_size: int = 64, metadata: np.ndarray | None = None) -> np.ndarray:
    """``(N, K)`` class probabilities of decoded images at the operating point (its size, TTA and temperature);
    ``metadata``: a fusion model's encoded metadata rows."""
    return op.probabilities(image_logits(model, images, op.image_size, op.tta, batch_size, metadata))


class RunModel:
    """A finished run folder scored by PyTorch at its operating point (see :func:`riskcl.deploy.scoring.open_scorer`,
    which also opens export folders)."""

    kind = "run"

    def __init__(self, run_dir: str | Path, calibrated: bool | None = None, threshold: float | None = None,
                 rule: str = "superclass", allow_uncertified: bool = False, allow_unfinished: bool | None = False,
                 threads: int | None = None) -> None:
        self.folder = RunFolder(run_dir)
        self.folder.require_finished(allow_unfinished)
        self.op = operating_point(self.folder, calibrated, threshold, rule, allow_uncertified)
        self.taxonomy = self.folder.taxonomy()
        self.model = self.folder.load_model()
        self.identity = self.folder.weights_sha256()  # what a prediction CSV records (and a resume checks)
        self.dicom = dicom_policy(self.folder.read_config().data)  # how the run reads DICOM files
        self.encoding = self.folder.metadata_encoding()  # a fusion model's; None: images only
        if threads:
            torch.set_num_threads(int(threads))

    def probabilities(self, images: Sequence[np.ndarray], metadata: Sequence[dict] | None = None) -> np.ndarray:
        """Probabilities of decoded images; ``metadata``: one ``{column: value}`` per image for a fusion model
        (missing: every value missing)."""
        rows = None
        if self.encoding is not None:
            rows = np.stack([self.encoding.encode_row(r or {}) for r in (metadata or [{}] * len(images))]) \
                if len(images) else None
        return predict_arrays(self.model, images, self.op, metadata=rows)

    def load_input_check(self):
        """``(check, text)``: the run's input check, or None and why it is unavailable (e.g. its data moved)."""
        from ..experiment.input_check import load_input_check, not_applicable

        reason = not_applicable(self.folder)
        if reason:
            return None, reason
        try:  # fitted once from the run's cached validation / calibration images
            check = load_input_check(self.folder.path)
        except (OSError, ValueError) as exc:
            return None, f"unavailable ({exc})"
        return check, check.describe()

    def distances(self, check, images: Sequence[np.ndarray]) -> np.ndarray:
        from ..experiment.input_check import check_images

        return check_images(self.model, check, images, self.op.image_size)
