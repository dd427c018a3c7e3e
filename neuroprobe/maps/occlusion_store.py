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

import numpy as np
import torch

from ..models.capture import probe
from ..data import ImageDataset, Manifest, read_manifest
from ..errors import NeuroprobeError
from ..store.location import Location
from ..engine.device import resolve_device
from ..progress import Progress
from ..models.loading import LoadedModel, load_model
from ..store.map_store import ArraySpec, consolidate, as_json, mark_done, open_map_store
from .occlusion import discrepancy_maps, occluder_positions

log = logging.getLogger(__name__)


def occlude(model: str | LoadedModel, data: str | Path | Manifest, layer: str, out: str | Path, *,
            weights: str | None = None, units: Sequence[int] | None = None, window: int = 11, stride: int = 3,
            fill: str = "noise", response: str = "peak", absolute: bool = False, rf_only: bool = False,
            device: str | None = None, overwrite: bool = False, seed: int = 0, **options) -> Path | str:
    """Discrepancy maps of ``units`` of ``layer`` for every image of ``data``, into the store ``out``."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights)
    manifest = data if isinstance(data, Manifest) else read_manifest(data)
    dev = resolve_device(device)
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
    group = open_map_store(out, "occlusion", settings, manifest, arrays, overwrite)
    if "units" not in group["discrepancy"].attrs:
        group["discrepancy"].attrs["units"] = unit_list
    done = group["done"]
    pending = np.flatnonzero(~done[:])
    log.info("%d of %d images to do (%d occluded copies each at most)", len(pending), len(manifest), ny * nx)
    dataset = ImageDataset(manifest, loaded.preprocessing)
    meter = Progress(len(pending), "occlude", "img")
    for count, row in enumerate(pending, start=1):
        _, image, ok, reason = dataset[int(row)]
        if ok:
            maps = discrepancy_maps(loaded, image[None], layer, units=unit_list, window=window, stride=stride,
                                    fill=fill, response=response, absolute=absolute, rf_only=rf_only,
                                    device=device, seed=seed + int(row), **options)
            group["discrepancy"][row] = maps.values[0]
            group["reference"][row] = maps.reference[0]
            group["peak_px"][row] = maps.peak_px[0]
            if count == 1 or "geometry" not in group["discrepancy"].attrs:
                group["discrepancy"].attrs.update(as_json(maps.geometry))
        mark_done(group, [row], [ok], [reason])
        meter.update(1)
        if not ok:
            log.info("image %d (%s) skipped: %s", row, manifest.table["path"].iat[row], reason)
    meter.close()
    consolidate(out)
    return Location.of(out).path or str(out)
