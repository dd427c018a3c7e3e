"""Training on in-memory tensors: seeded mini-batch Adam, with a per-epoch history (heads on frozen features).

Small on purpose: heads on frozen features (the dorsal network of :mod:`neuroprobe.retina.dorsal`) train
in seconds on the CPU. Every run is reproducible from its seed (data order and initialisation).
"""
from __future__ import annotations

import logging
from typing import Callable

import pandas as pd
import torch
from torch import nn

from .progress import Progress

log = logging.getLogger(__name__)


def train(module: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], inputs: torch.Tensor,
          targets: torch.Tensor, *, epochs: int = 100, lr: float = 1e-3, weight_decay: float = 0.0,
          batch_size: int | None = None, seed: int = 0, sample_weights: torch.Tensor | None = None,
          on_epoch: Callable[[int], dict] | None = None, desc: str = "training") -> pd.DataFrame:
    """Fit ``module`` to ``loss_fn(module(inputs), targets)``; returns the mean loss of each epoch.

    ``batch_size`` None trains on the whole set per step (full batch); the order of mini-batches comes
    from a generator seeded with ``seed``, so two calls with the same arguments give the same weights.
    ``sample_weights``: each epoch draws len(inputs) examples with replacement in proportion to them
    (e.g. class-balanced sampling) instead of a permutation. ``on_epoch(epoch)`` (module in eval mode)
    returns more columns for that epoch's row (e.g. validation loss and accuracy). ``desc`` names the
    progress meter (one unit per epoch).
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    size = batch_size or len(inputs)
    history = []
    module.train()
    meter = Progress(epochs, desc, "epoch")
    for epoch in range(epochs):
        if sample_weights is None:
            order = torch.randperm(len(inputs), generator=generator)
        else:
            order = torch.multinomial(sample_weights.double(), len(inputs), replacement=True, generator=generator)
        total = 0.0
        for start in range(0, len(inputs), size):
            index = order[start:start + size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(module(inputs[index]), targets[index])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        row = {"epoch": epoch + 1, "loss": total / len(inputs)}
        if on_epoch is not None:
            module.eval()
            with torch.no_grad():
                row |= on_epoch(epoch + 1)
            module.train()
        history.append(row)
        meter.update(1)
    meter.close()
    module.eval()
    log.debug("trained %d epochs, final loss %.4f", epochs, history[-1]["loss"] if history else float("nan"))
    return pd.DataFrame(history)
