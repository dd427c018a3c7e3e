"""Discrepancy maps of many images written image by image into a resumable Zarr store.

Layout: ``discrepancy`` (image, unit, y, x) float32, one chunk per image, with the occluder geometry
in its attributes; ``reference`` (image, unit) and ``peak_px`` (image, unit, 2) beside it; ``images/``
holds the manifest's columns plus ``status``/``reason``; ``done`` (image) marks finished rows, so the
same command resumes a killed job and never recomputes or loses a written image.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from ..data import ImageDataset, Manifest, read_manifest
from ..engine.device import resolve_device
from ..engine.distributed import Distributed
from ..engine.map_jobs import start_map_job
from ..errors import NeuroprobeError
from ..models.capture import probe
from ..models.loading import LoadedModel, load_model
from ..progress import Progress
from ..store.map_store import ArraySpec, mark_done
from .occlusion import discrepancy_maps, occluder_positions

log = logging.getLogger(__name__)


def occlude(model: str | LoadedModel, data: str | Path | Manifest, layer: str, out: str | Path, *,
            weights: str | None = None, units: Sequence[int] | None = None, window: int = 11, stride: int = 3,
            fill: str = "noise", response: str = "peak", absolute: bool = False, rf_only: bool = False,
            device: str | None = None, overwrite: bool = False, seed: int = 0, **options) -> Path | str:
    """Discrepancy maps of ``units`` of ``layer`` for every image of ``data``, into the store ``out``."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights)
    manifest = data if isinstance(data, Manifest) else read_manifest(data)
    dev = resolve_device(device, Distributed.from_environment().local_rank)
    crop = loaded.preprocessing.crop
    info = probe(loaded.module.to(dev).eval(), [layer], torch.zeros(1, 3, crop, crop, device=dev))[layer]
    if len(info.shape) != 3:
        raise NeuroprobeError(f"layer '{layer}' has no spatial map (shape {info.shape}); choose a conv layer")
    unit_list = list(range(info.units)) if units is None else [int(u) for u in units]
    if any(not 0 <= u < info.units for u in unit_list):
        raise NeuroprobeError(f"--units must lie in 0..{info.units - 1} for layer '{layer}'")
    settings = {"model": loaded.name, "provenance": loaded.provenance, "layer": layer, "units": unit_list,
                "window": window, "stride": stride, "fill": fill, "response": response, "absolute": absolute,
                "rf_only": rf_only, "seed": seed, "image_size": crop, "data": manifest.fingerprint()}
    ny, nx = len(occluder_positions(crop, window, stride)), len(occluder_positions(crop, window, stride))
    arrays = {"discrepancy": ArraySpec((len(unit_list), ny, nx), ("unit", "y", "x")),
              "reference": ArraySpec((len(unit_list),), ("unit",)),
              "peak_px": ArraySpec((len(unit_list), 2), ("unit", "axis"))}
    job = start_map_job(out, "occlusion", settings, manifest, arrays, overwrite,
                        setup=lambda group: group["discrepancy"].attrs.update({"units": unit_list}))
    if job.dist.rank == 0:
        log.info("%d of %d images to do (%d occluded copies each at most) over %d process(es)", job.pending,
                 len(manifest), ny * nx, job.dist.world_size)
    dataset = ImageDataset(manifest, loaded.preprocessing)
    with Progress(job.rows, "occlude", "img", rank=job.dist.rank) as meter:
        for (row,) in job.batches:
            _, image, ok, reason = dataset[row]
            if ok:
                maps = discrepancy_maps(loaded, image[None], layer, units=unit_list, window=window, stride=stride,
                                        fill=fill, response=response, absolute=absolute, rf_only=rf_only,
                                        device=str(dev), seed=seed + row, **options)
                for name, values in (("discrepancy", maps.values), ("reference", maps.reference),
                                     ("peak_px", maps.peak_px)):
                    job.group[name][row] = values[0]
                job.learn("discrepancy", maps.geometry)
            else:
                log.info("image %d (%s) skipped: %s", row, manifest.table["path"].iat[row], reason)
            mark_done(job.group, [row], [ok], [reason])
            meter.update(1)
    return job.finish()
