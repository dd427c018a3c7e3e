"""Per-unit pooling of captured feature maps, on the device, in float32 whatever the autocast."""
from __future__ import annotations

import torch


def pool_units(value: torch.Tensor) -> torch.Tensor:
    """(B, units, *spatial) -> float32 (B, 4, units): min, mean, max over space and active area.

    ``area`` is the fraction of positions whose value is > 0. For Linear layers and 1x1 maps
    min = mean = max = the value itself, and area is 1.0 or 0.0. Channels-last maps are read in
    place as (B, positions, units), without a copy to the contiguous layout.
    """
    with torch.autocast(value.device.type, enabled=False):
        flat, axis = _positions_by_units(value.detach())
        flat = flat.float()  # statistics accumulate in float32 under bf16/fp16 autocast too
        low, high = torch.aminmax(flat, dim=axis)
        mean = flat.mean(dim=axis)
        area = (flat > 0).sum(dim=axis, dtype=torch.float32).div_(flat.shape[axis])
        return torch.stack((low, mean, high, area), dim=1)


def _positions_by_units(value: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A view of ``value`` with units on one axis and positions on another, and the positions' axis."""
    batch, units = value.shape[:2]
    if value.dim() == 4 and value.is_contiguous(memory_format=torch.channels_last) and not value.is_contiguous():
        return value.permute(0, 2, 3, 1).reshape(batch, -1, units), 1
    return value.reshape(batch, units, -1), 2
