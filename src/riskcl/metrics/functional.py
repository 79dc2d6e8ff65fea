"""Safety metrics of the paper (Sec. III-A, IV-C) and beyond, as plain functions on arrays or tensors.

All take ``(preds, target)``: ``preds`` is either ``(N,)`` integer predictions or ``(N, K)`` class
probabilities (then the prediction is the argmax); ``target`` is ``(N,)`` integer labels.

* Critical Error Rate ``CER = #{S(y)=1, S(yhat)=0} / #{S(y)=1}`` (lower is safer).
* Error taxonomy: visual ambiguity (``yhat != y``, same superclass), Type I (``S(y)=0, S(yhat)=1``),
  Type II (``S(y)=1, S(yhat)=0``).
* Fine-grained accuracy, F1-macro (over the classes present in target or predictions, as scikit-learn),
  superclass sensitivity / specificity, AUROC of ``p(malignant)``, expected calibration error, mean cost.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..taxonomy import Taxonomy, resolve_cost_matrix


def to_numpy(x: Any) -> np.ndarray:
    """Array view of a numpy array, a list or a (possibly CUDA / grad) tensor."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def split_preds(preds: Any, target: Any,
                num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Validate ``(preds, target)`` and return ``(labels, probs or None, target)`` as numpy arrays."""
    p, t = to_numpy(preds), to_numpy(target)
    if t.ndim != 1 or (t.size and not np.issubdtype(t.dtype, np.integer)):
        raise ValueError(f"Expected argument `target` to be an integer array of shape (N,), but got "
                         f"shape {t.shape} and dtype {t.dtype}")
    if t.size == 0:
        raise ValueError("Expected at least one sample, but got an empty `target`")
    if p.shape[0] != t.shape[0]:
        raise ValueError(f"Expected `preds` and `target` to have the same N, but got {p.shape[0]} and {t.shape[0]}")
    probs = None
    if p.ndim == 2:
        if num_classes is not None and p.shape[1] != num_classes:
            raise ValueError(f"Expected `preds` with K = {num_classes} columns, but got {p.shape[1]}")
        probs = p.astype(np.float64)
        if not np.all(np.isfinite(probs)) or np.any(probs < 0) or not np.allclose(probs.sum(1), 1.0, atol=1e-3):
            raise ValueError("Expected `preds` of shape (N, K) to hold probabilities (rows >= 0 summing to 1); "
                             "apply softmax to logits first")
        labels = probs.argmax(axis=1)
    elif p.ndim == 1:
        if p.size and not np.issubdtype(p.dtype, np.integer):
            raise ValueError(f"Expected `preds` of shape (N,) to hold integer labels, but got dtype {p.dtype}")
        labels = p.astype(np.int64)
    else:
        raise ValueError(f"Expected `preds` of shape (N,) or (N, K), but got {p.shape}")
    if num_classes is not None:
        for name, arr in (("preds", labels), ("target", t)):
            if arr.min() < 0 or arr.max() >= num_classes:
                raise ValueError(f"Expected `{name}` labels in [0, {num_classes}), but got values in "
                                 f"[{arr.min()}, {arr.max()}]")
    return labels, probs, t.astype(np.int64)


def _nan(msg: str, stacklevel: int = 3) -> float:
    warnings.warn(msg, RuntimeWarning, stacklevel=stacklevel)
    return float("nan")


def _share(hit: np.ndarray, among: np.ndarray, empty: str) -> float:
    """The share of ``hit`` among the cases where ``among`` holds; NaN with the warning ``empty`` when none do."""
    return float(hit[among].mean()) if among.any() else _nan(empty, stacklevel=4)


def error_taxonomy(preds: Any, target: Any, taxonomy: Taxonomy) -> dict[str, int]:
    """Counts of ``correct``, ``visual_ambiguity``, ``type_i`` and ``type_ii`` predictions.

    Example:
        >>> from riskcl.taxonomy import Taxonomy
        >>> tax = Taxonomy("t", ("b1", "b2", "m1"), (0, 0, 1))
        >>> error_taxonomy([0, 1, 0, 2], [0, 0, 2, 0], tax)
        {'correct': 1, 'visual_ambiguity': 1, 'type_i': 1, 'type_ii': 1}
    """
    yhat, _, y = split_preds(preds, target, taxonomy.num_classes)
    s = taxonomy.superclass
    sy, sp = s[y], s[yhat]
    wrong = yhat != y
    return {
        "correct": int((~wrong).sum()),
        "visual_ambiguity": int((wrong & (sy == sp)).sum()),
        "type_i": int(((sy == 0) & (sp == 1)).sum()),
        "type_ii": int(((sy == 1) & (sp == 0)).sum()),
    }


def critical_error_rate(preds: Any, target: Any, taxonomy: Taxonomy) -> float:
    """Fraction of malignant samples predicted as a benign class; NaN (with a warning) without malignant samples.

    Example:
        >>> from riskcl.taxonomy import Taxonomy
        >>> critical_error_rate([0, 1, 1, 0], [1, 1, 1, 0], Taxonomy("t", ("b", "m"), (0, 1)))
        0.3333333333333333
    """
    yhat, _, y = split_preds(preds, target, taxonomy.num_classes)
    s = taxonomy.superclass
    malignant = s[y] == 1
    if not malignant.any():
        return _nan("critical_error_rate: no malignant sample in `target`; CER is undefined (NaN)")
    return float((s[yhat][malignant] == 0).mean())


def sensitivity_specificity(preds: Any, target: Any, taxonomy: Taxonomy) -> tuple[float, float]:
    """Superclass sensitivity (malignant recall, ``1 - CER``) and specificity (benign recall)."""
    yhat, _, y = split_preds(preds, target, taxonomy.num_classes)
    s = taxonomy.superclass
    sy, sp = s[y], s[yhat]
    return (_share(sp == 1, sy == 1, "sensitivity: no malignant sample"),
            _share(sp == 0, sy == 0, "specificity: no benign sample"))


def predictive_values(preds: Any, target: Any, taxonomy: Taxonomy) -> tuple[float, float]:
    """Superclass PPV (malignant calls that are malignant) and NPV (benign calls that are benign), at the
    prevalence of ``target``; NaN (with a warning) when no case was called malignant / benign.

    Example:
        >>> from riskcl.taxonomy import Taxonomy
        >>> predictive_values([1, 1, 0, 0], [1, 0, 0, 1], Taxonomy("t", ("b", "m"), (0, 1)))
        (0.5, 0.5)
    """
    yhat, _, y = split_preds(preds, target, taxonomy.num_classes)
    s = taxonomy.superclass
    sy, sp = s[y], s[yhat]
    return (_share(sy == 1, sp == 1, "ppv: no case called malignant"),
            _share(sy == 0, sp == 0, "npv: no case called benign"))


def accuracy(preds: Any, target: Any) -> float:
    """Fine-grained accuracy."""
    yhat, _, y = split_preds(preds, target)
    return float((yhat == y).mean())


def f1_macro(preds: Any, target: Any) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``target`` or ``preds``
    (scikit-learn's ``f1_score(average="macro")``; a class with no true positive scores 0)."""
    yhat, _, y = split_preds(preds, target)
    labels = np.union1d(y, yhat)
    tp = np.array([np.sum((yhat == c) & (y == c)) for c in labels], dtype=np.float64)
    fp = np.array([np.sum((yhat == c) & (y != c)) for c in labels], dtype=np.float64)
    fn = np.array([np.sum((yhat != c) & (y == c)) for c in labels], dtype=np.float64)
    return float(np.mean(2 * tp / (2 * tp + fp + fn)))


def malignant_probability(probs: Any, taxonomy: Taxonomy) -> np.ndarray:
    """``p(malignant) = sum of the malignant class probabilities``, shape ``(N,)``."""
    p = to_numpy(probs).astype(np.float64)
    if p.ndim != 2 or p.shape[1] != taxonomy.num_classes:
        raise ValueError(f"Expected `probs` of shape (N, {taxonomy.num_classes}), but got {p.shape}")
    return p[:, taxonomy.superclass == 1].sum(axis=1)


def _superclass_scores(probs: Any, target: Any, taxonomy: Taxonomy, what: str):
    """``(superclass of each target, p(malignant))``, or None after a warning when ``what`` (a ranking metric of
    p(malignant)) is undefined: hard predictions, or only one superclass present."""
    _, pr, y = split_preds(probs, target, taxonomy.num_classes)
    s = taxonomy.superclass[y]
    if pr is None:
        _nan(f"{what}: needs probabilities, got hard predictions", stacklevel=4)
    elif s.min() == s.max():
        _nan(f"{what}: only one superclass present in `target`", stacklevel=4)
    else:
        return s, malignant_probability(pr, taxonomy)
    return None


def auroc_malignant(probs: Any, target: Any, taxonomy: Taxonomy) -> float:
    """AUROC of ``p(malignant)`` for the superclass task; NaN (with a warning) when one superclass is absent."""
    scored = _superclass_scores(probs, target, taxonomy, "auroc")
    if scored is None:
        return float("nan")
    s, score = scored
    # Mann-Whitney U with average ranks for ties (equals the ROC area).
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_pos, n_neg = int(s.sum()), int((1 - s).sum())
    return float((ranks[s == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def partial_auroc_high_sensitivity(probs: Any, target: Any, taxonomy: Taxonomy,
                                   min_sensitivity: float = 0.9) -> float:
    """Standardised partial AUROC of ``p(malignant)`` where sensitivity >= ``min_sensitivity``.

    The region a triage model operates in: with benign as the positive class and ``-p(malignant)`` as its score,
    sensitivity >= s is false-positive rate <= 1 - s, so this is scikit-learn's McClish-standardised
    ``roc_auc_score(..., max_fpr=1 - s)``: 0.5 for a random score, 1 for a perfect one.
    """
    from sklearn.metrics import roc_auc_score

    scored = _superclass_scores(probs, target, taxonomy, "partial auroc")
    if scored is None:
        return float("nan")
    s, score = scored
    return float(roc_auc_score(1 - s, -score, max_fpr=1 - min_sensitivity))


def expected_calibration_error(probs: Any, target: Any, n_bins: int = 15) -> float:
    """Top-label ECE: ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` over ``n_bins`` equal-width confidence bins."""
    yhat, pr, y = split_preds(probs, target)
    if pr is None:
        return _nan("ece: needs probabilities, got hard predictions")
    conf = pr.max(axis=1)
    correct = (yhat == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def mean_cost(preds: Any, target: Any, matrix: Any) -> float:
    """Mean clinical cost ``mean_i C[y_i, yhat_i]`` (``C``: 0 for a correct decision, see
    :func:`riskcl.taxonomy.resolve_cost_matrix`)."""
    m = to_numpy(matrix).astype(np.float64)
    yhat, _, y = split_preds(preds, target, m.shape[0])
    return float(m[y, yhat].mean())


def default_cost_matrix(taxonomy: Taxonomy) -> np.ndarray:
    """The matrix used for ``mean_cost`` when none is given: the clinical cost with the default penalties (the
    paper's proposed lambdas; 0 for a correct decision)."""
    return resolve_cost_matrix(taxonomy)
