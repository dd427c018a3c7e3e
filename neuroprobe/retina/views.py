"""Retinotopic views: log-polar (or Cartesian crop) samplings of images around fixation points, and back.

Conventions (those of ``torch.nn.functional.grid_sample`` with ``align_corners=False``):

* a fixation is an (x, y) position in normalized image coordinates, -1 = left/top edge, +1 = right/bottom;
* a view's radius is in units of the image's inscribed circle (min(H, W) / 2 pixels), so circles stay
  circles on non-square images;
* a log-polar view of H x W has row i at radius ``radius * 2**linspace(rs_min, rs_max, H)[i]`` (row 0 the
  outer ring) and column j at azimuth ``2 pi j / W`` (counter-clockwise on screen is clockwise: y points down),
  as in the authors' code (bicv/Retinotopy), with the fixations batched;
* a crop view is the square circumscribing the same circle, resized to H x W (the Cartesian control).

Views of B images x F fixations come from one ``grid_sample`` call (the fixations are stacked along the
grid's rows, so the images are never copied), differentiable in the images, the fixations and the radii.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import NeuroprobeError

KINDS = ("logpolar", "crop")
PADDINGS = ("zeros", "border", "reflection")
RS_MIN, RS_MAX = 0.0, -5.0


def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def view_offsets(size=224, kind: str = "logpolar", rs_min: float = RS_MIN, rs_max: float = RS_MAX, *,
                 device=None, dtype=torch.float32) -> torch.Tensor:
    """(H, W, 2) sample positions (x, y) of a view of radius 1 centred at 0, in inscribed-circle units."""
    h, w = _pair(size)
    if kind == "logpolar":
        radii = 2.0 ** torch.linspace(rs_min, rs_max, h, device=device, dtype=torch.float64)
        azimuths = torch.linspace(0, 2 * math.pi, w + 1, device=device, dtype=torch.float64)[:-1]
        offsets = torch.stack((torch.outer(radii, azimuths.cos()), torch.outer(radii, azimuths.sin())), -1)
    elif kind == "crop":   # pixel centres of an H x W resize of the square [-1, 1]^2 (align_corners=False)
        ys = (2 * torch.arange(h, device=device, dtype=torch.float64) + 1) / h - 1
        xs = (2 * torch.arange(w, device=device, dtype=torch.float64) + 1) / w - 1
        offsets = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)
    else:
        raise NeuroprobeError(f"unknown view kind '{kind}'; use {' or '.join(KINDS)}")
    return offsets.to(dtype)


def aspect_scale(image_size, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(2,) factors from inscribed-circle units to normalized (x, y) coordinates of an H x W image."""
    h, w = _pair(image_size)
    side = min(h, w)
    return torch.tensor([side / w, side / h], device=device, dtype=dtype)


def sampling_grid(centers: torch.Tensor, radii: torch.Tensor, image_size, size=224, kind: str = "logpolar",
                  rs_min: float = RS_MIN, rs_max: float = RS_MAX) -> torch.Tensor:
    """(..., F, h, w, 2) normalized sample positions for fixations ``centers`` (..., F, 2) of ``radii`` (..., F)."""
    offsets = view_offsets(size, kind, rs_min, rs_max, device=centers.device, dtype=centers.dtype)
    scale = aspect_scale(image_size, device=centers.device, dtype=centers.dtype)
    return centers[..., None, None, :] + radii[..., None, None, None] * offsets * scale


def retinotopic_views(images: torch.Tensor, centers, radii=1.0, size=224, kind: str = "logpolar",
                      padding: str = "zeros", rs_min: float = RS_MIN, rs_max: float = RS_MAX) -> torch.Tensor:
    """Views (B, F, C, h, w) of ``images`` (B, C, H, W) at fixations ``centers`` ((F, 2) shared or (B, F, 2)).

    ``radii``: a number, (F,) or (B, F), in inscribed-circle units. ``padding`` is what lies outside the
    image (``grid_sample``'s padding_mode). Bilinear sampling; one ``grid_sample`` call for every view.
    """
    if padding not in PADDINGS:
        raise NeuroprobeError(f"unknown padding '{padding}'; use {', '.join(PADDINGS)}")
    if images.ndim != 4:
        raise NeuroprobeError(f"images must be (batch, channels, height, width); got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    centers = torch.as_tensor(centers, dtype=dtype, device=images.device)
    if centers.ndim == 2:
        centers = centers.expand(batch, *centers.shape)
    if centers.ndim != 3 or centers.shape[0] != batch or centers.shape[2] != 2:
        raise NeuroprobeError(f"centers must be (fixations, 2) or (images, fixations, 2); got {tuple(centers.shape)}")
    radii = torch.as_tensor(radii, dtype=dtype, device=images.device).expand(centers.shape[:2])
    grid = sampling_grid(centers, radii, (height, width), size, kind, rs_min, rs_max)   # (B, F, h, w, 2)
    fixations, h, w = grid.shape[1:4]
    sampled = F.grid_sample(images.to(dtype), grid.reshape(batch, fixations * h, w, 2), mode="bilinear",
                            padding_mode=padding, align_corners=False)            # (B, C, F*h, w)
    return sampled.view(batch, channels, fixations, h, w).transpose(1, 2)


def inverse_views(views: torch.Tensor, centers, radii=1.0, image_size=224, kind: str = "logpolar",
                  rs_min: float = RS_MIN, rs_max: float = RS_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Views (B, F, C, h, w) back on the image plane: (B, F, C, H, W) images and the (B, F, 1, H, W) mask
    of the pixels a view sampled (the annulus of a log-polar view, the square of a crop view).

    Bilinear in the view's coordinates; the azimuth wraps (the column after the last is the first), so
    the seam at angle 0 is interpolated like any other column.
    """
    batch, fixations, channels, h, w = views.shape
    dtype = views.dtype
    centers = torch.as_tensor(centers, dtype=dtype, device=views.device)
    if centers.ndim == 2:
        centers = centers.expand(batch, *centers.shape)
    radii = torch.as_tensor(radii, dtype=dtype, device=views.device).expand(centers.shape[:2])
    height, width = _pair(image_size)
    ys = (2 * torch.arange(height, device=views.device, dtype=dtype) + 1) / height - 1
    xs = (2 * torch.arange(width, device=views.device, dtype=dtype) + 1) / width - 1
    plane = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)                          # (H, W, 2)
    scale = aspect_scale((height, width), device=views.device, dtype=dtype)
    offsets = (plane - centers[..., None, None, :]) / (radii[..., None, None, None] * scale)  # (B, F, H, W, 2)
    flat = views.reshape(batch * fixations, channels, h, w)
    if kind == "crop":
        grid = offsets
        inside = (offsets.abs() <= 1).all(-1)
        padded = flat
        align = False
    elif kind == "logpolar":
        rho = offsets.norm(dim=-1)
        theta = torch.atan2(offsets[..., 1], offsets[..., 0]).remainder(2 * math.pi)
        lo, hi = 2.0 ** rs_max, 2.0 ** rs_min
        inside = (rho >= min(lo, hi)) & (rho <= max(lo, hi))
        row = (torch.log2(rho.clamp_min(1e-12)) - rs_min) / (rs_max - rs_min)              # 0..1 over the rows
        column = theta / (2 * math.pi)                                                     # 0..1, 1 = first again
        grid = torch.stack((2 * column - 1, 2 * row - 1), -1)
        padded = torch.cat((flat, flat[..., :1]), -1)          # wrap: column w is column 0
        align = True                                           # -1/+1 are the first/last sample's centres
    else:
        raise NeuroprobeError(f"unknown view kind '{kind}'; use {' or '.join(KINDS)}")
    images = F.grid_sample(padded, grid.reshape(batch * fixations, height, width, 2), mode="bilinear",
                           padding_mode="border", align_corners=align)
    mask = inside.reshape(batch, fixations, 1, height, width)
    images = images.view(batch, fixations, channels, height, width) * mask
    return images, mask
