"""The same pass as :func:`~neuroprobe.analysis.scan.scan`, with the blocks read and reduced on a dask cluster.

Each block of store chunks is one task on a worker: it opens the store (a path every worker sees, or
an fsspec URL), reads the block's statistics and runs every collector's own ``block`` on it. The
client merges the partial results in block order with the collectors' ``merge``, the very arithmetic
of the single-process pass, so the tables are equal bit for bit: top/bottom-K keys carry their row,
so ties go to the earlier image whichever block finishes first, and float sums are added in the
same order. The permutation null's per-block member counts are drawn on the client first (cheap,
sequential); each task draws its block's placements from the generator state it is handed.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import NeuroprobeError
from ..location import Location, open_group
from .scan import Collector, block_ranges, needed_stats, read_block

log = logging.getLogger(__name__)

IN_FLIGHT_PER_THREAD = 3  # blocks submitted ahead of the merge, per worker thread: bounds memory on both sides


@contextlib.contextmanager
def dask_client(scheduler: Any) -> Iterator[Any]:
    """A ``distributed.Client`` from a client (used as it is) or a scheduler address (connected, then closed)."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise NeuroprobeError("--scheduler needs dask.distributed: pip install 'neuroprobe[dask]'") from exc
    if isinstance(scheduler, Client):
        yield scheduler
        return
    try:
        client = Client(str(scheduler))  # waits dask's `distributed.comm.timeouts.connect` (30 s by default)
    except (OSError, TimeoutError, ValueError) as exc:
        raise NeuroprobeError(f"cannot reach the dask scheduler at {scheduler} ({exc}); start one with "
                              "'dask scheduler' and 'dask worker ADDRESS', or check --scheduler") from exc
    try:
        yield client
    finally:
        client.close()


@functools.lru_cache(maxsize=16)
def _layer_group(store: str, layer: str):
    """The layer's zarr group, opened once per worker process (metadata reads are remote round trips)."""
    return open_group(store)[layer]


def _block_task(store: str, layer: str, stats: Sequence[str], lo: int, hi: int, collectors: Sequence[Collector],
                draws: Sequence[Any]) -> list[Any]:
    """On a worker: read one block and return every collector's partial result for it."""
    rows, blocks, valid = read_block(_layer_group(store, layer), stats, lo, hi)
    return [c.block(rows, blocks, valid, d) for c, d in zip(collectors, draws, strict=True)]


def _expected_kept(collector: Collector, ranges: Sequence[tuple[int, int]], valid: Sequence[np.ndarray] | None):
    if not hasattr(collector, "draws"):
        return None
    return [collector.kept(np.arange(lo, hi), None if valid is None else valid[i]) for i, (lo, hi) in enumerate(ranges)]


def scan_dask(client: Any, store: str | Path, layer: str, make_collectors: Callable[[], Sequence[Collector]],
              progress: Callable[[int], None] | None = None) -> Sequence[Collector]:
    """Run the collectors over ``layer`` on the cluster of ``client``; returns them, filled.

    The permutation counts assume that every readable, labelled image has finite values (true of
    every store extraction writes: NaN rows are exactly the unreadable images). Should a block keep
    fewer, its count is known once it is read, and the layer is run again with the counts found.
    """
    location = str(Location.of(store))
    ranges = block_ranges(store, layer)
    kept_found: list[list[int] | None] | None = None
    while True:
        collectors = list(make_collectors())
        stats = needed_stats(collectors)
        kept = [found if found is not None else _expected_kept(c, ranges, None)
                for c, found in zip(collectors, kept_found or [None] * len(collectors))]
        draws = [c.draws(k) if k is not None else [None] * len(ranges) for c, k in zip(collectors, kept)]
        shared = client.scatter(collectors, broadcast=True)  # membership and class codes travel once
        actual: list[list[int] | None] = [[] if k is not None else None for k in kept]
        mismatch = False
        for i, partials in enumerate(_in_order(client, ranges, lambda i, lo, hi: client.submit(
                _block_task, location, layer, stats, lo, hi, shared, [d[i] for d in draws], pure=False,
                priority=-i))):
            for j, (collector, partial) in enumerate(zip(collectors, partials)):
                if actual[j] is not None:
                    actual[j].append(partial.kept)
                    if partial.kept != kept[j][i]:
                        mismatch = True
                if not mismatch:
                    collector.merge(partial)
            if progress:
                progress(ranges[i][1] - ranges[i][0])
        if not mismatch:
            return collectors
        log.warning("%s: some readable images have non-finite values; drawing the permutations again with "
                    "the counts found (a second pass)", layer)
        kept_found = actual


def _in_order(client: Any, ranges: Sequence[tuple[int, int]], submit: Callable) -> Iterator[Any]:
    """Results of ``submit(i, lo, hi)`` in block order, with a bounded number of blocks in flight."""
    window = max(2, IN_FLIGHT_PER_THREAD * sum(client.nthreads().values()))
    futures: dict[int, Any] = {}
    for i in range(min(window, len(ranges))):
        futures[i] = submit(i, *ranges[i])
    for i in range(len(ranges)):
        result = futures.pop(i).result()
        following = i + window
        if following < len(ranges):
            futures[following] = submit(following, *ranges[following])
        yield result
