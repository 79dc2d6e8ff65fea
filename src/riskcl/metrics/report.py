"""``safety_report``: every safety metric of a prediction set in one dictionary."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..taxonomy import Taxonomy
from . import functional as F

# The keys of a safety report besides ``n``: the one list every table and file of metrics draws from.
REPORT_KEYS = ("cer", "f1_macro", "accuracy", "visual_ambiguity", "type_i", "type_ii", "sensitivity",
               "specificity", "auroc", "ece", "mean_cost")


def safety_report(preds: Any, target: Any, taxonomy: Taxonomy, cost_matrix: Any = None,
                  labels: Any = None) -> dict[str, float]:
    """All metrics at once.

    Args:
        preds: ``(N, K)`` probabilities or ``(N,)`` predicted labels (then ``auroc`` and ``ece`` are NaN, quietly:
            hard labels have none).
        target: ``(N,)`` integer labels.
        taxonomy: the class hierarchy.
        cost_matrix: ``(K, K)`` costs for ``mean_cost``; default: the severity matrix with the default penalties.
        labels: optional ``(N,)`` decisions to score instead of the argmax of ``preds`` (e.g. the superclass-first
            rule of :func:`riskcl.decision.decide`); ``auroc`` and ``ece`` still come from the probabilities.

    Returns:
        ``{"n", "cer", "f1_macro", "accuracy", "visual_ambiguity", "type_i", "type_ii", "sensitivity",
        "specificity", "auroc", "ece", "mean_cost"}``; undefined values are NaN (and warned about).

    Example:
        >>> from riskcl.taxonomy import get_taxonomy
        >>> r = safety_report([0, 2, 2, 3], [0, 2, 0, 3], get_taxonomy("brain_mri"))  # a glioma called notumor
        >>> r["cer"], r["type_ii"], r["accuracy"]
        (0.3333333333333333, 1, 0.75)
    """
    yhat, probs, y = F.split_preds(preds, target, taxonomy.num_classes)
    if labels is not None:
        yhat, _, _ = F.split_preds(labels, y, taxonomy.num_classes)
    matrix = F.default_cost_matrix(taxonomy) if cost_matrix is None else cost_matrix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # one summary warning below instead
        sens, spec = F.sensitivity_specificity(yhat, y, taxonomy)
        out: dict[str, float] = {
            "n": int(y.shape[0]),
            "cer": F.critical_error_rate(yhat, y, taxonomy),
            "f1_macro": F.f1_macro(yhat, y),
            "accuracy": F.accuracy(yhat, y),
            **F.error_taxonomy(yhat, y, taxonomy),
            "sensitivity": sens,
            "specificity": spec,
            "auroc": F.auroc_malignant(probs, y, taxonomy) if probs is not None else float("nan"),
            "ece": F.expected_calibration_error(probs, y) if probs is not None else float("nan"),
            "mean_cost": F.mean_cost(yhat, y, matrix),
        }
    out.pop("correct")
    undefined = [k for k, v in out.items() if isinstance(v, float) and np.isnan(v)
                 and not (probs is None and k in ("auroc", "ece"))]
    if undefined:
        warnings.warn(f"safety_report: undefined (NaN) metrics {undefined}", RuntimeWarning, stacklevel=2)
    return out
