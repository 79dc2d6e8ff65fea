"""Group-conditional risk control: one threshold per patient group (sex, body site, scanner, ...) so that each
group's Critical Error Rate stays under ``alpha``, not only the pooled one.

* Learn-then-Test per group at ``delta / G`` (Bonferroni over the ``G`` groups with malignant calibration
  cases): with probability >= ``1 - delta`` over the calibration draw, every certified group's CER <= alpha at
  once (the union bound over groups).
* Conformal risk control per group: each group's expected CER <= alpha (exchangeability within the group).

A group whose calibration cases cannot certify ``alpha`` (LTT needs about ``log(delta / G) / log(1 - alpha)``
malignant units with no miss) gets no invented threshold: it falls back to a stated rule, ``pooled`` (the
pooled threshold, which carries no per-group guarantee) or ``conservative`` (the lowest threshold among the
pooled and every certified group's, which flags the most), and is reported as not certified. Groups unseen at
calibration get the same fallback.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..defaults import DELTA
from ..metrics.functional import to_numpy
from ..taxonomy import Taxonomy
from .risk_control import RiskControlResult, control_risk

FALLBACKS = ("pooled", "conservative")


def thresholds_per_sample(groups: Mapping[str, Mapping[str, Any]], fallback: float, strata: Any) -> np.ndarray:
    """Each sample's threshold: its group's (``groups[value]["threshold"]``), or ``fallback`` for a group unseen
    at calibration.

    Example:
        >>> thresholds_per_sample({"f": {"threshold": 0.2}}, 0.5, ["f", "m"]).tolist()
        [0.2, 0.5]
    """
    return np.array([float(groups[v]["threshold"]) if v in groups else float(fallback)
                     for v in np.asarray(to_numpy(strata)).astype(str)], dtype=np.float64)


def group_risk_control(method: str, probs: Any, target: Any, taxonomy: Taxonomy | None, strata: Any, alpha: float,
                       delta: float = DELTA, groups: Any = None, fallback: str = "pooled",
                       segmentation: bool = False) -> dict[str, Any]:
    """Thresholds per value of ``strata`` (``(N,)`` subgroup labels); ``groups``: patient units as in
    :func:`~riskcl.decision.control_risk`. ``segmentation``: ``probs`` and ``target`` are ``(N, H, W)`` lesion
    probability maps and masks, and each group's pixel threshold controls its missed share of the lesion
    (:func:`riskcl.decision.segmentation.control_fnr`); a group needs images with a lesion.

    Returns ``{"pooled": RiskControlResult, "groups": {value: {"threshold", "certified", "n_calibration",
    "guarantee"}}, "fallback", "fallback_threshold", "correction"}``.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"Expected `fallback` in {FALLBACKS}, but got {fallback!r}")
    p, y = to_numpy(probs), to_numpy(target).astype(np.int64)
    s = np.asarray(to_numpy(strata)).astype(str)
    if s.shape != y.shape[:1]:
        raise ValueError(f"Expected one subgroup label per sample ({y.shape[0]}), but got {s.shape}")
    g = None if groups is None else np.asarray(to_numpy(groups))
    if segmentation:
        from .segmentation import control_fnr

        def control(pp, yy, a, d, gg):
            return control_fnr(method, pp, yy, a, d, gg)

        def positive(yy):
            return bool(yy.any())
    else:
        def control(pp, yy, a, d, gg):
            return control_risk(method, pp, yy, taxonomy, a, d, gg)

        def positive(yy):
            return bool((taxonomy.superclass[yy] == 1).any())
    pooled = control(p, y, alpha, delta, g)
    values = sorted(set(s.tolist()))
    with_malignant = [v for v in values if positive(y[s == v])]
    per_delta = delta / max(1, len(with_malignant)) if method == "ltt" else delta
    results: dict[str, RiskControlResult | None] = {}
    for v in values:
        m = s == v
        results[v] = control(p[m], y[m], alpha, per_delta, None if g is None else g[m]) if v in with_malignant \
            else None
    certified = [r.threshold for r in results.values() if r is not None and r.certified]
    fb = pooled.threshold if fallback == "pooled" else min([pooled.threshold, *certified])
    out = {}
    for v, r in results.items():
        ok = r is not None and r.certified
        out[v] = {"threshold": r.threshold if ok else fb, "certified": ok,
                  "n_calibration": 0 if r is None else r.n_calibration,
                  "calibration_cer": None if r is None else r.calibration_cer,
                  "guarantee": r.guarantee if ok else (
                      f"not certified ({'no positive calibration case' if r is None else 'too few calibration cases'}"
                      f" for alpha = {alpha}): the {fallback} fallback threshold, with no guarantee for this group")}
    correction = (f"Bonferroni: delta / {len(with_malignant)} = {per_delta:.4g} per group, so all certified groups "
                  f"hold at once with probability >= {1 - delta}") if method == "ltt" else \
        "none needed: conformal risk control bounds each group's expected CER"
    return {"pooled": pooled, "groups": out, "fallback": fallback, "fallback_threshold": fb,
            "correction": correction}
