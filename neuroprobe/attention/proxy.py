"""A training experiment whose importance maps are known by construction (ClickMe is not reachable here).

Object mosaics: one photo in a random cell of a 2 x 2 mosaic, the three other cells phase-scrambled
photos (their amplitude spectrum kept, no object left); the label is the photo's class and the importance
map is its cell. Three fine-tunings of the same model with GALA modules, same data, same seed: (a) no map
supervision, (b) GALA attention supervision, (c) the harmonization loss; evaluated on mosaics of held-out
photos: top-1, alignment of the gradient map with the cell map, grid pointing game of Grad-CAM and of
the gradient. A proxy for the paper's ClickMe result, not a reproduction of it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..data import ImageDataset, Manifest
from ..maps.methods import attribute
from ..maps.pointing import cell_masks, compose_mosaic, grid_pointing_score
from ..models.loading import LoadedModel
from .alignment import spearman_rows
from .train import train_attention

log = logging.getLogger(__name__)
VARIANTS = ("none", "gala", "harmonization")


def phase_scrambled(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(3, H, W) uint8 image with its amplitude spectrum and a random phase (one phase for all channels)."""
    x = image.double()
    spectrum = torch.fft.fft2(x)
    phase = torch.fft.fft2(torch.rand(x.shape[-2:], generator=generator, dtype=torch.float64)).angle()
    scrambled = torch.fft.ifft2(spectrum.abs() * torch.exp(1j * (spectrum.angle() + phase))).real
    return scrambled.clamp(0, 255).round().to(torch.uint8)


@dataclass
class Mosaics:
    """uint8 (N, 3, 2c, 2c) mosaics, labels (N,), the target cell (N,) and its (N, 2c, 2c) map."""

    images: torch.Tensor
    labels: torch.Tensor
    cells: torch.Tensor
    maps: torch.Tensor

    def dataset(self) -> torch.utils.data.TensorDataset:
        """(image, label, map, has_map, ok) items, as :func:`train_attention` reads them."""
        ones = torch.ones(len(self.labels), dtype=torch.bool)
        return torch.utils.data.TensorDataset(self.images, self.labels, self.maps, ones, ones)


def object_mosaics(loaded: LoadedModel, manifest: Manifest, rows: Sequence[int], n: int, labels: np.ndarray,
                   seed: int = 0) -> Mosaics:
    """``n`` object mosaics of the photos ``rows`` (cells of half the model's input: mosaics at its size)."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    half = loaded.preprocessing.crop // 2
    dataset = ImageDataset(manifest, loaded.preprocessing)
    cells_px = {int(r): F.interpolate(dataset[int(r)][1][None].float(), size=(half, half), mode="bilinear",
                                      antialias=True, align_corners=False)[0].round().to(torch.uint8) for r in rows}
    images, targets, cells = [], [], []
    for _ in range(n):
        target, *others = rng.choice(list(rows), size=4, replace=False)
        cell = int(rng.integers(4))
        tiles = [phase_scrambled(cells_px[int(o)], generator) for o in others]
        tiles.insert(cell, cells_px[int(target)])
        mosaic, _ = compose_mosaic(torch.stack(tiles), 2)
        images.append(mosaic)
        targets.append(int(labels[int(target)]))
        cells.append(cell)
    cells_t = torch.tensor(cells)
    masks = cell_masks(2, 2 * half, 2 * half)[cells_t].float()
    return Mosaics(torch.stack(images), torch.tensor(targets), cells_t, masks)


def save_mosaics(mosaics: Mosaics, folder: str | Path) -> Path:
    """Write mosaics as files the CLI reads: images/<k>.png, maps/<k>.png (the cell white) and mosaics.csv
    (path, class_index, map, cell); returns the table's path (``--data`` with ``--maps map``)."""
    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "maps").mkdir(exist_ok=True)
    rows = []
    for k in range(len(mosaics.labels)):
        Image.fromarray(mosaics.images[k].permute(1, 2, 0).numpy()).save(folder / "images" / f"{k:05d}.png")
        Image.fromarray((mosaics.maps[k].numpy() * 255).astype(np.uint8)).save(folder / "maps" / f"{k:05d}.png")
        rows.append({"path": f"images/{k:05d}.png", "class_index": int(mosaics.labels[k]),
                     "map": f"maps/{k:05d}.png", "cell": int(mosaics.cells[k])})
    pd.DataFrame(rows).to_csv(folder / "mosaics.csv", index=False)
    return folder / "mosaics.csv"


def fine_tune(loaded: LoadedModel, layers: Sequence[str], variant: str, data: Mosaics, **options) -> LoadedModel:
    """:func:`~neuroprobe.attention.train.train_attention` on the mosaics (``variant``: none, gala, harmonization)."""
    return train_attention(loaded, layers, variant, data.dataset(), **options)


def evaluate(model: LoadedModel, data: Mosaics, batch_size: int = 16) -> pd.DataFrame:
    """Per mosaic: correct (top-1), alignment of the gradient map with the cell (Spearman), grid pointing
    score of Grad-CAM and of the gradient (share of positive attribution in the target cell)."""
    parts = []
    for start in range(0, len(data.labels), batch_size):
        part = slice(start, start + batch_size)
        x = model.preprocessing.normalize(data.images[part])
        y = data.labels[part]
        with torch.no_grad():
            predicted = model.module(x).argmax(1)
        grad = attribute(model.module, x, y, "gradient").map[:, 0].detach()
        cam = attribute(model.module, x, y, "gradcam").map[:, 0].detach()
        parts.append(pd.DataFrame({
            "label": y.numpy(), "cell": data.cells[part].numpy(), "correct": (predicted == y).numpy(),
            "spearman": spearman_rows(grad, data.maps[part]).numpy(),
            "pointing_gradcam": grid_pointing_score(cam.numpy(), data.cells[part].numpy()),
            "pointing_gradient": grid_pointing_score(grad.numpy(), data.cells[part].numpy())}))
    return pd.concat(parts, ignore_index=True)
