"""One entry point for every attribution method, by name: ``attribute(model, x, targets, "gradcam")``.

It picks the layer for the layer methods (the last spatial layer by default), turns several
targets per image into one gated optimisation per (image, target) for the methods that need one
target per pass, and runs large batches in pieces.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

from ..engine.malloc import keep_freed_memory_on_cpu
from ..errors import NeuroprobeError
from .attribution import PASS_BUDGET, Attribution, as_targets, gradcam, gradient, guided_backprop, smoothgrad
from .dff import dff
from .feedback import feedback, global_perception

log = logging.getLogger(__name__)

METHODS: dict[str, Callable[..., Attribution]] = {
    "gradient": gradient, "guided": guided_backprop, "smoothgrad": smoothgrad, "gradcam": gradcam, "dff": dff,
    "feedback": feedback, "global": global_perception}
LAYER_METHODS = ("gradcam", "dff")
ONE_TARGET_METHODS = ("feedback", "global")


def check_methods(methods) -> list[str]:
    """Method names, validated; a comma-separated string is split."""
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise NeuroprobeError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
                              f"{', '.join(METHODS)}")
    return names


def _is_map(out) -> bool:
    return isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1


def last_spatial_layer(model: nn.Module, example: torch.Tensor) -> str:
    """The module whose (B, C, h, w) output, h * w > 1, comes last in the forward pass (the global pool's
    1 x 1 output does not count): Grad-CAM's usual layer."""
    order: list[str] = []
    handles = [module.register_forward_hook(
        lambda _m, _a, out, name=name: order.append(name) if _is_map(out) else None)
        for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise NeuroprobeError("the model has no layer with a spatial output; pass layer= explicitly")
    return order[-1]


def attribute(model: nn.Module, x: torch.Tensor, targets, method: str, *, layer: str | None = None,
              batch_size: int | None = None, **options) -> Attribution:
    """Maps of ``method`` for ``targets`` (int, (B,) or (B, T) classes, or units with ``target_layer``).

    ``layer`` is used by gradcam and dff (default: the last spatial layer). Feedback and global
    perception optimise gates per target, so T targets cost T optimisations (one batched pass of
    B*T copies). ``batch_size`` splits the images into pieces (DFF then factorizes each piece).
    Extra ``options`` go to the method (e.g. samples=, iterations=, relu=).
    """
    (name,) = check_methods([method])
    keep_freed_memory_on_cpu(x.device)
    targets = as_targets(targets, len(x), x.device)
    if batch_size and len(x) > batch_size:
        parts = [attribute(model, x[i:i + batch_size], targets[i:i + batch_size], name, layer=layer, **options)
                 for i in range(0, len(x), batch_size)]
        return Attribution(name, torch.cat([p.raw for p in parts]), torch.cat([p.map for p in parts]), targets,
                           parts[0].reduction)
    if name in LAYER_METHODS:
        layer = layer or last_spatial_layer(model, x)   # an unknown name fails in Capture, with close matches
        return METHODS[name](model, x, targets, layer, **options)
    if name in ONE_TARGET_METHODS and targets.shape[1] > 1:
        count = targets.shape[1]
        copies, flat_targets = x.repeat_interleave(count, 0), targets.reshape(-1, 1)
        step = max(1, PASS_BUDGET // (x.shape[-2] * x.shape[-1]))
        parts = [METHODS[name](model, copies[i:i + step], flat_targets[i:i + step], **options)
                 for i in range(0, len(copies), step)]
        raw, shown = torch.cat([p.raw for p in parts]), torch.cat([p.map for p in parts])
        return Attribution(name, raw.reshape(len(x), count, *raw.shape[2:]),
                           shown.reshape(len(x), count, *shown.shape[2:]), targets, parts[0].reduction)
    return METHODS[name](model, x, targets, **options)
