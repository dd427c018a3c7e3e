"""Localization scores that need no hand-drawn boxes: the grid pointing game and the pointing games.

Every score is a float64 numpy array with one entry per map; NaN marks a map that is EXCLUDED
(no positive attribution, or an empty target region), never a hit or a miss.
:func:`summarize_scores` averages them per method and reports how many were excluded.
Attributions are (H, W) or (B, H, W), torch tensors (any device) or numpy arrays; target masks
have the same shape. Grid cells are numbered row-major: ``cell = row * grid + col``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage, stats

from ..errors import NeuroprobeError
from .boxes import _as_numpy, _batched

log = logging.getLogger(__name__)
TIES = ("all", "any", "first")


def make_mosaics(labels, n_mosaics: int, grid: int = 2, seed: int = 0, eligible=None) -> pd.DataFrame:
    """Grid pointing game mosaics (Böhle et al. 2022): grid x grid images of DIFFERENT classes each.

    Each mosaic draws ``grid**2`` distinct classes uniformly among the classes with an eligible image
    (``eligible``: boolean mask, e.g. images the model classifies correctly; default all), places
    them in random cell order and picks one eligible image per class uniformly; images may recur
    across mosaics. Seeded with ``numpy.random.default_rng(seed)``, so the same call gives the same
    table and every method compared can score the same mosaics. Columns: mosaic, cell, row, col,
    image (index into ``labels``), label.
    """
    labels = np.asarray(labels)
    mask = np.ones(len(labels), bool) if eligible is None else np.asarray(eligible, dtype=bool).ravel()
    if mask.shape != labels.shape:
        raise NeuroprobeError(f"eligible has {mask.size} entries for {labels.size} labels; pass one flag per image")
    if n_mosaics < 0 or grid < 1:
        raise NeuroprobeError(f"need n_mosaics >= 0 and grid >= 1 (got {n_mosaics}, {grid})")
    indices = np.flatnonzero(mask)
    classes = np.unique(labels[indices])
    cells = grid * grid
    if len(classes) < cells:
        raise NeuroprobeError(f"only {len(classes)} classes among the eligible images but a {grid}x{grid} grid "
                              f"needs {cells}; use a smaller grid or more (eligible) images")
    members = [indices[labels[indices] == c] for c in classes]
    rng = np.random.default_rng(seed)
    rows = []
    for mosaic in range(n_mosaics):
        for cell, k in enumerate(rng.choice(len(classes), size=cells, replace=False)):
            image = int(rng.choice(members[k]))
            rows.append((mosaic, cell, cell // grid, cell % grid, image, labels[image]))
    return pd.DataFrame(rows, columns=["mosaic", "cell", "row", "col", "image", "label"])


def cell_masks(grid: int, height: int, width: int) -> torch.Tensor:
    """Boolean (grid*grid, height, width) masks of the cells, row-major (height, width divisible by grid)."""
    if grid < 1 or height % grid or width % grid:
        raise NeuroprobeError(f"a {height}x{width} map does not split into a {grid}x{grid} grid; "
                              f"resize it to a multiple of {grid}")
    rows = torch.arange(height) // (height // grid)
    cols = torch.arange(width) // (width // grid)
    cell = rows[:, None] * grid + cols[None, :]
    return cell[None] == torch.arange(grid * grid)[:, None, None]


def compose_mosaic(images: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid*grid, C, H, W) images -> (C, grid*H, grid*W) mosaic, row-major, plus each cell's region mask.

    The masks, (grid*grid, grid*H, grid*W) booleans on the images' device, map the mosaic back to
    its cells: ``mosaic[:, masks[k]]`` are the pixels of ``images[k]``.
    """
    if images.ndim != 4 or images.shape[0] != grid * grid:
        raise NeuroprobeError(f"need (grid*grid, C, H, W) = ({grid * grid}, C, H, W) images, got {tuple(images.shape)}")
    _, channels, height, width = images.shape
    mosaic = (images.reshape(grid, grid, channels, height, width)
              .permute(2, 0, 3, 1, 4).reshape(channels, grid * height, grid * width))
    return mosaic, cell_masks(grid, grid * height, grid * width).to(images.device)


def _share(attribution, target) -> np.ndarray:
    """Positive attribution inside the target over all positive attribution, per map (NaN when none)."""
    positive = np.clip(attribution, 0, None)
    total = positive.sum(axis=(1, 2))
    inside = (positive * target).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def _count_excluded(scores: np.ndarray, why: str) -> np.ndarray:
    """Log how many maps a score excluded (NaN), then pass the scores on."""
    excluded = int(np.isnan(scores).sum())
    if excluded:
        log.warning("%d of %d maps excluded (NaN): %s", excluded, scores.size, why)
    return scores


def grid_pointing_score(attribution, cell, grid: int = 2) -> np.ndarray:
    """Share of POSITIVE attribution (clipped at 0) in the target cell (Böhle et al. 2022), per map.

    ``cell``: target cell per map (int or (B,)), row-major. A map with no positive attribution
    scores NaN (excluded, and counted in a warning); a uniform map scores exactly 1 / grid**2.
    """
    array, _ = _batched(attribution)
    cells = _as_numpy(cell).astype(np.int64).ravel()
    if cells.size not in (1, len(array)):
        raise NeuroprobeError(f"got {cells.size} cell indices for {len(array)} maps; pass one per map")
    cells = np.broadcast_to(cells, (len(array),))
    if np.any((cells < 0) | (cells >= grid * grid)):
        raise NeuroprobeError(f"cell indices must be in 0..{grid * grid - 1} for a {grid}x{grid} grid")
    masks = cell_masks(grid, *array.shape[1:]).numpy()
    scores = _share(array, masks[cells])
    return _count_excluded(scores, "no positive attribution")


def _targets(attribution, target_mask) -> tuple[np.ndarray, np.ndarray]:
    """Batched attribution and boolean target masks of the same shape."""
    array, _ = _batched(attribution)
    target = _as_numpy(target_mask).astype(bool)
    if target.size != array.size:
        raise NeuroprobeError(f"target_mask must match the attribution's shape {array.shape}; resize the mask")
    return array, target.reshape(array.shape)


def pointing_game(attribution, target_mask, tolerance: float = 15, ties: str = "all") -> np.ndarray:
    """Pointing game (Zhang et al. 2016): 1.0 if the map's maximum lies within ``tolerance`` px of the target.

    Distance is Euclidean from the maximum's pixel to the nearest target pixel (a hit at distance
    <= tolerance). Ties in the maximum: ``"all"`` (default) needs every tied pixel within tolerance,
    so a flat map cannot hit by luck; ``"any"`` needs one; ``"first"`` uses the first in raster
    order (numpy's argmax, as TorchRay). An empty target (or an all-NaN map) scores NaN: excluded,
    never a hit.
    """
    if ties not in TIES:
        raise NeuroprobeError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")
    array, target = _targets(attribution, target_mask)
    scores = np.full(len(array), np.nan)
    for i, (m, t) in enumerate(zip(array, target)):
        if not t.any() or np.isnan(m).all():
            continue
        near = ndimage.distance_transform_edt(~t) <= tolerance
        peaks = m == np.nanmax(m)  # NaN pixels are never the maximum
        if ties == "first":
            peaks = np.zeros_like(peaks)
            peaks.flat[np.nanargmax(m)] = True
        hit = near[peaks].all() if ties == "all" else near[peaks].any()
        scores[i] = float(hit)
    return _count_excluded(scores, "empty target region")


def energy_pointing_game(attribution, target_mask) -> np.ndarray:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM): share of positive energy inside the target.

    NaN (excluded) when the target is empty or the map has no positive attribution.
    """
    array, target = _targets(attribution, target_mask)
    scores = _share(array, target)
    scores[~target.any(axis=(1, 2))] = np.nan
    return _count_excluded(scores, "empty target region or no positive attribution")


def summarize_scores(frame: pd.DataFrame, by: str | Sequence[str] = "method", value: str = "score",
                     confidence: float = 0.95, bounds: tuple[float, float] | None = (0.0, 1.0)) -> pd.DataFrame:
    """Mean score per group with a Student-t confidence interval, NaNs excluded and counted.

    Interval: mean +/- t_{(1+confidence)/2, n-1} * sd / sqrt(n) over the n non-NaN scores (sd with
    n - 1 degrees of freedom; NaN when n < 2), clipped to ``bounds`` (the scores here are shares and
    hits in [0, 1]; None: no clipping). Columns: the ``by`` columns, n, excluded, mean, ci_low, ci_high.
    """
    keys = [by] if isinstance(by, str) else list(by)
    missing = [c for c in keys + [value] if c not in frame.columns]
    if missing:
        raise NeuroprobeError(f"frame lacks column(s) {', '.join(missing)}; pass by=/value= naming its columns")
    rows = []
    for key, group in frame.groupby(keys, sort=True):
        scores = group[value].to_numpy(dtype=np.float64)
        kept = scores[~np.isnan(scores)]
        n = len(kept)
        mean = kept.mean() if n else np.nan
        half = stats.t.ppf((1 + confidence) / 2, n - 1) * kept.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
        rows.append((*key, n, len(scores) - n, mean, mean - half, mean + half))
    out = pd.DataFrame(rows, columns=keys + ["n", "excluded", "mean", "ci_low", "ci_high"])
    if bounds is not None:
        out[["ci_low", "ci_high"]] = out[["ci_low", "ci_high"]].clip(*bounds)
    return out
