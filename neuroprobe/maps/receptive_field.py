"""Theoretical receptive fields of every unit position of a layer, through any eager forward pass.

Each tensor of one forward pass carries, per spatial axis, the receptive field of its position 0:
``size`` (pixels), ``jump`` (pixels between neighbouring positions) and ``center`` (input coordinate
of position 0's centre). A :class:`~torch.overrides.TorchFunctionMode` updates them op by op: conv
and pooling (kernel, stride, padding, dilation), explicit padding (timm's "same" convs), and the union
of the inputs' fields for elementwise ops and concatenations, which makes residual branches and
Inception blocks come out right where chain-only formulas do not. Global pooling and Linear layers
see the whole image (size ``inf``).
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..capture import StopForward
from ..errors import NeuroprobeError, closest


@dataclass(frozen=True)
class Field:
    """Receptive field along one axis: position p covers center + p * jump -/+ (size - 1) / 2."""

    size: float
    jump: float
    center: float

    def union(self, other: "Field") -> "Field":
        if math.isinf(self.size) or math.isinf(other.size):
            return GLOBAL
        if not math.isclose(self.jump, other.jump):
            raise NeuroprobeError(f"inputs with different strides ({self.jump} and {other.jump}) meet in one op")
        left = min(self.center - (self.size - 1) / 2, other.center - (other.size - 1) / 2)
        right = max(self.center + (self.size - 1) / 2, other.center + (other.size - 1) / 2)
        return Field(right - left + 1, self.jump, (left + right) / 2)

    def window(self, kernel: int, stride: int, padding: int, dilation: int = 1) -> "Field":
        """After a sliding window (conv or pooling)."""
        if math.isinf(self.size):
            return GLOBAL
        extent = dilation * (kernel - 1) + 1
        return Field(self.size + (extent - 1) * self.jump, self.jump * stride,
                     self.center + ((extent - 1) / 2 - padding) * self.jump)


GLOBAL = Field(math.inf, math.inf, math.nan)


def _pair(value, index: int) -> int:
    if isinstance(value, (tuple, list)):
        return int(value[index] if len(value) > 1 else value[0])
    return int(value)


def _arg(args, kwargs, position: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


class _Tracker(TorchFunctionMode):
    """Propagates (y, x) fields from the input through every op of a forward pass."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.fields: dict[int, tuple[weakref.ref, tuple[Field, Field]]] = {}
        self._set(image, (Field(1, 1, 0), Field(1, 1, 0)))

    def get(self, tensor) -> tuple[Field, Field] | None:
        entry = self.fields.get(id(tensor)) if isinstance(tensor, torch.Tensor) else None
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def _set(self, tensor: torch.Tensor, value: tuple[Field, Field]) -> None:
        key = id(tensor)
        self.fields[key] = (weakref.ref(tensor, lambda _r, key=key, f=self.fields: f.pop(key, None)), value)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        inputs = [t for t in _tensors(args, kwargs)]
        known = [f for f in (self.get(t) for t in inputs) if f is not None]
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor) or not known:
            return out
        source = self.get(args[0]) if args and isinstance(args[0], torch.Tensor) else None
        field = self._rule(name, args, kwargs, source, known, out)
        if field is not None:
            self._set(out, field)
        return out

    def _rule(self, name, args, kwargs, source, known, out):
        base = name.lstrip("_").rstrip("_")
        if base in ("conv1d", "conv2d", "conv3d") and source is not None:
            weight = _arg(args, kwargs, 1, "weight")
            stride, padding = _arg(args, kwargs, 3, "stride", 1), _arg(args, kwargs, 4, "padding", 0)
            dilation = _arg(args, kwargs, 5, "dilation", 1)
            kernel = weight.shape[-2:]
            if isinstance(padding, str):
                padding = [(dilation if isinstance(dilation, int) else dilation[i]) * (kernel[i] - 1) // 2
                           if padding == "same" else 0 for i in range(2)]
            return tuple(source[i].window(kernel[i], _pair(stride, i), _pair(padding, i), _pair(dilation, i))
                         for i in range(2))
        if ("max_pool2d" in base or "avg_pool2d" in base) and "adaptive" not in base and source is not None:
            kernel = _arg(args, kwargs, 1, "kernel_size")
            stride = _arg(args, kwargs, 2, "stride", None) or kernel
            padding = _arg(args, kwargs, 3, "padding", 0)
            dilation = _arg(args, kwargs, 4, "dilation", 1) if "max" in base else 1
            return tuple(source[i].window(_pair(kernel, i), _pair(stride, i), _pair(padding, i), _pair(dilation, i))
                         for i in range(2))
        if base == "pad" and source is not None:
            pad = list(_arg(args, kwargs, 1, "pad"))
            left_x, top_y = pad[0], pad[2] if len(pad) > 2 else 0
            fy, fx = source
            return (Field(fy.size, fy.jump, fy.center - top_y * fy.jump),
                    Field(fx.size, fx.jump, fx.center - left_x * fx.jump))
        if out.dim() < 3 or "adaptive" in base or base in ("linear", "flatten", "mean", "sum", "amax"):
            spatial = out.dim() >= 3 and args and isinstance(args[0], torch.Tensor) and \
                tuple(out.shape[-2:]) == tuple(args[0].shape[-2:])
            return source if spatial else (GLOBAL, GLOBAL)
        fy, fx = known[0]
        for other_y, other_x in known[1:]:
            fy, fx = fy.union(other_y), fx.union(other_x)
        return fy, fx


def _tensors(args, kwargs):
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, torch.Tensor))


def theoretical_receptive_fields(model: nn.Module, layers: Sequence[str],
                                 input_size: int | tuple[int, int] = 224) -> pd.DataFrame:
    """Per layer: receptive field size, jump (stride) and the centre of position (0, 0), in input pixels.

    The field of the layer's output equals that of its pre-activation (activations are elementwise).
    ``size`` is ``inf`` after global pooling or a Linear layer.
    """
    modules = dict(model.named_modules())
    for layer in layers:
        if layer not in modules or not layer:
            raise NeuroprobeError(f"unknown layer '{layer}'; closest: {closest(layer, [n for n in modules if n])}")
    found: dict[str, tuple[Field, Field]] = {}
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    parameter = next(model.parameters(), None)
    image = torch.zeros(1, 3, int(height), int(width), device=parameter.device if parameter is not None else None)
    tracker = _Tracker(image)
    def record(name: str, out) -> None:
        found[name] = tracker.get(out)
        if all(layer in found for layer in layers):
            raise StopForward          # nothing after the last layer matters (or has to be followable)

    hooks = [modules[name].register_forward_hook(lambda _m, _a, out, name=name: record(name, out)) for name in layers]
    try:
        with torch.no_grad(), tracker:
            model.eval()(image)
    except StopForward:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    rows = []
    for name in layers:
        if found.get(name) is None:
            raise NeuroprobeError(f"layer '{name}': its receptive field could not be followed (an op neuroprobe "
                                  "does not know changes the spatial layout)")
        fy, fx = found[name]
        rows.append({"layer": name, "size_y": fy.size, "size_x": fx.size, "jump_y": fy.jump, "jump_x": fx.jump,
                     "center_y": fy.center, "center_x": fx.center})
    return pd.DataFrame(rows)
