"""Safety per patient subgroup: n, malignant cases, CER, sensitivity and specificity with honest uncertainty.

Each rate gets a 95% interval: a percentile bootstrap that resamples whole grouping units (patients, lesions)
within the subgroup, or, when the count behind the rate is small (fewer than ``EXACT_BELOW`` = 30 cases), the
exact Clopper-Pearson interval of the binomial count (treating images as independent, which is then stated).
A rate of exactly 0 or 1 also gets the exact interval, over its grouping units: the bootstrap of a constant has
zero width and would claim certainty (100% specificity on 76 benign images is [95.3%, 100%], not [100%, 100%]).
A subgroup with fewer than ``min_malignant`` (default 10) malignant cases is flagged: its CER interval is too
wide to say anything, so no conclusion should be drawn from it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..defaults import N_BOOT
from ..taxonomy import Taxonomy
from .bootstrap import bootstrap_ci
from .functional import split_preds, to_numpy

EXACT_BELOW = 30
MIN_MALIGNANT = 10


def intervals_note(min_malignant: int = MIN_MALIGNANT) -> str:
    """The one sentence that says how the subgroup intervals and flags were made (CLI, run folder, report)."""
    return (f"95% CIs: bootstrap over the grouping unit, exact Clopper-Pearson where a rate rests on fewer than "
            f"{EXACT_BELOW} cases or is 0% or 100%; a group with fewer than {min_malignant} malignant units is "
            f"flagged: too few to say anything about its CER")


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for ``k`` successes in ``n`` trials.

    Example:
        >>> lo, hi = clopper_pearson(0, 10)
        >>> round(lo, 4), round(hi, 4)
        (0.0, 0.3085)
    """
    from scipy.stats import beta

    if n <= 0:
        return float("nan"), float("nan")
    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def format_rate(rate: dict[str, Any]) -> str:
    """``"12.3% [4.5, 25.0]"`` for a rate of :func:`subgroup_metrics`; ``"-"`` when it rests on no case.

    Example:
        >>> format_rate({"value": 0.5, "low": 0.25, "high": 0.75, "n": 8})
        '50.0% [25.0, 75.0]'
    """
    if rate["n"] == 0:
        return "-"
    return f"{100 * rate['value']:.1f}% [{100 * rate['low']:.1f}, {100 * rate['high']:.1f}]"


def printable_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of :func:`subgroup_metrics` as table rows (rates with their intervals as text), in the order of
    ``PRINTABLE_COLUMNS``."""
    return [{"group": r["group"], "n": r["n"], "malignant": r["n_malignant"], "CER [95% CI]": format_rate(r["cer"]),
             "sensitivity [95% CI]": format_rate(r["sensitivity"]),
             "specificity [95% CI]": format_rate(r["specificity"]),
             "note": "too few malignant" if r["too_few_malignant"] else ""} for r in rows]


PRINTABLE_COLUMNS = ("group", "n", "malignant", "CER [95% CI]", "sensitivity [95% CI]", "specificity [95% CI]", "note")


def _rate(hits: np.ndarray, units: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Mean of a 0/1 array with its 95% interval (bootstrap over units, or exact when small)."""
    n = int(hits.size)
    if n == 0:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0, "ci": "none"}
    k = int(hits.sum())
    if n < EXACT_BELOW:
        lo, hi = clopper_pearson(k, n)
        return {"value": k / n, "low": lo, "high": hi, "n": n, "ci": "clopper-pearson"}
    if k in (0, n):  # the bootstrap of a constant has zero width: exact, over units
        n_units = len(np.unique(units))
        lo, hi = clopper_pearson(0 if k == 0 else n_units, n_units)
        return {"value": k / n, "low": lo, "high": hi, "n": n, "ci": "clopper-pearson (units)"}
    _, lo, hi = bootstrap_ci(lambda h, _t: float(np.mean(h)), hits.astype(float), np.zeros(n, dtype=np.int64),
                             groups=units, n_resamples=n_boot, seed=seed)
    return {"value": k / n, "low": lo, "high": hi, "n": n, "ci": "bootstrap"}


def subgroup_metrics(preds: Any, target: Any, taxonomy: Taxonomy, strata: Any, units: Any = None,
                     n_boot: int = N_BOOT, min_malignant: int = MIN_MALIGNANT, seed: int = 0) -> list[dict[str, Any]]:
    """One row per subgroup value of ``strata``: ``n``, ``n_malignant``, ``n_malignant_units``, ``cer``,
    ``sensitivity``, ``specificity`` (each ``{value, low, high, n, ci}``) and ``too_few_malignant``.

    ``preds``: ``(N,)`` decisions (or ``(N, K)`` probabilities: argmax); ``units``: grouping unit per sample
    (default: every image its own unit).
    """
    yhat, _, y = split_preds(preds, target, taxonomy.num_classes)
    s = np.asarray(to_numpy(strata)).astype(str)
    u = np.arange(len(y)).astype(str) if units is None else np.asarray(to_numpy(units)).astype(str)
    if s.shape != y.shape or u.shape != y.shape:
        raise ValueError(f"Expected subgroup labels and units for each of the {len(y)} samples")
    sup = taxonomy.superclass
    rows = []
    for value in sorted(set(s.tolist())):
        m = s == value
        mal, ben = m & (sup[y] == 1), m & (sup[y] == 0)
        missed = sup[yhat[mal]] == 0
        n_units = int(len(set(u[mal].tolist())))
        rows.append({"group": value, "n": int(m.sum()), "n_malignant": int(mal.sum()),
                     "n_malignant_units": n_units,
                     "cer": _rate(missed, u[mal], n_boot, seed),
                     "sensitivity": _rate(~missed, u[mal], n_boot, seed),
                     "specificity": _rate(sup[yhat[ben]] == 0, u[ben], n_boot, seed),
                     "too_few_malignant": n_units < min_malignant})
    return rows
