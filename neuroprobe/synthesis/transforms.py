"""Robustness transforms for feature visualization (Lucid's standard set), batched, each image its own draw.

Lucid's ``standard_transforms``: pad 12 px with grey, jitter 8 px, scale by one of 0.9 ... 1.1, rotate by
-10 ... 10 degrees (0 five times more often), jitter 4 px. Here the pad is applied first and everything
else is one affine map per image, sampled with a single ``grid_sample`` call for the whole batch on the
device (differentiable). Each image draws its parameters from its own generator, so a batch of images
gets exactly the transforms each image would get alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))
ANGLES = tuple(range(-10, 11)) + (0,) * 5


@dataclass(frozen=True)
class Transforms:
    """Pad (px, grey), jitter (px, before and after the rotation, summed), scales, angles (degrees)."""

    pad: int = 12
    jitter: tuple[int, int] = (8, 4)
    scales: tuple[float, ...] = SCALES
    angles: tuple[float, ...] = ANGLES

    @classmethod
    def none(cls) -> "Transforms":
        return cls(pad=0, jitter=(0, 0), scales=(1.0,), angles=(0.0,))

    def draw(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """(N, 4) per image: scale, angle (radians), shift x, shift y (px), one draw from each generator."""
        rows = []
        for g in generators:
            scale = self.scales[int(torch.randint(len(self.scales), (1,), generator=g))]
            angle = self.angles[int(torch.randint(len(self.angles), (1,), generator=g))]
            shift = [sum(int(torch.randint(-j, j + 1, (1,), generator=g)) if j else 0 for j in self.jitter)
                     for _ in range(2)]
            rows.append([scale, math.radians(angle), *shift])
        return torch.tensor(rows, dtype=torch.float32)

    def apply(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Pad, then scale/rotate about the centre and shift, each image by its row of ``draws``."""
        if self.pad:
            images = F.pad(images, [self.pad] * 4, value=0.5)
        if torch.equal(draws.cpu(), torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand_as(draws)):
            return images                                   # the identity: no resampling
        n, _, h, w = images.shape
        draws = draws.to(images.device, images.dtype)
        scale, angle, dx, dy = draws.unbind(1)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # output pixel -> input pixel in normalized coordinates: rotate and scale, then shift
        theta = torch.stack([torch.stack([cos, -sin * h / w, -2 * dx / w], 1),
                             torch.stack([sin * w / h, cos, -2 * dy / h], 1)], 1)
        grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
