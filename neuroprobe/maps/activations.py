"""Every activation call of a forward pass, seen and rewritten: the one mechanism behind guided
backprop, feedback gates and gradients at pre-activations.

A :class:`~torch.overrides.TorchFunctionMode` sees module, functional and in-place activations
alike (``nn.ReLU(inplace=True)`` reused twice in a ResNet block, GoogLeNet's functional in-place
ReLU, timm's ReLU6). Each call is run out of place (every torchvision/timm block uses the returned
value) and its output handed to ``rewrite(call_index, name, input, output)``, whose return value the
network continues with. Captum's module hooks cannot do this for reused or in-place ReLUs.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.overrides import TorchFunctionMode

from ..models.capture import ACTIVATION_NAMES, _op_name

Rewrite = Callable[[int, str, torch.Tensor, torch.Tensor], torch.Tensor]


def _out_of_place(func, args, kwargs):
    """The same activation without its in-place flag or trailing underscore."""
    name = getattr(func, "__name__", "")
    kwargs = dict(kwargs)
    if kwargs.get("inplace"):
        kwargs["inplace"] = False
    args = tuple(False if (i > 0 and a is True) else a for i, a in enumerate(args))
    if name.endswith("_"):                     # torch.relu_, Tensor.relu_, F.leaky_relu_, ...
        base = name[:-1]
        plain = getattr(torch.nn.functional, base, None) or getattr(torch, base)
        return plain(*args, **kwargs)
    return func(*args, **kwargs)


class ActivationRewrite(TorchFunctionMode):
    """Runs activations out of place and lets ``rewrite`` replace their outputs (see the module doc)."""

    def __init__(self, rewrite: Rewrite) -> None:
        super().__init__()
        self.rewrite = rewrite
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func)
        if name in ACTIVATION_NAMES and args and isinstance(args[0], torch.Tensor):
            call, self.calls = self.calls, self.calls + 1
            out = _out_of_place(func, args, kwargs)
            return self.rewrite(call, name, args[0], out)
        return func(*args, **kwargs)


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward lets only positive gradients through (guided backprop's rule)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


def guided(call: int, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Guided backprop (Springenberg et al.): at every activation, d/dx = f'(x) * max(incoming, 0)."""
    return _PositiveGradient.apply(out)


def plain(call: int, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Out of place, otherwise unchanged (so that pre-activations stay in the autograd graph)."""
    return out


REDIRECTABLE = frozenset({"relu", "relu6", "hardtanh", "threshold"})


class _Redirected(torch.autograd.Function):
    """Lucid's redirected ReLU gradient for clamp-like activations: where an image's gradient through the
    activation is zero everywhere (every input on a flat side), let it through instead, except where it
    would push an input further into the flat side. Other images keep their exact gradient."""

    @staticmethod
    def forward(ctx, x, out):
        ctx.save_for_backward(x, out)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        linear = out == x
        exact = grad * linear
        # descent moves x by -grad: below the clamp (x < out) positive grad pushes lower, above it negative higher
        blocked = ((x < out) & (grad > 0)) | ((x > out) & (grad < 0))
        redirected = torch.where(blocked, torch.zeros_like(grad), grad)
        dead = exact.flatten(1).abs().amax(1) == 0
        shape = (-1,) + (1,) * (grad.ndim - 1)
        return torch.where(dead.view(shape), redirected, exact), None


def redirected(call: int, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Out of place, with Lucid's redirected gradient through ReLU-like clamps (feature visualization
    from a grey start, where every ReLU of a unit's path can be off and the exact gradient is zero)."""
    return _Redirected.apply(x, out) if name in REDIRECTABLE and x.ndim >= 1 else out
