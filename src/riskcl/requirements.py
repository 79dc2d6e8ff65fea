"""``python -m riskcl.requirements EXTRA``: the requirements of one of riskcl's extras, read from the installed
package's metadata (pyproject.toml is their one home), one per line.

It makes the torch-free service install possible: pip cannot install an extra without the package's own
dependencies (PyTorch among them), so ::

    pip install --no-deps riskcl
    pip install $(python -m riskcl.requirements serve)

installs riskcl with only what ``riskcl serve EXPORT_DIR`` and ``riskcl predict EXPORT_DIR`` need.
"""
from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, requires

_EXTRA = re.compile(r"""\s*;\s*extra\s*==\s*["']([^"']+)["']\s*$""")


def extra_requirements(extra: str) -> list[str]:
    """The requirement strings of ``extra`` (without their ``extra == ...`` marker)."""
    try:
        declared = requires("riskcl") or []
    except PackageNotFoundError:
        raise ValueError("riskcl is not installed (pip install --no-deps riskcl first)") from None
    out, extras = [], set()
    for req in declared:
        m = _EXTRA.search(req)
        if m:
            extras.add(m.group(1))
            if m.group(1) == extra:
                out.append(req[:m.start()].strip())
    if not out:
        raise ValueError(f"riskcl has no extra {extra!r}; expected one of {sorted(extras)}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m riskcl.requirements EXTRA", file=sys.stderr)
        return 2
    try:
        print("\n".join(extra_requirements(args[0])))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
