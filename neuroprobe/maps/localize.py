"""Scoring attribution methods without hand-drawn boxes: the grid pointing game on real mosaics.

Mosaics (Böhle et al. 2022) put grid x grid images of different classes, each classified correctly
by the model on its own, side by side at the model's resolution (a 2x2 mosaic of 224 px images is
448 px). Every cell's class is a target: its map should put its positive attribution in that cell.
Scores per (method, mosaic, cell): ``grid`` = share of positive attribution in the target cell
(a uniform map scores 1/grid^2) and ``pointing`` = 1 if the map's maximum lies within 15 px of the
cell (Zhang et al.). The mosaics are seeded and identical for every method compared.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..engine.device import resolve_device
from ..errors import NeuroprobeError
from ..models.loading import LoadedModel
from ..progress import Progress
from .methods import METHODS, attribute, check_methods
from .pointing import cell_masks, compose_mosaic, grid_pointing_score, make_mosaics, pointing_game, summarize_scores

log = logging.getLogger(__name__)
METRICS = ("grid", "pointing")


@dataclass
class GridPointingGame:
    """Scores per (method, mosaic, cell), their summary with 95% t-intervals, the mosaics, and the maps of
    the first few mosaics (``examples[method]``: (mosaics, cells, H, W)) for figures."""

    scores: pd.DataFrame
    summary: pd.DataFrame
    mosaics: pd.DataFrame
    grid: int
    example_images: np.ndarray = field(repr=False)
    examples: dict[str, np.ndarray] = field(repr=False)

    def table(self, metric: str = "grid") -> pd.DataFrame:
        """The summary of one metric, best method first."""
        return (self.summary[self.summary.metric == metric].sort_values("mean", ascending=False)
                .reset_index(drop=True))


def _resized(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 (N, 3, H, W) images at size x size (antialiased bilinear), or as they are."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def predict(loaded: LoadedModel, images: torch.Tensor, batch_size: int = 64, device=None) -> np.ndarray:
    """Predicted class of each uint8 (N, 3, H, W) image."""
    dev = resolve_device(device)
    module = loaded.module.to(dev).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = loaded.preprocessing.normalize(images[start:start + batch_size].to(dev))
            out.append(module(x).argmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def grid_pointing_game(loaded: LoadedModel, images: torch.Tensor, labels, methods: Sequence[str] | str = tuple(METHODS),
                       *, grid: int = 2, n: int = 200, seed: int = 0, eligible=None, **options) -> GridPointingGame:
    """The grid pointing game on ``n`` seeded mosaics of uint8 ``images`` (N, 3, H, W) with class ``labels``.

    ``eligible`` (default: the images the model classifies correctly) limits the images mosaics are
    made of. Other options go to :func:`score_mosaics`.
    """
    labels = np.asarray(labels)
    if eligible is None:
        eligible = predict(loaded, images, device=options.get("device")) == labels
        log.info("%d of %d images classified correctly: mosaics use those", int(eligible.sum()), len(labels))
    mosaics = make_mosaics(labels, n, grid, seed, eligible)
    return score_mosaics(loaded, mosaics, lambda index: images[index], methods, grid=grid, **options)


def score_mosaics(loaded: LoadedModel, mosaics: pd.DataFrame, image: Callable[[int], torch.Tensor],
                  methods: Sequence[str] | str = tuple(METHODS), *, grid: int = 2, layer: str | None = None,
                  batch_size: int = 4, device=None, tolerance: float = 15, examples: int = 4,
                  cell_size: int | None = None, method_options: Mapping[str, dict] | None = None) -> GridPointingGame:
    """Score ``methods`` on the mosaics of :func:`~neuroprobe.maps.pointing.make_mosaics`.

    ``image(i)`` returns image i (uint8 (3, H, W)); ``batch_size`` mosaics go through the model at
    once, every cell's class a target (DFF factorizes each batch together). ``cell_size`` resizes the
    images (antialiased bilinear) so that mosaics are grid x cell_size px (default: images as they
    are, each at the model's resolution, as Böhle et al.). ``method_options``:
    {method: {option: value}} (e.g. {"smoothgrad": {"samples": 20}}).
    """
    methods = check_methods(methods)
    method_options = dict(method_options or {})
    dev = resolve_device(device)
    module = loaded.module.to(dev).eval()
    cells = grid * grid
    table = mosaics.sort_values(["mosaic", "cell"])
    ids = table["mosaic"].unique()
    if len(ids) == 0:
        raise NeuroprobeError("no mosaics to score; pass n >= 1")
    if (table.groupby("mosaic").size() != cells).any():
        raise NeuroprobeError(f"every mosaic needs {cells} cells for a {grid}x{grid} grid; build them with make_mosaics")
    images = table["image"].to_numpy().reshape(len(ids), cells)
    labels = table["label"].to_numpy().reshape(len(ids), cells)
    rows, example_maps, example_images = [], {m: [] for m in methods}, []
    meter = Progress(len(ids), f"localize ({', '.join(methods)})", "mosaic")
    for start in range(0, len(ids), batch_size):
        batch = torch.stack([compose_mosaic(_resized(torch.stack([image(int(i)) for i in members]), cell_size), grid)[0]
                             for members in images[start:start + batch_size]])
        x = loaded.preprocessing.normalize(batch.to(dev))
        targets = torch.as_tensor(labels[start:start + batch_size].astype(np.int64), device=dev)
        if start < examples:
            example_images.append(batch[:examples - start].numpy())
        masks = cell_masks(grid, *x.shape[-2:]).numpy()
        cell_index = np.tile(np.arange(cells), len(x))
        for method in methods:
            result = attribute(module, x, targets, method, layer=layer, **method_options.get(method, {}))
            maps = result.map.detach().float().cpu().numpy()                  # (B, cells, H, W)
            flat = maps.reshape(-1, *maps.shape[2:])
            grid_scores = grid_pointing_score(flat, cell_index, grid)
            hits = pointing_game(flat, masks[cell_index], tolerance=tolerance)
            for k, (score, hit) in enumerate(zip(grid_scores, hits)):
                b, cell = divmod(k, cells)
                rows.append((method, int(ids[start + b]), cell, int(images[start + b, cell]),
                             labels[start + b, cell], score, hit))
            if start < examples:
                example_maps[method].append(maps[:examples - start])
        meter.update(len(x))
    meter.close()
    scores = pd.DataFrame(rows, columns=["method", "mosaic", "cell", "image", "label", *METRICS])
    long = scores.melt(id_vars=["method", "mosaic", "cell"], value_vars=list(METRICS), var_name="metric",
                       value_name="score")
    summary = summarize_scores(long, by=["metric", "method"])
    order = {m: i for i, m in enumerate(methods)}
    summary = summary.sort_values(["metric", "method"], key=lambda c: c.map(order) if c.name == "method" else c)
    return GridPointingGame(scores, summary.reset_index(drop=True), mosaics, grid,
                            np.concatenate(example_images),
                            {m: np.concatenate(v) for m, v in example_maps.items()})
