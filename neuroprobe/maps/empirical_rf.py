"""Empirical receptive fields: discrepancy maps of a unit's top-K images, re-centred and averaged.

Zhou et al. (2015): for each of a unit's top-K images, the pixel-resolution discrepancy map is
shifted so that the centre of the unit's peak position (its theoretical receptive field's centre)
sits at the middle of a (2H-1, 2W-1) canvas; the canvases are averaged (pixels an image does not
cover are left out of its average). The rule used here to read a size off the average: keep the
pixels whose mean discrepancy is at least ``threshold`` times the canvas maximum, take the connected
region that holds the maximum, and report sqrt(area) in pixels and its centroid's offset from the
canvas middle. Units whose maximum is not positive (occlusion never lowers them) get NaN.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from ..engine.device import resolve_device
from ..errors import NeuroprobeError
from ..models.capture import Capture, probe
from ..models.loading import LoadedModel
from ..progress import track
from .occlusion import discrepancy_maps


@dataclass
class EmpiricalReceptiveFields:
    """The RF table (one row per unit), the averaged re-centred maps (unit, 2H-1, 2W-1) and the top images."""

    table: pd.DataFrame
    maps: np.ndarray
    units: np.ndarray
    top: pd.DataFrame
    layer: str
    image_size: tuple[int, int]
    threshold: float

    def map_of(self, unit: int) -> np.ndarray:
        """The averaged re-centred discrepancy map of one unit (canvas middle = the unit's RF centre)."""
        where = np.flatnonzero(self.units == unit)
        if not len(where):
            raise NeuroprobeError(f"unit {unit} was not measured; measured units: {self.units.tolist()[:10]}...")
        return self.maps[where[0]]


def recentre(view: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """(H, W) map -> (2H-1, 2W-1) canvas with pixel ``centre`` (row, col) at its middle; NaN elsewhere."""
    height, width = view.shape
    cy = int(np.clip(round(centre[0]), 0, height - 1))
    cx = int(np.clip(round(centre[1]), 0, width - 1))
    canvas = np.full((2 * height - 1, 2 * width - 1), np.nan, dtype=np.float32)
    canvas[height - 1 - cy:2 * height - 1 - cy, width - 1 - cx:2 * width - 1 - cx] = view
    return canvas


def measure_field(mean_map: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Size (sqrt of area, px), area and centroid offset of the thresholded region holding the maximum."""
    finite = np.where(np.isfinite(mean_map), mean_map, -np.inf)
    peak = float(finite.max()) if finite.size else -np.inf
    if not np.isfinite(peak) or peak <= 0:
        return {"empirical_rf_px": np.nan, "area_px": 0.0, "offset_y": np.nan, "offset_x": np.nan, "peak": peak}
    labels, _ = ndimage.label(finite >= threshold * peak)
    region = labels == labels[np.unravel_index(np.argmax(finite), finite.shape)]
    rows, cols = np.nonzero(region)
    middle_y, middle_x = (mean_map.shape[0] - 1) / 2, (mean_map.shape[1] - 1) / 2
    return {"empirical_rf_px": float(np.sqrt(region.sum())), "area_px": float(region.sum()),
            "offset_y": float(rows.mean() - middle_y), "offset_x": float(cols.mean() - middle_x), "peak": peak}


def empirical_receptive_fields(model: LoadedModel, images: torch.Tensor, layer: str, top: pd.DataFrame, *,
                               threshold: float = 0.5, window: int = 11, stride: int = 3, fill: str = "noise",
                               rf_only: bool = False, **options) -> EmpiricalReceptiveFields:
    """Empirical RFs of the units in ``top`` (columns ``unit``, ``image``: row of ``images``; K rows per unit).

    ``images``: uint8 (N, 3, H, W). Each image is swept once for all the units that have it among their
    top images. ``options`` go to :func:`~neuroprobe.maps.discrepancy_maps` (device, batch_size, ...).
    """
    if stride > window:
        raise NeuroprobeError(f"stride {stride} > window {window} leaves gaps that split the field into patches; "
                              "use --stride <= --window")
    if not {"unit", "image"} <= set(top.columns):
        raise NeuroprobeError("top needs columns 'unit' and 'image' (e.g. from top_images or top_k_images)")
    units = np.unique(top["unit"].to_numpy())
    height, width = images.shape[-2:]
    sums = np.zeros((len(units), 2 * height - 1, 2 * width - 1), dtype=np.float64)
    counts = np.zeros_like(sums)
    k_used = np.zeros(len(units), dtype=int)
    column_of = {int(u): i for i, u in enumerate(units)}
    theoretical = None
    groups = top.groupby("image", sort=True)
    for image, rows in track(groups, f"receptive fields ({layer})", "img", total=groups.ngroups):
        wanted = sorted({int(u) for u in rows["unit"]})
        maps = discrepancy_maps(model, images[int(image)][None], layer, units=wanted, window=window, stride=stride,
                                fill=fill, rf_only=rf_only, **options)
        theoretical = maps.receptive_field
        view = maps.pixel_view()[0]
        for j, unit in enumerate(wanted):
            canvas = recentre(view[j], tuple(maps.peak_px[0, j]))
            seen = np.isfinite(canvas)
            sums[column_of[unit]][seen] += canvas[seen]
            counts[column_of[unit]][seen] += 1
            k_used[column_of[unit]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_maps = (sums / counts).astype(np.float32)
    if theoretical is None:
        raise NeuroprobeError("no top images given; nothing to measure")
    theoretical_px = float(np.sqrt(theoretical["size_y"] * theoretical["size_x"]))
    rows = []
    for i, unit in enumerate(units):
        measured = measure_field(mean_maps[i], threshold)
        rows.append({"layer": layer, "unit": int(unit), "k": int(k_used[i]), "theoretical_rf_px": theoretical_px,
                     "theoretical_rf_px_in_image": float(min(theoretical_px, np.sqrt(height * width))),
                     **measured, "ratio": measured["empirical_rf_px"] / theoretical_px, "threshold": threshold})
    table = pd.DataFrame(rows)
    return EmpiricalReceptiveFields(table, mean_maps, units, top.reset_index(drop=True), layer,
                                    (int(height), int(width)), threshold)


def top_k_images(model: LoadedModel, images: torch.Tensor, layer: str, k: int = 10,
                 units: Sequence[int] | None = None, *, batch_size: int = 32, device: str | None = None) -> pd.DataFrame:
    """Top-K rows of ``images`` per unit by the unit's spatial maximum (pre-activation), computed in memory."""
    dev = resolve_device(device)
    module = model.module.to(dev).eval()
    normalize = lambda x: model.preprocessing.normalize(x.to(dev))  # noqa: E731 - the model's own recipe
    maxima, values = [], {}
    with torch.no_grad():
        plan = probe(module, [layer], normalize(images[:1]))
        with Capture(module, [layer], values.__setitem__, plan=plan) as capture:
            for start in range(0, len(images), batch_size):
                capture.run(normalize(images[start:start + batch_size]))
                maxima.append(values[layer].float().flatten(2).amax(2).cpu())
    maxima = torch.cat(maxima)
    chosen = list(range(maxima.shape[1])) if units is None else list(units)
    k = min(k, len(images))
    best = torch.topk(maxima[:, chosen], k, dim=0)      # (k, U)
    return pd.DataFrame({"layer": layer, "unit": np.tile(chosen, k), "rank": np.repeat(np.arange(1, k + 1), len(chosen)),
                         "image": best.indices.numpy().ravel(), "value": best.values.numpy().ravel()})


def receptive_fields_from_store(store: str | Path, layer: str, *, k: int = 10, units: Sequence[int] | None = None,
                                model: LoadedModel | None = None, allow_incomplete: bool = False,
                                **options) -> EmpiricalReceptiveFields:
    """Empirical RFs of a store's units from their top-K images by spatial maximum (the store's ``max``).

    An incomplete store is refused unless ``allow_incomplete`` (its tables then carry a ``completeness`` column)."""
    from ..analysis import top_images
    from ..data import ImageDataset, Manifest
    from ..engine.provenance import model_of
    from ..store.completeness import mark_table, require_complete
    from ..store.layout import read_images
    from ..store.location import open_group

    state = require_complete(store, allow_incomplete)
    model = model or model_of(store)
    top = top_images(store, k=k, layers=[layer], criteria=(("max", "top"),), allow_incomplete=allow_incomplete)
    top = top.drop(columns="completeness", errors="ignore")
    if units is not None:
        top = top[top["unit"].isin(list(units))]
    if top.empty:
        raise NeuroprobeError(f"no top images for layer '{layer}' (units {units}); check --units and the store")
    table = read_images(store)
    rows = np.unique(top["image"].to_numpy())
    root = Path(open_group(store).attrs["data_root"])
    dataset = ImageDataset(Manifest(table.iloc[rows][["path"]].reset_index(drop=True), root), model.preprocessing)
    loaded = [dataset[i] for i in range(len(rows))]
    bad = [table["path"].iat[rows[i]] for i, item in enumerate(loaded) if not item[2]]
    if bad:
        raise NeuroprobeError(f"top images can no longer be read ({bad[0]} ...); is the data folder still at {root}?")
    images = torch.stack([item[1] for item in loaded])
    local = top.assign(store_image=top["image"], image=np.searchsorted(rows, top["image"].to_numpy()))
    result = empirical_receptive_fields(model, images, layer, local, **options)
    store_rows = result.top["store_image"].to_numpy()
    result.top = result.top.assign(image=store_rows, path=table["path"].to_numpy()[store_rows]).drop(columns="store_image")
    result.top, result.table = mark_table(result.top, state), mark_table(result.table, state)
    return result
