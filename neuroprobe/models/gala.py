"""Global-and-local attention (GALA, Linsley et al.) modules, inserted before named blocks of any model.

``GALA(C)``: local path 1x1 conv to C/r (ReLU) -> 5x5 conv (ReLU) -> 1x1 conv to one map S (B, 1, H, W);
global path global-average-pool -> FC C/r (ReLU) -> FC C gives G (B, C, 1, 1); the attention is
``A = sigmoid(alpha * (S + G) + beta * (S * G))`` with learned per-channel alpha and beta, and the block's
input is multiplied by ``2 A``. The factor 2 is the one departure from the paper: with alpha = beta = 0 at
insertion A is exactly 1/2, so the module starts as the identity and a pretrained model keeps its
outputs bit for bit until training moves alpha and beta (the issue's "mask = 1 at step 0").

``A`` passes through the child module ``attention`` (an ``nn.Identity``), so ``<block>.gala.attention``
is a capture point like any other layer: ``extract`` stores it and every analysis reads it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import NeuroprobeError, closest


class GALA(nn.Module):
    """Global-and-local attention over a (B, C, H, W) input; returns the input times 2A."""

    def __init__(self, channels: int, reduction: int = 4, kernel: int = 5) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.local = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(),
                                   nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2), nn.ReLU(),
                                   nn.Conv2d(hidden, 1, 1))
        self.glob = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(),
                                  nn.Linear(hidden, channels))
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.attention = nn.Identity()   # capture point: A, (B, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.local(x)                                    # (B, 1, H, W)
        g = self.glob(x)[:, :, None, None]                   # (B, C, 1, 1)
        alpha, beta = self.alpha[:, None, None], self.beta[:, None, None]
        a = self.attention(torch.sigmoid(alpha * (s + g) + beta * (s * g)))
        return x * (2 * a)


def input_channels(block: nn.Module) -> int:
    """Channels a block takes: those of its first convolution (or first BatchNorm / Linear)."""
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
        if isinstance(module, nn.BatchNorm2d):
            return module.num_features
    raise NeuroprobeError(f"cannot tell how many channels {type(block).__name__} takes (no convolution in it); "
                          "choose a convolutional block")


def add_gala(model: nn.Module, layers: Sequence[str], reduction: int = 4) -> dict[str, GALA]:
    """Insert a GALA module before each named block (a child ``gala`` of the block, applied to its input
    by a forward pre-hook, so every existing layer name stays valid); returns {layer: module}."""
    names = dict(model.named_modules())
    added = {}
    for layer in layers:
        if layer not in names:
            raise NeuroprobeError(f"no layer '{layer}' in the model; closest: {closest(layer, list(names))}")
        block = names[layer]
        if isinstance(block, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            inner = next((f"{layer}.{n}" for n, _ in block.named_children()), layer)
            raise NeuroprobeError(f"'{layer}' is a container that runs every child in turn; insert GALA before one "
                                  f"of its blocks instead, e.g. '{inner}'")
        if hasattr(block, "gala"):
            raise NeuroprobeError(f"'{layer}' already has a GALA module")
        reference = next((p for p in block.parameters()), None)
        module = GALA(input_channels(block), reduction)
        if reference is not None:
            module = module.to(device=reference.device, dtype=reference.dtype)
        block.add_module("gala", module)
        block.register_forward_pre_hook(_apply_gala)
        added[layer] = module
    return added


def _apply_gala(block: nn.Module, args: tuple) -> tuple:
    return (block.gala(args[0]), *args[1:])
