"""Lazy package faces (PEP 562): a package lists the names it offers and the submodule holding each; a name's
module is imported on first use, so importing the package (or a torch-free module inside it) loads no PyTorch."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_face(package: str, namespace: dict[str, Any],
              names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose ``names`` map a public name to its submodule (relative,
    without the dot); a looked-up value is stored in ``namespace`` so later look-ups skip the function."""

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(f".{names[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__
