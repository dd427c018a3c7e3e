"""The same pass as :func:`~neuroprobe.analysis.scan.scan`, with the blocks read and reduced on a dask cluster.

Each group of GROUP_BLOCKS blocks of store chunks is one task on a worker: it opens the store (a
path every worker sees, or an fsspec URL), reads the blocks one by one and runs every collector's
own ``block`` on each, into the group's partial result. The client merges the groups' partial results in
order with the collectors' ``merge``, the very arithmetic of the single-process pass (which sums the
same groups), so the tables are equal bit for bit: top/bottom-K keys carry their row, so ties go to
the earlier image whichever task finishes first, and float sums are added in the same order. The
permutation null's per-block member counts are drawn on the client first (cheap, sequential); each
task draws its blocks' placements from the generator states it is handed.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import NeuroprobeError
from ..store.location import Location, open_group
from .scan import GROUP_BLOCKS, Collector, block_ranges, needed_stats, read_block

log = logging.getLogger(__name__)

IN_FLIGHT_PER_THREAD = 2  # groups submitted ahead of the merge, per worker thread: bounds memory on both sides


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


def _group_task(store: str, layer: str, stats: Sequence[str], ranges: Sequence[tuple[int, int]],
                collectors: Sequence[Collector], draws: Sequence[Sequence[Any]]) -> list[Any]:
    """On a worker: read one group of blocks, one block at a time; every collector's partial for the group."""
    group = _layer_group(store, layer)
    partials: list[Any] = [None] * len(collectors)
    for b, (lo, hi) in enumerate(ranges):
        rows, blocks, valid = read_block(group, stats, lo, hi)
        for j, collector in enumerate(collectors):
            partials[j] = collector.block(rows, blocks, valid, draws[j][b], into=partials[j])
    return partials


def _expected_kept(collector: Collector, ranges: Sequence[tuple[int, int]]) -> list[int] | None:
    """Images per block a collector that draws permutations will keep, from the image table alone."""
    if not hasattr(collector, "draws"):
        return None
    return [collector.kept(np.arange(lo, hi)) for lo, hi in ranges]


def scan_dask(client: Any, store: str | Path, layer: str, make_collectors: Callable[[], Sequence[Collector]],
              progress: Callable[[int], None] | None = None) -> Sequence[Collector]:
    """Run the collectors over ``layer`` on the cluster of ``client``; returns them, filled.

    One task per group of GROUP_BLOCKS blocks (the single pass sums the same groups). The permutation
    counts assume that every readable, labelled image has finite values (true of every store that
    extraction writes: NaN rows are exactly the unreadable images). Should a block keep fewer, its
    count is known once it is read, and the layer runs again with the counts found.
    """
    location = str(Location.of(store))
    ranges = block_ranges(store, layer)
    groups = [list(range(i, min(i + GROUP_BLOCKS, len(ranges)))) for i in range(0, len(ranges), GROUP_BLOCKS)]
    kept_found: list[list[int] | None] | None = None
    while True:
        collectors = list(make_collectors())
        stats = needed_stats(collectors)
        kept = [found if found is not None else _expected_kept(c, ranges)
                for c, found in zip(collectors, kept_found or [None] * len(collectors))]
        draws = [c.draws(k) if k is not None else [None] * len(ranges) for c, k in zip(collectors, kept)]
        shared = client.scatter(collectors, broadcast=True)  # membership and class codes travel once

        def submit(g: int) -> Any:
            blocks = groups[g]
            return client.submit(_group_task, location, layer, stats, [ranges[b] for b in blocks], shared,
                                 [[d[b] for b in blocks] for d in draws], pure=False, priority=-g)

        actual: list[list[int] | None] = [[] if k is not None else None for k in kept]
        mismatch = False
        for g, partials in enumerate(_in_order(client, len(groups), submit)):
            for j, (collector, partial) in enumerate(zip(collectors, partials)):
                if actual[j] is not None:
                    actual[j].extend(partial.kept)
                    mismatch = mismatch or partial.kept != [kept[j][b] for b in groups[g]]
                if not mismatch:
                    collector.merge(partial)
            if progress:
                progress(ranges[groups[g][-1]][1] - ranges[groups[g][0]][0])
        if not mismatch:
            return collectors
        log.warning("%s: some readable images have non-finite values; drawing the permutations again with "
                    "the counts found (a second pass)", layer)
        kept_found = actual


def _in_order(client: Any, count: int, submit: Callable[[int], Any]) -> Iterator[Any]:
    """Results of ``submit(i)`` for i < count, in order, with a bounded number of tasks in flight."""
    window = max(2, IN_FLIGHT_PER_THREAD * sum(client.nthreads().values()))
    futures = {i: submit(i) for i in range(min(window, count))}
    for i in range(count):
        result = futures.pop(i).result()
        if i + window < count:
            futures[i + window] = submit(i + window)
        yield result
