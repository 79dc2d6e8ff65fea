"""Safe path handling: a path read from a label file or config may not leave the dataset root."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """The user cache folder: ``override``, else ``$RISKCL_CACHE_DIR``, else ``~/.cache/riskcl``."""
    base = override or os.environ.get("RISKCL_CACHE_DIR") or Path.home() / ".cache" / "riskcl"
    return Path(base).expanduser()


def safe_join(root: str | os.PathLike, relative: str, allow_outside: bool = False, source: str = "") -> Path:
    """``root / relative``, refusing absolute paths, ``..`` and symlinks that lead outside ``root``.

    Args:
        root: the dataset root. relative: a path read from a label file or config.
        allow_outside: the user's explicit permission to leave the root.
        source: where the path was read (named in the error).
    """
    root_path = Path(root).resolve()
    rel = str(relative)
    where = f" ({source})" if source else ""
    if not allow_outside:
        if os.path.isabs(rel) or rel.startswith(("/", "\\")):
            raise ValueError(f"Path '{rel}'{where} is absolute; expected a path relative to {root_path} "
                             f"(set allow_outside_root: true to permit it)")
        if ".." in Path(rel).parts:
            raise ValueError(f"Path '{rel}'{where} contains '..'; expected a path inside {root_path} "
                             f"(set allow_outside_root: true to permit it)")
    full = (root_path / rel)
    if not allow_outside:
        resolved = full.resolve()
        if resolved != root_path and root_path not in resolved.parents:
            raise ValueError(f"Path '{rel}'{where} resolves to {resolved}, outside the dataset root {root_path} "
                             f"(a symlink?); set allow_outside_root: true to permit it")
    return full
