"""Post-hoc decision rules on class probabilities (beyond the paper, SPEC section 8).

* Cost-minimising (Bayes) decision: ``yhat = argmin_j sum_i p_i M[i, j]``, the prediction with the smallest
  expected severity cost under the model's own probabilities.
* Threshold rule on ``p(malignant)``: predict the most likely malignant class when ``p(malignant) >= t``,
  else the most likely benign class. ``t = 0.5`` on a binary taxonomy is the argmax.
* :func:`decide`, the one decision riskcl prints: ``superclass`` (default) is the threshold rule at 0.5 (or at a
  calibrated threshold): the superclass decision comes first, so a decision never contradicts p(malignant);
  ``argmax`` is the fine-class argmax of the paper, which can call a case benign at p(malignant) = 0.6.
* Temperature scaling (Guo et al. 2017): one scalar ``T`` fitted on validation logits by minimising the NLL.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..metrics.functional import malignant_probability, to_numpy
from ..taxonomy import Taxonomy


def _probs(probs: Any, k: int | None = None) -> np.ndarray:
    """Probabilities to decide on: ``(N, K)`` and finite (a NaN compared with a threshold is False, so it would
    quietly become "benign"; it is refused instead, naming the rows)."""
    p = to_numpy(probs).astype(np.float64)
    if p.ndim != 2 or (k is not None and p.shape[1] != k):
        raise ValueError(f"Expected `probs` of shape (N, {k or 'K'}), but got {p.shape}")
    bad = np.flatnonzero(~np.isfinite(p).all(axis=1))
    if bad.size:
        raise ValueError(f"Expected finite probabilities, but {bad.size} row(s) hold NaN or infinity (rows "
                         f"{bad[:5].tolist()}); a non-finite score is never decided")
    return p


def cost_minimizing_decision(probs: Any, matrix: Any) -> np.ndarray:
    """``(N,)`` labels minimising the expected cost ``probs @ M``.

    Example:
        >>> m = np.array([[1., 5.], [20., 1.]])
        >>> cost_minimizing_decision([[0.9, 0.1]], m).tolist()    # costs: 0.9+0.1*20 = 2.9 vs 0.9*5+0.1 = 4.6
        [0]
    """
    m = to_numpy(matrix).astype(np.float64)
    p = _probs(probs, m.shape[0])
    return (p @ m).argmin(axis=1)


def threshold_decision(probs: Any, taxonomy: Taxonomy, threshold: float | np.ndarray) -> np.ndarray:
    """``(N,)`` labels: best malignant class where ``p(malignant) >= threshold``, else best benign class.

    ``threshold``: a number, or one per sample ``(N,)`` (per-group operating points)."""
    t = np.asarray(threshold, dtype=np.float64)
    if not np.all((t >= 0.0) & (t <= 1.0 + 1e-12)):
        raise ValueError(f"Expected `threshold` in [0, 1], but got {threshold}")
    taxonomy.require_both_superclasses()
    p = _probs(probs, taxonomy.num_classes)
    mal, ben = np.asarray(taxonomy.malignant_indices), np.asarray(taxonomy.benign_indices)
    best_mal = mal[p[:, mal].argmax(axis=1)]
    best_ben = ben[p[:, ben].argmax(axis=1)]
    return np.where(malignant_probability(p, taxonomy) >= t, best_mal, best_ben)


DECISION_RULES = ("superclass", "argmax")


def decide(probs: Any, taxonomy: Taxonomy, rule: str = "superclass", threshold: float = 0.5) -> np.ndarray:
    """``(N,)`` decisions: ``superclass`` (the threshold rule at ``threshold``) or ``argmax``.

    Example:
        >>> from riskcl.taxonomy import Taxonomy
        >>> tax = Taxonomy("t", ("nevus", "mel", "bcc"), (0, 1, 1))
        >>> p = [[0.4, 0.3, 0.3]]                   # p(malignant) = 0.6
        >>> decide(p, tax).tolist(), decide(p, tax, "argmax").tolist()
        ([1], [0])
    """
    if rule == "argmax":
        return _probs(probs, taxonomy.num_classes).argmax(axis=1)
    if rule == "superclass":
        return threshold_decision(probs, taxonomy, threshold)
    raise ValueError(f"Expected `rule` in {DECISION_RULES}, but got {rule!r}")


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = to_numpy(logits).astype(np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: Any, target: Any) -> float:
    """The temperature ``T`` in ``[0.05, 20]`` minimising the validation NLL of ``softmax(logits / T)``."""
    from scipy.optimize import minimize_scalar

    z = to_numpy(logits).astype(np.float64)
    y = to_numpy(target).astype(np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"Expected logits (N, K) and target (N,), N > 0, but got {z.shape} and {y.shape}")

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        s = s - s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(y)), y]))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))
