"""The batched engine: images -> model + capture points -> pooled statistics -> Zarr store.

Per batch, nothing waits on the host: uint8 images cross to the device without blocking, are
normalized there, the forward pass stops after the deepest requested layer, statistics are pooled
on the device and copied without blocking into pinned chunk buffers. A background thread waits
for each finished chunk's copies and writes it, so the device never waits for the disk. Chunks
already in the journal are skipped, which makes a killed job resumable; under ``torchrun`` each
process takes every N-th pending chunk.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..data import MAX_PIXELS, ImageDataset, Manifest, read_manifest
from ..errors import NeuroprobeError
from ..models.capture import Capture, LayerInfo, probe
from ..models.loading import LoadedModel, load_model
from ..progress import Progress
from ..store.kinds import check_replaceable
from ..store.layout import STATS, Store, default_chunk_size
from ..store.location import Location
from ..store.lock import writer_lock
from ..version import __version__
from .device import AMP_DTYPES, MEMORY_FORMATS, autocast, choose_memory_format, default_workers, resolve_device
from .distributed import Distributed
from .loader import DECODERS, image_batches
from .malloc import keep_freed_memory_on_cpu
from .reduce import pool_units
from .stopping import Stopped, StopRequest, stop_on_signals
from .writer import ChunkBuffer, ChunkWriter

log = logging.getLogger(__name__)


@dataclass
class ExtractionPlan:
    """Everything that determines the store's contents; a resumed run must match it exactly."""

    model: LoadedModel
    manifest: Manifest
    layers: dict[str, LayerInfo]
    spatial: list[str]
    post_activation: bool
    amp: str | None
    chunk_size: int
    decode: str = "cpu"
    memory_format: str = "contiguous"
    extra_attrs: dict[str, Any] = field(default_factory=dict)

    def attrs(self) -> dict[str, Any]:
        return {
            "neuroprobe_version": __version__,
            "provenance": self.model.provenance,
            "preprocessing": self.model.preprocessing.to_dict(),
            "capture": "post-activation" if self.post_activation else "pre-activation",
            "amp": self.amp or "none",
            "decode": self.decode,
            "memory_format": self.memory_format,
            "manifest_sha256": self.manifest.fingerprint(),
        } | self.extra_attrs

    def identity(self) -> dict[str, Any]:
        return resume_identity(self.attrs() | {"layers": list(self.layers), "spatial_layers": self.spatial,
                                               "chunk_size": self.chunk_size})


def resume_identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """The attributes that must agree for a store to be resumed (JSON-normalised for comparison)."""
    provenance = attrs.get("provenance", {})
    keys = ("preprocessing", "capture", "amp", "manifest_sha256", "layers", "spatial_layers", "chunk_size")
    identity = {k: provenance.get(k) for k in ("model", "weights", "weights_sha256")} | {k: attrs.get(k) for k in keys}
    identity["decode"] = attrs.get("decode", "cpu")  # decoders differ by a few levels: one per store
    return json.loads(json.dumps(identity))


def extract(model: str | LoadedModel, data: str | Path | Manifest, layers: Sequence[str], out: str | Path, *,
            weights: str | None = None, batch_size: int = 64, device: str | None = None,
            workers: int | None = None, post_activation: bool = False, spatial: Sequence[str] = (),
            amp: str | None = None, memory_format: str = "auto", decode: str = "cpu",
            chunk_size: int | None = None, overwrite: bool = False, progress: bool | None = None,
            max_pixels: int = MAX_PIXELS, extra_attrs: dict[str, Any] | None = None,
            channels_last: bool | None = None) -> Path | str:
    """Extract pooled statistics of ``layers`` for every image of ``data`` into the store ``out``.

    ``out`` is a folder or an fsspec URL (``s3://bucket/run.zarr``). Resumes a store made by the same
    model/weights/layers/data; refuses a different one unless ``overwrite``. Returns the store's path
    (its URL for a remote store). Read it with :func:`neuroprobe.open_layer`.
    ``workers=None`` decodes in a background thread on the CPU and in a share of the cores'
    processes on a GPU; ``memory_format="auto"`` runs convolutional models channels-last;
    ``decode="gpu"`` decodes JPEGs on the extraction device (see :mod:`neuroprobe.engine.decode`).
    ``channels_last=True`` is the older spelling of ``memory_format="channels_last"``.
    SIGTERM/SIGINT stop it after the chunks being written are journaled (:class:`~neuroprobe.engine.stopping.Stopped`);
    a second extract on the same local store is refused (:mod:`neuroprobe.store.lock`); chunk files that no
    longer decode are recomputed (:meth:`Store.repair`).
    """
    if amp not in (None, "none", *AMP_DTYPES):
        raise NeuroprobeError(f"unknown --amp '{amp}'; use bf16, fp16 or none")
    amp = None if amp == "none" else amp
    if batch_size < 1:
        raise NeuroprobeError("--batch-size must be at least 1")
    if decode not in DECODERS:
        raise NeuroprobeError(f"unknown --decode '{decode}'; use {' or '.join(DECODERS)}")
    if workers is not None and workers < 0:
        raise NeuroprobeError("--workers must be 0 or more")
    if channels_last:
        memory_format = "channels_last"
    spatial = list(dict.fromkeys(spatial))
    unknown = [s for s in spatial if s not in layers]
    if unknown:
        raise NeuroprobeError(f"--spatial {' '.join(unknown)} must also be among --layers")
    out = Location.of(out)
    with stop_on_signals() as stop:
        return _extract(model, data, layers, out, stop, weights=weights, batch_size=batch_size, device=device,
                        workers=workers, post_activation=post_activation, spatial=spatial, amp=amp,
                        memory_format=memory_format, decode=decode, chunk_size=chunk_size, overwrite=overwrite,
                        progress=progress, max_pixels=max_pixels, extra_attrs=extra_attrs)


def _extract(model, data, layers, out: Location, stop: StopRequest, *, weights, batch_size, device, workers,
             post_activation, spatial, amp, memory_format, decode, chunk_size, overwrite, progress, max_pixels,
             extra_attrs) -> Path | str:
    """:func:`extract` after its arguments are checked, with the stop request of its signal handlers."""
    _check_writable(out)
    manifest = data if isinstance(data, Manifest) else read_manifest(data)  # cheap mistakes first
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights)
    dist = Distributed.from_environment()
    dev = resolve_device(device, dist.local_rank)
    keep_freed_memory_on_cpu(dev)
    if dev.type == "cuda":  # under torchrun: this rank's GPU is the current one (events, pinned buffers, cuDNN)
        torch.cuda.set_device(dev)
    fmt = choose_memory_format(loaded.module, memory_format)
    module = loaded.module.to(dev).eval().to(memory_format=MEMORY_FORMATS[fmt])
    crop = loaded.preprocessing.crop
    example = torch.zeros(1, 3, crop, crop, device=dev).contiguous(memory_format=MEMORY_FORMATS[fmt])
    infos = probe(module, layers, example, post_activation)
    plan = ExtractionPlan(loaded, manifest, infos, spatial, post_activation, amp,
                          chunk_size or default_chunk_size(infos, spatial), decode, fmt, extra_attrs or {})
    if workers is None:
        workers = default_workers(dev, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

    store = _open_or_create(out, plan, dist, overwrite, explicit_chunk=chunk_size is not None)
    lock = writer_lock(out) if dist.world_size == 1 else contextlib.nullcontext()  # torchrun ranks share by design
    with lock:
        if dist.rank == 0:
            redone = store.repair(manifest)
            if redone:
                log.warning("%s: recomputing %d chunk(s) whose files were corrupted: %s", out, len(redone), redone)
        dist.barrier()
        pending = store.pending_chunks()
        dist.barrier()  # every process has read the journal before any writes to it: all split the same list
        mine = pending[dist.rank::dist.world_size]
        total = len(manifest)
        done_before = total - sum(len(store.chunk_rows(c)) for c in pending)
        if dist.rank == 0:
            log.info("%s: %d images, %d already done, %d chunks to do over %d process(es); %s, decode %s, "
                     "%d worker(s)", out, total, done_before, len(pending), dist.world_size, fmt, decode, workers)
        if mine and stop.signum is None:
            _run(store, plan, module, dev, mine, batch_size, workers, progress, max_pixels, dist, stop)
        if stop.signum is not None:  # no barrier: the other ranks stop on their own signal
            raise Stopped(stop.signum, str(out))
    dist.barrier()
    return out.path or out.url


def _check_writable(location: Location) -> None:
    if location.remote:
        location.check_writable()
        return
    out = location.path
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NeuroprobeError(f"cannot write {out}: cannot create folder {parent} ({exc.strerror}); choose another --out") from exc
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise NeuroprobeError(f"cannot write {out}: no write permission there; choose another --out")
    if out.exists() and not out.is_dir():
        raise NeuroprobeError(f"{out} exists and is not a store; choose another --out")


def _open_or_create(out: Location, plan: ExtractionPlan, dist: Distributed, overwrite: bool,
                    explicit_chunk: bool) -> Store:
    """Rank 0 creates the store, or checks that an existing one was made the same way; all ranks open it."""
    if dist.rank == 0:
        is_store = check_replaceable(out, "extraction") is not None  # never another kind of store, even to overwrite
        if is_store and not overwrite:
            store = Store(out)
            if not explicit_chunk:
                plan.chunk_size = store.chunk_size
            stored, wanted = resume_identity(store.attrs), plan.identity()
            diff = [k for k in wanted if stored.get(k) != wanted[k]]
            if diff:
                detail = "; ".join(f"{k}: store has {stored.get(k)!r}, this run {wanted[k]!r}" for k in diff[:2])
                raise NeuroprobeError(f"{out} was made with other settings ({detail}); "
                                      "use another --out, or --overwrite to replace it")
        else:
            Store.create(out, plan.manifest, plan.layers, plan.attrs(), plan.chunk_size, plan.spatial)
    dist.barrier()
    store = Store(out)
    plan.chunk_size = store.chunk_size
    return store


def _batches(store: Store, chunks: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Row indices in batches that never straddle a chunk, chunk by chunk."""
    for chunk in chunks:
        rows = store.chunk_rows(chunk)
        for lo in range(rows.start, rows.stop, batch_size):
            yield list(range(lo, min(lo + batch_size, rows.stop)))


def _run(store: Store, plan: ExtractionPlan, module: torch.nn.Module, dev: torch.device, chunks: list[int],
         batch_size: int, workers: int, progress: bool | None, max_pixels: int, dist: Distributed,
         stop: StopRequest) -> None:
    """The loop: decoded batches in, pooled statistics out to chunk buffers, chunks to the writer.

    After a stop request the chunk being filled is dropped and the ones handed to the writer are finished."""
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    batches = image_batches(plan.manifest, plan.model.preprocessing, list(_batches(store, chunks, batch_size)), dev,
                            workers=workers, decode=plan.decode, max_pixels=max_pixels)
    fmt = MEMORY_FORMATS[plan.memory_format]
    writer = ChunkWriter(store, plan.layers, plan.spatial, pinned=cuda)
    batch_values: dict[str, torch.Tensor] = {}

    def on_value(name: str, value: torch.Tensor) -> None:
        batch_values[name] = pool_units(value)
        if name in plan.spatial:
            batch_values[name + "/spatial"] = value.to(torch.float16, memory_format=torch.contiguous_format, copy=True)

    meter = Progress(sum(len(store.chunk_rows(c)) for c in chunks), "extract", "img",
                     mode={True: "bar", False: "log", None: None}[progress], rank=dist.rank)
    current: ChunkBuffer | None = None
    try:
        with torch.no_grad(), Capture(module, list(plan.layers), on_value, plan.post_activation,
                                      plan=plan.layers) as capture:
            for batch in batches:
                if stop.signum is not None:
                    current = None  # abandoned: never written, never journaled
                    break
                first = batch.rows[0]
                chunk = first // store.chunk_size
                if current is None or current.chunk != chunk:
                    if current is not None:
                        writer.submit(current)
                    current = writer.buffer(chunk)
                x = batch.images.to(dev, non_blocking=True)
                x = plan.model.preprocessing.normalize(x).contiguous(memory_format=fmt)
                batch_values.clear()
                with autocast(dev, plan.amp):
                    capture.run(x)
                current.put(first - store.chunk_rows(chunk).start, batch_values, batch.ok, batch.reasons)
                meter.update(len(batch.rows))
            if current is not None and stop.signum is None:
                writer.submit(current)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        batches.close()  # the decoding thread or worker processes end here, also after a stop
        meter.close()


def pool_images(model: LoadedModel, manifest: Manifest, layers: Sequence[str], *, post_activation: bool = False,
                amp: str | None = None, batch_size: int = 32, device: str | None = None) -> dict[str, np.ndarray]:
    """In memory, for a few images: {layer: float32 (image, 4, units)} pooled exactly as ``extract`` pools.

    Rows of unreadable images are NaN. Used to verify stores and by tools that need the model.
    """
    dev = resolve_device(device)
    module = model.module.to(dev).eval()
    crop = model.preprocessing.crop
    plan = probe(module, layers, torch.zeros(1, 3, crop, crop, device=dev), post_activation)
    out = {name: np.full((len(manifest), len(STATS), info.units), np.nan, dtype=np.float32)
           for name, info in plan.items()}
    loader = torch.utils.data.DataLoader(ImageDataset(manifest, model.preprocessing), batch_size=batch_size)
    batch: dict[str, torch.Tensor] = {}
    with torch.no_grad(), Capture(module, list(plan), lambda n, v: batch.__setitem__(n, pool_units(v)),
                                  post_activation, plan=plan) as capture:
        for rows, images, ok, _ in loader:
            with autocast(dev, amp):
                capture.run(model.preprocessing.normalize(images.to(dev)))
            keep = rows[ok].numpy()
            for name, values in batch.items():
                out[name][keep] = values.cpu().numpy()[ok.numpy()]
    return out
