"""riskcl: safety-aware medical image classification (Risk-Calibrated Learning and beyond).

The package's face is lazy (PEP 562): ``import riskcl`` and ``riskcl --help`` / ``--version`` load no PyTorch;
``riskcl.create_loss`` and the other names below import their module on first use.
"""
from __future__ import annotations

from ._lazy import lazy_face

__version__ = "0.4.0"  # the one place the version is written (pyproject.toml reads it)

_LAZY = {"create_loss": "losses", "list_losses": "losses", "safety_report": "metrics", "Taxonomy": "taxonomy",
         "get_taxonomy": "taxonomy", "load_taxonomy": "taxonomy", "severity_matrix": "taxonomy"}
__all__ = [*sorted(_LAZY), "__version__"]


__getattr__, __dir__ = lazy_face(__name__, globals(), _LAZY)
