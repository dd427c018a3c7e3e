"""Where every tensor of a forward pass sits in the image: the receptive field of its positions and its axes.

A :class:`~torch.overrides.TorchFunctionMode` follows one eager forward pass op by op. Each tensor
derived from the input carries a :class:`Layout`: which of its axes are y and x (NCHW: 2, 3;
channels-last: 1, 2; a token axis: both the same axis, with the patch grid's width and the number of
leading extra tokens such as a class token) and, per spatial axis, the receptive field of position 0
(:class:`Field`: size, jump and centre in input pixels).

Rules cover sliding windows (conv, pooling, dilated and grouped), padding on any axis, resampling
(interpolate, transposed conv, pixel_shuffle, adaptive pooling: the tightest affine bound of the
positions each output reads), permutes, reshapes that keep, fold or unfold the spatial axes, slicing,
splits that return tuples, circular shifts, pointwise Linear and LayerNorm over channels, reductions
and normalizations over space, and the token mixing of attention and matrix products (every position
then sees the whole image). Elementwise ops take the union of their inputs' fields, which makes
residual and concatenated branches come out right. An op without a rule that changes the spatial
layout poisons everything computed from it (:data:`LOST`), and the first such op is remembered so
that errors can name it.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from ..errors import NeuroprobeError


class _Seen(Exception):
    """Every requested layer has run: the rest of the forward pass is skipped."""


@dataclass(frozen=True)
class Field:
    """Receptive field along one axis: position p covers center + p * jump -/+ (size - 1) / 2."""

    size: float
    jump: float
    center: float

    @property
    def is_global(self) -> bool:
        return math.isinf(self.size)

    def union(self, other: "Field") -> "Field":
        if self.is_global or other.is_global:
            return GLOBAL
        if not math.isclose(self.jump, other.jump):
            raise NeuroprobeError(f"inputs with different strides ({self.jump} and {other.jump}) meet in one op")
        left = min(self.center - (self.size - 1) / 2, other.center - (other.size - 1) / 2)
        right = max(self.center + (self.size - 1) / 2, other.center + (other.size - 1) / 2)
        return Field(right - left + 1, self.jump, (left + right) / 2)

    def window(self, kernel: int, stride: int, padding: int, dilation: int = 1) -> "Field":
        """After a sliding window (conv or pooling)."""
        if self.is_global:
            return GLOBAL
        extent = dilation * (kernel - 1) + 1
        return Field(self.size + (extent - 1) * abs(self.jump), self.jump * stride,
                     self.center + ((extent - 1) / 2 - padding) * self.jump)

    def shifted(self, start: int, step: int = 1) -> "Field":
        """After keeping positions start, start + step, ... (slicing, splits, padding with negative start)."""
        if self.is_global:
            return GLOBAL
        return Field(self.size, self.jump * step, self.center + start * self.jump)

    def resampled(self, lo: np.ndarray, hi: np.ndarray, slope: float) -> "Field":
        """After an op whose output position o reads input positions lo[o]..hi[o]: the tightest field of the
        form centre + o * slope * jump that contains every output position's true field."""
        if self.is_global:
            return GLOBAL
        o = np.arange(len(lo))
        keep = lo <= hi                      # positions that read nothing (stride > kernel) see no pixel
        d_lo, d_hi = (lo - slope * o)[keep], (hi - slope * o)[keep]
        offset, half = (d_lo.min() + d_hi.max()) / 2, (d_hi.max() - d_lo.min()) / 2
        return Field(self.size + 2 * half * abs(self.jump), self.jump * slope, self.center + offset * self.jump)


GLOBAL = Field(math.inf, math.inf, math.nan)
GLOBAL_FIELDS = (GLOBAL, GLOBAL)


@dataclass(frozen=True)
class Layout:
    """The (y, x) fields of a tensor and its y and x axes (NCHW: 2, 3; channels-last: 1, 2).

    ``tokens`` marks a token axis (y and x are that one axis): (grid width, leading extra tokens).
    ``roll`` is a circular shift (positions along y, x) still to be undone.
    """

    fields: tuple[Field, Field]
    axes: tuple[int, int]
    tokens: tuple[int, int] | None = None
    roll: tuple[int, int] = (0, 0)

    @property
    def is_global(self) -> bool:
        return self.fields[0].is_global and self.fields[1].is_global

    def moved(self, axes: Sequence[int]) -> "Layout":
        return replace(self, axes=tuple(int(a) for a in axes))

    def without(self, removed: Sequence[int]) -> "Layout | None":
        """After removing the dims ``removed`` (none of them spatial): the axes move left."""
        if any(d in self.axes for d in removed):
            return None
        return self.moved([a - sum(d < a for d in removed) for a in self.axes])


LOST = Layout(GLOBAL_FIELDS, (-1, -1))   # an op was not followed: everything computed from it is unknown

MIXERS = frozenset({"multi_head_attention_forward", "native_multi_head_attention", "scaled_dot_product_attention",
                    "matmul", "bmm", "baddbmm", "einsum"})
ROWS_FROM = {"matmul": 0, "bmm": 0, "baddbmm": 1}    # matrix products: output rows are the rows of this argument
SPLITS = {"split": 2, "chunk": 2, "tensor_split": 2, "split_with_sizes": 2, "unbind": 1}
SAME_SHAPE = frozenset({"contiguous", "clone", "to", "float", "half", "bfloat16", "type_as", "detach", "requires_grad"})
RESHAPES = frozenset({"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"})
REDUCTIONS = frozenset({"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod",
                        "nanmean", "nansum", "median"})
ACROSS_AXIS = frozenset({"softmax", "log_softmax", "cumsum", "cumprod"})
WHOLE_MAP_NORMS = frozenset({"group_norm", "instance_norm"})     # statistics over every position


def _arg(args, kwargs, position: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def _pair(value, index: int) -> int:
    if isinstance(value, (tuple, list)):
        return int(value[index] if len(value) > 1 else value[0])
    return int(value)


def _dims(value, ndim: int) -> list[int]:
    values = value if isinstance(value, (tuple, list)) else [value]
    return [int(v) % ndim for v in values]


def _tensors(args, kwargs):
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, torch.Tensor))


def _default_axes(ndim: int) -> tuple[int, int]:
    return max(ndim - 2, 0), max(ndim - 1, 0)


class Tracker(TorchFunctionMode):
    """Follows the :class:`Layout` of every tensor derived from ``image`` through the ops of a forward pass."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.layouts: dict[int, tuple[weakref.ref, Layout]] = {}
        self.lost: str | None = None       # the first op whose output layout could not be followed
        self._set(image, Layout((Field(1, 1, 0), Field(1, 1, 0)), (image.dim() - 2, image.dim() - 1)))

    def layout(self, tensor) -> Layout | None:
        entry = self.layouts.get(id(tensor)) if isinstance(tensor, torch.Tensor) else None
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def _set(self, tensor: torch.Tensor, value: Layout) -> None:
        key = id(tensor)
        self.layouts[key] = (weakref.ref(tensor, lambda _r, key=key, f=self.layouts: f.pop(key, None)), value)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        known = [f for f in (self.layout(t) for t in _tensors(args, kwargs)) if f is not None]
        if not known:
            return out
        if isinstance(out, torch.Tensor):
            pieces = [out]
        elif isinstance(out, (tuple, list)):
            pieces = [o for o in out if isinstance(o, torch.Tensor)]
        else:
            return out
        name = getattr(func, "__name__", "")
        base = name.strip("_")
        source = self.layout(args[0]) if args and isinstance(args[0], torch.Tensor) else None
        if base in MIXERS:                                # attention and matrix products mix every position
            layouts = [self._mixed(base, args, piece) for piece in pieces]
        elif any(k is LOST for k in known):               # downstream of an op that was not followed
            layouts = [LOST] * len(pieces)
        else:
            try:
                layouts = self._follow(base, args, kwargs, source, known, out, pieces)
            except (TypeError, ValueError, IndexError, ZeroDivisionError, AttributeError):
                layouts = [None] * len(pieces)            # arguments in a form no rule expects
            if all(k.is_global for k in known):          # a function of global values is global
                layouts = [replace(lay, fields=GLOBAL_FIELDS, roll=(0, 0)) if lay is not None
                           else Layout(GLOBAL_FIELDS, _default_axes(p.dim())) for lay, p in zip(layouts, pieces)]
        for piece, layout in zip(pieces, layouts, strict=True):
            if layout is None:
                self.lost = self.lost or name
                layout = LOST
            self._set(piece, layout)
        return out

    def _mixed(self, base, args, piece: torch.Tensor) -> Layout:
        """Every position sees the whole image. An output shaped like the query keeps the query's axes; a matrix
        product keeps the token axis of its left factor's rows (q @ k.T, then attention @ v)."""
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        query = tensors[0] if tensors else None
        layout = self.layout(query)
        if layout is not None and layout is not LOST and tuple(piece.shape) == tuple(query.shape):
            return Layout(GLOBAL_FIELDS, layout.axes, layout.tokens)
        left = args[ROWS_FROM[base]] if base in ROWS_FROM and len(args) > ROWS_FROM[base] else None
        layout = self.layout(left)
        if layout is not None and layout is not LOST and layout.tokens is not None and \
                layout.axes[0] == left.dim() - 2 and piece.dim() >= 2:
            return Layout(GLOBAL_FIELDS, (piece.dim() - 2,) * 2, layout.tokens)
        return Layout(GLOBAL_FIELDS, _default_axes(piece.dim()))

    def _follow(self, base, args, kwargs, source, known, out, pieces) -> list[Layout | None]:
        if not isinstance(out, torch.Tensor):
            if base in SPLITS and source is not None:
                return _split(base, args, kwargs, source, pieces)
            if base in REDUCTIONS and source is not None:    # max/min with dim: (values, indices)
                return [_reduced(args, kwargs, source, piece) for piece in pieces]
            return [None] * len(pieces)
        rule = RULES.get(base)
        if rule is not None and source is not None:
            return [rule(args, kwargs, source, out)]
        if base in ("cat", "concat", "concatenate"):
            return [self._concat(args, kwargs, out)]
        if base in ("stack",):
            return [self._stack(args, kwargs, out)]
        return [self._elementwise(args, kwargs, known, out)]

    def _elementwise(self, args, kwargs, known, out) -> Layout | None:
        """Same positions in, same positions out: the union of the inputs' fields (global if one input is), with
        the axes of an input aligned to the output as broadcasting aligns it (a local one shaped like the output
        first). A spatial size that changes in an op without a rule is not followed."""
        aligned = []                 # (is local, shaped like the output, layout with axes in the output's dims)
        for tensor in _tensors(args, kwargs):
            layout = self.layout(tensor)
            if layout is None:
                continue
            shift = out.dim() - tensor.dim()
            if shift < 0:
                if layout.is_global:
                    continue
                return None
            if not layout.is_global and any(tensor.shape[a] not in (1, out.shape[a + shift]) for a in layout.axes):
                return None
            aligned.append((not layout.is_global, tuple(tensor.shape) == tuple(out.shape),
                            layout.moved([a + shift for a in layout.axes])))
        if not aligned:
            return Layout(GLOBAL_FIELDS, _default_axes(out.dim()))
        first = max(aligned, key=lambda item: item[:2])[2]
        local = [lay for is_local, _, lay in aligned if is_local]
        if any(lay.axes != first.axes or lay.roll != first.roll or lay.tokens != first.tokens for lay in local):
            return None
        if len(local) < len(aligned):
            return replace(first, fields=GLOBAL_FIELDS, roll=(0, 0))
        fy, fx = first.fields
        for other in local[1:]:
            fy, fx = fy.union(other.fields[0]), fx.union(other.fields[1])
        return replace(first, fields=(fy, fx))

    def _concat(self, args, kwargs, out) -> Layout | None:
        """Along channels: as an elementwise op. Along a token axis, tokens that do not come from the image (a
        class token) put in front shift the patch tokens. Along a spatial axis: not followed."""
        pieces = list(args[0]) if args and isinstance(args[0], (list, tuple)) else []
        dim = int(_arg(args, kwargs, 1, "dim", 0)) % out.dim()
        layouts = [self.layout(p) for p in pieces]
        local = [lay for lay in layouts if lay is not None and not lay.is_global]
        if not local or dim not in local[0].axes:
            return self._elementwise((pieces,), {}, [lay for lay in layouts if lay is not None], out)
        first = local[0]
        if first.tokens is not None and len(local) == 1 and all(lay is None or lay is first for lay in layouts):
            before = sum(int(p.shape[dim]) for p in pieces[:layouts.index(first)])
            return replace(first, tokens=(first.tokens[0], first.tokens[1] + before))
        return None

    def _stack(self, args, kwargs, out) -> Layout | None:
        pieces = list(args[0]) if args and isinstance(args[0], (list, tuple)) else []
        dim = int(_arg(args, kwargs, 1, "dim", 0)) % out.dim()
        layouts = [self.layout(p) for p in pieces]
        if any(lay is None for lay in layouts) or len({(lay.axes, lay.tokens, lay.roll) for lay in layouts}) > 1:
            return None
        first = layouts[0]
        fy, fx = first.fields
        for other in layouts[1:]:
            fy, fx = fy.union(other.fields[0]), fx.union(other.fields[1])
        return replace(first, fields=(fy, fx), axes=tuple(a + (a >= dim) for a in first.axes))


# -- rules, one per kind of op: (args, kwargs, layout of the first argument, output) -> Layout or None -----------------
def _nchw(args, source: Layout) -> bool:
    ndim = args[0].dim()
    return source.axes == (ndim - 2, ndim - 1) and source.tokens is None and source.roll == (0, 0)


def _conv(args, kwargs, source, out):
    if not _nchw(args, source):
        return None
    weight = _arg(args, kwargs, 1, "weight")
    stride, padding = _arg(args, kwargs, 3, "stride", 1), _arg(args, kwargs, 4, "padding", 0)
    dilation = _arg(args, kwargs, 5, "dilation", 1)
    kernel = weight.shape[-2:]
    if isinstance(padding, str):
        padding = [_pair(dilation, i) * (kernel[i] - 1) // 2 if padding == "same" else 0 for i in range(2)]
    return replace(source, fields=tuple(source.fields[i].window(kernel[i], _pair(stride, i), _pair(padding, i),
                                                                _pair(dilation, i)) for i in range(2)))


def _pool(args, kwargs, source, out, dilated: bool = True):
    if not _nchw(args, source):
        return None
    kernel = _arg(args, kwargs, 1, "kernel_size")
    stride = _arg(args, kwargs, 2, "stride", None) or kernel
    padding = _arg(args, kwargs, 3, "padding", 0)
    dilation = _arg(args, kwargs, 4, "dilation", 1) if dilated else 1
    return replace(source, fields=tuple(source.fields[i].window(_pair(kernel, i), _pair(stride, i), _pair(padding, i),
                                                                _pair(dilation, i)) for i in range(2)))


def _avg_pool(args, kwargs, source, out):
    return _pool(args, kwargs, source, out, dilated=False)


def _unsupported(args, kwargs, source, out):
    """Ops whose geometry neuroprobe does not follow (the error names them; global inputs stay global)."""
    return None


def _resample(source: Layout, in_shape, out_shape, footprint: Callable[[int, int, int], tuple], slope_of) -> Layout:
    """Per spatial axis i: ``footprint(i, n_in, n_out)`` gives the input positions lo..hi each output position
    reads; ``slope_of(i, n_in, n_out)`` the input positions per output position."""
    fields = []
    for i, axis in enumerate(source.axes):
        n_in, n_out = int(in_shape[axis]), int(out_shape[axis])
        lo, hi = footprint(i, n_in, n_out)
        fields.append(source.fields[i].resampled(np.asarray(lo, float), np.asarray(hi, float), slope_of(i, n_in, n_out)))
    return replace(source, fields=tuple(fields))


def _interpolate(args, kwargs, source, out):
    """F.interpolate / nn.Upsample, PyTorch's index arithmetic for each mode."""
    if not _nchw(args, source):
        return None
    mode = _arg(args, kwargs, 3, "mode", "nearest")
    corners = bool(_arg(args, kwargs, 4, "align_corners", None))
    factor = _arg(args, kwargs, 2, "scale_factor", None)
    recompute = kwargs.get("recompute_scale_factor")

    def slope(i, n_in, n_out):
        if mode in ("bilinear", "linear", "bicubic", "trilinear") and corners:
            return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        if factor is not None and not recompute:
            return 1.0 / _pair_float(factor, i)
        return n_in / n_out

    def footprint(i, n_in, n_out):
        o, scale = np.arange(n_out, dtype=float), slope(i, n_in, n_out)
        if mode == "nearest":
            index = np.minimum(np.floor(o * scale), n_in - 1)
            return index, index
        if mode == "nearest-exact":
            index = np.minimum(np.floor((o + 0.5) * scale), n_in - 1)
            return index, index
        if mode == "area":
            return np.floor(o * n_in / n_out), np.ceil((o + 1) * n_in / n_out) - 1
        u = o * scale if corners else (o + 0.5) * scale - 0.5
        if mode in ("bilinear", "linear", "trilinear"):
            u = np.maximum(u, 0)
            first = np.floor(u)
            return first, np.minimum(first + (u > first), n_in - 1)
        if mode == "bicubic":
            first = np.floor(u)
            exact = u == first
            return np.clip(np.where(exact, first, first - 1), 0, n_in - 1), np.clip(np.where(exact, first, first + 2), 0, n_in - 1)
        raise ValueError(mode)

    return _resample(source, args[0].shape, out.shape, footprint, slope)


def _pair_float(value, index: int) -> float:
    if isinstance(value, (tuple, list)):
        return float(value[index] if len(value) > 1 else value[0])
    return float(value)


def _conv_transpose(args, kwargs, source, out):
    """Output o = i * stride - padding + k * dilation for input i and kernel tap k."""
    if not _nchw(args, source):
        return None
    weight = _arg(args, kwargs, 1, "weight")
    stride, padding = _arg(args, kwargs, 3, "stride", 1), _arg(args, kwargs, 4, "padding", 0)
    dilation = _arg(args, kwargs, 7, "dilation", 1)
    kernel = weight.shape[-2:]

    def footprint(i, n_in, n_out):
        s, p, d = _pair(stride, i), _pair(padding, i), _pair(dilation, i)
        lo, hi = np.full(n_out, np.inf), np.full(n_out, -np.inf)
        for k in range(int(kernel[i])):
            inputs = np.arange(n_in)
            o = inputs * s - p + k * d
            ok = (o >= 0) & (o < n_out)
            np.minimum.at(lo, o[ok], inputs[ok])
            np.maximum.at(hi, o[ok], inputs[ok])
        return lo, hi

    return _resample(source, args[0].shape, out.shape, footprint, lambda i, n_in, n_out: 1.0 / _pair(stride, i))


def _pixel_shuffle(args, kwargs, source, out):
    """Output position o reads input position o // r (of one of the r * r channels)."""
    if not _nchw(args, source):
        return None
    r = int(_arg(args, kwargs, 1, "upscale_factor"))
    return _resample(source, args[0].shape, out.shape, lambda i, n_in, n_out: (np.arange(n_out) // r,) * 2,
                     lambda *_: 1.0 / r)


def _pixel_unshuffle(args, kwargs, source, out):
    """Output position o gathers input positions o * r .. o * r + r - 1 (one per channel): an r x r window."""
    if not _nchw(args, source):
        return None
    r = int(_arg(args, kwargs, 1, "downscale_factor"))
    return replace(source, fields=tuple(f.window(r, r, 0) for f in source.fields))


def _adaptive_pool(args, kwargs, source, out):
    if not _nchw(args, source):
        return None

    def footprint(i, n_in, n_out):
        o = np.arange(n_out)
        return np.floor(o * n_in / n_out), np.ceil((o + 1) * n_in / n_out) - 1

    if all(out.shape[a] == 1 for a in source.axes):
        return replace(source, fields=GLOBAL_FIELDS)
    return _resample(source, args[0].shape, out.shape, footprint, lambda i, n_in, n_out: n_in / n_out)


def _pad(args, kwargs, source, out):
    """F.pad on any axes: pad[2j] positions go before axis ndim - 1 - j."""
    pad = list(_arg(args, kwargs, 1, "pad"))
    ndim = args[0].dim()
    if source.tokens is not None:
        return source if all(ndim - 1 - j not in source.axes or not (pad[2 * j] or pad[2 * j + 1])
                             for j in range(len(pad) // 2)) else None
    fields = list(source.fields)
    for i, axis in enumerate(source.axes):
        j = ndim - 1 - axis
        if 2 * j < len(pad):
            if source.roll[i]:
                return None
            fields[i] = fields[i].shifted(-int(pad[2 * j]))
    return replace(source, fields=tuple(fields))


def _permute(args, kwargs, source, out):
    order = args[1:] if len(args) > 2 else _arg(args, kwargs, 1, "dims")
    order = _dims(order, args[0].dim())
    return source.moved([order.index(a) for a in source.axes])


def _transpose(args, kwargs, source, out):
    d0, d1 = _dims([_arg(args, kwargs, 1, "dim0"), _arg(args, kwargs, 2, "dim1")], args[0].dim())
    swap = {d0: d1, d1: d0}
    return source.moved([swap.get(a, a) for a in source.axes])


def _movedim(args, kwargs, source, out):
    ndim = args[0].dim()
    sources = _dims(_arg(args, kwargs, 1, "source"), ndim)
    targets = _dims(_arg(args, kwargs, 2, "destination"), ndim)
    order = [None] * ndim
    for s, t in zip(sources, targets):
        order[t] = s
    rest = iter(d for d in range(ndim) if d not in sources)
    order = [o if o is not None else next(rest) for o in order]
    return source.moved([order.index(a) for a in source.axes])


def _pointwise_last_axis(args, kwargs, source, out):
    """Linear over the last axis: pointwise in space unless that axis is spatial."""
    if args[0].dim() < 3:
        return Layout(GLOBAL_FIELDS, _default_axes(out.dim()))
    return source if args[0].dim() - 1 not in source.axes else replace(source, fields=GLOBAL_FIELDS)


def _layer_norm(args, kwargs, source, out):
    """LayerNorm over the last len(normalized_shape) axes: global if any of them is spatial."""
    shape = _arg(args, kwargs, 1, "normalized_shape")
    count = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    normalized = range(args[0].dim() - count, args[0].dim())
    return replace(source, fields=GLOBAL_FIELDS) if any(a in normalized for a in source.axes) else source


def _whole_map_norm(args, kwargs, source, out):
    return replace(source, fields=GLOBAL_FIELDS)


def _reshape(args, kwargs, source, out):
    return _reshaped(source, tuple(args[0].shape), tuple(out.shape))


def _reshaped(source: Layout, before: tuple, after: tuple) -> Layout | None:
    """Reshapes that keep the dims up to the spatial ones (channels split or merged after them), keep the dims
    from the spatial ones on (channels split or merged before them), fold (H, W) into tokens, or unfold tokens
    into (H, W)."""
    ay, ax = source.axes
    low, high = min(ay, ax), max(ay, ax)
    if after[:high + 1] == before[:high + 1]:
        return source
    tail = len(before) - low
    if len(after) >= tail and after[len(after) - tail:] == before[low:]:
        shift = len(after) - len(before)
        return source.moved([ay + shift, ax + shift])
    if source.tokens is None and ax == ay + 1 and source.roll == (0, 0) and after[:ay] == before[:ay] and \
            len(after) > ay and after[ay] == before[ay] * before[ax] and after[ay + 1:] == before[ax + 1:]:
        return replace(source, axes=(ay, ay), tokens=(int(before[ax]), 0))     # row-major patch tokens
    if source.tokens is not None and source.tokens[1] == 0 and after[:ay] == before[:ay] and \
            len(after) > ay + 1 and after[ay + 1] == source.tokens[0] and after[ay] * after[ay + 1] == before[ay] and \
            after[ay + 2:] == before[ay + 1:]:
        return replace(source, axes=(ay, ay + 1), tokens=None)
    if source.tokens is None and not any(source.roll):
        split = _split_spatial(source, before, after)
        if split is not None:
            return split
    if len(after) <= 2:          # spatial positions folded into units (a flatten before a classifier)
        return Layout(GLOBAL_FIELDS, _default_axes(len(after)))
    return None


def _groups(before: tuple, after: tuple) -> list[tuple[list[int], list[int]]] | None:
    """The dims of ``before`` and ``after`` in groups of equal product (how a reshape regroups them)."""
    groups, i, j = [], 0, 0
    while i < len(before) or j < len(after):
        gi, gj = [i] if i < len(before) else [], [j] if j < len(after) else []
        pi = before[i] if i < len(before) else 1
        pj = after[j] if j < len(after) else 1
        i, j = i + bool(gi), j + bool(gj)
        while pi != pj:
            if pi < pj and i < len(before):
                pi, i = pi * before[i], i + 1
                gi.append(i - 1)
            elif pj < pi and j < len(after):
                pj, j = pj * after[j], j + 1
                gj.append(j - 1)
            else:
                return None
        groups.append((gi, gj))
    return groups


def _split_spatial(source: Layout, before: tuple, after: tuple) -> Layout | None:
    """A reshape that keeps each spatial axis or splits it into (positions / k, k), the outer part staying
    spatial and the inner k going to other dims (space-to-depth, as timm's patch merging): each outer position
    then covers k neighbouring positions."""
    groups = _groups(tuple(int(b) for b in before), tuple(int(a) for a in after))
    if groups is None:
        return None
    fields, axes = list(source.fields), [None, None]
    for i, axis in enumerate(source.axes):
        group = next(g for g in groups if axis in g[0])
        ins, outs = group
        ones = [d for d in ins if before[d] == 1]
        if [d for d in ins if d not in ones] != [axis]:
            return None                      # the spatial axis is merged with another dim
        outs = [d for d in outs if after[d] != 1] or outs[:1]
        inner = int(np.prod([after[d] for d in outs[1:]])) if len(outs) > 1 else 1
        fields[i] = fields[i].window(inner, inner, 0) if inner > 1 else fields[i]
        axes[i] = outs[0]
    return replace(source, fields=tuple(fields), axes=tuple(axes))


def _same_shape(args, kwargs, source, out):
    return source if tuple(out.shape) == tuple(args[0].shape) else None


def _reduced(args, kwargs, source, out):
    """A reduction over some dims: global if one of them is spatial, else the axes move left (or stay)."""
    ndim = args[0].dim()
    dim = _arg(args, kwargs, 1, "dim", None)
    if dim is None or isinstance(dim, torch.Tensor):
        return Layout(GLOBAL_FIELDS, _default_axes(out.dim())) if out.dim() < ndim or out.numel() == 1 else None
    dims = _dims(dim, ndim)
    if any(d in source.axes for d in dims):
        keep = out.dim() == ndim
        return replace(source, fields=GLOBAL_FIELDS) if keep else \
            Layout(GLOBAL_FIELDS, _default_axes(out.dim()))
    return source if out.dim() == ndim else source.without(dims)


def _across_axis(args, kwargs, source, out):
    dim = _arg(args, kwargs, 1, "dim", None)
    if dim is None:
        return None
    return replace(source, fields=GLOBAL_FIELDS) if int(dim) % args[0].dim() in source.axes else source


def _roll(args, kwargs, source, out):
    """A circular shift: kept as an offset, followed again once undone (Swin's shifted windows)."""
    shifts, dims = _arg(args, kwargs, 1, "shifts"), _arg(args, kwargs, 2, "dims", None)
    if dims is None:
        return None
    ndim = args[0].dim()
    roll = list(source.roll)
    for shift, dim in zip(*(v if isinstance(v, (tuple, list)) else [v] for v in (shifts, dims))):
        dim = int(dim) % ndim
        if dim in source.axes:
            if source.tokens is not None:
                return None
            i = source.axes.index(dim)
            roll[i] = (roll[i] + int(shift)) % int(args[0].shape[dim])
    return replace(source, roll=tuple(roll))


def _getitem(args, kwargs, source, out):
    """Basic indexing: slices of a spatial axis move and space its positions; an integer removes an axis."""
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    ndim = args[0].dim()
    index = tuple(int(i) if isinstance(i, np.integer) else i for i in index)
    if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in index):
        return None              # advanced indexing
    explicit = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded = []
    for i in index:
        expanded.extend([slice(None)] * (ndim - explicit) if i is Ellipsis else [i])
    expanded += [slice(None)] * (ndim - sum(1 for i in expanded if i is not None))
    fields, axes, tokens = list(source.fields), [None, None], source.tokens
    dim_in, dim_out = 0, 0
    for item in expanded:
        if item is None:
            dim_out += 1
            continue
        spatial = [k for k, a in enumerate(source.axes) if a == dim_in]
        if isinstance(item, int):
            if spatial:
                return Layout(GLOBAL_FIELDS, _default_axes(out.dim())) if tokens is not None and \
                    item % int(args[0].shape[dim_in]) < tokens[1] else None
            dim_in += 1
            continue
        start, stop, step = item.indices(int(args[0].shape[dim_in]))
        if spatial:
            if tokens is not None:
                if step != 1 or start > tokens[1] or stop < int(args[0].shape[dim_in]):
                    return None
                tokens = (tokens[0], tokens[1] - start)
            elif (start, step) != (0, 1):
                if any(source.roll):
                    return None
                for k in spatial:
                    fields[k] = fields[k].shifted(start, step)
            for k in spatial:
                axes[k] = dim_out
        dim_in += 1
        dim_out += 1
    return replace(source, fields=tuple(fields), axes=tuple(axes), tokens=tokens)


def _flip(args, kwargs, source, out):
    """Reversed positions: position p is the old n - 1 - p, so the jump changes sign."""
    dims = _dims(_arg(args, kwargs, 1, "dims"), args[0].dim())
    fields = list(source.fields)
    for i, axis in enumerate(source.axes):
        if axis in dims:
            if source.tokens is not None or source.roll[i]:
                return None
            f = fields[i]
            fields[i] = f if f.is_global else Field(f.size, -f.jump, f.center + (args[0].shape[axis] - 1) * f.jump)
    return replace(source, fields=tuple(fields))


def _along_dim(args, kwargs, source, out):
    """index_select, gather and the like: followed when they pick along channels, not along a spatial axis."""
    dim = int(_arg(args, kwargs, 1, "dim")) % args[0].dim()
    return None if dim in source.axes or tuple(out.shape) != tuple(args[0].shape)[:dim] + tuple(out.shape)[dim:dim + 1] \
        + tuple(args[0].shape)[dim + 1:] else source


def _split(base, args, kwargs, source: Layout, pieces) -> list[Layout | None]:
    """Tuple-returning splits: each piece keeps the source's field, moved by its offset along a spatial axis."""
    ndim = args[0].dim()
    dim = int(_arg(args, kwargs, SPLITS[base], "dim", 0)) % ndim
    if base == "unbind":
        return [source.without([dim])] * len(pieces)
    if dim not in source.axes:
        return [source] * len(pieces)
    if source.tokens is not None or any(source.roll):
        return [None] * len(pieces)
    axis = source.axes.index(dim)
    layouts, offset = [], 0
    for piece in pieces:
        fields = list(source.fields)
        fields[axis] = fields[axis].shifted(offset)
        layouts.append(replace(source, fields=tuple(fields)))
        offset += piece.shape[dim]
    return layouts


RULES: dict[str, Callable] = {
    "conv2d": _conv, "conv1d": _unsupported, "conv3d": _unsupported, "grid_sample": _unsupported,
    "conv_transpose2d": _conv_transpose,
    "max_pool2d": _pool, "max_pool2d_with_indices": _pool, "avg_pool2d": _avg_pool,
    "adaptive_avg_pool2d": _adaptive_pool, "adaptive_max_pool2d": _adaptive_pool,
    "adaptive_max_pool2d_with_indices": _adaptive_pool,
    "interpolate": _interpolate, "upsample": _interpolate,
    "pixel_shuffle": _pixel_shuffle, "pixel_unshuffle": _pixel_unshuffle,
    "pad": _pad, "constant_pad_nd": _pad,
    "permute": _permute, "transpose": _transpose, "swapaxes": _transpose, "swapdims": _transpose,
    "movedim": _movedim, "moveaxis": _movedim,
    "linear": _pointwise_last_axis, "layer_norm": _layer_norm, "rms_norm": _layer_norm,
    "roll": _roll, "getitem": _getitem, "flip": _flip,
    "index_select": _along_dim, "gather": _along_dim, "take_along_dim": _along_dim,
    "scatter": _unsupported, "scatter_add": _unsupported, "masked_select": _unsupported, "nonzero": _unsupported,
    "sort": _unsupported, "argsort": _unsupported, "topk": _unsupported, "unfold": _unsupported, "fold": _unsupported,
    **{name: _whole_map_norm for name in WHOLE_MAP_NORMS},
    **{name: _reshape for name in RESHAPES},
    **{name: _same_shape for name in SAME_SHAPE},
    **{name: _reduced for name in REDUCTIONS},
    **{name: _across_axis for name in ACROSS_AXIS},
}


def layer_layouts(model: torch.nn.Module, layers: Sequence[str], image: torch.Tensor) -> tuple[dict[str, Layout], str | None]:
    """The layout of each named module's output (its first call) for one forward pass on ``image``, and the
    first op that could not be followed (None if every op was). Layers that return no tensor are left out."""
    modules = dict(model.named_modules())
    found: dict[str, Layout] = {}
    tracker = Tracker(image)

    def record(name: str, out) -> None:
        if name not in found and isinstance(out, torch.Tensor):
            found[name] = tracker.layout(out) or LOST
        elif name not in found and out is not None:
            found[name] = LOST
        if all(layer in found for layer in layers):
            raise _Seen          # nothing after the last layer matters (or has to be followable)

    hooks = [modules[name].register_forward_hook(lambda _m, _a, out, name=name: record(name, out)) for name in layers]
    was_training = model.training
    try:
        with torch.no_grad(), tracker:
            model.eval()(image)
    except _Seen:
        pass
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return found, tracker.lost
