"""Errors a user can cause: the CLI prints them as one line and exits with status 2."""
from __future__ import annotations

import difflib
from typing import Iterable


class NeuroprobeError(Exception):
    """A mistake in the user's input, with a message that names the fix."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """Comma-separated list of the valid names nearest to ``name`` (for error messages)."""
    candidates = list(candidates)
    hits = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not hits:
        hits = [c for c in candidates if c.startswith(name.split(".")[0])][:n] or candidates[:n]
    return ", ".join(hits)
