"""Reading a layer's statistics block by block (whole store chunks), for analyses, exports and RDMs alike."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import NeuroprobeError, closest
from .location import open_group

READ_BYTES = 16 << 20  # per statistic and read: one or a few store chunks at a time


def layer_names(store: str | Path, layers: Sequence[str] | None = None) -> list[str]:
    """The requested layers (all stored ones by default), checked against the store."""
    stored = list(open_group(store).attrs["layers"])
    for layer in layers or []:
        if layer not in stored:
            raise NeuroprobeError(f"layer '{layer}' is not in {store}; stored layers: {closest(layer, stored)}")
    return list(layers) if layers else stored


def block_ranges(store: str | Path, layer: str, stat: str = "mean", step: int | None = None,
                 start: int = 0) -> list[tuple[int, int]]:
    """[lo, hi) row ranges of whole store chunks, about READ_BYTES per statistic each (the same for
    every path through the store: the blocks and their groups fix the order of every float sum);
    ``step``: rows per block instead (to read several layers in lockstep); ``start``: first row (a multiple
    of the chunk size)."""
    first = open_group(store)[layer][stat]
    n, row_bytes = first.shape[0], math.prod(first.shape[1:]) * first.dtype.itemsize
    chunk = first.chunks[0]
    if step is None:
        step = chunk * max(1, READ_BYTES // max(chunk * row_bytes, 1))
    return [(lo, min(lo + step, n)) for lo in range(start, n, step)]


def read_block(group, stats: Sequence[str], lo: int, hi: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(rows, {stat: float32 (n, units, ...)}, valid): rows whose values are NaN (unreadable images) are not valid."""
    blocks = {stat: group[stat][lo:hi] for stat in stats}
    first = blocks[stats[0]]
    return np.arange(lo, hi), blocks, np.isfinite(first.reshape(len(first), -1)[:, 0])


def read_blocks(store: str | Path, layer: str, stats: Sequence[str], step: int | None = None,
                start: int = 0) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]]:
    """:func:`read_block` for consecutive blocks of whole store chunks (``stats`` may name ``spatial`` too)."""
    group = open_group(store)[layer]
    for lo, hi in block_ranges(store, layer, stats[0], step, start):
        yield read_block(group, stats, lo, hi)
