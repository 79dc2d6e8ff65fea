"""riskcl: safety-aware medical image classification (Risk-Calibrated Learning and beyond)."""
from .losses import create_loss, list_losses
from .metrics import safety_report
from .taxonomy import Taxonomy, get_taxonomy, load_taxonomy, severity_matrix

__version__ = "0.2.0"
__all__ = ["Taxonomy", "create_loss", "get_taxonomy", "list_losses", "load_taxonomy", "safety_report",
           "severity_matrix", "__version__"]
