"""Map jobs (occlusion, saliency, likelihood maps) on one process or under ``torchrun``, as ``extract`` runs.

Rank 0 creates (or checks) the map store and runs ``setup`` on it; every rank then reads which images are
done, and takes every N-th pending store chunk. Chunks are disjoint, so ranks never write the same file;
attributes that several ranks could learn (a map's geometry) are written one rank at a time at the end,
and rank 0 consolidates the metadata. A killed job resumes with the same command on any number of
processes, and the store equals one process's, bit for bit (the same chunks are computed the same way).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import zarr

from ..data import Manifest
from ..store.location import Location
from ..store.map_store import ArraySpec, as_json, consolidate, open_map_store
from .distributed import Distributed


@dataclass
class MapJob:
    """This process's share of a map store's pending images, one store chunk per batch of rows."""

    out: Location
    group: zarr.Group
    dist: Distributed
    batches: list[list[int]]          # this process's pending rows, one list per store chunk
    pending: int                      # pending images over all processes
    learned: dict[str, dict] = field(default_factory=dict)   # array -> attributes to write when missing

    @property
    def rows(self) -> int:
        return sum(len(batch) for batch in self.batches)

    def learn(self, array: str, attrs: dict) -> None:
        """Remember attributes of ``array`` found while computing (written once, by :meth:`finish`)."""
        if array not in self.learned:
            self.learned[array] = as_json(attrs)

    def finish(self) -> Path | str:
        """Write the learned attributes one rank at a time, consolidate on rank 0; returns the store's path."""
        for rank in range(self.dist.world_size):
            if rank == self.dist.rank:
                for name, attrs in self.learned.items():
                    array = self.group[name]
                    missing = {k: v for k, v in attrs.items() if k not in array.attrs}
                    if missing:
                        array.attrs.update(missing)
            self.dist.barrier()
        if self.dist.rank == 0:
            consolidate(self.out)
        self.dist.barrier()
        return self.out.path or self.out.url


def start_map_job(out: str | Path | Location, kind: str, settings: dict, manifest: Manifest,
                  arrays: dict[str, ArraySpec], overwrite: bool, rows_per_chunk: int = 1,
                  setup: Callable[[zarr.Group], None] | None = None) -> MapJob:
    """Open (rank 0: create or check) the map store ``out`` and split its pending chunks among the ranks."""
    dist = Distributed.from_environment()
    out = Location.of(out)
    if dist.rank == 0:
        group = open_map_store(out, kind, settings, manifest, arrays, overwrite, rows_per_chunk)
        if setup is not None:
            setup(group)
    dist.barrier()
    if dist.rank != 0:
        group = out.open_group(mode="r+")
    pending = np.flatnonzero(~group["done"][:])
    dist.barrier()  # every process has read `done` before any writes to it: all split the same list
    chunks = np.split(pending, np.flatnonzero(np.diff(pending // rows_per_chunk)) + 1) if len(pending) else []
    mine = [chunk.tolist() for chunk in chunks[dist.rank::dist.world_size]]
    return MapJob(out, group, dist, mine, len(pending))
