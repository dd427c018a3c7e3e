"""Chunk buffers filled by non-blocking device->host copies, written by a background thread."""
from __future__ import annotations

import queue
import threading
import time
from typing import Sequence

import numpy as np
import torch

from ..models.capture import LayerInfo
from ..store.layout import STATS, Store

POOL_SIZE = 3  # buffers in flight: one being filled, one being written, one spare


class ChunkBuffer:
    """Host memory for one image chunk: stats (n, 4, units) per layer, spatial maps, status."""

    def __init__(self, chunk_size: int, layers: dict[str, LayerInfo], spatial: Sequence[str], pinned: bool) -> None:
        self.stats = {name: torch.empty((chunk_size, len(STATS), info.units), dtype=torch.float32, pin_memory=pinned)
                      for name, info in layers.items()}
        self.spatial = {name: torch.empty((chunk_size, *layers[name].shape), dtype=torch.float16, pin_memory=pinned)
                        for name in spatial}
        self.ok = np.zeros(chunk_size, dtype=bool)
        self.reasons = [""] * chunk_size
        self.chunk, self.n = -1, 0
        self.event: torch.cuda.Event | None = None

    def reset(self, chunk: int, n: int) -> "ChunkBuffer":
        self.chunk, self.n, self.event = chunk, n, None
        self.ok[:] = False
        self.reasons = [""] * len(self.reasons)
        return self

    def put(self, offset: int, values: dict[str, torch.Tensor], ok: np.ndarray, reasons: list[str]) -> None:
        """Queue the copies of one batch's device results (no host synchronisation)."""
        size = len(ok)
        for name, host in self.stats.items():
            host[offset:offset + size].copy_(values[name], non_blocking=True)
        for name, host in self.spatial.items():
            host[offset:offset + size].copy_(values[name + "/spatial"], non_blocking=True)
        self.ok[offset:offset + size] = ok
        self.reasons[offset:offset + size] = reasons


def _wait(event: "torch.cuda.Event | None") -> None:
    """Wait for a chunk's device->host copies by polling (no host-synchronising CUDA call)."""
    while event is not None and not event.query():
        time.sleep(0.0005)


class ChunkWriter:
    """Writes finished chunks in a background thread; at most POOL_SIZE buffers exist."""

    def __init__(self, store: Store, layers: dict[str, LayerInfo], spatial: Sequence[str], pinned: bool) -> None:
        self.store, self.layers, self.spatial, self.pinned = store, layers, list(spatial), pinned
        self.free: queue.Queue[ChunkBuffer] = queue.Queue()
        self.todo: queue.Queue[ChunkBuffer | None] = queue.Queue()
        self.allocated = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="neuroprobe-writer", daemon=True)
        self.thread.start()

    def buffer(self, chunk: int) -> ChunkBuffer:
        """A free buffer for ``chunk`` (waits for the writer when all are in flight)."""
        self._raise()
        if self.free.empty() and self.allocated < POOL_SIZE:
            self.allocated += 1
            self.free.put(ChunkBuffer(self.store.chunk_size, self.layers, self.spatial, self.pinned))
        while True:
            try:
                buffer = self.free.get(timeout=1.0)
                break
            except queue.Empty:
                self._raise()
        return buffer.reset(chunk, len(self.store.chunk_rows(chunk)))

    def submit(self, buffer: ChunkBuffer) -> None:
        if self.pinned:
            buffer.event = torch.cuda.Event()
            buffer.event.record(torch.cuda.current_stream())
        self.todo.put(buffer)
        self._raise()

    def close(self) -> None:
        """Wait until every submitted chunk is written; re-raise a write error."""
        self.todo.put(None)
        self.thread.join()
        self._raise()

    def abort(self) -> None:
        self.todo.put(None)
        self.thread.join(timeout=60)

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        while True:
            buffer = self.todo.get()
            if buffer is None:
                return
            if self.error is None:
                try:
                    _wait(buffer.event)
                    n = buffer.n
                    stats = {name: host[:n].numpy().transpose(1, 0, 2) for name, host in buffer.stats.items()}
                    spatial = {name: host[:n].numpy() for name, host in buffer.spatial.items()}
                    self.store.write_chunk(buffer.chunk, stats, spatial, buffer.ok[:n].copy(), buffer.reasons[:n])
                except BaseException as exc:  # surfaced in the main thread
                    self.error = exc
            self.free.put(buffer)
