"""An input check: does an image look like the data the model was calibrated on?

A triage model answers for any image, also a flat grey square or a photo of the wrong organ (it called one
99.7% keratosis). The check scores how far an image's pooled features (the network's penultimate layer, timm's
``forward_head(pre_logits=True)``) lie from the held-out data: the Mahalanobis distance under a Ledoit-Wolf
covariance (scikit-learn) fitted on the validation split's features, with the threshold at the 99th percentile of
the calibration split's distances (data that fitted nothing else). An image above the threshold is flagged
*unusual*: its decision may not be reliable and the guarantee does not cover it. About 1% of images like the
calibration set are flagged by construction.

The fitted check is kept in the run folder (``input_check.npz``), made on first use by the service or the card,
and refitted when the weights change.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data.augment import to_model_input
from ..data.encoding import METADATA_ONLY
from ..data.images import resize_uint8
from ..engine import BatchFeeder, resolve_device
from .folder import RunFolder
from .run import build_data

QUANTILE = 0.99


def image_features(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` pooled penultimate features of a normalised batch (timm's ``forward_head(pre_logits=True)``)."""
    with torch.no_grad():
        return model.forward_head(model.forward_features(batch), pre_logits=True).float().flatten(1)


@dataclass(frozen=True)
class InputCheck:
    """The fitted check: features' mean and precision, the distance threshold and what it was fitted on."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float
    n_fit: int
    n_threshold: int
    weights_sha256: str

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` ``(N, D)``."""
        d = np.asarray(features, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, self.precision, d), 0.0))

    def describe(self) -> str:
        return (f"an image is flagged unusual when the Mahalanobis distance of its features from the validation "
                f"split's exceeds {self.threshold:.3g}, the {100 * self.quantile:g}th percentile on the "
                f"{self.n_threshold} calibration images (so about {100 * (1 - self.quantile):g}% of images like "
                f"them are flagged)")


def _split_features(folder: RunFolder, model: torch.nn.Module, split: str) -> np.ndarray:
    cfg = folder.read_config()
    recorded = folder.splits()
    ds = build_data(cfg, False, fixed_splits=dict(zip(recorded["path"], recorded["split"]))).datasets[split]
    device = resolve_device("cpu")
    feats = [image_features(model, x) for x, _ in BatchFeeder(ds, cfg.optim.eval_batch_size, device, prefetch=0)]
    return torch.cat(feats).numpy()


def split_distances(folder: RunFolder, split: str, check: InputCheck) -> np.ndarray:
    """Distances of one of the run's splits (images from the cache, as evaluation reads them)."""
    return check.distances(_split_features(folder, folder.load_model(), split))


def not_applicable(folder: RunFolder) -> str | None:
    """Why a run has no input check by design (None: it has one)."""
    cfg = folder.read_config()
    if cfg.task == "segmentation":
        return "not available for segmentation models yet"
    if cfg.model.name == METADATA_ONLY:
        return "not applicable: the metadata-only reference reads no image"
    if folder.adopted() is not None:
        return "not available for a model trained elsewhere: riskcl cannot read its internal features"
    return None


def fit_input_check(run_dir: str | Path, quantile: float = QUANTILE) -> InputCheck:
    """Fit the check on the run's validation (mean, covariance) and calibration (threshold) splits and save it
    (``ValueError`` with the reason for a model that has none, :func:`not_applicable`)."""
    from sklearn.covariance import LedoitWolf

    folder = RunFolder(run_dir)
    folder.require_finished(None)
    reason = not_applicable(folder)
    if reason:
        raise ValueError(f"{folder.path}: no input check ({reason})")
    model = folder.load_model()
    fit = _split_features(folder, model, "val")
    split = "calib" if "calib" in set(folder.splits()["split"]) else "val"
    held = _split_features(folder, model, split)
    lw = LedoitWolf().fit(fit)
    check = InputCheck(lw.location_, lw.precision_, 0.0, quantile, len(fit), len(held), folder.weights_sha256())
    threshold = float(np.quantile(check.distances(held), quantile))
    check = replace(check, threshold=threshold)
    folder.write_input_check({k: np.asarray(getattr(check, k)) for k in InputCheck.__dataclass_fields__})
    return check


def load_input_check(run_dir: str | Path) -> InputCheck:
    """The run's fitted check (fitted now when it is missing or was fitted on other weights)."""
    folder = RunFolder(run_dir)
    arrays = folder.input_check()
    if arrays is None or str(arrays["weights_sha256"]) != folder.weights_sha256():
        return fit_input_check(run_dir)
    return InputCheck(arrays["mean"], arrays["precision"], float(arrays["threshold"]), float(arrays["quantile"]),
                      int(arrays["n_fit"]), int(arrays["n_threshold"]), str(arrays["weights_sha256"]))


def check_images(model: torch.nn.Module, check: InputCheck, images: Sequence[np.ndarray],
                 image_size: int) -> np.ndarray:
    """Distances of decoded ``uint8`` images, resized as the cache resizes them."""
    batch = np.stack([resize_uint8(im, image_size) for im in images])
    return check.distances(image_features(model.eval(), to_model_input(torch.from_numpy(batch))).numpy())
