"""Batches of decoded images for the extraction loop, decoded while the model runs.

Two decoders behind one iterator: ``cpu`` (PIL in DataLoader workers, or, when there are none,
in one background thread, at idle priority where it shares the cores with the model) and ``gpu``
(JPEG bytes read by the workers, decoded in batches on the extraction device by
:mod:`neuroprobe.engine.decode`; what it cannot decode falls back to PIL per image). Either way the loop receives uint8 images laid out channels-last (the layout PIL
decodes to, so no copy is made on the host) and the per-image records.
"""
from __future__ import annotations

import functools
import os
import queue
import signal
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..data import MAX_PIXELS, ImageDataset, Manifest
from .device import available_cores

DECODERS = ("cpu", "gpu")
_DONE = object()


@dataclass
class Batch:
    """One batch of rows: uint8 (B, 3, H, W) images (on the device for ``gpu``), ok flags and reasons."""

    rows: list[int]
    images: torch.Tensor
    ok: np.ndarray
    reasons: list[str]


def collate_images(items: Sequence[tuple]) -> tuple[list[int], torch.Tensor, np.ndarray, list[str]]:
    """(row, (3, H, W) uint8 image, ok, reason) items -> one channels-last uint8 batch, stacked by NumPy.

    NumPy rather than ``torch.stack``: in a background thread a torch op would start a second
    OpenMP team that competes with the model's threads for the cores.
    """
    rows, images, ok, reasons = zip(*items)
    hwc = torch.empty((len(images), *images[0].shape[1:], images[0].shape[0]), dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        hwc.share_memory_()  # a worker's batch crosses to the main process without another copy
    np.stack([image.permute(1, 2, 0).numpy() for image in images], out=hwc.numpy())
    return list(rows), hwc.permute(0, 3, 1, 2), np.array(ok, dtype=bool), list(reasons)


def image_batches(manifest: Manifest, preprocessing, batches: Sequence[Sequence[int]], device: torch.device, *,
                  workers: int, decode: str = "cpu", max_pixels: int = MAX_PIXELS) -> Iterator[Batch]:
    """Decoded batches of ``batches`` (lists of manifest rows), in order, decoding ahead of the consumer."""
    cuda = device.type == "cuda"
    if decode == "gpu":
        from .decode import DeviceDecodeDataset, DeviceDecoder, collate_device_batch

        dataset, collate = DeviceDecodeDataset(manifest, preprocessing, max_pixels), collate_device_batch
        decoder = DeviceDecoder(preprocessing, device)
    else:
        dataset, collate, decoder = ImageDataset(manifest, preprocessing, max_pixels), collate_images, None
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=[list(b) for b in batches], num_workers=workers, collate_fn=collate,
        pin_memory=cuda, persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_leave_signals_to_the_main_process if workers > 0 else None)
    source: Iterable = loader if workers > 0 else in_background(loader, depth=2, idle=not _spare_core(device))
    for item in source:
        if decoder is None:
            rows, images, ok, reasons = item
            yield Batch(rows, images, ok, reasons)
        else:
            images, ok, reasons = decoder(item)  # already on the device
            yield Batch(item.rows.tolist(), images, ok.numpy(), reasons)


def _leave_signals_to_the_main_process(worker_id: int) -> None:
    """Decoding workers ignore SIGINT/SIGTERM (Ctrl-C and schedulers signal every process of the job): the
    main process stops gracefully and ends them; they still exit when it dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _spare_core(device: torch.device) -> bool:
    """Whether a decoding thread finds a core the model leaves free (a GPU run, or fewer torch threads than cores)."""
    return device.type == "cuda" or torch.get_num_threads() < available_cores()


def in_background(iterable: Iterable, depth: int = 2, idle: bool = False) -> Iterator:
    """Iterate ``iterable`` in a daemon thread, ``depth`` items ahead; its exceptions re-raise here.

    ``idle``: the thread runs at Linux's SCHED_IDLE priority while it is ahead of the consumer, on
    cycles no other thread wants. When it shares the cores with torch's OpenMP team, a decoder at
    normal priority takes a core from one member and the others wait for it at every op; at idle
    priority it cannot. But an idle thread starves when other processes keep every core busy (a
    shared machine), so whenever the consumer finds nothing to take it raises the thread to normal
    priority (the model is waiting anyway), and the thread drops back to idle once it is ``depth``
    items ahead. Where the process may not raise a thread back (no CAP_SYS_NICE, RLIMIT_NICE < 20)
    the thread never goes idle.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    priority = _DecoderPriority() if idle and _idle_is_reversible() else None

    def produce() -> None:
        if priority is not None:
            priority.attach()
        try:
            for item in iterable:
                if not _put(items, item, stop):
                    return
                if priority is not None and items.full():
                    priority.set(idle=True)
            _put(items, _DONE, stop)
        except BaseException as exc:  # handed to the consumer, raised there
            _put(items, _Failure(exc), stop)

    thread = threading.Thread(target=produce, name="neuroprobe-decode", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = items.get_nowait()
            except queue.Empty:
                if priority is not None:
                    priority.set(idle=False)
                item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


class _DecoderPriority:
    """The decoding thread's scheduling policy, switched from either thread: idle or normal."""

    def __init__(self) -> None:
        self.tid: int | None = None
        self.idle = False
        self.lock = threading.Lock()

    def attach(self) -> None:
        """Called by the decoding thread itself: remember it, start at idle priority."""
        self.tid = threading.get_native_id()
        self.set(idle=True)

    def set(self, idle: bool) -> None:
        with self.lock:
            if self.tid is None or self.idle == idle:
                return
            try:
                os.sched_setscheduler(self.tid, os.SCHED_IDLE if idle else os.SCHED_OTHER, os.sched_param(0))
            except OSError:  # not permitted here: keep the current policy
                return
            self.idle = idle


@functools.cache
def _idle_is_reversible() -> bool:
    """Whether a thread of this process that went to SCHED_IDLE may come back to normal priority
    (tried once, in a throwaway thread)."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="neuroprobe-priority-probe", daemon=True)
    thread.start()
    thread.join()
    return bool(result and result[0])


@dataclass
class _Failure:
    exc: BaseException


def _put(items: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` unless the consumer has gone; False when it has."""
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
