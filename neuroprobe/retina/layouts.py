"""Fixation layouts: where the views of a likelihood map are centred and how large each one is.

* ``grid``: n x n fixations of one radius, evenly spaced so that every view stays inside the image
  (the authors' "valid" sampling: centres within +/-(1 - radius));
* ``rings``: the authors' 11 x 11 concentric layout. Ring k (the border of a (2k+1) x (2k+1) square) has
  radius ``linspace(1, min_radius, n // 2 + 1)[k]`` and its centres within +/-(1 - radius): the centre view
  sees the whole inscribed circle, the outer ring small views near the edges.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NeuroprobeError

LAYOUTS = ("grid", "rings")


@dataclass(frozen=True)
class Fixations:
    """Fixation centres (rows, cols, 2) as normalized (x, y) and view radii (rows, cols) in inscribed-circle units."""

    layout: str
    centers: np.ndarray
    radii: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.radii.shape

    def __len__(self) -> int:
        return self.radii.size

    @property
    def center_index(self) -> int:
        """Flat index of the fixation nearest the image centre (the first glimpse)."""
        return int(np.argmin(np.linalg.norm(self.centers.reshape(-1, 2), axis=1)))

    def flat(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(F, 2) centres and (F,) radii as tensors, in row-major order."""
        return (torch.as_tensor(self.centers.reshape(-1, 2), dtype=dtype, device=device),
                torch.as_tensor(self.radii.reshape(-1), dtype=dtype, device=device))

    def to_attrs(self) -> dict:
        return {"layout": self.layout, "x": self.centers[..., 0].tolist(), "y": self.centers[..., 1].tolist(),
                "radius": self.radii.tolist()}

    @classmethod
    def from_attrs(cls, attrs: dict) -> "Fixations":
        return cls(attrs["layout"], np.stack([np.asarray(attrs["x"]), np.asarray(attrs["y"])], -1),
                   np.asarray(attrs["radius"], dtype=np.float64))


def _square(n: int, radius: float) -> np.ndarray:
    positions = np.linspace(-(1 - radius), 1 - radius, n) if n > 1 else np.zeros(1)
    xs, ys = np.meshgrid(positions, positions, indexing="xy")
    return np.stack([xs, ys], -1)


def fixation_grid(n: int = 7, radius: float = 0.5) -> Fixations:
    """n x n fixations of views of ``radius``, centres spanning +/-(1 - radius)."""
    if n < 1 or not 0 < radius <= 1:
        raise NeuroprobeError(f"the grid needs n >= 1 and 0 < radius <= 1 (got n={n}, radius={radius})")
    return Fixations("grid", _square(n, radius), np.full((n, n), float(radius)))


def fixation_rings(n: int = 11, min_radius: float = 0.1) -> Fixations:
    """The authors' concentric layout: n x n (n odd), radius 1 at the centre down to ``min_radius`` at the edge."""
    if n < 1 or n % 2 == 0 or not 0 < min_radius <= 1:
        raise NeuroprobeError(f"the ring layout needs an odd n and 0 < min_radius <= 1 (got n={n}, "
                              f"min_radius={min_radius})")
    levels = n // 2 + 1
    radii_by_ring = np.linspace(1.0, min_radius, levels)
    centers = np.zeros((n, n, 2))
    radii = np.zeros((n, n))
    for ring in range(levels - 1, -1, -1):           # outermost first; inner squares overwrite the middle
        size, start = 2 * ring + 1, levels - 1 - ring
        centers[start:start + size, start:start + size] = _square(size, radii_by_ring[ring])
        radii[start:start + size, start:start + size] = radii_by_ring[ring]
    return Fixations("rings", centers, radii)


def make_layout(layout: str = "grid", n: int | None = None, radius: float | None = None) -> Fixations:
    """A layout by name: ``grid`` (n=7, radius=0.5) or ``rings`` (n=11, radius = the outer ring's, 0.1)."""
    if layout == "grid":
        return fixation_grid(n or 7, 0.5 if radius is None else radius)
    if layout == "rings":
        return fixation_rings(n or 11, 0.1 if radius is None else radius)
    raise NeuroprobeError(f"unknown layout '{layout}'; use {' or '.join(LAYOUTS)}")
