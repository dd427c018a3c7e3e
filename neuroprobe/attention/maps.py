"""Importance-map image operations shared by the losses and the alignment score, as in the authors' code
(serre-lab/Harmonization, TensorFlow): their Gaussian kernel, 'SAME' padding, bilinear resizes."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BLUR_SIZE, BLUR_SIGMA = 10, 10.0     # the authors' ClickMe blur (at 64 x 64)


def gaussian_kernel(size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA, dtype=torch.float32) -> torch.Tensor:
    """The authors' (size, size) kernel: x from -(size-1)//2 upwards, y downwards, normalized to sum 1."""
    low = -(size - 1) // 2                      # Python's floor division, as theirs: -5 for size 10
    xs = torch.arange(low, (size - 1) // 2 + 1, dtype=torch.float64)
    ys = torch.arange((size - 1) // 2, low - 1, -1, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    kernel = torch.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2)) / (2 * math.pi * sigma ** 2)
    return (kernel / kernel.sum()).to(dtype)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding (before, after) along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_same(maps: torch.Tensor, kernel: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """(B, 1, H, W) maps correlated with a (k, k) kernel, zero 'SAME' padding, as tf.nn.conv2d."""
    k = kernel.shape[-1]
    top, bottom = same_padding(maps.shape[-2], k, stride)
    left, right = same_padding(maps.shape[-1], k, stride)
    padded = F.pad(maps, (left, right, top, bottom))
    return F.conv2d(padded, kernel.to(maps)[None, None], stride=stride)


def as_maps(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) -> (B, 1, H, W)."""
    return maps[:, None] if maps.ndim == 3 else maps


def preprocess_human_maps(maps: torch.Tensor, size: int, low: int = 64) -> torch.Tensor:
    """The authors' ClickMe preprocessing: bilinear resize to ``low`` px, their Gaussian blur, bilinear
    resize to ``size`` px. (B, H, W) -> (B, size, size)."""
    x = F.interpolate(as_maps(maps).float(), size=(low, low), mode="bilinear", align_corners=False)
    x = conv_same(x, gaussian_kernel(dtype=x.dtype))
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
