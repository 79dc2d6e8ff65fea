"""riskcl: safety-aware medical image classification (Risk-Calibrated Learning and beyond).

The package's face is lazy (PEP 562): ``import riskcl`` and ``riskcl --help`` / ``--version`` load no PyTorch;
``riskcl.create_loss`` and the other names below import their module on first use.

Inside another training loop (Lightning, MONAI, plain PyTorch), riskcl's parts work on their own: the losses as
``nn.Module`` (``riskcl.RiskCalibratedLoss``, or any by name through ``riskcl.create_loss``), the safety metrics as
a torchmetrics metric (``riskcl.SafetyReport``) and as functions (``riskcl.critical_error_rate``), and risk control
on NumPy arrays (``riskcl.learn_then_test``, ``riskcl.conformal_risk_control``, ``riskcl.threshold_decision``);
``riskcl adopt`` then takes the trained model into the whole safety half.
"""
from __future__ import annotations

from ._lazy import lazy_face

__version__ = "0.4.0"  # the one place the version is written (pyproject.toml reads it)

_LAZY = {"create_loss": "losses", "list_losses": "losses", "RiskCalibratedLoss": "losses", "safety_report": "metrics",
         "SafetyReport": "metrics", "critical_error_rate": "metrics", "malignant_probability": "metrics",
         "Taxonomy": "taxonomy", "get_taxonomy": "taxonomy", "load_taxonomy": "taxonomy", "severity_matrix": "taxonomy",
         "learn_then_test": "decision", "conformal_risk_control": "decision", "threshold_decision": "decision"}
__all__ = [*sorted(_LAZY), "__version__"]


__getattr__, __dir__ = lazy_face(__name__, globals(), _LAZY)
