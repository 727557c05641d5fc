"""User-facing errors: one paragraph naming the field, the value and what is allowed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PerfmodelError(ValueError):
    """An error in what the user asked for (a name, a size, a file). The CLI prints it and exits 2."""


class CapacityError(PerfmodelError):
    """The model and its KV cache do not fit in the device memory."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest choices, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value).lower(), [c.lower() for c in choices], n=3, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def unknown_name(field: str, value: str, choices: Iterable[str], what: str = "") -> PerfmodelError:
    choices = sorted(set(choices))
    shown = ", ".join(choices) if len(choices) <= 20 else ", ".join(choices[:20]) + f", ... ({len(choices)} in all)"
    hint = f" {what}" if what else ""
    return PerfmodelError(f"{field} must be one of: {shown}; got {value!r}.{did_you_mean(value, choices)}{hint}")
