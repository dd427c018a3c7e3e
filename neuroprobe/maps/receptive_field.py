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


@dataclass(frozen=True)
class Layout:
    """The (y, x) fields of a tensor and which of its axes are y and x (NCHW: 2, 3; channels-last: 1, 2)."""

    fields: tuple[Field, Field]
    axes: tuple[int, int]
    tokens: tuple[int, int] | None = None   # a token axis (axes y == x): (grid width, leading extra tokens)

    def shifted(self, removed: Sequence[int]) -> "Layout | None":
        """After removing the dims ``removed`` (none of them spatial): the axes move left."""
        if any(d in self.axes for d in removed):
            return None
        return Layout(self.fields, tuple(a - sum(d < a for d in removed) for a in self.axes), self.tokens)


GLOBAL_LAYOUT = (GLOBAL, GLOBAL)
LOST = Layout(GLOBAL_LAYOUT, (-1, -1))   # an op was not followed: everything computed from it is unknown
MIXERS = frozenset({"multi_head_attention_forward", "scaled_dot_product_attention", "matmul", "bmm", "baddbmm",
                    "einsum"})
SPLITS = {"split": 2, "chunk": 2, "tensor_split": 2, "split_with_sizes": 2, "unbind": 1, "hsplit": None,
          "vsplit": None}


def _dims(value, ndim: int) -> list[int]:
    values = value if isinstance(value, (tuple, list)) else [value]
    return [int(v) % ndim for v in values]


class _Tracker(TorchFunctionMode):
    """Propagates (y, x) fields, and which axes hold them, from the input through every op of a forward pass."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.fields: dict[int, tuple[weakref.ref, Layout]] = {}
        self.lost: str | None = None       # the first op whose output layout could not be followed
        self.layout_of_found: dict[str, Layout | None] = {}
        self._set(image, Layout((Field(1, 1, 0), Field(1, 1, 0)), (2, 3)))

    def layout(self, tensor) -> Layout | None:
        entry = self.fields.get(id(tensor)) if isinstance(tensor, torch.Tensor) else None
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def get(self, tensor) -> tuple[Field, Field] | None:
        layout = self.layout(tensor)
        return layout.fields if layout is not None else None

    def _set(self, tensor: torch.Tensor, value: Layout) -> None:
        key = id(tensor)
        self.fields[key] = (weakref.ref(tensor, lambda _r, key=key, f=self.fields: f.pop(key, None)), value)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        inputs = [t for t in _tensors(args, kwargs)]
        known = [f for f in (self.layout(t) for t in inputs) if f is not None]
        out = func(*args, **kwargs)
        if not known:
            return out
        source = self.layout(args[0]) if args and isinstance(args[0], torch.Tensor) else None
        base = name.lstrip("_").rstrip("_")
        if isinstance(out, torch.Tensor):
            pieces = [out]
        elif isinstance(out, (tuple, list)):
            pieces = [o for o in out if isinstance(o, torch.Tensor)]
        else:
            return out
        if any(k is LOST for k in known):                 # downstream of an op that was not followed
            layouts = [LOST] * len(pieces)
        elif base in MIXERS:                              # attention and matrix products mix positions
            layouts = [Layout(GLOBAL_LAYOUT, (max(p.dim() - 2, 0), max(p.dim() - 1, 0))) for p in pieces]
        elif isinstance(out, torch.Tensor):
            layouts = [self._rule(name, args, kwargs, source, known, out)]
        else:
            layouts = self._pieces(name, args, kwargs, source, pieces)
        for piece, layout in zip(pieces, layouts, strict=True):
            self._record(name, piece, layout)
        return out

    def _record(self, name: str, out: torch.Tensor, layout: Layout | None) -> None:
        if layout is None:
            self.lost = self.lost or name
            layout = LOST
        self._set(out, layout)

    def _pieces(self, name, args, kwargs, source, out) -> list[Layout | None]:
        """Tuple-returning ops (chunk, split, tensor_split, unbind): each piece keeps the source's field, moved
        by its offset when the split runs along a spatial axis."""
        base = name.lstrip("_").rstrip("_")
        if source is None or base not in SPLITS or SPLITS[base] is None:
            return [None] * len(out)
        ndim = args[0].dim()
        dim = int(kwargs.get("dim", args[SPLITS[base]] if len(args) > SPLITS[base] else 0)) % ndim
        if base == "unbind":
            return [source.shifted([dim])] * len(out)
        if dim not in source.axes:
            return [source] * len(out)
        if source.tokens is not None:
            return [None] * len(out)
        axis = source.axes.index(dim)
        pieces, offset = [], 0
        for piece in out:
            fields = list(source.fields)
            f = fields[axis]
            fields[axis] = Field(f.size, f.jump, f.center + offset * f.jump)
            pieces.append(Layout(tuple(fields), source.axes))
            offset += piece.shape[dim]
        return pieces

    def _concat(self, args, kwargs, known, out) -> Layout | None:
        """Concatenation: along channels, the union of the inputs' fields; along a token axis, untracked tokens
        put in front (a class token) shift the patch tokens; along a spatial axis, not followed."""
        pieces = list(args[0]) if args and isinstance(args[0], (list, tuple)) else []
        dim = _concat_dim(args, kwargs, out.dim())
        layouts = [self.layout(p) for p in pieces]
        tracked = [lay for lay in layouts if lay is not None]
        if not tracked or any(lay.axes != tracked[0].axes for lay in tracked):
            return None
        first = tracked[0]
        if dim not in first.axes:
            fy, fx = first.fields
            for other in tracked[1:]:
                fy, fx = fy.union(other.fields[0]), fx.union(other.fields[1])
            return Layout((fy, fx), first.axes, first.tokens)
        if first.tokens is not None and len(tracked) == 1:
            index = layouts.index(first)
            before = sum(int(p.shape[dim]) for p in pieces[:index])
            return Layout(first.fields, first.axes, (first.tokens[0], first.tokens[1] + before))
        return None

    def _rule(self, name, args, kwargs, source, known, out) -> Layout | None:
        base = name.lstrip("_").rstrip("_")
        nchw = source is not None and source.axes == (args[0].dim() - 2, args[0].dim() - 1)
        if base in ("conv1d", "conv2d", "conv3d") and source is not None:
            if not nchw:
                return None
            weight = _arg(args, kwargs, 1, "weight")
            stride, padding = _arg(args, kwargs, 3, "stride", 1), _arg(args, kwargs, 4, "padding", 0)
            dilation = _arg(args, kwargs, 5, "dilation", 1)
            kernel = weight.shape[-2:]
            if isinstance(padding, str):
                padding = [(dilation if isinstance(dilation, int) else dilation[i]) * (kernel[i] - 1) // 2
                           if padding == "same" else 0 for i in range(2)]
            return Layout(tuple(source.fields[i].window(kernel[i], _pair(stride, i), _pair(padding, i),
                                                        _pair(dilation, i)) for i in range(2)), source.axes)
        if ("max_pool2d" in base or "avg_pool2d" in base) and "adaptive" not in base and source is not None:
            if not nchw:
                return None
            kernel = _arg(args, kwargs, 1, "kernel_size")
            stride = _arg(args, kwargs, 2, "stride", None) or kernel
            padding = _arg(args, kwargs, 3, "padding", 0)
            dilation = _arg(args, kwargs, 4, "dilation", 1) if "max" in base else 1
            return Layout(tuple(source.fields[i].window(_pair(kernel, i), _pair(stride, i), _pair(padding, i),
                                                        _pair(dilation, i)) for i in range(2)), source.axes)
        if base == "pad" and source is not None:
            if not nchw:
                return None
            pad = list(_arg(args, kwargs, 1, "pad"))
            left_x, top_y = pad[0], pad[2] if len(pad) > 2 else 0
            fy, fx = source.fields
            return Layout((Field(fy.size, fy.jump, fy.center - top_y * fy.jump),
                           Field(fx.size, fx.jump, fx.center - left_x * fx.jump)), source.axes)
        if base == "permute" and source is not None:
            order = args[1:] if len(args) > 2 else _arg(args, kwargs, 1, "dims")
            order = _dims(order, args[0].dim())
            return Layout(source.fields, tuple(order.index(a) for a in source.axes), source.tokens)
        if base in ("transpose", "swapaxes", "swapdims") and source is not None:
            d0, d1 = _dims([_arg(args, kwargs, 1, "dim0"), _arg(args, kwargs, 2, "dim1")], args[0].dim())
            swap = {d0: d1, d1: d0}
            return Layout(source.fields, tuple(swap.get(a, a) for a in source.axes), source.tokens)
        if base in ("linear", "layer_norm") and source is not None and args[0].dim() >= 3:
            # over the last axis: pointwise in space unless the last axis is spatial
            return source if args[0].dim() - 1 not in source.axes else Layout(GLOBAL_LAYOUT, source.axes)
        if base in ("cat", "concat", "concatenate"):
            return self._concat(args, kwargs, known, out)
        if source is not None and out.dim() >= 3 and base in ("view", "reshape", "flatten", "contiguous", "clone"):
            ay, ax = source.axes
            folded = source.tokens is None and ax == ay + 1 and out.dim() == args[0].dim() - 1 and \
                tuple(out.shape[:ay]) == tuple(args[0].shape[:ay]) and out.shape[ay] == args[0].shape[ay] * args[0].shape[ax]
            if folded:       # (N, C, H, W) -> (N, C, H*W): patch tokens in row-major order
                return Layout(source.fields, (ay, ay), (int(args[0].shape[ax]), 0))
            if nchw and tuple(out.shape[-2:]) == tuple(args[0].shape[-2:]):
                return Layout(source.fields, (out.dim() - 2, out.dim() - 1))
            if tuple(out.shape) == tuple(args[0].shape):
                return source
            return None
        if out.dim() < 3 or "adaptive" in base or base in ("linear", "flatten", "mean", "sum", "amax", "view",
                                                            "reshape"):
            spatial = out.dim() >= 3 and args and isinstance(args[0], torch.Tensor) and \
                tuple(out.shape[-2:]) == tuple(args[0].shape[-2:]) and nchw
            if spatial:
                return source
            return Layout(GLOBAL_LAYOUT, (max(out.dim() - 2, 0), max(out.dim() - 1, 0)))
        for tensor in _tensors(args, kwargs):
            layout = self.layout(tensor)
            if layout is not None and tensor.dim() == out.dim() and \
                    any(tensor.shape[a] not in (1, out.shape[a]) for a in layout.axes):
                return None      # a spatial size changed in an op without a rule (upsampling, pixel_shuffle, ...)
        same = [k for k in known if k.axes == known[0].axes]
        fy, fx = same[0].fields
        for other in same[1:]:
            fy, fx = fy.union(other.fields[0]), fx.union(other.fields[1])
        return Layout((fy, fx), same[0].axes, same[0].tokens)


def _concat_dim(args, kwargs, ndim: int) -> int:
    return int(kwargs.get("dim", args[1] if len(args) > 1 else 0)) % ndim


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
        tracker.layout_of_found[name] = tracker.layout(out)
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
        if found.get(name) is None or tracker.layout_of_found.get(name) is LOST:
            op = f" (first lost at '{tracker.lost}')" if tracker.lost else ""
            raise NeuroprobeError(f"layer '{name}': its receptive field could not be followed{op}: an op neuroprobe "
                                  "does not know changes the spatial layout")
        fy, fx = found[name]
        rows.append({"layer": name, "size_y": fy.size, "size_x": fx.size, "jump_y": fy.jump, "jump_x": fx.jump,
                     "center_y": fy.center, "center_x": fx.center})
    return pd.DataFrame(rows)
