"""Segmentation metrics on binary masks ``(N, H, W)`` (plain numpy), per image and over a split.

Per image, with ``TP``, ``FP``, ``FN`` counted in pixels:

* ``dice = 2 TP / (2 TP + FP + FN)`` and ``jaccard = TP / (TP + FP + FN)``; both 1 when neither mask has a
  lesion pixel (nothing to find, nothing found) and 0 when only one has;
* ``thresholded_jaccard``: the ISIC 2018 Task 1 score, the Jaccard index, or 0 below 0.65;
* ``fnr`` (the under-segmentation rate): the share of the lesion that is missed, ``FN / (TP + FN)``; NaN for an
  image without lesion pixels (it cannot under-segment), and such images are left out of its mean;
* ``missed_half``: the lesion's ``fnr > 0.5`` (the segmentation analogue of a Type II error);
* ``over_rate`` (the over-segmentation rate): the share of the predicted lesion that is background,
  ``FP / (TP + FP)``; 0 when nothing is predicted;
* ``hd95``: the 95th-percentile symmetric Hausdorff distance between the two masks' borders in pixels of the
  model's input, as MONAI's ``compute_hausdorff_distance(percentile=95)`` computes it (border = mask minus its
  erosion, Euclidean distance to the other border); NaN when either mask is empty.

The split summary averages per image (``fnr`` over images with a lesion) and gives percentile bootstrap CIs that
resample whole groups (lesions).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..defaults import N_BOOT

ISIC_JACCARD_FLOOR = 0.65
PER_IMAGE = ("dice", "jaccard", "thresholded_jaccard", "fnr", "missed_half", "over_rate", "hd95")
SUMMARY_KEYS = ("dice", "jaccard", "thresholded_jaccard", "fnr", "missed_half", "over_rate", "hd95", "mean_cost")


def _masks(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred), np.asarray(target)
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"Expected predicted and true masks of one shape (N, H, W), but got {p.shape} and {t.shape}")
    return p.astype(bool), t.astype(bool)


def confusion_counts(pred: Any, target: Any) -> dict[str, np.ndarray]:
    """``tp``, ``fp``, ``fn``, ``tn`` pixel counts per image (``(N,)`` int64 each)."""
    p, t = _masks(pred, target)
    n = p.shape[0]
    p, t = p.reshape(n, -1), t.reshape(n, -1)
    tp = (p & t).sum(1)
    fp = (p & ~t).sum(1)
    fn = (~p & t).sum(1)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": p.shape[1] - tp - fp - fn}


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    num, den = num.astype(np.float64), den.astype(np.float64)
    out = np.full(num.shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _border(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return mask ^ binary_erosion(mask)


def hd95(pred: np.ndarray, target: np.ndarray, percentile: float = 95.0) -> float:
    """The ``percentile`` symmetric Hausdorff distance of two ``(H, W)`` masks' borders (pixels); NaN if either
    is empty."""
    from scipy.ndimage import distance_transform_edt

    p, t = np.asarray(pred, bool), np.asarray(target, bool)
    if not p.any() or not t.any():
        return float("nan")
    bp, bt = _border(p), _border(t)
    d_pt = distance_transform_edt(~bt)[bp]
    d_tp = distance_transform_edt(~bp)[bt]
    return float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))


def per_image_metrics(pred: Any, target: Any, lambda1: float = 1.0, lambda2: float = 1.0,
                      with_hd95: bool = True) -> dict[str, np.ndarray]:
    """Every per-image metric of the module docstring (``(N,)`` arrays), plus ``lesion_px``, the counts, and
    ``mean_cost``: the image's clinical cost per pixel, ``(lambda1 * FP + lambda2 * FN) / pixels``.

    Example:
        >>> t = np.zeros((1, 4, 4), bool); t[0, :2, :2] = True      # a 4-pixel lesion
        >>> p = np.zeros((1, 4, 4), bool); p[0, :1, :2] = True      # half of it found, nothing else
        >>> m = per_image_metrics(p, t)
        >>> float(m["dice"][0]), float(m["fnr"][0]), float(m["over_rate"][0])
        (0.6666666666666666, 0.5, 0.0)
    """
    p, t = _masks(pred, target)
    c = confusion_counts(p, t)
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    lesion = tp + fn
    both_empty = (tp + fp + fn) == 0
    dice = np.where(both_empty, 1.0, _ratio(2 * tp, 2 * tp + fp + fn, 1.0))
    jac = np.where(both_empty, 1.0, _ratio(tp, tp + fp + fn, 1.0))
    fnr = _ratio(fn, lesion, np.nan)
    pixels = float(p.shape[1] * p.shape[2])
    out = {"dice": dice, "jaccard": jac, "thresholded_jaccard": np.where(jac >= ISIC_JACCARD_FLOOR, jac, 0.0),
           "fnr": fnr, "missed_half": np.where(np.isnan(fnr), np.nan, (fnr > 0.5).astype(np.float64)),
           "over_rate": _ratio(fp, tp + fp, 0.0), "lesion_px": lesion.astype(np.int64),
           "mean_cost": (lambda1 * fp + lambda2 * fn) / pixels, **c}
    if with_hd95:
        out["hd95"] = np.array([hd95(p[i], t[i]) for i in range(p.shape[0])])
    return out


def summarize(per_image: dict[str, np.ndarray], groups: Any = None, n_boot: int = N_BOOT,
              seed: int = 0) -> dict[str, Any]:
    """The split's mean of each metric (NaN-skipping: ``fnr`` / ``missed_half`` over images with a lesion,
    ``hd95`` over images where both masks are non-empty) with a group bootstrap CI ``<key>_ci``, and counts."""
    from .bootstrap import bootstrap_ci

    n = len(per_image["dice"])
    out: dict[str, Any] = {"n": int(n), "n_with_lesion": int(np.sum(per_image["lesion_px"] > 0))}
    for key in SUMMARY_KEYS:
        if key not in per_image:
            continue
        values = np.asarray(per_image[key], dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            out[key], out[f"{key}_ci"] = float("nan"), [float("nan"), float("nan")]
            continue
        out[key] = float(values[finite].mean())
        if n_boot:
            _, lo, hi = bootstrap_ci(lambda v, _t: float(np.nanmean(v)) if np.isfinite(v).any() else np.nan,
                                     values, values, groups=groups, n_resamples=n_boot, seed=seed)
            out[f"{key}_ci"] = [lo, hi]
    return out


def segmentation_report(probs: Any, target: Any, threshold: float = 0.5, groups: Any = None, lambda1: float = 1.0,
                        lambda2: float = 1.0, n_boot: int = N_BOOT, with_hd95: bool = True) -> dict[str, Any]:
    """The split report at one pixel threshold: a lesion pixel is ``p >= threshold``. ``probs``: ``(N, H, W)``
    lesion probabilities; ``target``: ``(N, H, W)`` masks."""
    probs = np.asarray(probs, dtype=np.float32)
    per = per_image_metrics(probs >= threshold, target, lambda1, lambda2, with_hd95=with_hd95)
    return {**summarize(per, groups, n_boot), "threshold": float(threshold)}
