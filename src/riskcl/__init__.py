"""riskcl: safety-aware medical image classification (Risk-Calibrated Learning and beyond).

The package's face is lazy (PEP 562): ``import riskcl`` and ``riskcl --help`` / ``--version`` load no PyTorch;
``riskcl.create_loss`` and the other names below import their module on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it)

_LAZY = {"create_loss": "losses", "list_losses": "losses", "safety_report": "metrics", "Taxonomy": "taxonomy",
         "get_taxonomy": "taxonomy", "load_taxonomy": "taxonomy", "severity_matrix": "taxonomy"}
__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'riskcl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
