"""Post-hoc decisions on a trained model's probabilities and risk control of the Critical Error Rate."""
from .risk_control import RiskControlResult, conformal_risk_control, control_risk, learn_then_test
from .rules import cost_minimizing_decision, fit_temperature, softmax, threshold_decision

__all__ = [
    "RiskControlResult", "conformal_risk_control", "control_risk", "cost_minimizing_decision",
    "fit_temperature", "learn_then_test", "softmax", "threshold_decision",
]
