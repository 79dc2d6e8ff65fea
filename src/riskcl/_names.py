"""Name look-ups shared by every registry and config check: one did-you-mean for the whole package."""
from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when nothing is close.

    Example:
        >>> did_you_mean("focl", ["ce", "focal"])
        " (did you mean 'focal'?)"
    """
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name(kind: str, word: object, choices: Iterable[str]) -> ValueError:
    """The one error for an unknown registry name: the name, a suggestion and every valid choice."""
    choices = sorted(choices)
    return ValueError(f"Unknown {kind} '{word}'{did_you_mean(word, choices)}; expected one of {choices}")
