"""Percentile bootstrap confidence intervals, resampling whole groups (patients, lesions) when given.

:func:`bootstrap_ci` resamples test units: its interval covers new cases for *these* trained models.
:func:`two_level_ci` also resamples the training seeds (each method's independently), so that its interval covers
what a user will do next, train again: in a simulation where seeds differ (``tests/test_metrics.py``), a 95%
two-level interval of a difference between two methods covered the true difference in about 95% of studies with
5 seeds, the test-units-only interval in about two thirds of them. With fewer than 3 seeds a seed-level interval
means little; callers say so (:data:`MIN_SEEDS`).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from ..defaults import N_BOOT
from .functional import to_numpy

MIN_SEEDS = 3  # fewer seeds: a two-level interval is for these seeds only (said so wherever it is shown)


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


def two_level_ci(metric: Callable[[np.ndarray, np.ndarray], float], preds: Any, target: Any,
                 reference: Any = None, groups: Any = None, n_resamples: int = N_BOOT, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """``(point, low, high)`` of ``metric`` over seeds and test units, or of ``metric(preds) - metric(reference)``.

    Two-level percentile bootstrap: each replicate draws the training seeds with replacement (the columns of
    ``preds``, and independently those of ``reference``: two methods' seeds are separate trainings), then the test
    units (images, or whole ``groups``) with replacement, shared by both methods (they were scored on the same
    cases). The interval therefore covers a new training seed as well as new cases.

    Args:
        metric: ``metric(preds (N, S'), target (N,)) -> float``, e.g. the mean over the seed columns of a
            specificity.
        preds: ``(N, S)`` one column per training seed (labels, or scores). reference: ``(N, S_r)`` or None.
        target: ``(N,)``. groups: optional ``(N,)`` unit id per sample.

    Example:
        >>> import numpy as np
        >>> mean = lambda p, t: float(p.mean())
        >>> m = np.tile([[0.6], [0.8]], (10, 3)) + [0.0, 0.1, 0.2]      # three seeds that differ
        >>> point, lo, hi = two_level_ci(mean, m, np.zeros(20), n_resamples=500)
        >>> round(point, 2), lo < 0.75 < hi
        (0.8, True)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"Expected `confidence` in (0, 1), but got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"Expected `n_resamples` >= 1, but got {n_resamples}")
    p, t = to_numpy(preds), to_numpy(target)
    r = None if reference is None else to_numpy(reference)
    if p.ndim != 2 or p.shape[0] != t.shape[0] or (r is not None and (r.ndim != 2 or r.shape[0] != t.shape[0])):
        raise ValueError(f"Expected preds (N, S) and reference (N, S_r) with N = {t.shape[0]} rows, but got "
                         f"{p.shape} and {None if r is None else r.shape}")
    n = t.shape[0]
    if n == 0:
        raise ValueError("two_level_ci: empty input")

    def stat(rows: np.ndarray, cols: np.ndarray, ref_cols: np.ndarray | None) -> float:
        value = metric(p[rows][:, cols], t[rows])
        return value if r is None else value - metric(r[rows][:, ref_cols], t[rows])

    every = np.arange(n)
    point = float(stat(every, np.arange(p.shape[1]), None if r is None else np.arange(r.shape[1])))
    g = np.arange(n) if groups is None else to_numpy(groups)
    uniq, inv = np.unique(g, return_inverse=True)
    singletons = len(uniq) == n  # every unit one sample: draw rows directly
    members = None if singletons else [np.flatnonzero(inv == k) for k in range(len(uniq))]
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for b in range(n_resamples):
            cols = rng.integers(0, p.shape[1], p.shape[1])
            ref_cols = None if r is None else rng.integers(0, r.shape[1], r.shape[1])
            units = rng.integers(0, len(uniq), len(uniq))
            rows = units if singletons else np.concatenate([members[k] for k in units])
            stats[b] = stat(rows, cols, ref_cols)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return point, float("nan"), float("nan")
    a = (1 - confidence) / 2
    return point, float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def verdict(low: float, high: float, seeds: int) -> str:
    """The words riskcl uses for a difference's two-level interval: ``beats`` only when the interval excludes zero
    from above (``worse`` from below), else ``not distinguishable at this scale``; fewer than :data:`MIN_SEEDS`
    seeds say the interval is for these seeds only."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "undefined"
    words = "beats" if low > 0 else "worse" if high < 0 else "not distinguishable at this scale"
    return words + (f" (for these {seeds} seed(s) only)" if seeds < MIN_SEEDS else "")
