"""Attribution maps of every image of a dataset, batch by batch, into a resumable Zarr store.

Layout: ``map`` (image, y, x) float32 at the input's resolution (the method's channel reduction
and rectification are in its attributes), ``target``, ``predicted`` (image) int64 and ``score``,
``probability`` (image) of the target class; with ``raw=True`` also the signed ``raw`` tensor.
``images/`` and ``done`` as in every map store (:mod:`neuroprobe.store.map_store`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import ImageDataset, Manifest, read_manifest
from ..engine.device import resolve_device
from ..engine.distributed import Distributed
from ..engine.map_jobs import MapJob, start_map_job
from ..errors import NeuroprobeError
from ..models.capture import Capture
from ..models.loading import LoadedModel, load_model
from ..progress import Progress
from ..store.map_store import ArraySpec, mark_done
from .methods import LAYER_METHODS, attribute, check_methods, last_spatial_layer

log = logging.getLogger(__name__)
DEFAULT_TARGET_COLUMN = "class_index"


def output_classes(module: torch.nn.Module, crop: int, device: torch.device) -> int:
    """How many scores the model returns per image (one blank forward pass)."""
    with torch.no_grad():
        return module(torch.zeros(1, 3, crop, crop, device=device)).shape[1]


def target_column(manifest: Manifest, target: str | None, classes: int) -> np.ndarray | None:
    """Class index per image from a manifest column, or None for the model's prediction.

    ``target`` None picks ``class_index`` when the manifest has it, else the prediction.
    """
    if target is None:
        target = DEFAULT_TARGET_COLUMN if DEFAULT_TARGET_COLUMN in manifest.table.columns else "prediction"
    if target == "prediction":
        return None
    if target not in manifest.table.columns:
        raise NeuroprobeError(f"the image table has no column '{target}' (columns: "
                              f"{', '.join(map(str, manifest.table.columns))}); pass --target prediction or a column "
                              "of class indices")
    values = manifest.table[target]
    numbers = np.asarray(values, dtype=np.float64) if pd.api.types.is_numeric_dtype(values) else None
    if numbers is None or np.isnan(numbers).any() or (numbers != np.round(numbers)).any() or \
            numbers.min() < 0 or numbers.max() >= classes:
        raise NeuroprobeError(f"column '{target}' must hold class indices 0..{classes - 1} of the model's output "
                              "for every image; pass --target prediction or another column")
    return numbers.astype(np.int64)


def saliency(model: str | LoadedModel, data: str | Path | Manifest, out: str | Path, method: str = "gradcam", *,
             weights: str | None = None, layer: str | None = None, target: str | None = None, batch_size: int = 16,
             device: str | None = None, raw: bool = False, overwrite: bool = False, **options) -> Path | str:
    """Maps of ``method`` for every image of ``data`` (target: a class-index column or the prediction)."""
    (method,) = check_methods([method])
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights)
    manifest = data if isinstance(data, Manifest) else read_manifest(data)
    dev = resolve_device(device, Distributed.from_environment().local_rank)
    module = loaded.module.to(dev).eval()
    crop = loaded.preprocessing.crop
    blank = torch.zeros(1, 3, crop, crop, device=dev)
    columns = target_column(manifest, target, output_classes(module, crop, dev))
    if method in LAYER_METHODS:
        layer = layer or last_spatial_layer(module, blank)
        Capture(module, [layer], lambda *_: None)   # an unknown name fails here, before the store exists
    elif layer is not None:
        raise NeuroprobeError(f"--layer is for {' and '.join(LAYER_METHODS)}; {method} maps the input")
    arrays = {"map": ArraySpec((crop, crop), ("y", "x")),
              "target": ArraySpec((), (), "int64", -1), "predicted": ArraySpec((), (), "int64", -1),
              "score": ArraySpec((), ()), "probability": ArraySpec((), ())}
    if raw:   # the raw tensor's shape, from one call on a blank image (only then: gated methods are costly)
        shape = attribute(module, blank, 0, method, layer=layer, **options).raw.shape[2:]
        arrays["raw"] = ArraySpec(tuple(shape), tuple(f"raw_{i}" for i in range(len(shape))))
    settings = {"model": loaded.name, "provenance": loaded.provenance, "method": method, "layer": layer,
                "target": "prediction" if columns is None else (target or DEFAULT_TARGET_COLUMN),
                "options": options, "raw": raw, "image_size": crop, "data": manifest.fingerprint()}
    job = start_map_job(out, "saliency", settings, manifest, arrays, overwrite, rows_per_chunk=batch_size)
    if job.dist.rank == 0:
        log.info("%s maps: %d of %d images to do over %d process(es)", method, job.pending, len(manifest),
                 job.dist.world_size)
    loader = torch.utils.data.DataLoader(ImageDataset(manifest, loaded.preprocessing), batch_sampler=job.batches)
    with Progress(job.rows, f"saliency ({method})", "img", rank=job.dist.rank) as meter:
        for rows, images, ok, reasons in loader:
            rows, ok = rows.numpy(), ok.numpy()
            if ok.any():
                _write(job, rows[ok], module, loaded.preprocessing.normalize(images[torch.from_numpy(ok)].to(dev)),
                       columns, method, layer, raw, options)
            mark_done(job.group, rows, ok, reasons)
            meter.update(len(rows))
    return job.finish()


def _write(job: MapJob, rows: np.ndarray, module, x: torch.Tensor, columns, method: str, layer, raw: bool,
           options: dict) -> None:
    with torch.no_grad():
        logits = module(x)
    predicted = logits.argmax(1)
    targets = predicted if columns is None else torch.as_tensor(columns[rows], device=x.device)
    result = attribute(module, x, targets, method, layer=layer, **options)
    job.learn("map", {"reduction": result.reduction})
    values = {"map": result.map[:, 0], "target": targets, "predicted": predicted,
              "score": logits.gather(1, targets[:, None])[:, 0],
              "probability": logits.softmax(1).gather(1, targets[:, None])[:, 0]}
    if raw:
        values["raw"] = result.raw[:, 0]
    for name, value in values.items():
        job.group[name].oindex[rows] = value.detach().cpu().numpy()
