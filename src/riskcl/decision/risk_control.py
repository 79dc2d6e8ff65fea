"""Distribution-free control of the Critical Error Rate by choosing the threshold on ``p(malignant)``.

A malignant case is missed at threshold ``t`` when ``p(malignant) < t``; the miss rate grows with ``t``, so the
largest admissible ``t`` keeps the most specificity. Only the calibration set's malignant samples enter,
grouped by patient where groups are given: the unit is then a patient, missed when any of its malignant images
is missed, so the guarantee bounds the share of malignant patients with a missed image (and hence the
patient-averaged image miss rate).

* Conformal risk control (Angelopoulos et al., 2022): the largest ``t`` with
  ``n/(n+1) * R_hat(t) + 1/(n+1) <= alpha`` gives ``E[miss rate on a new case] <= alpha``
  (in expectation over calibration and test data, for exchangeable data).
* Learn-then-Test (Angelopoulos et al., 2021): for each threshold of a fixed grid (0, 0.001, ..., 1), test
  ``H0: R(t) > alpha`` with the exact binomial tail p-value ``P(Binom(n, alpha) <= misses)``; thresholds
  are tested in increasing order (fixed-sequence testing, family-wise error <= delta) and the last rejected one
  is kept: ``P(R(t_hat) <= alpha) >= 1 - delta`` over the draw of the calibration set.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..defaults import DELTA
from ..metrics.functional import malignant_probability, to_numpy
from ..taxonomy import Taxonomy


@dataclass(frozen=True)
class RiskControlResult:
    """The chosen operating point and what it guarantees."""

    method: str
    threshold: float
    alpha: float
    delta: float | None
    n_calibration: int           # malignant units (samples or groups) used
    unit: str                    # "sample" or "group"
    calibration_cer: float       # empirical miss rate at the threshold on the calibration set
    calibration_specificity: float
    guarantee: str
    certified: bool = True       # False: too few calibration cases; the threshold 0 flags everything

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _units(p_mal: np.ndarray, is_mal: np.ndarray, groups: Any) -> tuple[list[np.ndarray], str]:
    scores = p_mal[is_mal]
    if groups is None:
        return [scores[i : i + 1] for i in range(scores.shape[0])], "sample"
    g = to_numpy(groups)[is_mal]
    uniq, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
    if counts.max() == 1:  # one malignant image per group: the groups add nothing
        return [scores[i : i + 1] for i in range(scores.shape[0])], "sample"
    # A group (patient) counts as missed when any of its malignant images is missed: its loss is binary and
    # bounds the fraction of its images missed, so the exact binomial test stays valid.
    minima = np.full(len(uniq), np.inf)
    np.minimum.at(minima, inv, scores)
    return [minima[k : k + 1] for k in range(len(uniq))], "group"


def _risk_curve(units: list[np.ndarray], thresholds: np.ndarray) -> np.ndarray:
    """Mean over units of the fraction of the unit's scores strictly below each threshold."""
    if all(u.size == 1 for u in units):
        scores = np.sort(np.concatenate(units))
        return np.searchsorted(scores, thresholds, side="left") / scores.size
    total = np.zeros(len(thresholds))
    for u in units:
        total += np.searchsorted(np.sort(u), thresholds, side="left") / u.size
    return total / len(units)


def _risk(units: list[np.ndarray], t: float) -> float:
    return float(_risk_curve(units, np.array([t]))[0])


def _prepare(probs: Any, target: Any, taxonomy: Taxonomy, alpha: float, groups: Any):
    if not 0 < alpha < 1:
        raise ValueError(f"Expected `alpha` in (0, 1), but got {alpha}")
    taxonomy.require_both_superclasses()
    p = to_numpy(probs).astype(np.float64)
    y = to_numpy(target).astype(np.int64)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"Expected probs (N, K) and target (N,), but got {p.shape} and {y.shape}")
    p_mal = malignant_probability(p, taxonomy)
    is_mal = taxonomy.superclass[y] == 1
    if not is_mal.any():
        raise ValueError("Risk control needs malignant samples in the calibration set, but found none")
    units, unit = _units(p_mal, is_mal, groups)
    # Candidate thresholds: 0 (flag everything) and every malignant score; misses are scores strictly below t.
    candidates = np.unique(np.concatenate([[0.0], p_mal[is_mal]]))
    return p_mal, is_mal, units, unit, candidates


def _result(method: str, t: float, alpha: float, delta: float | None, units, unit, p_mal, is_mal,
            guarantee: str, certified: bool) -> RiskControlResult:
    benign = ~is_mal
    spec = float(np.mean(p_mal[benign] < t)) if benign.any() else float("nan")
    return RiskControlResult(method, float(t), float(alpha), delta, len(units), unit, _risk(units, t), spec,
                             guarantee, certified)


def conformal_risk_control(probs: Any, target: Any, taxonomy: Taxonomy, alpha: float,
                           groups: Any = None) -> RiskControlResult:
    """Threshold with ``E[CER] <= alpha`` (conformal risk control, loss bound B = 1)."""
    p_mal, is_mal, units, unit, cands = _prepare(probs, target, taxonomy, alpha, groups)
    n = len(units)
    ok = n / (n + 1) * _risk_curve(units, cands) + 1 / (n + 1) <= alpha
    t = float(cands[ok].max()) if ok.any() else 0.0
    note = "" if ok.any() else " (calibration set too small for this alpha: every case is flagged malignant)"
    return _result("crc", t, alpha, None, units, unit, p_mal, is_mal,
                   f"expected miss rate of malignant {unit}s <= {alpha} (conformal risk control, n={n}){note}",
                   bool(ok.any()))


def _pvalues(units: list[np.ndarray], thresholds: np.ndarray, alpha: float) -> np.ndarray:
    """Exact binomial p-values of ``H0: risk(t) > alpha`` (every unit's loss is 0 or 1)."""
    from scipy.stats import binom

    n = len(units)
    misses = np.round(_risk_curve(units, thresholds) * n).astype(int)
    return binom.cdf(misses, n, alpha)


def learn_then_test(probs: Any, target: Any, taxonomy: Taxonomy, alpha: float, delta: float = DELTA,
                    groups: Any = None, grid_size: int = 1001) -> RiskControlResult:
    """Threshold with ``P(CER <= alpha) >= 1 - delta`` (Learn-then-Test, fixed-sequence testing)."""
    if not 0 < delta < 1:
        raise ValueError(f"Expected `delta` in (0, 1), but got {delta}")
    p_mal, is_mal, units, unit, _ = _prepare(probs, target, taxonomy, alpha, groups)
    # The hypotheses must be fixed before seeing the data: a grid of thresholds, not the calibration scores.
    cands = np.linspace(0.0, 1.0, grid_size)
    # Fixed sequence in increasing risk: reject until the first hypothesis that cannot be rejected.
    rejected = _pvalues(units, cands, alpha) <= delta
    n_rejected = int(np.argmin(rejected)) if not rejected.all() else len(cands)
    found = n_rejected > 0
    t_hat = float(cands[n_rejected - 1]) if found else 0.0
    note = "" if found else " (no threshold could be certified: every case is flagged malignant)"
    return _result("ltt", t_hat, alpha, delta, units, unit, p_mal, is_mal,
                   f"miss rate of malignant {unit}s <= {alpha} with probability >= {1 - delta} "
                   f"(Learn-then-Test, fixed sequence, n={len(units)}){note}", found)


RISK_CONTROL = {
    "crc": lambda probs, target, taxonomy, alpha, delta, groups: conformal_risk_control(
        probs, target, taxonomy, alpha, groups),
    "ltt": learn_then_test,
}


def control_risk(method: str, probs: Any, target: Any, taxonomy: Taxonomy, alpha: float,
                 delta: float = DELTA, groups: Any = None) -> RiskControlResult:
    """Choose the threshold by ``method`` (``crc`` ignores ``delta``)."""
    if method not in RISK_CONTROL:
        raise ValueError(f"Unknown risk-control method '{method}'; expected one of {sorted(RISK_CONTROL)}")
    return RISK_CONTROL[method](probs, target, taxonomy, alpha, delta, groups)


def robust_threshold(result: RiskControlResult, probs: Any, target: Any, taxonomy: Taxonomy, costs: Any,
                     objective: str, groups: Any = None, seed: int = 0,
                     grid_size: int = 1001) -> tuple[RiskControlResult, dict[str, Any]]:
    """Among the thresholds ``result`` certifies, the one ``objective`` prefers under the plausible ``costs``
    (:func:`riskcl.decision.costs.choose_threshold`: lowest expected cost or lowest worst-case regret), with the
    result's figures recomputed there. The certified set is every threshold of the grid up to ``result``'s own
    (and that one): the miss rate can only fall as the threshold falls, and Learn-then-Test's fixed sequence
    rejected the null hypothesis of each of them, so the guarantee stays the constraint."""
    from .costs import choose_threshold

    if objective == "guarantee":
        return result, {"objective": "guarantee", "threshold": result.threshold}
    p_mal, is_mal, units, unit, _ = _prepare(probs, target, taxonomy, result.alpha, groups)
    grid = np.linspace(0.0, 1.0, grid_size)
    candidates = np.union1d(grid[grid <= result.threshold], [result.threshold])
    choice = choose_threshold(candidates, p_mal, is_mal, costs, objective, seed=seed)
    choice["certified_threshold"] = result.threshold
    chosen = _result(result.method, choice["threshold"], result.alpha, result.delta, units, unit, p_mal, is_mal,
                     result.guarantee, result.certified)
    return chosen, choice


def smallest_certifiable_alpha(method: str, probs: Any, target: Any, taxonomy: Taxonomy, delta: float = DELTA,
                               groups: Any = None, tol: float = 1e-4) -> float:
    """The smallest ``alpha`` (to within ``tol``) at which ``method`` certifies a threshold on this calibration
    set; certification is monotone in ``alpha``, so a bisection finds it.

    Example:
        >>> from riskcl.taxonomy import Taxonomy
        >>> tax = Taxonomy("t", ("b", "m"), (0, 1))
        >>> p = np.array([[0.1, 0.9]] * 9 + [[0.9, 0.1]])    # 10 malignant cases
        >>> round(smallest_certifiable_alpha("crc", p, np.ones(10, int), tax), 3)   # CRC's floor 1 / (n + 1)
        0.091
    """
    lo, hi = 0.0, 1.0
    if not control_risk(method, probs, target, taxonomy, 1.0 - tol, delta, groups).certified:
        return 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if mid > 0 and control_risk(method, probs, target, taxonomy, mid, delta, groups).certified:
            hi = mid
        else:
            lo = mid
    return hi
