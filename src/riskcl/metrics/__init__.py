"""Safety metrics: plain functions on ``(preds, target)``, a one-call report, bootstrap CIs, a torchmetrics class."""
from .bootstrap import bootstrap_ci
from .functional import (accuracy, auroc_malignant, critical_error_rate, error_taxonomy, expected_calibration_error,
                         f1_macro, malignant_probability, mean_cost, partial_auroc_high_sensitivity,
                         predictive_values, sensitivity_specificity)
from .metric import SafetyReport
from .report import REPORT_KEYS, safety_report

__all__ = [
    "REPORT_KEYS", "SafetyReport", "accuracy", "auroc_malignant", "bootstrap_ci", "critical_error_rate",
    "error_taxonomy", "expected_calibration_error", "f1_macro", "malignant_probability", "mean_cost",
    "partial_auroc_high_sensitivity", "predictive_values",
    "safety_report", "sensitivity_specificity",
]
