"""Safety metrics: plain functions on ``(preds, target)``, a one-call report, bootstrap CIs, a torchmetrics class.

The package's face is lazy: the plain functions (numpy) load no PyTorch; ``SafetyReport`` loads torchmetrics."""
from __future__ import annotations

from .._lazy import lazy_face

_FUNCTIONAL = ("accuracy", "auroc_malignant", "critical_error_rate", "error_taxonomy", "expected_calibration_error",
               "f1_macro", "malignant_probability", "mean_cost", "partial_auroc_high_sensitivity",
               "predictive_values", "sensitivity_specificity")
_LAZY = {"bootstrap_ci": "bootstrap", "two_level_ci": "bootstrap", "SafetyReport": "metric", "REPORT_KEYS": "report",
         "safety_report": "report",
         **{name: "functional" for name in _FUNCTIONAL}}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_face(__name__, globals(), _LAZY)
