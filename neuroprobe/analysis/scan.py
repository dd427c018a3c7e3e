"""One pass over a layer's statistics, block by block, feeding every collector that needs them."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import zarr

from ..errors import NeuroprobeError, closest

READ_BYTES = 16 << 20  # per statistic and read: one or a few store chunks at a time


class Collector(Protocol):
    """Something that consumes blocks of some statistics of one layer."""

    stats: Sequence[str]

    def add(self, rows: np.ndarray, blocks: dict[str, np.ndarray], valid: np.ndarray) -> None: ...


def layer_names(store: str | Path, layers: Sequence[str] | None = None) -> list[str]:
    """The requested layers (all stored ones by default), checked against the store."""
    stored = list(zarr.open_group(str(store), mode="r").attrs["layers"])
    for layer in layers or []:
        if layer not in stored:
            raise NeuroprobeError(f"layer '{layer}' is not in {store}; stored layers: {closest(layer, stored)}")
    return list(layers) if layers else stored


def read_blocks(store: str | Path, layer: str, stats: Sequence[str],
                step: int | None = None, start: int = 0) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(rows, {stat: (n, units, ...)}) for consecutive blocks of whole store chunks (``stats`` may name
    ``spatial`` too); ``step``: rows per block, to read several layers in lockstep (default: ~READ_BYTES);
    ``start``: first row (a multiple of the chunk size)."""
    group = zarr.open_group(str(store), mode="r")[layer]
    arrays = {stat: group[stat] for stat in stats}
    first = next(iter(arrays.values()))
    n, row_bytes = first.shape[0], math.prod(first.shape[1:]) * first.dtype.itemsize
    chunk = first.chunks[0]
    if step is None:
        step = chunk * max(1, READ_BYTES // max(chunk * row_bytes, 1))
    for lo in range(start, n, step):
        hi = min(lo + step, n)
        yield np.arange(lo, hi), {stat: array[lo:hi] for stat, array in arrays.items()}


def scan(store: str | Path, layer: str, collectors: Sequence[Collector],
         progress: Callable[[int], None] | None = None) -> None:
    """Read each statistic the collectors need once, in blocks; rows that are NaN are marked invalid."""
    stats = list(dict.fromkeys(s for c in collectors for s in c.stats))
    for rows, blocks in read_blocks(store, layer, stats):
        valid = np.isfinite(next(iter(blocks.values()))[:, 0])
        for collector in collectors:
            collector.add(rows, blocks, valid)
        if progress:
            progress(len(rows))
