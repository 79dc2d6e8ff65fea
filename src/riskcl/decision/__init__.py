"""Post-hoc decisions on a trained model's probabilities and risk control of the Critical Error Rate."""
from .groups import FALLBACKS, group_risk_control, thresholds_per_sample
from .operating_point import OperatingPoint
from .risk_control import (RiskControlResult, conformal_risk_control, control_risk, learn_then_test,
                           robust_threshold, smallest_certifiable_alpha)
from .rules import DECISION_RULES, cost_minimizing_decision, decide, fit_temperature, softmax, threshold_decision

__all__ = [
    "DECISION_RULES", "FALLBACKS", "OperatingPoint", "RiskControlResult", "conformal_risk_control", "control_risk",
    "cost_minimizing_decision", "decide", "fit_temperature", "group_risk_control", "learn_then_test",
    "robust_threshold", "smallest_certifiable_alpha", "softmax", "threshold_decision", "thresholds_per_sample",
]
