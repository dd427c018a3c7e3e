"""How much of a store is finished, and the one check every reader makes before analysing it.

A store whose job was killed holds NaN (or fill) rows for the images it never reached. Analysing it
silently gives numbers from another set of images, so every reader calls :func:`require_complete`:
it refuses an incomplete store with one line (how much is done, the command that finishes it), or,
with ``allow_incomplete=True``, returns the :class:`Completeness` that the reader writes into every
table (:func:`mark_table`) and figure title (:func:`mark_figure`) it produces.

Extraction stores say what is done in their ``journal`` (one entry per image chunk); map stores
(occlusion, saliency, likelihood) in ``done`` (one entry per image).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NeuroprobeError
from .location import Location

COLUMN = "completeness"  # the column every table of an incomplete store carries


@dataclass(frozen=True)
class Completeness:
    """Finished images (rows) of a store, and how to finish the rest."""

    store: str
    done: int
    total: int
    chunks_done: int
    chunks: int
    command: str

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    @property
    def label(self) -> str:
        """A short statement for tables and figure titles, e.g. 'incomplete store: 576 of 800 images'."""
        return "complete" if self.complete else f"incomplete store: {self.done} of {self.total} images"

    def message(self) -> str:
        """The one-line refusal: what is done and the command that finishes it."""
        return (f"{self.store} is incomplete: {self.done} of {self.total} images done ({self.chunks_done} of "
                f"{self.chunks} chunks); finish it with: {self.command} (or pass --allow-incomplete / "
                "allow_incomplete=True to analyse the finished images only)")


def completeness(store: Any) -> Completeness:
    """The completeness of an extraction store (journal) or a map store (``done``)."""
    location = Location.of(store.location if hasattr(store, "location") else store)
    root = location.open_group(mode="r")
    attrs = dict(root.attrs)
    name = str(location)
    if "journal" in root:
        done_chunks = root["journal"][:].astype(bool)
        n, chunk = int(attrs["n_images"]), int(attrs["chunk_size"])
        done_rows = int(np.repeat(done_chunks, chunk)[:n].sum())
        command = attrs.get("command") or "the same 'python -m neuroprobe extract' command"
        return Completeness(name, done_rows, n, int(done_chunks.sum()), int(done_chunks.size), command)
    if "done" in root:
        done = root["done"][:].astype(bool)
        chunk = int(root["done"].chunks[0])
        per_chunk = [done[i:i + chunk].all() for i in range(0, done.size, chunk)]
        command = attrs.get("command") or "the same command that made it (occlude, saliency or search)"
        return Completeness(name, int(done.sum()), int(done.size), int(sum(per_chunk)), len(per_chunk), command)
    raise NeuroprobeError(f"{name} has neither a journal nor a 'done' array: not a neuroprobe store")


def require_complete(store: Any, allow_incomplete: bool = False) -> Completeness:
    """Refuse an incomplete store with one line, unless ``allow_incomplete``; return its completeness."""
    state = completeness(store)
    if not state.complete and not allow_incomplete:
        raise NeuroprobeError(state.message())
    if not state.complete:
        import logging

        logging.getLogger(__name__).warning("%s: analysing the finished images only (%s)", state.store, state.label)
    return state


def mark_table(frame, state: Completeness):
    """The table with a ``completeness`` column and attribute when the store is incomplete (unchanged otherwise)."""
    if state.complete:
        return frame
    frame = frame.assign(**{COLUMN: state.label})
    frame.attrs[COLUMN] = state.label
    return frame


def mark_figure(fig, state: Completeness):
    """Append the completeness to the figure's title (its suptitle, or each axes' title) when incomplete."""
    if state.complete:
        return fig
    note = f"[{state.label}]"
    suptitle = getattr(fig, "_suptitle", None)
    if suptitle is not None and suptitle.get_text():
        suptitle.set_text(f"{suptitle.get_text()} {note}")
    else:
        fig.suptitle(note, color="firebrick")
    return fig


__all__ = ["COLUMN", "Completeness", "completeness", "mark_figure", "mark_table", "require_complete"]
