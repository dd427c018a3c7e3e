"""One pass over a layer's statistics, block by block, feeding every collector that needs them."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from ..store.blocks import READ_BYTES, block_ranges, layer_names, read_block, read_blocks  # noqa: F401 (the scan's reads)

GROUP_BLOCKS = 8       # blocks summed together before their sums join the total: one dask task's share


class Collector(Protocol):
    """Something that consumes blocks of some statistics of one layer."""

    stats: Sequence[str]

    def add(self, rows: np.ndarray, blocks: dict[str, np.ndarray], valid: np.ndarray) -> None: ...

    def block(self, rows: np.ndarray, blocks: dict[str, np.ndarray], valid: np.ndarray, draw=None, into=None): ...

    def merge(self, partial) -> None: ...


def needed_stats(collectors: Sequence[Collector]) -> list[str]:
    """The statistics to read, in a fixed order (the first one decides which rows are valid)."""
    return list(dict.fromkeys(s for c in collectors for s in c.stats))


def scan(store: str | Path, layer: str, collectors: Sequence[Collector],
         progress: Callable[[int], None] | None = None) -> None:
    """Read each statistic the collectors need once, in blocks; rows that are NaN are marked invalid."""
    for rows, blocks, valid in read_blocks(store, layer, needed_stats(collectors)):
        for collector in collectors:
            collector.add(rows, blocks, valid)
        if progress:
            progress(len(rows))
