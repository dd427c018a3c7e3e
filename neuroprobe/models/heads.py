"""Find a model's classifier and replace it with a head for N classes (any torchvision, timm or offline model).

The classifier is found by running the model once: the last ``Linear`` (or 1x1 ``Conv2d``, as SqueezeNet's)
to run whose output has as many channels as the model has outputs. The new head has the same input width,
is initialised from a seed, and is recorded as a checkpoint edit (:mod:`neuroprobe.models.checkpoint`) so that
``--weights`` rebuilds it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import NeuroprobeError


def find_head(model: nn.Module, example: torch.Tensor) -> str:
    """The name of the module that produces the model's logits."""
    ran: list[tuple[str, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, a, out, name=name: ran.append((name, out)))
             for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            logits = model(example)
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise NeuroprobeError("the model does not return (batch, classes) logits; cannot find its classifier")
    for name, out in reversed(ran):
        if out.shape[1] == logits.shape[1]:
            return name
    raise NeuroprobeError("no Linear or Conv2d layer produces the model's logits; cannot replace its classifier")


def new_head(old: nn.Module, classes: int, seed: int = 0) -> nn.Module:
    """A layer like ``old`` (same input width) with ``classes`` outputs, seeded."""
    torch.manual_seed(seed)
    if isinstance(old, nn.Linear):
        head = nn.Linear(old.in_features, classes)
    elif isinstance(old, nn.Conv2d) and old.kernel_size == (1, 1):
        head = nn.Conv2d(old.in_channels, classes, 1)
    else:
        raise NeuroprobeError(f"the classifier is a {type(old).__name__}; only Linear and 1x1 Conv2d heads can be replaced")
    reference = next(old.parameters())
    return head.to(device=reference.device, dtype=reference.dtype)


def replace_head(model: nn.Module, name: str, classes: int, seed: int = 0) -> nn.Module:
    """Swap the module ``name`` for a new head with ``classes`` outputs; returns the new head."""
    head = new_head(model.get_submodule(name), classes, seed)
    model.set_submodule(name, head)
    return head
