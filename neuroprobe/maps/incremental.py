"""Incremental occlusion: recompute only the part of each op's output that an occluding patch can change.

An 11 px patch changes a small region of each feature map: outside the patch's projective field every
activation equals the clean image's (Krypton, Nakandala, Kumar & Papakonstantinou, SIGMOD 2019). The
clean image runs once under :class:`Tape`, a :class:`~torch.overrides.TorchFunctionMode` that keeps every
op of the truncated forward pass (function, arguments, a snapshot of the output). :func:`replay` then
runs a batch of occluded copies of that image through the tape, each tensor held as the clean map plus
a :class:`Patch`: one (N, C, h, w) block per batch, at a per-copy offset.

- Sliding windows (conv2d, max_pool2d, avg_pool2d, constant padding) grow the region through their
  kernel, stride, dilation and padding (one size per batch, shifted inward at the borders), gather each
  copy's window from the clean input with its patch pasted in (zeros or -inf where the op pads), run the
  op without padding and keep the result as the new patch.
- Elementwise ops (activations, eval-mode batch norm, arithmetic with scalars or per-channel tensors)
  apply to the patch; ops of two patched tensors (residual sums, channel concatenations) first bring
  both to the union of their regions.
- Anything else (global pooling, squeeze-excitation gates, GroupNorm, attention, resampling) runs densely
  on the pasted full maps, and everything after it stays dense: the result is exact for every model.

A model whose forward pass reads tensor values into Python (data-dependent control flow), or mutates a
tensor through a view, cannot be replayed from a tape: :class:`Unsupported` is raised and the caller
runs the dense method instead.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..models.capture import ACTIVATION_NAMES, Capture
from ..models.geometry import _arg, _pair

log = logging.getLogger(__name__)

# Ops that act on each position alone (their tensor arguments broadcast elementwise).
ELEMENTWISE = (ACTIVATION_NAMES - {"prelu", "rrelu"}) | frozenset({
    "add", "sub", "mul", "div", "true_divide", "rsub", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "pow",
    "square", "reciprocal", "erf", "clamp", "clamp_min", "clamp_max", "clip", "where", "minimum", "maximum",
    "addcmul", "addcdiv", "clone", "contiguous", "detach", "float", "half", "bfloat16", "type_as",
    "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__", "__imul__",
    "__truediv__", "__rtruediv__", "__itruediv__", "__neg__", "__pow__", "__rpow__", "__abs__"})
PER_CHANNEL = frozenset({"batch_norm", "prelu"})
SPLITS = frozenset({"split", "chunk", "tensor_split", "split_with_sizes"})   # (C,) parameters along the channel axis
# Calls that turn tensor values into Python values: the forward pass may branch on them.
VALUE_READS = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__complex__",
                         "numpy", "__array__"})


# Where N slice copies per gather beat one advanced-indexing gather (no kernel launch per copy).
SLICE_DEVICES = frozenset({"cpu"})
# Channels-last windows convolve 10-20% faster on the CPU (oneDNN, no reorder), but their rounding differs more
# from a plain NCHW loop: 1.1e-5 of the response scale on random-weight ResNet-18 layer3 (NCHW: 4.6e-6, the
# dense sweep 3.5e-6). Off: exactness first.
CHANNELS_LAST_WINDOWS = False


class Unsupported(Exception):
    """The forward pass cannot be replayed from a tape; run the dense method."""


@dataclass
class _Ref:
    """An argument that is the output of tape node ``index``."""

    index: int


@dataclass
class Node:
    """One op of the clean pass: ``func(*args, **kwargs)`` with tensors of the tape as :class:`_Ref`.

    ``clean`` is the output as it was when the op returned (a snapshot: later in-place ops do not reach
    it); ``dep`` whether it depends on the image; pieces of ops that return tuples are nodes with
    ``func=None`` and ``piece`` = (op node, position).
    """

    func: Callable | None
    name: str
    args: tuple
    kwargs: dict
    clean: Any
    dep: bool
    piece: tuple[int, int] | None = None
    pieces: tuple[int, ...] = ()


def _op_name(func) -> str:
    return getattr(func, "__name__", str(func))


def _in_place(name: str, args, kwargs) -> bool:
    return (name.endswith("_") and not name.endswith("__")) or name.startswith("__i") or bool(kwargs.get("inplace"))


class Tape(TorchFunctionMode):
    """Records every op of one forward pass of a single image (batch of one), for :func:`replay`."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.nodes: list[Node] = [Node(None, "input", (), {}, image, True)]
        self._index: dict[int, tuple[int, int | None]] = {id(image): (0, image._version)}
        self._alive: list[torch.Tensor] = [image]         # keeps ids unique while recording
        self.broken: str | None = None
        self.padded: dict = {}                            # (node, pads, fill) -> padded clean map, reused per batch

    def ref(self, value):
        if isinstance(value, torch.Tensor):
            entry = self._index.get(id(value))
            if entry is None:
                return value
            index, version = entry
            if value._version != version and self.broken is None:
                self.broken = f"a tensor was changed in place through a view before op {len(self.nodes)}"
            return _Ref(index)
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return type(value)(self.ref(v) for v in value)
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func)
        targs, tkwargs = tuple(self.ref(a) for a in args), {k: self.ref(v) for k, v in kwargs.items()}
        dep = any(self.nodes[r.index].dep for r in _refs(targs, tkwargs))
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            self._add(Node(func, name, targs, tkwargs, out.clone() if dep else out, dep), out)
        elif isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
            op = len(self.nodes)
            self.nodes.append(Node(func, name, targs, tkwargs, None, dep, pieces=tuple(range(op + 1, op + 1 + len(out)))))
            for position, piece in enumerate(out):
                self._add(Node(None, "piece", (), {}, piece.clone() if dep else piece, dep, (op, position)), piece)
        elif dep and name in VALUE_READS and self.broken is None:
            self.broken = f"the forward pass reads tensor values ({name})"
        return out

    def _add(self, node: Node, out: torch.Tensor) -> None:
        self._index[id(out)] = (len(self.nodes), out._version)
        self._alive.append(out)
        self.nodes.append(node)

    def find(self, value: torch.Tensor) -> int:
        """The node whose output is ``value`` (the captured layer value)."""
        entry = self._index.get(id(value))
        if entry is None or value._version != entry[1]:
            raise Unsupported("the captured value is not the output of a recorded op")
        return entry[0]

    def release(self) -> None:
        """Drop the live outputs once recording is over (the snapshots stay)."""
        self._alive.clear()
        self._index.clear()


def _refs(args, kwargs):
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, _Ref):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, _Ref))


def record(capture: Capture, layer: str, image: torch.Tensor, values: dict) -> tuple[Tape, int, list[int]]:
    """Run ``image`` (batch of one) through ``capture`` under a :class:`Tape`: the tape, the node of
    ``layer``'s captured value, and the nodes that value depends on, in order."""
    if torch.is_inference_mode_enabled() or image.is_inference():
        raise Unsupported("under torch.inference_mode tensors have no version counters to check in-place ops by")
    tape = Tape(image)
    with tape:
        capture.run(image)
    if tape.broken:
        raise Unsupported(tape.broken)
    target = tape.find(values[layer])
    tape.release()
    needed, stack = {target}, [target]
    while stack:
        node = tape.nodes[stack.pop()]
        parents = [node.piece[0]] if node.piece else [r.index for r in _refs(node.args, node.kwargs)]
        for parent in parents:
            if parent not in needed and tape.nodes[parent].dep:
                needed.add(parent)
                stack.append(parent)
    return tape, target, sorted(needed)


@dataclass
class Patch:
    """A batch of N copies of a clean map (1, C, H, W) that differ only inside ``value`` (N, C, h, w),
    whose top-left corner in copy n is (y[n], x[n])."""

    value: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return int(self.value.shape[-2]), int(self.value.shape[-1])


def _is_map(tensor) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.dim() == 4 and tensor.shape[0] == 1


def _gather(tape: Tape, node: int, state: Patch | None, y: torch.Tensor, x: torch.Tensor, size: tuple[int, int],
            pads: tuple[int, int, int, int] = (0, 0, 0, 0), fill: float = 0.0) -> torch.Tensor:
    """(N, C, h, w): each copy's window of rows y[n]..y[n]+h-1 and columns x[n]..x[n]+w-1 of ``node``'s map
    with the copy's patch pasted in; positions outside the map (up to ``pads`` = top, bottom, left, right)
    read ``fill``."""
    if state is not None and state.size == tuple(size) and not any(pads) and _same_offsets(state, y, x):
        return state.value                   # the patch is the window (a residual sum's larger branch)
    clean = tape.nodes[node].clean
    key = (node, pads, fill)
    padded = tape.padded.get(key)
    if padded is None:
        top, bottom, left, right = pads
        padded = torch.nn.functional.pad(clean[0], (left, right, top, bottom), value=fill) if any(pads) else clean[0]
        tape.padded[key] = padded
    if padded.device.type not in SLICE_DEVICES:
        return _gather_indexed(padded, pads, state, y, x, size)
    h, w = size
    ys, xs = (y + pads[0]).tolist(), (x + pads[2]).tolist()
    # On the CPU, N slice copies beat one advanced-indexing gather several times over.
    if CHANNELS_LAST_WINDOWS:
        hwc = tape.padded.get((key, "hwc"))
        if hwc is None:
            hwc = tape.padded[(key, "hwc")] = padded.permute(1, 2, 0).contiguous()
        window = torch.stack([hwc[a:a + h, b:b + w] for a, b in zip(ys, xs)]).permute(0, 3, 1, 2)
    else:
        window = torch.stack([padded[:, a:a + h, b:b + w] for a, b in zip(ys, xs)])
    if state is not None:
        ph, pw = state.size
        for n, (top, left) in enumerate(zip((state.y - y).tolist(), (state.x - x).tolist())):
            r0, r1, c0, c1 = max(top, 0), min(top + ph, h), max(left, 0), min(left + pw, w)
            if r0 < r1 and c0 < c1:
                window[n, :, r0:r1, c0:c1] = state.value[n, :, r0 - top:r1 - top, c0 - left:c1 - left]
    return window


def _same_offsets(state: Patch, y: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the window is the patch's own region; compared by value only on the CPU, where it costs no
    host synchronisation (on an accelerator, only the same offset tensors count)."""
    if state.y is y and state.x is x:
        return True
    return y.device.type == "cpu" and bool((state.y == y).all()) and bool((state.x == x).all())


def _gather_indexed(padded: torch.Tensor, pads, state: Patch | None, y: torch.Tensor, x: torch.Tensor,
                    size: tuple[int, int]) -> torch.Tensor:
    """:func:`_gather` as two advanced-indexing gathers (no host synchronisation, for accelerators)."""
    rows = y[:, None] + torch.arange(size[0], device=y.device)          # (N, h), map coordinates
    cols = x[:, None] + torch.arange(size[1], device=x.device)
    window = padded[:, (rows + pads[0])[:, :, None], (cols + pads[2])[:, None, :]].transpose(0, 1)
    if state is None:
        return window.contiguous()
    ph, pw = state.size
    py, px = rows - state.y[:, None], cols - state.x[:, None]
    inside = ((py >= 0) & (py < ph))[:, :, None] & ((px >= 0) & (px < pw))[:, None, :]
    copies = torch.arange(len(y), device=y.device)[:, None, None]
    pasted = state.value[copies, :, py.clamp(0, ph - 1)[:, :, None], px.clamp(0, pw - 1)[:, None, :]]
    return torch.where(inside[:, None], pasted.permute(0, 3, 1, 2), window).contiguous()   # NCHW, as the CPU path


def materialize(tape: Tape, node: int, state) -> torch.Tensor:
    """The N full copies of ``node``'s output: the clean map with each copy's patch pasted."""
    if not isinstance(state, Patch):
        return state
    clean = tape.nodes[node].clean
    full = clean.expand(len(state.y), *clean.shape[1:]).clone()
    h, w = state.size
    rows = state.y[:, None] + torch.arange(h, device=state.y.device)
    cols = state.x[:, None] + torch.arange(w, device=state.x.device)
    copies = torch.arange(len(state.y), device=state.y.device)[:, None, None]
    full[copies, :, rows[:, :, None], cols[:, None, :]] = state.value.permute(0, 2, 3, 1).to(full.dtype)
    return full


def _region(lo: torch.Tensor, hi: torch.Tensor, length: int) -> tuple[torch.Tensor, int]:
    """Starts and one size (the largest) covering rows lo[n]..hi[n] of an axis of ``length``, shifted inward."""
    lo, hi = lo.clamp(0, length - 1), hi.clamp(0, length - 1)
    size = int((hi - lo).max()) + 1
    return lo.clamp(max=length - size), size


def _window(tape: Tape, node: int, state: Patch, out_shape, kernel, stride, dilation, pad_before, fill: float,
            run: Callable[[torch.Tensor], torch.Tensor]):
    """A sliding-window op on a patched input: the output region the patch reaches, computed from its input
    window (region + halo) without padding. Returns a :class:`Patch`, or the dense output once the region
    covers the whole map."""
    in_shape = tape.nodes[node].clean.shape
    starts, sizes, window_starts, pads = [], [], [], []
    for axis, offset in ((0, state.y), (1, state.x)):
        k, s, d, p = kernel[axis], stride[axis], dilation[axis], pad_before[axis]
        extent = d * (k - 1)
        lo = -torch.div(-(offset + p - extent), s, rounding_mode="floor")
        hi = torch.div(offset + state.size[axis] - 1 + p, s, rounding_mode="floor")
        start, size = _region(lo, hi, int(out_shape[2 + axis]))
        starts.append(start)
        sizes.append((size - 1) * s + extent + 1)
        window_starts.append(start * s - p)
        after = max(0, (int(out_shape[2 + axis]) - 1) * s - p + extent - (int(in_shape[2 + axis]) - 1))
        pads.extend((p, after))
    window = _gather(tape, node, state, window_starts[0], window_starts[1], tuple(sizes), tuple(pads), fill)
    out = run(window)
    if tuple(out.shape[-2:]) == tuple(out_shape[-2:]):
        return out
    return Patch(out, starts[0], starts[1])


class _Dense(Exception):
    """This op has no incremental rule for these arguments: run it on the full copies."""


def replay(tape: Tape, nodes: list[int], target: int, inputs: Patch, dense: list[str] | None = None) -> torch.Tensor:
    """The target node's value for N occluded copies of the tape's image whose input differs from the clean
    one only inside ``inputs`` (a :class:`Patch` of the input image): (N, *target shape). The ops that ran
    densely on patched inputs (no local rule) are appended to ``dense``."""
    states: dict[int, Any] = {0: inputs}
    count = len(inputs.y)
    last_use = _last_uses(tape, nodes, target)
    shared: set[int] = set()            # ids of patch tensors that two states hold (after pad, dropout)
    for index in nodes:
        if index == 0:
            continue
        node = tape.nodes[index]
        if node.piece is not None:
            op, position = node.piece
            states[index] = states[op][position]
            continue
        try:
            # what an in-place op may overwrite: its input's patch if no later op reads that input
            free = {id(states[r.index].value) for r in _refs(node.args, node.kwargs)
                    if isinstance(states.get(r.index), Patch) and last_use.get(r.index) == index}
            held = [state.value for state in states.values()
                    if isinstance(state, Patch) and (id(state.value) not in free or id(state.value) in shared)]
            states[index] = _incremental(tape, node, states, held)
            value = getattr(states[index], "value", None)
            if value is not None and any(value is states[r.index].value for r in _refs(node.args, node.kwargs)
                                         if isinstance(states.get(r.index), Patch)):
                shared.add(id(value))
        except _Dense:
            inputs_of = [states[r.index] for r in _refs(node.args, node.kwargs) if r.index in states]
            if dense is not None and inputs_of and all(isinstance(state, Patch) for state in inputs_of):
                dense.append(node.name)
            states[index] = _dense(tape, node, states, count)
        parents = [node.piece[0]] if node.piece else [r.index for r in _refs(node.args, node.kwargs)]
        for parent in parents:
            if last_use.get(parent) == index:
                states.pop(parent, None)        # nothing reads it any more: free its memory
    return materialize(tape, target, states[target])


def _last_uses(tape: Tape, nodes: list[int], target: int) -> dict[int, int]:
    """Node -> the last node (in replay order) that reads it; the target is read after all."""
    last = {}
    for index in nodes:
        node = tape.nodes[index]
        parents = [node.piece[0]] if node.piece else [r.index for r in _refs(node.args, node.kwargs)]
        for parent in parents:
            last[parent] = index
    last[target] = len(tape.nodes)
    return last


def _value(tape: Tape, states: dict, value):
    """An argument for a dense run: a full batch for nodes that depend on the image, the snapshot otherwise."""
    if isinstance(value, _Ref):
        return materialize(tape, value.index, states[value.index]) if value.index in states \
            else tape.nodes[value.index].clean
    if isinstance(value, (list, tuple)) and any(isinstance(v, _Ref) for v in value):
        return type(value)(_value(tape, states, v) for v in value)
    return value


def _dense(tape: Tape, node: Node, states: dict, count: int):
    args = [_value(tape, states, a) for a in node.args]
    kwargs = {k: _value(tape, states, v) for k, v in node.kwargs.items()}
    if _in_place(node.name, args, kwargs) and args and isinstance(args[0], torch.Tensor):
        args[0] = args[0].clone()          # the state it came from may still be read
    try:
        out = node.func(*args, **kwargs)
    except Exception as exc:        # e.g. a tensor made for a batch of one (the tape's image) meets N copies
        raise Unsupported(f"op {node.name} does not run on a batch of copies ({type(exc).__name__}: {exc})") from exc
    pieces = out if isinstance(out, (tuple, list)) else (out,)
    cleans = [tape.nodes[i].clean for i in node.pieces] if node.pieces else [node.clean]
    for piece, clean in zip(pieces, cleans, strict=True):
        if tuple(piece.shape) != (count, *clean.shape[1:]):
            raise Unsupported(f"op {node.name} gives shape {tuple(piece.shape)} for {count} copies, "
                              f"{tuple(clean.shape)} for one image")
    return out


def _incremental(tape: Tape, node: Node, states: dict, held: list[torch.Tensor]):
    """The node's output as a :class:`Patch` where a rule applies; raises :class:`_Dense` otherwise. ``held``:
    patch tensors that later ops still read (an in-place op copies them first)."""
    refs = list(_refs(node.args, node.kwargs))
    if any(not isinstance(states.get(r.index), Patch) for r in refs if r.index in states):
        raise _Dense
    if node.pieces:
        return _split(tape, node, states)
    if node.clean is None:
        raise _Dense
    name = node.name
    if name in ("cat", "concat", "concatenate") and _is_map(node.clean):
        return _concat(tape, node, states)
    first = node.args[0] if node.args else None
    if not isinstance(first, _Ref) or first.index not in states or not _is_map(node.clean):
        raise _Dense
    state = states[first.index]
    if name == "conv2d":
        return _conv(tape, node, states, first.index, state)
    if name in ("max_pool2d", "avg_pool2d"):
        return _pool(tape, node, first.index, state)
    if name == "pad":
        return _pad(node, state)
    if name == "__getitem__" and len(refs) == 1 and _channel_index(node.args[1] if len(node.args) > 1 else None):
        return Patch(state.value[node.args[1]], state.y, state.x)
    if name in PER_CHANNEL:
        if len(refs) > 1 or (name == "batch_norm" and _arg(node.args, node.kwargs, 5, "training", False)):
            raise _Dense
        return _apply(tape, node, {first.index: state.value}, state, held)
    if name == "dropout" and len(refs) == 1 and not _arg(node.args, node.kwargs, 2, "training", True):
        return state
    if name.rstrip("_") in ELEMENTWISE or name in ELEMENTWISE:
        return _elementwise(tape, node, refs, states, held)
    raise _Dense


def _apply(tape: Tape, node: Node, replaced: dict[int, torch.Tensor], like: Patch,
           held: list[torch.Tensor]) -> Patch:
    """``node``'s function on the patches (``replaced``: node -> its regional values; other tape outputs, which
    do not depend on the image, as recorded), at ``like``'s offsets."""
    def swap(value):
        if isinstance(value, _Ref):
            return replaced[value.index] if value.index in replaced else tape.nodes[value.index].clean
        if isinstance(value, (list, tuple)) and any(isinstance(v, _Ref) for v in value):
            return type(value)(swap(v) for v in value)
        return value
    args, kwargs = [swap(a) for a in node.args], {k: swap(v) for k, v in node.kwargs.items()}
    if _in_place(node.name, args, kwargs) and any(args[0] is value for value in held):
        args[0] = args[0].clone()           # never overwrite a patch a later op reads
    out = node.func(*args, **kwargs)
    if tuple(out.shape) != (len(like.y), node.clean.shape[1], *like.size):
        raise _Dense
    return Patch(out, like.y, like.x)


def _union(patches: list[Patch], shape) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Offsets and one size of the smallest region per copy that holds every patch."""
    starts, sizes = [], []
    for axis in (0, 1):
        lo = torch.stack([(p.y if axis == 0 else p.x) for p in patches]).amin(0)
        hi = torch.stack([(p.y if axis == 0 else p.x) + p.size[axis] - 1 for p in patches]).amax(0)
        start, size = _region(lo, hi, int(shape[2 + axis]))
        starts.append(start)
        sizes.append(size)
    return starts[0], starts[1], (sizes[0], sizes[1])


def _varies_over_space(value: torch.Tensor) -> bool:
    """Whether a tensor broadcast against (N, C, H, W) takes different values along H or W."""
    return any(size != 1 for size in ((1, 1) + tuple(value.shape))[-2:])


def _elementwise(tape: Tape, node: Node, refs: list[_Ref], states: dict, held: list[torch.Tensor]) -> Patch:
    """Each position alone: on one patch as it is; on several, on the union of their regions. Tensors that do
    not depend on the image must be constant over space (scalars, per-channel (C, 1, 1) tensors)."""
    shape = node.clean.shape
    for value in list(node.args) + list(node.kwargs.values()):
        if isinstance(value, torch.Tensor) and _varies_over_space(value):
            raise _Dense
        if isinstance(value, (list, tuple)) and any(isinstance(v, (torch.Tensor, _Ref)) for v in value):
            raise _Dense
    dependent = sorted({r.index for r in refs if r.index in states})
    for index in dependent:
        if tuple(tape.nodes[index].clean.shape) != tuple(shape):
            raise _Dense
    others = [tape.nodes[r.index].clean for r in refs if r.index not in states]   # not from the image
    if any(_varies_over_space(value) for value in others):
        raise _Dense
    patches = [states[i] for i in dependent]
    if len(patches) == 1:
        return _apply(tape, node, {dependent[0]: patches[0].value}, patches[0], held)
    y, x, size = _union(patches, shape)
    replaced = {i: _gather(tape, i, states[i], y, x, size) for i in dependent}
    return _apply(tape, node, replaced, Patch(torch.empty(0, 0, *size), y, x), held)


def _channel_index(index) -> bool:
    """x[:, a:b] or x[:, a:b, :, :] (Ghost modules keep the first channels): every position kept."""
    full = slice(None)
    return isinstance(index, tuple) and 2 <= len(index) <= 4 and index[0] == full and \
        isinstance(index[1], slice) and all(i == full for i in index[2:])


def _split(tape: Tape, node: Node, states: dict) -> tuple[Patch, ...]:
    """split / chunk along channels (CSP and Ghost blocks): each piece keeps the patch's offsets."""
    first = node.args[0] if node.args else None
    if node.name not in SPLITS or not isinstance(first, _Ref) or first.index not in states:
        raise _Dense
    if _arg(node.args, node.kwargs, 2, "dim", 0) not in (1, -3) or \
            not all(_is_map(tape.nodes[i].clean) for i in node.pieces):
        raise _Dense
    state = states[first.index]
    pieces = node.func(state.value, *node.args[1:], **node.kwargs)
    return tuple(Patch(piece, state.y, state.x) for piece in pieces)


def _concat(tape: Tape, node: Node, states: dict) -> Patch:
    """Along channels, of patched tensors: all brought to the union of their regions."""
    pieces = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = _arg(node.args, node.kwargs, 1, "dim", 0)
    if not isinstance(pieces, (list, tuple)) or dim not in (1, -3):
        raise _Dense
    if any(not isinstance(p, _Ref) or p.index not in states for p in pieces):
        raise _Dense
    shape = node.clean.shape
    if any(tuple(tape.nodes[p.index].clean.shape[-2:]) != tuple(shape[-2:]) for p in pieces):
        raise _Dense
    patches = [states[p.index] for p in pieces]
    y, x, size = _union(patches, shape)
    values = [_gather(tape, p.index, states[p.index], y, x, size) for p in pieces]
    return Patch(torch.cat(values, dim=1), y, x)


def _constant(tape: Tape, states: dict, value):
    """An argument that must not depend on the image (a conv's weight), as recorded."""
    if isinstance(value, _Ref):
        if value.index in states:
            raise _Dense
        return tape.nodes[value.index].clean
    return value


def _conv(tape: Tape, node: Node, states: dict, source_index: int, state: Patch):
    weight = _constant(tape, states, _arg(node.args, node.kwargs, 1, "weight"))
    bias = _constant(tape, states, _arg(node.args, node.kwargs, 2, "bias"))
    if weight is None or weight.dim() != 4:
        raise _Dense
    stride, padding = _arg(node.args, node.kwargs, 3, "stride", 1), _arg(node.args, node.kwargs, 4, "padding", 0)
    dilation, groups = _arg(node.args, node.kwargs, 5, "dilation", 1), _arg(node.args, node.kwargs, 6, "groups", 1)
    kernel = tuple(weight.shape[-2:])
    dil = (_pair(dilation, 0), _pair(dilation, 1))
    if isinstance(padding, str):
        if padding == "valid":
            pad_before = (0, 0)
        else:                           # "same" (stride 1): the extra row or column of an even kernel goes after
            pad_before = tuple(dil[i] * (kernel[i] - 1) // 2 for i in range(2))
    else:
        pad_before = (_pair(padding, 0), _pair(padding, 1))
    strides = (_pair(stride, 0), _pair(stride, 1))
    run = lambda window: torch.nn.functional.conv2d(window, weight, bias, strides, 0, dil, groups)
    return _window(tape, source_index, state, node.clean.shape, kernel, strides, dil, pad_before, 0.0, run)


def _pool(tape: Tape, node: Node, source_index: int, state: Patch):
    args, kwargs = node.args, node.kwargs
    kernel = _arg(args, kwargs, 1, "kernel_size")
    stride = _arg(args, kwargs, 2, "stride", None) or kernel
    padding = _arg(args, kwargs, 3, "padding", 0)
    kernels = (_pair(kernel, 0), _pair(kernel, 1))
    strides = (_pair(stride, 0), _pair(stride, 1))
    pads = (_pair(padding, 0), _pair(padding, 1))
    if node.name == "max_pool2d":
        dilation = _arg(args, kwargs, 4, "dilation", 1)
        if _arg(args, kwargs, 6, "return_indices", False):
            raise _Dense                    # ceil_mode is fine: windows past the end read -inf
        dil = (_pair(dilation, 0), _pair(dilation, 1))
        run = lambda w: torch.nn.functional.max_pool2d(w, kernels, strides, 0, dil)
        return _window(tape, source_index, state, node.clean.shape, kernels, strides, dil, pads, float("-inf"), run)
    ceil_mode, include_pad = _arg(args, kwargs, 4, "ceil_mode", False), _arg(args, kwargs, 5, "count_include_pad", True)
    divisor = _arg(args, kwargs, 6, "divisor_override", None)
    if ceil_mode or (not include_pad and any(pads)):
        raise _Dense
    run = lambda w: torch.nn.functional.avg_pool2d(w, kernels, strides, 0, False, True, divisor)
    return _window(tape, source_index, state, node.clean.shape, kernels, strides, (1, 1), pads, 0.0, run)


def _pad(node: Node, state: Patch) -> Patch:
    """Constant padding of the spatial axes only: the patch stays, its offsets move by the padding before it."""
    pad = list(_arg(node.args, node.kwargs, 1, "pad"))
    mode = _arg(node.args, node.kwargs, 2, "mode", "constant")
    if mode != "constant" or len(pad) > 4 or any(p < 0 for p in pad):
        raise _Dense
    left, top = (pad + [0, 0, 0, 0])[0], (pad + [0, 0, 0, 0])[2]
    return Patch(state.value, state.y + top, state.x + left)


class Replayer:
    """Occluded copies of one image at a time through its tape: ``run`` gives the captured layer value of a
    batch of copies (as the dense pass hands it over), or None where the model cannot be replayed (the
    caller then runs the copies densely; the reason is logged once)."""

    def __init__(self, capture: Capture, layer: str, inputs: torch.Tensor, occluders: torch.Tensor,
                 window: int, values: dict) -> None:
        self.capture, self.layer, self.inputs, self.occluders = capture, layer, inputs, occluders
        self.window, self.values = window, values
        self.image: int | None = None
        self.tape: tuple[Tape, int, list[int]] | None = None
        self.failed: str | None = None
        self.reported = False

    def run(self, image: int, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        if self.failed:
            return None
        try:
            if image != self.image:
                self.image, self.tape = image, None
                self.tape = record(self.capture, self.layer, self.inputs[image:image + 1], self.values)
            tape, target, nodes = self.tape
            dense: list[str] = []
            rows = y[:, None] + torch.arange(self.window, device=y.device)
            cols = x[:, None] + torch.arange(self.window, device=x.device)
            patch = self.occluders[image][:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)
            value = replay(tape, nodes, target, Patch(patch, y, x), dense)
            if not self.reported:
                self.reported = True
                log.debug("incremental occlusion of %s: %d ops replayed, %s", self.layer, len(nodes),
                          f"dense from {dense[0]} on ({', '.join(dict.fromkeys(dense))})" if dense
                          else "no op ran densely")
            return value
        except Unsupported as exc:
            self.failed = str(exc)
            log.info("incremental occlusion falls back to the dense method: %s", exc)
            return None
