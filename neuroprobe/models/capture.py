"""Capture points: the pre-activation (or the output) of named modules, safe from in-place ops.

Pre-activation of a layer L (DESIGN.md): the value L's final nonlinearity receives. While L runs,
a :class:`torch.overrides.TorchFunctionMode` records every activation call (module or functional,
in place or not) and every channel concatenation inside L. When L returns, its output is traced
back: the output of an activation -> that activation's input (cloned before an in-place op
destroyed it); a concatenation -> the concatenation of its inputs traced back; anything else ->
itself. This one rule covers ReLUs that follow a conv in place, ReLU modules reused inside a
block (the last call wins: the residual sum), functional ReLUs, BatchNorm+activation modules and
Inception concatenations, without per-architecture code.

Captured values are handed to a callback as soon as L returns (before any later in-place op),
and the forward pass stops once every requested layer has been seen as often as in a full pass.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import NeuroprobeError, closest
from .geometry import LOST, Layout, layer_layouts

log = logging.getLogger(__name__)

# Elementwise nonlinearities whose input is "the pre-activation".
ACTIVATION_NAMES = frozenset({
    "relu", "relu6", "hardtanh", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish",
    "hardswish", "hardsigmoid", "sigmoid", "tanh", "softplus", "prelu", "rrelu", "threshold",
})
CONCAT_NAMES = frozenset({"cat", "concat", "concatenate"})


class StopForward(Exception):
    """Raised from a hook once every requested layer is captured: skips the rest of the model."""


@dataclass
class _Record:
    kind: str                      # "activation" or "concat"
    op: str                        # the function's name, for descriptions
    call: int                      # index of the activation call inside the layer (-1 for concat)
    output: weakref.ref
    output_version: int | None
    inputs: list[torch.Tensor]
    input_versions: list[int | None]


def _op_name(func) -> str:
    return getattr(func, "__name__", str(func)).rstrip("_")


def _version(tensor: torch.Tensor) -> int | None:
    """In-place modification counter; None for inference-mode tensors, which have none."""
    return None if tensor.is_inference() else tensor._version


def _runs_in_place(func, args, kwargs) -> bool:
    return getattr(func, "__name__", "").endswith("_") or bool(kwargs.get("inplace")) or any(
        a is True for a in args[1:])


class _Recorder(TorchFunctionMode):
    """Records activation calls and channel concatenations while one layer runs.

    ``keep`` lists the activation calls (by order inside the layer) whose inputs are needed, as
    learnt by a probe pass; the others are not cloned. ``None`` records them all.
    """

    def __init__(self, keep: frozenset[int] | None = None, keep_graph: bool = False) -> None:
        super().__init__()
        self.keep = keep
        self.keep_graph = keep_graph
        self.calls = 0
        self.records: dict[int, _Record] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func)
        if name in ACTIVATION_NAMES and args and isinstance(args[0], torch.Tensor):
            call, self.calls = self.calls, self.calls + 1
            if self.keep is not None and call not in self.keep:
                return func(*args, **kwargs)
            source = args[0]
            copy = not self.keep_graph and (_runs_in_place(func, args, kwargs) or source.is_inference())
            kept = source.detach().clone() if copy else source
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor):
                self._remember(out, _Record("activation", name, call, None, 0, [kept], [_version(kept)]))
            return out
        out = func(*args, **kwargs)
        if name in CONCAT_NAMES and isinstance(out, torch.Tensor) and out.dim() >= 2:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if dim in (1, 1 - out.dim()):
                parts = list(args[0])
                self._remember(out, _Record("concat", name, -1, None, 0, parts, [_version(p) for p in parts]))
        return out

    def _remember(self, out: torch.Tensor, record: _Record) -> None:
        key = id(out)
        record.output = weakref.ref(out, lambda _ref, key=key, recs=self.records: recs.pop(key, None))
        record.output_version = _version(out)
        self.records[key] = record

    def trace(self, tensor: torch.Tensor) -> tuple[torch.Tensor, str, frozenset[int]]:
        """The pre-activation behind ``tensor``, what it is, and which activation calls it used."""
        record = self.records.get(id(tensor))
        if record is None or record.output() is not tensor or _version(tensor) != record.output_version:
            return tensor, "output", frozenset()
        if any(_version(t) != v for t, v in zip(record.inputs, record.input_versions, strict=False)):
            raise NeuroprobeError("an activation's input was modified in place after the call; "
                                  "request the module that produces it instead")
        if record.kind == "activation":
            return record.inputs[0], f"input of {record.op}", frozenset({record.call})
        traced = [self.trace(part) for part in record.inputs]
        kinds = sorted({what for _, what, _ in traced})
        return (torch.cat([value for value, _, _ in traced], dim=1),
                f"concatenation of {len(traced)} branches ({'; '.join(kinds)})",
                frozenset().union(*(used for _, _, used in traced)))


@dataclass(frozen=True)
class UnitLayout:
    """Where a layer's units and positions lie in its tensor, and how to view it as (batch, units, *grid).

    ``kind``: ``channels-first`` (N, C, H, W), ``channels-last`` (N, H, W, C: ConvNeXt's and Swin's
    Linear layers), ``tokens`` ((N, T, C) or (N, C, T), T = extra tokens + grid; the extra leading tokens,
    a class token, are left out of the grid and so of pooled statistics and maps), or ``vector`` (N, C).
    """

    kind: str
    units_axis: int = 1
    extra_tokens: int = 0
    grid: tuple[int, ...] = ()

    def units_first(self, value: torch.Tensor) -> torch.Tensor:
        """A view (no copy) with units on axis 1 and the positions as a (rows, columns) grid after them."""
        if self.kind == "channels-last":
            return value.movedim(self.units_axis, 1)
        if self.kind == "tokens":
            token_axis = 3 - self.units_axis
            patches = value.narrow(token_axis, self.extra_tokens, value.shape[token_axis] - self.extra_tokens)
            return patches.movedim(self.units_axis, 1).unflatten(2, self.grid)
        return value

    def describe(self) -> str:
        if self.kind == "tokens":
            extra = f"; {self.extra_tokens} extra token{'s' * (self.extra_tokens > 1)} (class) left out" \
                if self.extra_tokens else ""
            return f"tokens {'x'.join(map(str, self.grid))}{extra}"
        return self.kind


CHANNELS_FIRST = UnitLayout("channels-first")


def unit_layout(layout: Layout | None, shape: Sequence[int]) -> UnitLayout:
    """The :class:`UnitLayout` of a tensor of ``shape`` (batch first) whose positions follow ``layout``."""
    ndim = len(shape)
    if ndim == 2:
        return UnitLayout("vector")
    if layout is None or layout is LOST or ndim not in (3, 4):
        return CHANNELS_FIRST
    if layout.tokens is not None and ndim == 3 and layout.axes[0] in (1, 2):
        token_axis = layout.axes[0]
        width, extra = layout.tokens
        patches = int(shape[token_axis]) - extra
        grid = (patches // width, width) if width and patches % width == 0 else (1, patches)
        return UnitLayout("tokens", 3 - token_axis, extra, grid)
    if ndim == 4 and layout.tokens is None and set(layout.axes) <= {1, 2, 3} and len(set(layout.axes)) == 2:
        units = ({1, 2, 3} - set(layout.axes)).pop()
        if units != 1 and tuple(layout.axes) == tuple(a for a in (1, 2, 3) if a != units):
            return UnitLayout("channels-last", units)
    return CHANNELS_FIRST


_LAYOUTS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def unit_layouts(model: nn.Module, layers: Sequence[str], example: torch.Tensor) -> dict[str, UnitLayout]:
    """The :class:`UnitLayout` of each layer, from one forward pass of ``example`` under the geometry tracker
    (remembered per model, layer modules and input shape: attribution calls it once per batch).
    A model the tracker cannot follow gets channels-first layouts (logged)."""
    modules = dict(model.named_modules())
    key = (tuple((name, id(modules.get(name))) for name in layers), tuple(example.shape[1:]), example.device.type)
    cache = _LAYOUTS.setdefault(model, {})
    if key not in cache:
        cache[key] = _unit_layouts(model, modules, layers, example)
    return dict(cache[key])


def _unit_layouts(model: nn.Module, modules: dict, layers: Sequence[str], example: torch.Tensor) -> dict[str, UnitLayout]:
    shapes: dict[str, tuple[int, ...]] = {}

    def keep_shape(name: str, out) -> None:
        if isinstance(out, torch.Tensor):
            shapes.setdefault(name, tuple(out.shape))

    hooks = [modules[name].register_forward_hook(lambda _m, _a, out, name=name: keep_shape(name, out))
             for name in layers if name in modules]
    try:
        layouts, lost = layer_layouts(model, layers, example)
    except Exception as exc:            # the layout is a refinement: never let it stop a capture
        log.warning("could not follow the model's geometry (%s: %s); units taken on axis 1", type(exc).__name__, exc)
        layouts, lost = {}, None
    finally:
        for hook in hooks:
            hook.remove()
    return {name: unit_layout(layouts.get(name), shapes[name]) if name in shapes else CHANNELS_FIRST
            for name in layers}


OnValue = Callable[[str, torch.Tensor], None]


class Capture:
    """Forward hooks that hand each requested layer's value to ``on_value`` as soon as it exists.

    ``post_activation=False`` gives pre-activations (DESIGN.md), ``True`` the modules' outputs.
    Use as a context manager; :meth:`run` calls the model. With a ``plan`` from :func:`probe`,
    only the activation inputs that are needed are cloned, the pass stops after the deepest
    layer, and a change in what is captured raises instead of passing silently.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], on_value: OnValue,
                 post_activation: bool = False, plan: dict[str, "LayerInfo"] | None = None,
                 keep_graph: bool = False, layouts: Mapping[str, UnitLayout] | None = None) -> None:
        modules = dict(model.named_modules())
        for layer in layers:
            if layer not in modules or layer == "":
                raise NeuroprobeError(f"unknown layer '{layer}'; closest: {closest(layer, [n for n in modules if n])} "
                                      "(list them with: python -m neuroprobe layers --model ...)")
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        self.modules = {name: modules[name] for name in self.layers}
        self.on_value = on_value
        self.post_activation = post_activation
        self.plan = plan
        self.keep_graph = keep_graph    # values stay in the autograd graph (under ActivationRewrite)
        # values reach on_value as (batch, units, *grid) views; without layouts, as the layer returns them
        self.layouts = dict(layouts) if layouts is not None else \
            {name: info.layout for name, info in plan.items()} if plan is not None else {}
        self.descriptions: dict[str, str] = {}
        self.used: dict[str, frozenset[int]] = {}
        self.calls: dict[str, int] = {}
        self._active: list[_Recorder] = []
        self._handles: list = []

    def __enter__(self) -> "Capture":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
            self._handles.append(module.register_forward_hook(self._post_hook(name), always_call=True))
        return self

    def __exit__(self, *exc) -> None:
        self._unwind()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, *inputs, **kwargs) -> None:
        """One forward pass; every requested layer's value goes to ``on_value``."""
        self.calls = {name: 0 for name in self.layers}
        try:
            self.model(*inputs, **kwargs)
        except StopForward:
            pass
        finally:
            self._unwind()
        missing = [name for name, n in self.calls.items() if n == 0]
        if missing:
            raise NeuroprobeError(f"layer(s) {', '.join(missing)} did not run in the forward pass")

    def _unwind(self) -> None:
        while self._active:
            self._active.pop().__exit__(None, None, None)

    def _pre_hook(self, name: str):
        def hook(module, args):
            if not self.post_activation:
                recorder = _Recorder(self.plan[name].activation_calls if self.plan else None, self.keep_graph)
                recorder.__enter__()
                self._active.append(recorder)
        return hook

    def _post_hook(self, name: str):
        def hook(module, args, output):
            recorder = None
            if not self.post_activation and self._active:
                recorder = self._active.pop()
                recorder.__exit__(None, None, None)
            if not isinstance(output, torch.Tensor):
                if output is None:  # the forward raised; always_call hooks still run
                    return None
                raise NeuroprobeError(f"layer '{name}' returns {type(output).__name__}, not a tensor; "
                                      "request one of its submodules")
            value, what, used = recorder.trace(output) if recorder is not None else (output, "output", frozenset())
            if self.plan is not None and what != self.plan[name].what:
                raise NeuroprobeError(f"layer '{name}' captured '{what}' where the probe pass saw "
                                      f"'{self.plan[name].what}'; the model's structure depends on its input")
            self.descriptions[name], self.used[name] = what, used
            self.calls[name] = self.calls.get(name, 0) + 1
            value = value if self.keep_graph else value.detach()
            self.on_value(name, self.layouts[name].units_first(value) if name in self.layouts else value)
            if self.plan is not None and all(self.calls.get(n, 0) >= self.plan[n].calls for n in self.layers):
                raise StopForward
            return None
        return hook


@dataclass(frozen=True)
class LayerInfo:
    """What a probe pass learnt about one capture point."""

    name: str
    module_type: str
    shape: tuple[int, ...]      # per image: (units, *spatial), units first whatever the layer's own layout
    captured: str               # "pre-activation: input of relu", "post-activation: output", ...
    calls: int                  # times the module runs per forward pass
    activation_calls: frozenset[int] = frozenset()  # activation calls inside it whose inputs are captured
    layout: UnitLayout = field(default=CHANNELS_FIRST)

    @property
    def units(self) -> int:
        return self.shape[0]

    @property
    def what(self) -> str:
        """``captured`` without its pre-/post-activation prefix."""
        return self.captured.split(": ", 1)[1]


def probe(model: nn.Module, layers: Iterable[str], example: torch.Tensor,
          post_activation: bool = False) -> dict[str, LayerInfo]:
    """One full forward pass on ``example`` (batch of 1) to learn shapes, what is captured, and call counts,
    plus one under the geometry tracker to learn where each layer's units are (:class:`UnitLayout`)."""
    layers = list(dict.fromkeys(layers))
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    with torch.no_grad(), Capture(model, layers, lambda name, value: shapes.__setitem__(name, tuple(value.shape)),
                                  post_activation) as cap:
        cap.run(example)
    layouts = unit_layouts(model, layers, example)
    prefix = "post-activation: " if post_activation else "pre-activation: "
    return {name: LayerInfo(name, type(modules[name]).__name__,
                            tuple(layouts[name].units_first(torch.empty(shapes[name], device="meta")).shape[1:]),
                            prefix + cap.descriptions[name], cap.calls[name], cap.used[name], layouts[name])
            for name in layers}


def all_layers(model: nn.Module, example: torch.Tensor, post_activation: bool = False) -> list[LayerInfo]:
    """Every named module that returns one tensor, in definition order, with what it captures."""
    modules = [(n, m) for n, m in model.named_modules() if n]
    returns_tensor: dict[str, bool] = {}
    handles = [m.register_forward_hook(lambda _m, _a, out, n=n: returns_tensor.__setitem__(n, isinstance(out, torch.Tensor)))
               for n, m in modules]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    # Modules returning tuples (a whole GoogLeNet with aux heads, attention blocks) are left out.
    usable = [n for n, _ in modules if returns_tensor.get(n)]
    return list(probe(model, usable, example, post_activation).values())
