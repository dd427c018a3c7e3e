"""From a map over the dorsal glimpse to one score per fixation: each fixation's field, pooled.

A dorsal map (a convolutional head's logits, a saliency map) lives in the glimpse's coordinates: a
Cartesian glimpse is a low-resolution picture of the image, a log-polar one rows of radius by columns
of azimuth. :func:`field_weights` says, for every cell of such a map, where in the image it lies and
so which fixation fields (crop views: squares; log-polar views: discs) it falls in; a fixation's score
is the mean of the cells in its field. One matrix product, so it works for every layout and either
glimpse, and a shifted glimpse (an augmentation) only needs another matrix.

:func:`mirror_index` gives the fixation each fixation becomes when the image is flipped left-right, so a
flipped image's target map is the original's, permuted.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import NeuroprobeError
from .layouts import Fixations
from .views import RS_MAX, RS_MIN, view_offsets


def cell_positions(map_shape: tuple[int, int], kind: str, center=(0.0, 0.0), radius: float = 1.0,
                   rs_min: float = RS_MIN, rs_max: float = RS_MAX) -> torch.Tensor:
    """(h * w, 2) image positions (x, y, inscribed-circle units) of the cell centres of an h x w map over a
    glimpse of ``kind`` centred at ``center``. A log-polar map's rows are the glimpse's radii (row 0 outer)."""
    h, w = map_shape
    if kind == "logpolar":   # a coarse map's cell covers a band of the glimpse's rows and columns: its middle
        radii = 2.0 ** (rs_min + (torch.arange(h, dtype=torch.float64) + 0.5) / h * (rs_max - rs_min))
        angles = 2 * torch.pi * (torch.arange(w, dtype=torch.float64) + 0.5) / w
        offsets = torch.stack((torch.outer(radii, angles.cos()), torch.outer(radii, angles.sin())), -1)
    else:
        offsets = view_offsets((h, w), kind, rs_min, rs_max, dtype=torch.float64)
    return (torch.as_tensor(center, dtype=torch.float64) + radius * offsets).reshape(-1, 2)


def field_weights(fixations: Fixations, view_kind: str, map_shape: tuple[int, int], glimpse_kind: str,
                  center=(0.0, 0.0), radius: float = 1.0, rs_min: float = RS_MIN,
                  rs_max: float = RS_MAX, mean: bool = True) -> torch.Tensor:
    """(F, h * w) rows that average a glimpse map's cells over each fixation's field (rows sum to 1), or with
    ``mean=False`` add them up (rows of 0/1: how much of the map a field holds).

    ``view_kind`` is the likelihood store's views ("crop": square fields; "logpolar": disc fields).
    A field that holds no cell centre (a small view in a coarse map) takes the cell nearest its centre.
    Positions are in inscribed-circle units, which are the normalized coordinates of the square images
    the likelihood stores decode (a centre crop)."""
    cells = cell_positions(map_shape, glimpse_kind, center, radius, rs_min, rs_max)        # (M, 2)
    centers, radii = (torch.as_tensor(a, dtype=torch.float64) for a in (fixations.centers.reshape(-1, 2),
                                                                          fixations.radii.reshape(-1)))
    offset = (cells[None] - centers[:, None]) / radii[:, None, None]                        # (F, M, 2)
    distance = offset.abs().amax(-1) if view_kind == "crop" else offset.norm(dim=-1)
    inside = (distance <= 1).double()
    empty = inside.sum(1) == 0
    if empty.any():
        nearest = distance[empty].argmin(1)
        inside[empty.nonzero()[:, 0], nearest] = 1.0
    return (inside / inside.sum(1, keepdim=True) if mean else inside).float()


def mirror_index(fixations: Fixations, tolerance: float = 1e-6) -> np.ndarray:
    """(F,) index of the fixation at (-x, y) with the same radius: a left-right flip maps fixation f to it."""
    centers, radii = fixations.centers.reshape(-1, 2), fixations.radii.reshape(-1)
    mirrored = centers * np.array([-1.0, 1.0])
    distance = np.linalg.norm(mirrored[:, None] - centers[None], axis=-1) + np.abs(radii[:, None] - radii[None])
    index = distance.argmin(1)
    if distance[np.arange(len(index)), index].max() > tolerance:
        raise NeuroprobeError(f"the {fixations.layout} layout is not left-right symmetric, so flipped images have "
                              "no mirrored likelihood map; train without flips (--no-flip)")
    return index
