"""Anytime-valid inference on rates seen one case at a time: confidence sequences that stay honest however often
they are looked at (the monitoring of a deployed model, ``riskcl monitor``).

A *confidence sequence* at level ``delta`` for a Bernoulli rate ``p`` is a sequence of intervals ``C_1, C_2, ...``
with ``P(p in C_t for every t) >= 1 - delta``: a monitor may look after every case and stop at the first alarm
without inflating its error (a fixed-sample interval re-checked at every look would, eventually, surely alarm).
:func:`rate_sequence` is Robbins' method of mixtures for Bernoulli observations: with ``S`` successes in ``t`` cases
and a Beta(a, b) mixture over ``p``, the likelihood ratio
``M_t(p) = B(a + S, b + t - S) / B(a, b) / (p^S (1 - p)^(t - S))`` is a nonnegative martingale under ``p`` with
mean 1, so by Ville's inequality ``{p : M_t(p) < 1 / delta}`` is a confidence sequence (Robbins 1970; Howard et al.
2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences"). The bounds are found for every ``t`` at
once by bisection.

:func:`shifted` compares a deployment rate with a reference rate known from a finite sample (the calibration split):
an alarm when the deployment's sequence and the reference's exact (Clopper-Pearson) interval, each at half the
level, no longer overlap; under no shift the chance of ever alarming stays under the level.
"""
from __future__ import annotations

import numpy as np
from scipy.special import betaln

PRIOR = (0.5, 0.5)  # Beta(1/2, 1/2): the Jeffreys mixture over the rate
ITERATIONS = 60     # bisection steps: the bounds to about 1e-18


def _log_mixture(p: np.ndarray, s: np.ndarray, f: np.ndarray, a: float, b: float) -> np.ndarray:
    return betaln(a + s, b + f) - betaln(a, b) - s * np.log(p) - f * np.log1p(-p)


def rate_sequence(outcomes, delta: float = 0.05, prior: tuple[float, float] = PRIOR) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)``: the confidence sequence of a Bernoulli rate after each of ``outcomes`` (0 / 1, in the order
    they were seen), at level ``delta`` over all looks.

    Example:
        >>> low, high = rate_sequence([1] * 3 + [0] * 97, delta=0.05)
        >>> bool(low[-1] < 0.03 < high[-1]), bool(high[-1] < 0.15)
        (True, True)
    """
    if not 0 < delta < 1:
        raise ValueError(f"Expected `delta` in (0, 1), but got {delta}")
    x = np.asarray(outcomes, dtype=np.float64)
    if x.size and not np.isin(x, (0.0, 1.0)).all():
        raise ValueError("Expected outcomes of 0 or 1")
    a, b = prior
    s = np.cumsum(x)
    f = np.arange(1, x.size + 1) - s
    level = np.log(1.0 / delta)
    centre = np.clip((s + a) / (s + f + a + b), 1e-12, 1 - 1e-12)  # the mixture's minimum lies near here
    inside = _log_mixture(centre, s, f, a, b) < level

    def bound(lo: np.ndarray, hi: np.ndarray, upper: bool) -> np.ndarray:
        for _ in range(ITERATIONS):  # the boundary between "in the set" and "out of it", every t at once
            mid = (lo + hi) / 2
            out = _log_mixture(mid, s, f, a, b) >= level
            if upper:
                hi, lo = np.where(out, mid, hi), np.where(out, lo, mid)
            else:
                lo, hi = np.where(out, mid, lo), np.where(out, hi, mid)
        return (lo + hi) / 2

    eps = np.full(x.size, 1e-12)
    low = bound(eps.copy(), centre.copy(), upper=False)
    high = bound(centre.copy(), 1 - eps, upper=True)
    low = np.where(inside, low, centre)
    high = np.where(inside, high, centre)
    low = np.where(_log_mixture(eps, s, f, a, b) < level, 0.0, low)  # a set that reaches 0 (or 1) includes it
    high = np.where(_log_mixture(1 - eps, s, f, a, b) < level, 1.0, high)
    return low, high


def exact_interval(successes: int, trials: int, delta: float) -> tuple[float, float]:
    """The Clopper-Pearson interval of a rate from a fixed sample (the reference), at level ``delta``."""
    from scipy.stats import beta

    if trials == 0:
        return 0.0, 1.0
    lo = 0.0 if successes == 0 else float(beta.ppf(delta / 2, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(beta.ppf(1 - delta / 2, successes + 1, trials - successes))
    return lo, hi


def shifted(outcomes, reference_successes: int, reference_trials: int, delta: float = 0.05
            ) -> tuple[np.ndarray, tuple[float, float], np.ndarray, np.ndarray]:
    """``(alarm per look, the reference interval, low, high)``: a deployment rate against a reference sample's,
    each at ``delta / 2``; an alarm while the deployment's sequence and the reference interval do not overlap."""
    low, high = rate_sequence(outcomes, delta / 2)
    ref = exact_interval(reference_successes, reference_trials, delta / 2)
    return (high < ref[0]) | (low > ref[1]), ref, low, high


def first(alarm: np.ndarray) -> int | None:
    """The index of the first alarm (None: none)."""
    hits = np.flatnonzero(np.asarray(alarm, bool))
    return int(hits[0]) if hits.size else None
