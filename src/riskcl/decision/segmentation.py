"""Distribution-free control of the missed share of the lesion by choosing the pixel threshold.

A pixel is called lesion when its lesion probability is ``>= t``. An image's loss at ``t`` is its false-negative
rate: the share of its lesion pixels with probability ``< t`` (in [0, 1], non-decreasing in ``t``), so the
largest admissible ``t`` keeps the most background correct. Images without lesion pixels cannot miss a lesion:
they carry no loss and are left out of the calibration, so the guarantee is about images that hold a lesion.
With groups (lesion ids), a unit is a group and its loss the mean FNR of its images.

* Conformal risk control (Angelopoulos et al. 2022, the polyp example): the largest ``t`` of a fixed grid with
  ``n / (n + 1) * R_hat(t) + 1 / (n + 1) <= alpha`` gives ``E[FNR of a new image] <= alpha``.
* Learn-then-Test (Angelopoulos et al. 2021): for each grid threshold in increasing order, the Hoeffding-Bentkus
  p-value of ``H0: R(t) > alpha`` (losses in [0, 1]); fixed-sequence testing keeps the last rejected one:
  ``P(mean FNR <= alpha) >= 1 - delta`` over the draw of the calibration set.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..defaults import DELTA
from .risk_control import RiskControlResult

GRID_SIZE = 1001


def lesion_probability(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """``(N, H, W)`` float32 lesion probabilities ``sigmoid(logits / temperature)`` of lesion logit maps (as
    ``(1 + tanh(z / 2)) / 2``: no overflow, numpy alone)."""
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)


def fnr_curves(probs: Any, masks: Any, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(losses (M, G), kept (M,) indices)``: for each of the ``M`` images with a lesion, its FNR at each grid
    threshold (share of its lesion pixels with probability strictly below it)."""
    p, m = np.asarray(probs), np.asarray(masks).astype(bool)
    if p.shape != m.shape or p.ndim != 3:
        raise ValueError(f"Expected probability maps and masks of one shape (N, H, W), but got {p.shape} and "
                         f"{m.shape}")
    kept, rows = [], []
    for i in range(p.shape[0]):
        lesion = np.sort(p[i][m[i]].astype(np.float64))
        if lesion.size == 0:
            continue
        kept.append(i)
        rows.append(np.searchsorted(lesion, grid, side="left") / lesion.size)
    if not rows:
        raise ValueError("Risk control of the missed lesion share needs calibration images with lesion pixels, but "
                         "found none")
    return np.vstack(rows), np.asarray(kept, dtype=np.int64)


def _units(losses: np.ndarray, kept: np.ndarray, groups: Any) -> tuple[np.ndarray, str]:
    if groups is None:
        return losses, "image"
    g = np.asarray(groups).astype(str)[kept]
    uniq, inv = np.unique(g, return_inverse=True)
    if len(uniq) == len(g):
        return losses, "image"
    sums = np.zeros((len(uniq), losses.shape[1]))
    np.add.at(sums, inv, losses)
    return sums / np.bincount(inv)[:, None], "lesion"


def hoeffding_bentkus_pvalues(risk: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """p-values of ``H0: R > alpha`` for mean losses ``risk`` in [0, 1] of ``n`` units (Bates et al. 2021)."""
    from scipy.stats import binom

    r = np.minimum(np.asarray(risk, dtype=np.float64), alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        h1 = r * np.log(r / alpha) + (1 - r) * np.log((1 - r) / (1 - alpha))
    h1 = np.where(r <= 0, -np.log(1 - alpha), h1)  # the limit of h1 at r = 0
    hoeffding = np.exp(-n * h1)
    bentkus = np.e * binom.cdf(np.ceil(n * np.asarray(risk)), n, alpha)
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def _background_specificity(probs: np.ndarray, masks: np.ndarray, t: float) -> float:
    bg = ~masks.astype(bool)
    return float(np.mean(probs[bg] < t)) if bg.any() else float("nan")


def control_fnr(method: str, probs: Any, masks: Any, alpha: float, delta: float = DELTA, groups: Any = None,
                grid_size: int = GRID_SIZE) -> RiskControlResult:
    """The pixel threshold whose missed share of the lesion is controlled at ``alpha`` (``method``: ``crc`` or
    ``ltt``; see the module docstring). ``calibration_cer`` of the result is the calibration units' mean FNR at
    the threshold, ``calibration_specificity`` the share of background pixels called background.

    Example:
        >>> p = np.linspace(0.05, 0.95, 10).reshape(1, 1, 10).repeat(30, 0)   # 30 images, lesion = every pixel
        >>> r = control_fnr("crc", p, np.ones_like(p, bool), alpha=0.25)
        >>> r.threshold, round(r.calibration_cer, 2)        # the two lowest of 10 pixels missed (0.2 <= 0.25)
        (0.25, 0.2)
    """
    if method not in ("crc", "ltt"):
        raise ValueError(f"Unknown risk-control method '{method}'; expected one of ['crc', 'ltt']")
    if not 0 < alpha < 1:
        raise ValueError(f"Expected `alpha` in (0, 1), but got {alpha}")
    if method == "ltt" and not 0 < delta < 1:
        raise ValueError(f"Expected `delta` in (0, 1), but got {delta}")
    grid = np.linspace(0.0, 1.0, grid_size)
    losses, kept = fnr_curves(probs, masks, grid)
    units, unit = _units(losses, kept, groups)
    n = units.shape[0]
    risk = units.mean(0)
    if method == "crc":
        ok = n / (n + 1) * risk + 1 / (n + 1) <= alpha
        found = bool(ok.any())
        t = float(grid[ok].max()) if found else 0.0
        guarantee = (f"expected missed share of the lesion per {unit} <= {alpha} (conformal risk control, n={n})")
    else:
        rejected = hoeffding_bentkus_pvalues(risk, n, alpha) <= delta
        n_rejected = int(np.argmin(rejected)) if not rejected.all() else len(grid)
        found = n_rejected > 0
        t = float(grid[n_rejected - 1]) if found else 0.0
        guarantee = (f"mean missed share of the lesion per {unit} <= {alpha} with probability >= {1 - delta} "
                     f"(Learn-then-Test, Hoeffding-Bentkus, fixed sequence, n={n})")
    if not found:
        guarantee += " (no threshold could be certified: every pixel is called lesion)"
    k = int(np.searchsorted(grid, t))
    return RiskControlResult(method, t, float(alpha), delta if method == "ltt" else None, n, unit, float(risk[k]),
                             _background_specificity(np.asarray(probs), np.asarray(masks), t), guarantee, found)


def smallest_certifiable_fnr_alpha(method: str, probs: Any, masks: Any, delta: float = DELTA, groups: Any = None,
                                   tol: float = 1e-4) -> float:
    """The smallest ``alpha`` (to within ``tol``) at which ``method`` certifies a pixel threshold here."""
    lo, hi = 0.0, 1.0
    if not control_fnr(method, probs, masks, 1.0 - tol, delta, groups).certified:
        return 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if mid > 0 and control_fnr(method, probs, masks, mid, delta, groups).certified:
            hi = mid
        else:
            lo = mid
    return hi


def resplit_check(probs: Any, masks: Any, alpha: float, n_calibration: int, n_splits: int = 1000, seed: int = 0,
                  grid_size: int = GRID_SIZE) -> dict[str, Any]:
    """The CRC paper's check of the guarantee on a fixed set of predictions: ``n_splits`` random calibration /
    test re-splits (``n_calibration`` images calibrate, the rest test), conformal risk control on each, and the
    realised mean missed share on its test part. Returns the mean over splits (<= alpha, within Monte Carlo error,
    when the guarantee holds), its Monte Carlo standard error, the share of splits above alpha and the thresholds'
    range."""
    grid = np.linspace(0.0, 1.0, grid_size)
    losses, _ = fnr_curves(probs, masks, grid)
    n = losses.shape[0]
    if not 0 < n_calibration < n:
        raise ValueError(f"Expected 0 < n_calibration < {n} (images with a lesion), but got {n_calibration}")
    rng = np.random.default_rng(seed)
    realised, thresholds = np.empty(n_splits), np.empty(n_splits)
    for k in range(n_splits):
        perm = rng.permutation(n)
        risk = losses[perm[:n_calibration]].mean(0)
        ok = n_calibration / (n_calibration + 1) * risk + 1 / (n_calibration + 1) <= alpha
        j = int(np.flatnonzero(ok).max()) if ok.any() else 0
        thresholds[k], realised[k] = grid[j], losses[perm[n_calibration:], j].mean()
    return {"alpha": float(alpha), "n_images": int(n), "n_calibration": int(n_calibration), "splits": int(n_splits),
            "mean_realised_fnr": float(realised.mean()), "mc_se": float(realised.std(ddof=1) / np.sqrt(n_splits)),
            "share_above_alpha": float(np.mean(realised > alpha)),
            "threshold_range": [float(thresholds.min()), float(thresholds.max())]}
