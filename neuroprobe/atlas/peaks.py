"""Where each shown image drives a unit most (or least): the position of the peak in the unit's map.

From the store's ``--spatial`` maps when it has them (then the maps are kept for the overlay), else from
one pass of the store's model over the images needed (``Capture``, pre-activation, as ``extract`` saw it).
Layers without a spatial grid (a Linear layer, after global pooling) have no peak: their crop is the image.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..data import ImageDataset, Manifest
from ..errors import NeuroprobeError
from ..models.capture import Capture, probe
from ..progress import Progress
from ..store.layout import SPATIAL
from ..store.location import open_group

log = logging.getLogger(__name__)
Pair = tuple[int, int, str]  # image, unit, "top" | "bottom"


@dataclass
class Peaks:
    """Per layer: (image, unit, direction) -> (y, x) in the layer's grid, the grid's shape, overlay maps."""

    grid: dict[str, tuple[int, int]] = field(default_factory=dict)
    at: dict[str, dict[Pair, tuple[int, int]]] = field(default_factory=dict)
    maps: dict[str, dict[tuple[int, int], np.ndarray]] = field(default_factory=dict)  # uint8, min-max scaled


def scaled(values: np.ndarray) -> np.ndarray:
    """A map as uint8, 0 at its minimum and 255 at its maximum (NaN as 0)."""
    values = np.nan_to_num(values.astype(np.float32), nan=np.nanmin(values) if np.isfinite(values).any() else 0)
    lo, hi = float(values.min()), float(values.max())
    return np.round((values - lo) / (hi - lo) * 255).astype(np.uint8) if hi > lo else np.zeros(values.shape, np.uint8)


def _argpeak(values: np.ndarray, direction: str) -> tuple[int, int]:
    flat = np.nan_to_num(values.astype(np.float32), nan=-np.inf if direction == "top" else np.inf).ravel()
    where = int(np.argmax(flat) if direction == "top" else np.argmin(flat))
    return divmod(where, values.shape[-1])


def from_store(store: str | Path, layer: str, pairs: Sequence[Pair], overlay: bool, peaks: Peaks,
               batch: int = 64) -> None:
    """Peaks (and overlay maps) of ``pairs`` from the layer's stored spatial maps."""
    array = open_group(store)[f"{layer}/{SPATIAL}"]
    peaks.grid[layer] = tuple(array.shape[2:4])
    at, maps = peaks.at.setdefault(layer, {}), peaks.maps.setdefault(layer, {})
    by_image: dict[int, list[Pair]] = {}
    for pair in pairs:
        by_image.setdefault(pair[0], []).append(pair)
    images = sorted(by_image)
    with Progress(len(images), f"peaks of {layer} (stored maps)", "img") as meter:
        for start in range(0, len(images), batch):
            rows = images[start:start + batch]
            block = array.oindex[rows]  # (rows, unit, y, x)
            for i, image in enumerate(rows):
                for pair in by_image[image]:
                    unit_map = block[i, pair[1]]
                    at[pair] = _argpeak(unit_map, pair[2])
                    if overlay and pair[2] == "top":
                        maps[(image, pair[1])] = scaled(unit_map)
            meter.update(len(rows))


def from_model(model, manifest: Manifest, needs: dict[str, Sequence[Pair]], peaks: Peaks, *,
               device: str | None = None, batch: int = 16) -> None:
    """Peaks of ``needs`` (layer -> pairs) from one pass of ``model`` over the images they name."""
    from ..engine.device import resolve_device

    if not needs:
        return
    dev = resolve_device(device)
    module = model.module.to(dev).eval()
    crop = model.preprocessing.crop
    plan = probe(module, list(needs), torch.zeros(1, 3, crop, crop, device=dev))
    layers = [name for name, info in plan.items() if len(info.shape) == 3]
    for name in set(needs) - set(layers):
        log.info("layer %s has no spatial grid (shape %s): its crops are whole images", name, plan[name].shape)
    if not layers:
        return
    by_image: dict[int, dict[str, list[Pair]]] = {}
    for layer in layers:
        peaks.grid[layer] = tuple(plan[layer].shape[1:3])
        peaks.at.setdefault(layer, {})
        for pair in needs[layer]:
            by_image.setdefault(pair[0], {}).setdefault(layer, []).append(pair)
    images = sorted(by_image)
    dataset = ImageDataset(manifest, model.preprocessing)
    sub = {name: plan[name] for name in layers}
    with Progress(len(images), "peaks (model pass)", "img") as meter, torch.no_grad():
        for start in range(0, len(images), batch):
            rows = images[start:start + batch]
            batch_images = torch.stack([dataset[r][1] for r in rows]).to(dev)
            values: dict[str, torch.Tensor] = {}

            def keep(name: str, value: torch.Tensor, into: dict = values) -> None:
                into[name] = value.float().cpu()

            with Capture(module, layers, keep, plan=sub) as cap:
                cap.run(model.preprocessing.normalize(batch_images))
            for i, image in enumerate(rows):
                for layer, pairs in by_image[image].items():
                    for pair in pairs:
                        peaks.at[layer][pair] = _argpeak(values[layer][i, pair[1]].numpy(), pair[2])
            meter.update(len(rows))


def find(store: str | Path, layers: Iterable[str], needs: dict[str, list[Pair]], spatial: Sequence[str],
         model, manifest: Manifest | None, overlay: bool, device: str | None) -> Peaks:
    """Peaks of every layer: stored maps where the store has them, the model for the others (when loaded)."""
    peaks = Peaks()
    unstored = {}
    for layer in layers:
        if layer in spatial:
            from_store(store, layer, needs[layer], overlay, peaks)
        else:
            unstored[layer] = needs[layer]
    if unstored and model is not None and manifest is not None:
        try:
            from_model(model, manifest, unstored, peaks, device=device)
        except NeuroprobeError as exc:
            log.warning("no peak positions from the model (%s): crops are whole images", exc)
    return peaks

