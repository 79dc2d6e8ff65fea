"""Percentile bootstrap confidence intervals, resampling whole groups (patients, lesions) when given."""
from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from ..defaults import N_BOOT
from .functional import to_numpy


def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], preds: Any, target: Any,
                 groups: Any = None, n_resamples: int = N_BOOT, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """``(point, low, high)``: the metric on all data and its percentile bootstrap interval.

    Args:
        metric: ``metric(preds, target) -> float``.
        preds, target: as for the metric (first axis = samples).
        groups: optional ``(N,)`` group id per sample; groups are resampled with replacement and keep all
            their samples, so that images of one patient stay together.
        n_resamples: bootstrap replicates. confidence: interval mass in (0, 1). seed: RNG seed.

    Example:
        >>> from riskcl.metrics.functional import accuracy
        >>> point, lo, hi = bootstrap_ci(accuracy, [0, 1, 1, 0] * 10, [0, 1, 0, 0] * 10, n_resamples=200)
        >>> lo <= point <= hi
        True
    """
    if not 0 < confidence < 1:
        raise ValueError(f"Expected `confidence` in (0, 1), but got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"Expected `n_resamples` >= 1, but got {n_resamples}")
    p, t = to_numpy(preds), to_numpy(target)
    n = t.shape[0]
    if n == 0:
        raise ValueError("bootstrap_ci: empty input")
    point = float(metric(p, t))
    g = np.arange(n) if groups is None else to_numpy(groups)
    if g.shape[0] != n:
        raise ValueError(f"Expected one group id per sample ({n}), but got {g.shape[0]}")
    uniq, inv = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inv == k) for k in range(len(uniq))]
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for b in range(n_resamples):
            idx = np.concatenate([members[k] for k in rng.integers(0, len(uniq), len(uniq))])
            stats[b] = metric(p[idx], t[idx])
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return point, float("nan"), float("nan")
    a = (1 - confidence) / 2
    return point, float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))
