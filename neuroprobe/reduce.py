"""Per-unit pooling of captured feature maps, on the device, in float32 whatever the autocast."""
from __future__ import annotations

import torch

STATS = ("min", "mean", "max", "area")


def pool_units(value: torch.Tensor) -> torch.Tensor:
    """(B, units, *spatial) -> float32 (B, 4, units): min, mean, max over space and active area.

    ``area`` is the fraction of positions whose value is > 0. For Linear layers and 1x1 maps
    min = mean = max = the value itself, and area is 1.0 or 0.0.
    """
    with torch.autocast(value.device.type, enabled=False):
        flat = value.detach().reshape(value.shape[0], value.shape[1], -1).float()
        low, high = torch.aminmax(flat, dim=2)
        mean = flat.mean(dim=2)
        area = (flat > 0).sum(dim=2, dtype=torch.float32).div_(flat.shape[2])
        return torch.stack((low, mean, high, area), dim=1)
