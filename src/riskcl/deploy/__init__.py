"""After training: predicting files, exporting a deployable model, its model card, saliency and a web page.

The package's face is lazy: scoring an export folder (:mod:`.scoring`) loads no PyTorch."""
from __future__ import annotations

from .._lazy import lazy_face

_LAZY = {"decision_rows": "scoring", "predict_files": "scoring", "open_scorer": "scoring",
         "ExportedModel": "scoring", "export_run": "export"}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_face(__name__, globals(), _LAZY)
