"""Attribution maps, batched on the device: gradient, guided backprop, SmoothGrad and Grad-CAM.

Every method returns an :class:`Attribution`: the raw signed tensor (B, T, ...) for T targets per
image, and the (B, T, H, W) map with the channel reduction stated in ``reduction``. Targets are
class indices (columns of the model's output) or, with ``target_layer``, units of any layer (the
spatial mean of their pre-activation, the capture point of :mod:`neuroprobe.models.capture`). Several
targets of one image share one forward pass and one vmapped backward pass.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NeuroprobeError
from ..models.capture import Capture, StopForward, unit_layouts
from .activations import ActivationRewrite, guided, plain

log = logging.getLogger(__name__)


@dataclass
class Attribution:
    """Raw signed attribution (B, T, ...), its (B, T, H, W) map, and how the map was made."""

    method: str
    raw: torch.Tensor
    map: torch.Tensor
    targets: torch.Tensor
    reduction: str

    def to_numpy(self):
        return self.map.detach().cpu().numpy()


def as_targets(targets, batch: int, device) -> torch.Tensor:
    """(B, T) int64 target indices from an int, a (B,) sequence or a (B, T) array."""
    t = torch.as_tensor(targets, dtype=torch.long, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] != batch:
        raise NeuroprobeError(f"targets must be an int, one per image ({batch}) or (images, targets); got shape "
                              f"{tuple(t.shape)}")
    return t


def _gather_scores(out, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) scores of the targets from (B, classes or units) outputs, with one-line errors."""
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise NeuroprobeError("the model does not return (batch, classes) scores; pass target_layer to "
                              "attribute to units of a layer instead")
    if targets.max() >= out.shape[1] or targets.min() < 0:
        raise NeuroprobeError(f"target index out of range: there are {out.shape[1]} classes or units")
    return out.gather(1, targets)


class _Scorer:
    """Forward pass to the target scores (B, T): class logits, or units' mean pre-activation of a
    layer (the pass then stops there), plus the values of ``layers`` kept in the autograd graph.
    Run it under :class:`ActivationRewrite` so that activations run out of place."""

    def __init__(self, model: nn.Module, target_layer: str | None = None, layers: Sequence[str] = (),
                 post_activation: bool = True, example: torch.Tensor | None = None) -> None:
        self.model = model
        self.target_layer = target_layer
        self.values: dict[str, torch.Tensor] = {}
        self.units: dict[str, torch.Tensor] = {}
        self.captures = []
        if layers:     # values as the layers return them (gradients are taken with respect to them)
            self.captures.append(Capture(model, layers, self.values.__setitem__, post_activation, keep_graph=True))
        if target_layer:
            layouts = unit_layouts(model, [target_layer], example[:1].detach()) if example is not None else None
            self.captures.append(Capture(model, [target_layer], self._unit_value, keep_graph=True, layouts=layouts))

    def _unit_value(self, name: str, value: torch.Tensor) -> None:
        self.units[name] = value
        raise StopForward

    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.values.clear()
        self.units.clear()
        with contextlib.ExitStack() as stack:
            for capture in self.captures:
                stack.enter_context(capture)
            try:
                out = self.model(x)
            except StopForward:
                out = None
        if self.target_layer is not None:
            if self.target_layer not in self.units:
                raise NeuroprobeError(f"layer '{self.target_layer}' did not run in the forward pass")
            out = self.units[self.target_layer].flatten(2).mean(2)
        return _gather_scores(out, targets)


def batched_grad(scores: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    """d scores[:, t] / d wrt for every target t, as (T, *wrt.shape): one vmapped backward pass."""
    batch, count = scores.shape
    if count == 1:
        return torch.autograd.grad(scores.sum(), wrt)[0][None]
    eye = torch.eye(count, device=scores.device, dtype=scores.dtype)[:, None, :].expand(count, batch, count)
    try:
        return torch.autograd.grad(scores, wrt, grad_outputs=eye, is_grads_batched=True)[0]
    except RuntimeError as exc:   # an op without a batching rule: one backward per target
        log.debug("vmapped backward unavailable (%s); one backward per target", exc)
        return torch.stack([torch.autograd.grad(scores[:, t].sum(), wrt, retain_graph=t < count - 1)[0]
                            for t in range(count)])


def _input_gradient(model: nn.Module, x: torch.Tensor, targets, target_layer: str | None, rewrite) -> tuple:
    targets = as_targets(targets, len(x), x.device)
    x = x.detach().requires_grad_(True)
    # The rewrite (every activation out of place) is needed to change gradients (guided) or to keep a
    # pre-activation in the graph (unit targets); a plain class gradient runs the model as it is.
    rewrite = rewrite or (plain if target_layer else None)
    with torch.enable_grad(), ActivationRewrite(rewrite) if rewrite else contextlib.nullcontext():
        scores = _Scorer(model, target_layer, example=x)(x, targets)
    grads = batched_grad(scores, x)                    # (T, B, C, H, W)
    return grads.transpose(0, 1), targets


def gradient(model: nn.Module, x: torch.Tensor, targets, *, target_layer: str | None = None) -> Attribution:
    """Simonyan et al.: the input gradient; map = max over channels of its absolute value."""
    raw, targets = _input_gradient(model, x, targets, target_layer, None)
    return Attribution("gradient", raw, raw.abs().amax(2), targets, "max over channels of |d score / d input|")


def guided_backprop(model: nn.Module, x: torch.Tensor, targets, *, target_layer: str | None = None) -> Attribution:
    """Springenberg et al.: negative gradients stopped at every activation (in-place, reused and
    functional ones included); map = max over channels of |guided gradient|."""
    raw, targets = _input_gradient(model, x, targets, target_layer, guided)
    return Attribution("guided", raw, raw.abs().amax(2), targets, "max over channels of |guided gradient|")


PASS_BUDGET = 32 * 224 * 224   # image-targets x pixels per SmoothGrad pass: 32 224-px images, one target each


def smoothgrad(model: nn.Module, x: torch.Tensor, targets, *, samples: int = 50, noise: float = 0.15,
               batch_size: int | None = None, seed: int = 0, noise_tensor: torch.Tensor | None = None,
               target_layer: str | None = None) -> Attribution:
    """Smilkov et al.: the input gradient averaged over noisy copies; sigma = ``noise`` x each image's
    value range (max - min); samples are batched ``batch_size`` copies at a time (default: as many as keep
    copies x targets x pixels within 32 224-px images). ``noise_tensor``
    (S, B, C, H, W) replaces the seeded draw. raw = mean gradient; map = max over channels of the
    mean |gradient| (SmoothGrad's absolute-value variant, as in Captum's NoiseTunnel on Saliency)."""
    targets = as_targets(targets, len(x), x.device)
    if noise_tensor is None:
        sigma = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
        generator = torch.Generator().manual_seed(seed)
        noise_tensor = torch.randn((samples, *x.shape), generator=generator).to(x.device) * sigma.view(1, -1, 1, 1, 1)
    samples = noise_tensor.shape[0]
    copies = (x[None] + noise_tensor).flatten(0, 1)                     # (S * B, C, H, W), sample-major
    batch_size = batch_size or max(1, PASS_BUDGET // (targets.shape[1] * x.shape[-2] * x.shape[-1]))
    repeated = targets.repeat(samples, 1)
    raw_sum, abs_sum = 0.0, 0.0
    for start in range(0, len(copies), batch_size):
        grads, _ = _input_gradient(model, copies[start:start + batch_size], repeated[start:start + batch_size], target_layer, None)
        index = torch.arange(start, min(start + batch_size, len(copies)), device=x.device) % len(x)
        raw_sum = raw_sum + torch.zeros((len(x), *grads.shape[1:]), device=x.device).index_add_(0, index, grads)
        abs_sum = abs_sum + torch.zeros((len(x), *grads.shape[1:]), device=x.device).index_add_(0, index, grads.abs())
    raw, mean_abs = raw_sum / samples, abs_sum / samples
    return Attribution("smoothgrad", raw, mean_abs.amax(2), targets,
                       "max over channels of the mean |gradient| over noisy copies")


def _scores_from_layer(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: str):
    """Class scores with the autograd graph starting at ``layer``'s output (its last call): the forward
    pass up to the layer runs without recording, as an inference pass does."""
    module = Capture(model, [layer], lambda *_: None).modules[layer]   # unknown names: the capture's error
    kept: dict[str, torch.Tensor] = {}

    def start_graph(_module, _args, out):
        if not isinstance(out, torch.Tensor):
            raise NeuroprobeError(f"layer '{layer}' does not return one tensor; choose a conv layer")
        torch.set_grad_enabled(True)          # from here on, until the no_grad block below exits
        kept["value"] = out.detach().requires_grad_(True)
        return kept["value"] * 1              # a non-leaf copy: later in-place ops (x += identity) stay legal

    handle = module.register_forward_hook(start_graph)
    try:
        with torch.no_grad():
            out = model(x.detach())
    finally:
        handle.remove()
    return _gather_scores(out, targets), kept["value"]


def gradcam(model: nn.Module, x: torch.Tensor, targets, layer: str, *, relu: bool = True, upsample: bool = True,
            pre_activation: bool = False, target_layer: str | None = None) -> Attribution:
    """Selvaraju et al.: channel weights = spatial mean of d score / d A for the layer's output A (its
    pre-activation with ``pre_activation``); raw = sum_k w_k A_k at the layer's resolution; map = its
    ReLU (``relu``) upsampled bilinearly to the input. Backward stops at the layer."""
    targets = as_targets(targets, len(x), x.device)
    layout = unit_layouts(model, [layer], x[:1].detach())[layer]
    if pre_activation or target_layer:
        scorer = _Scorer(model, target_layer, layers=[layer], post_activation=not pre_activation, example=x)
        with torch.enable_grad(), ActivationRewrite(plain):
            scores = scorer(x.detach(), targets)
            activation = scorer.values[layer]
    else:
        scores, activation = _scores_from_layer(model, x, targets, layer)
    grads = batched_grad(scores, activation)           # as the layer returns them: (T, B, ...)
    activation = layout.units_first(activation)        # (B, K, h, w): channels-last and token layers on their grid
    grads = layout.units_first(grads.flatten(0, 1)).unflatten(0, grads.shape[:2])
    if activation.ndim != 4:
        raise NeuroprobeError(f"layer '{layer}' has no spatial map (shape {tuple(activation.shape)}); choose a conv layer")
    weights = grads.mean(dim=(3, 4))                   # (T, B, K)
    cam = torch.einsum("tbk,bkhw->bthw", weights, activation.detach())
    shown = cam.clamp(min=0) if relu else cam
    if upsample:
        shown = F.interpolate(shown, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return Attribution("gradcam", cam, shown, targets,
                       f"sum_k w_k A_k{', ReLU' if relu else ''}{', bilinear to the input' if upsample else ''}")
