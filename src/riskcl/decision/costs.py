"""Uncertain costs: decision curves, cost-robust thresholds and the H-measure (plain numpy functions).

Nobody knows the exact price of a missed melanoma relative to a biopsy. For a refer / clear decision with costs
``lambda1`` (a benign case referred) and ``lambda2`` (a malignant case cleared), referring is worth it when
``p(malignant) >= pt = lambda1 / (lambda1 + lambda2)`` (:func:`pt_from_costs`), so a range of plausible costs is a
range of threshold probabilities ``pt``. :class:`CostDistribution` holds such a range, from the ``cost.uncertain``
section of a config: ranges of ``lambda1`` / ``lambda2`` drawn uniform, log-uniform or log-normal (the range is
then its central 95%), or a range of ``pt`` directly.

* Decision curves (Vickers and Elkin 2006): the net benefit of referring when p(malignant) >= pt,
  ``TP/N - FP/N * pt / (1 - pt)``, against refer-all and refer-none (0), over the pt range
  (:func:`net_benefit`, :func:`decision_curve` with bootstrap bands over the grouping unit).
* The cost of a threshold under a cost draw, ``(lambda1 * FP + lambda2 * FN) / N``; the threshold with the lowest
  expected cost, or the lowest worst-case regret, among given candidates (:func:`choose_threshold`) -- calibration
  passes the thresholds Learn-then-Test certified, so the guarantee stays the constraint.
* The H-measure (Hand 2009): one minus the expected minimum loss over a Beta prior on the normalised cost, relative
  to the trivial classifier's (:func:`h_measure`); unlike AUROC it weighs the misclassification costs coherently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..defaults import OBJECTIVES

DISTRIBUTIONS = ("uniform", "log-uniform", "log-normal")
Z975 = 1.959963984540054  # the normal quantile of 97.5%: a log-normal's range is its central 95%
PT_GRID = 101  # points of a decision curve


def pt_from_costs(lambda1: Any, lambda2: Any) -> np.ndarray | float:
    """The cost-minimising threshold probability of a refer / clear decision.

    Example:
        >>> pt_from_costs(5, 20)
        0.2
    """
    l1, l2 = np.asarray(lambda1, dtype=np.float64), np.asarray(lambda2, dtype=np.float64)
    out = l1 / (l1 + l2)
    return float(out) if out.ndim == 0 else out


def costs_from_pt(pt: Any, lambda2: float = 1.0) -> np.ndarray | float:
    """``lambda1`` with which ``pt`` is the cost-minimising threshold when a missed malignancy costs ``lambda2``.

    Example:
        >>> costs_from_pt(0.2, 20)
        5.0
    """
    p = np.asarray(pt, dtype=np.float64)
    out = lambda2 * p / (1.0 - p)
    return float(out) if out.ndim == 0 else out


def _range(key: str, value: Any, low: float, high: float, open_low: bool, open_high: bool) -> tuple[float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise ValueError(f"Expected `{key}` to be a range [low, high] of two numbers, but got {value!r}")
    a, b = float(value[0]), float(value[1])
    if a > b:
        raise ValueError(f"`{key}` = [{a:g}, {b:g}] is an empty range: expected low <= high")
    too_low = a <= low if open_low else a < low
    too_high = b >= high if open_high else b > high
    if too_low or too_high:
        lo_b, hi_b = ("(" if open_low else "[") + f"{low:g}", f"{high:g}" + (")" if open_high else "]")
        raise ValueError(f"Expected `{key}` within {lo_b}, {hi_b}, but got [{a:g}, {b:g}]")
    return a, b


@dataclass(frozen=True)
class CostDistribution:
    """Plausible costs of a Type I (``lambda1``) and a Type II (``lambda2``) error, or of ``pt`` directly.

    ``point``: the fixed ``(lambda1, lambda2)`` of the config (what the costs mean when nothing is uncertain; the
    pt form keeps its ``lambda2`` and draws ``lambda1 = lambda2 * pt / (1 - pt)``)."""

    point: tuple[float, float]
    lambda1: tuple[float, float] | None = None
    lambda2: tuple[float, float] | None = None
    distribution: str = "uniform"
    pt: tuple[float, float] | None = None

    @property
    def uncertain(self) -> bool:
        return self.pt is not None or self.lambda1 is not None or self.lambda2 is not None

    @classmethod
    def from_config(cls, spec: Mapping[str, Any] | None, lambda1: float, lambda2: float,
                    key: str = "cost.uncertain") -> "CostDistribution":
        """Validate a ``cost.uncertain`` section (None: the fixed costs); every error names the key."""
        point = (float(lambda1), float(lambda2))
        if spec is None:
            return cls(point)
        if not isinstance(spec, Mapping):
            raise ValueError(f"Expected `{key}` to be a mapping (lambda1 / lambda2 ranges and a distribution, or a "
                             f"pt range), but got {spec!r}")
        unknown = sorted(set(spec) - {"lambda1", "lambda2", "distribution", "pt"})
        if unknown:
            raise ValueError(f"Unknown key(s) {unknown} in `{key}`; expected lambda1, lambda2, distribution or pt")
        dist = spec.get("distribution", "uniform")
        if dist not in DISTRIBUTIONS:
            raise ValueError(f"Expected `{key}.distribution` in {list(DISTRIBUTIONS)}, but got {dist!r}")
        if "pt" in spec:
            if "lambda1" in spec or "lambda2" in spec:
                raise ValueError(f"`{key}`: give either a pt range or lambda1 / lambda2 ranges, not both")
            pt = _range(f"{key}.pt", spec["pt"], 0.0, 1.0, True, True)
            if pt[1] > 0.5:
                raise ValueError(f"`{key}.pt` = [{pt[0]:g}, {pt[1]:g}] reaches above 0.5, where a referred benign "
                                 f"case would cost more than a missed malignant one; the taxonomy makes a missed "
                                 f"malignancy the worse error (pt <= 0.5)")
            return cls(point, pt=pt, distribution=dist)
        if "lambda1" not in spec and "lambda2" not in spec:
            raise ValueError(f"`{key}` needs a range: lambda1 and / or lambda2 ([low, high]), or pt")
        l1 = _range(f"{key}.lambda1", spec["lambda1"], 0.0, 1e6, True, False) if "lambda1" in spec else None
        l2 = _range(f"{key}.lambda2", spec["lambda2"], 0.0, 1e6, True, False) if "lambda2" in spec else None
        hi1 = l1[1] if l1 else point[0]
        lo2 = l2[0] if l2 else point[1]
        if hi1 > lo2:
            raise ValueError(f"`{key}`: lambda2 (a missed malignancy) can be drawn below lambda1 (a referred benign "
                             f"case): lambda1 up to {hi1:g}, lambda2 from {lo2:g}; the taxonomy makes a missed "
                             f"malignancy the worse error, so keep every lambda1 <= every lambda2")
        return cls(point, lambda1=l1, lambda2=l2, distribution=dist)

    def _draw(self, bounds: tuple[float, float], n: int, rng: np.random.Generator) -> np.ndarray:
        lo, hi = bounds
        if lo == hi:
            return np.full(n, lo)
        if self.distribution == "uniform":
            return rng.uniform(lo, hi, n)
        if self.distribution == "log-uniform":
            return np.exp(rng.uniform(math.log(lo), math.log(hi), n))
        mu, sigma = (math.log(lo) + math.log(hi)) / 2, (math.log(hi) - math.log(lo)) / (2 * Z975)
        return np.exp(rng.normal(mu, sigma, n))

    def sample(self, n: int, seed: int | np.random.Generator = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(lambda1, lambda2)`` arrays of ``n`` draws (all equal to the point when nothing is uncertain)."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        if self.pt is not None:
            pt = self._draw(self.pt, n, rng)
            return costs_from_pt(pt, self.point[1]), np.full(n, self.point[1])
        l1 = self._draw(self.lambda1, n, rng) if self.lambda1 else np.full(n, self.point[0])
        l2 = self._draw(self.lambda2, n, rng) if self.lambda2 else np.full(n, self.point[1])
        return l1, l2

    def pt_range(self) -> tuple[float, float]:
        """The range of cost-minimising thresholds the costs span (a log-normal's central 95%)."""
        if self.pt is not None:
            return self.pt
        l1 = self.lambda1 or (self.point[0],) * 2
        l2 = self.lambda2 or (self.point[1],) * 2
        return float(pt_from_costs(l1[0], l2[1])), float(pt_from_costs(l1[1], l2[0]))

    def describe(self) -> str:
        lo, hi = self.pt_range()
        if not self.uncertain:
            return f"fixed costs lambda1 = {self.point[0]:g}, lambda2 = {self.point[1]:g} (pt = {lo:.3g})"
        what = (f"pt in [{lo:.3g}, {hi:.3g}]" if self.pt is not None else
                ", ".join(f"{n} in [{r[0]:g}, {r[1]:g}]" for n, r in (("lambda1", self.lambda1),
                                                                     ("lambda2", self.lambda2)) if r)
                + f" (pt in [{lo:.3g}, {hi:.3g}])")
        return f"{what}, {self.distribution}"

    def to_dict(self) -> dict[str, Any]:
        return {"point": list(self.point), "lambda1": self.lambda1 and list(self.lambda1),
                "lambda2": self.lambda2 and list(self.lambda2), "pt": self.pt and list(self.pt),
                "distribution": self.distribution, "pt_range": list(self.pt_range()), "describe": self.describe()}


def net_benefit(p_mal: Any, is_mal: Any, pt: Any) -> np.ndarray:
    """Net benefit of referring when ``p_mal >= pt``, per threshold probability: ``TP/N - FP/N * pt / (1 - pt)``.

    Example:
        >>> net_benefit([0.9, 0.6, 0.3, 0.1], [1, 0, 1, 0], [0.5]).round(4).tolist()   # TP 1, FP 1, N 4
        [0.0]
    """
    p, y = np.asarray(p_mal, dtype=np.float64), np.asarray(is_mal, dtype=bool)
    pts = np.atleast_1d(np.asarray(pt, dtype=np.float64))
    if np.any((pts <= 0) | (pts >= 1)):
        raise ValueError(f"Expected threshold probabilities in (0, 1), but got {pts[(pts <= 0) | (pts >= 1)][:3]}")
    refer = p[None, :] >= pts[:, None]
    n = max(len(p), 1)
    tp, fp = (refer & y[None, :]).sum(1) / n, (refer & ~y[None, :]).sum(1) / n
    return tp - fp * pts / (1 - pts)


def net_benefit_refer_all(is_mal: Any, pt: Any) -> np.ndarray:
    """Net benefit of referring every case: ``prevalence - (1 - prevalence) * pt / (1 - pt)``."""
    prev = float(np.mean(np.asarray(is_mal, dtype=bool))) if len(is_mal) else 0.0
    pts = np.atleast_1d(np.asarray(pt, dtype=np.float64))
    return prev - (1 - prev) * pts / (1 - pts)


def decision_curve(p_mal: Any, is_mal: Any, pt_range: tuple[float, float], groups: Any = None,
                   n_boot: int = 0, seed: int = 0, points: int = PT_GRID, level: float = 0.95) -> dict[str, Any]:
    """Net benefit of the model, of refer-all and of refer-none over ``points`` thresholds in ``pt_range``, with
    percentile bootstrap bands of the model's (resampling the grouping unit, e.g. the patient) when ``n_boot``;
    and the pt interval(s) over which the model beats both references."""
    lo, hi = float(pt_range[0]), float(pt_range[1])
    pts = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    p, y = np.asarray(p_mal, dtype=np.float64), np.asarray(is_mal, dtype=bool)
    model, everyone = net_benefit(p, y, pts), net_benefit_refer_all(y, pts)
    out: dict[str, Any] = {"pt": pts.tolist(), "model": model.tolist(), "refer_all": everyone.tolist(),
                           "refer_none": [0.0] * len(pts), "n": int(len(p)), "prevalence": float(y.mean()) if len(y)
                           else 0.0}
    if n_boot:
        g = np.arange(len(p)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
        members = [np.flatnonzero(g == k) for k in range(int(g.max()) + 1)] if len(g) else []
        rng = np.random.default_rng(seed)
        draws = np.empty((n_boot, len(pts)))
        for b in range(n_boot):
            idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
            draws[b] = net_benefit(p[idx], y[idx], pts)
        q = (1 - level) / 2
        out["model_low"], out["model_high"] = np.quantile(draws, [q, 1 - q], axis=0).tolist()
        out["n_boot"], out["level"] = int(n_boot), level
    better = model > np.maximum(everyone, 0.0)
    out["adds_benefit"] = _intervals(pts, better)
    return out


def _intervals(pts: np.ndarray, mask: np.ndarray) -> list[list[float]]:
    spans, start = [], None
    for k, m in enumerate(mask):
        if m and start is None:
            start = k
        if start is not None and (not m or k == len(mask) - 1):
            end = k if m else k - 1
            spans.append([float(pts[start]), float(pts[end])])
            start = None
    return spans


def benefit_sentence(curve: Mapping[str, Any]) -> str:
    """The decision curve in one plain sentence."""
    lo, hi = curve["pt"][0], curve["pt"][-1]
    spans = curve["adds_benefit"]
    if not curve.get("prevalence"):
        return (f"Undefined on this split: it holds no malignant case, so there is no benefit to weigh against "
                f"false referrals (net benefit over {lo:.2f}-{hi:.2f} is never positive for any rule).")
    if not spans:
        return (f"Over threshold probabilities {lo:.2f}-{hi:.2f} the model adds no net benefit over referring "
                f"everyone or no one.")
    where = ", ".join(f"{a:.2f}-{b:.2f}" for a, b in spans)
    whole = len(spans) == 1 and spans[0][0] == lo and spans[0][1] == hi
    return ("The model adds net benefit over referring everyone and over referring no one "
            + ("across the whole range of threshold probabilities " if whole else "for threshold probabilities ")
            + f"{where}" + ("" if whole else f" (of {lo:.2f}-{hi:.2f})") + ".")


def cost_table(p_mal: Any, is_mal: Any, thresholds: Any, lambda1: Any, lambda2: Any) -> np.ndarray:
    """``(T, S)`` mean cost per case of referring at each of ``T`` thresholds under each of ``S`` cost draws:
    ``(lambda1 * FP + lambda2 * FN) / N``."""
    p, y = np.asarray(p_mal, dtype=np.float64), np.asarray(is_mal, dtype=bool)
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    refer = p[None, :] >= t[:, None]
    n = max(len(p), 1)
    fp, fn = (refer & ~y).sum(1) / n, (~refer & y).sum(1) / n
    return fp[:, None] * np.asarray(lambda1, dtype=np.float64)[None, :] + \
        fn[:, None] * np.asarray(lambda2, dtype=np.float64)[None, :]


def choose_threshold(candidates: Sequence[float], p_mal: Any, is_mal: Any, costs: CostDistribution,
                     objective: str, n_draws: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Among ``candidates`` (e.g. the thresholds Learn-then-Test certified), the one with the lowest expected cost
    (``"expected-cost"``) or the lowest worst-case regret (``"minimax"``: the cost above the best candidate's under
    the same draw, maximised over the draws) under ``costs``. Ties go to the largest threshold (fewest referrals).

    Example:
        >>> c = CostDistribution((1.0, 4.0))
        >>> choose_threshold([0.1, 0.5, 0.9], [0.95, 0.7, 0.4, 0.2], [1, 1, 0, 0], c, "expected-cost")["threshold"]
        0.5
    """
    if objective not in OBJECTIVES[1:]:
        raise ValueError(f"Expected `objective` in {list(OBJECTIVES[1:])}, but got {objective!r}")
    cands = np.asarray(sorted(set(float(c) for c in candidates)), dtype=np.float64)
    if not cands.size:
        raise ValueError("no candidate threshold to choose from")
    l1, l2 = costs.sample(n_draws, seed)
    table = cost_table(p_mal, is_mal, cands, l1, l2)
    expected = table.mean(1)
    regret = (table - table.min(0, keepdims=True)).max(1)
    score = expected if objective == "expected-cost" else regret
    best = np.flatnonzero(score <= score.min() + 1e-12)[-1]
    return {"objective": objective, "threshold": float(cands[best]), "expected_cost": float(expected[best]),
            "max_regret": float(regret[best]), "candidates": int(cands.size), "draws": int(n_draws),
            "seed": int(seed), "costs": costs.describe()}


def h_measure(p_mal: Any, is_mal: Any, a: float = 2.0, b: float = 2.0, grid: int = 2001) -> float:
    """Hand's H-measure with a Beta(a, b) prior on the normalised cost ``c`` of a false positive (the cost of a
    false negative being ``1 - c``): ``1 - L / L_max`` where ``L`` is the prior-expected minimum (over thresholds,
    i.e. on the ROC convex hull) of ``c * pi0 * FPR + (1 - c) * pi1 * FNR`` and ``L_max`` the same for the
    trivial classifier, ``min(c * pi0, (1 - c) * pi1)``. 1 for a perfect ranking, 0 for none.

    Example:
        >>> round(h_measure([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]), 6)
        1.0
    """
    from scipy.stats import beta

    p, y = np.asarray(p_mal, dtype=np.float64), np.asarray(is_mal, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if not n1 or not n0:
        return float("nan")
    pi1, pi0 = n1 / len(y), n0 / len(y)
    t = np.concatenate([[-np.inf], np.unique(p), [np.inf]])
    refer = p[None, :] >= t[:, None]
    fpr, fnr = (refer & ~y).sum(1) / n0, (~refer & y).sum(1) / n1
    c = (np.arange(grid) + 0.5) / grid  # midpoints: the Beta density is integrable at the ends
    w = beta.pdf(c, a, b) / grid
    loss = (c[:, None] * pi0 * fpr[None, :] + (1 - c[:, None]) * pi1 * fnr[None, :]).min(1)
    trivial = np.minimum(c * pi0, (1 - c) * pi1)
    return float(1.0 - (w * loss).sum() / (w * trivial).sum())
