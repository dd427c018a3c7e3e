"""Manufactured images: one image per unit that drives (``max``) or silences (``min``) the unit's pre-activation.

The objective reads the same capture point as ``extract`` (:mod:`neuroprobe.models.capture`): the value the
layer's final nonlinearity receives, kept in the autograd graph by running every activation out of place
(torchvision's in-place ReLUs would overwrite it), and the forward pass stops at the layer. All units of a
call are optimized together as one batch, image i with its own objective, seed and transforms; since
images do not interact (the model runs in eval mode, Adam is elementwise), the result equals separate
calls with the same seeds, at a fraction of the cost.

The activation reached is measured again on the returned uint8 image, without transforms, exactly as a
natural image is measured; with a store it is also given as a fraction of the unit's strongest natural
response of the same statistic (``mean`` -> the store's mean; ``max`` -> its max, or its min for ``min``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..engine.device import resolve_device
from ..errors import NeuroprobeError
from ..maps.activations import ActivationRewrite, plain, redirected
from ..models.capture import Capture, StopForward, unit_layouts
from ..models.loading import LoadedModel, load_model
from ..progress import Progress
from .params import DEFAULT_LR, PARAMS, ImageBatch
from .transforms import Transforms

log = logging.getLogger(__name__)
DIRECTIONS = ("max", "min", "both")
OBJECTIVES = ("mean", "center", "max")


@dataclass
class Visualization:
    """uint8 images (N, 3, H, W) and one table row per image (unit, direction, activation reached, ...)."""

    images: torch.Tensor
    table: pd.DataFrame
    trace: np.ndarray          # (N, steps) objective value at each step (on the transformed image)


def unit_seed(seed: int, unit: int, direction: str) -> int:
    """The seed of one image: a function of the call's seed, the unit and the direction only."""
    return seed * 1_000_003 + 2 * int(unit) + (direction == "min")


def layer_values(model: torch.nn.Module, layer: str, x: torch.Tensor, keep_graph: bool = True,
                 rewrite=plain, layouts: dict | None = None) -> torch.Tensor:
    """The layer's pre-activation for input ``x`` (in the autograd graph when ``keep_graph``, activations run
    out of place through ``rewrite``), as (batch, units, *grid); the pass stops there. ``layouts`` caches the
    layer's unit layout per input size across calls."""
    held: dict[str, torch.Tensor] = {}

    def keep(name: str, value: torch.Tensor) -> None:
        held[name] = value
        raise StopForward

    mode = ActivationRewrite(rewrite) if keep_graph else None
    layouts = {} if layouts is None else layouts        # per input size: a token grid depends on it
    if tuple(x.shape[-2:]) not in layouts:
        layouts[tuple(x.shape[-2:])] = unit_layouts(model, [layer], x[:1].detach())
    with Capture(model, [layer], keep, keep_graph=keep_graph, layouts=layouts[tuple(x.shape[-2:])]):
        if mode is not None:
            mode.__enter__()
        try:
            model(x)
        except StopForward:
            pass
        finally:
            if mode is not None:
                mode.__exit__(None, None, None)
    if layer not in held:
        raise NeuroprobeError(f"layer '{layer}' did not run in the forward pass")
    return held[layer]


def unit_statistic(values: torch.Tensor, units: torch.Tensor, objective: str, signs: torch.Tensor) -> torch.Tensor:
    """Per image i, ``objective`` of unit ``units[i]``: spatial mean, centre position, or the spatial extreme
    in the image's direction (max for +1, min for -1). ``values`` is (N, C, ...) with units on axis 1."""
    v = values[torch.arange(len(units), device=values.device), units.to(values.device)]
    if v.ndim == 1:
        return v
    if objective == "mean":
        return v.flatten(1).mean(1)
    if objective == "center":
        index = tuple(size // 2 for size in v.shape[1:])
        return v[(slice(None), *index)]
    flat = v.flatten(1)
    return torch.where(signs.to(v.device) > 0, flat.amax(1), flat.amin(1))


def _normalize(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """Out-of-place normalization of [0, 1] float images (``Preprocessing.normalize`` works in place on uint8)."""
    mean = torch.tensor(model.preprocessing.mean, device=x.device, dtype=x.dtype)[None, :, None, None]
    std = torch.tensor(model.preprocessing.std, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x - mean) / std


def natural_extremes(store: str | Path, layer: str, units: Sequence[int], directions: Sequence[str],
                     objective: str, allow_incomplete: bool = False) -> np.ndarray:
    """Per image of a call: the unit's strongest natural response of the same statistic in a store (NaN for
    ``center``, which a store does not hold); an incomplete store is refused unless ``allow_incomplete``."""
    from ..store.completeness import require_complete
    from ..store.layout import open_layer

    require_complete(store, allow_incomplete)

    if objective == "center":
        return np.full(len(units), np.nan)
    ds = open_layer(store, layer)
    out = []
    for unit, direction in zip(units, directions, strict=True):
        if objective == "mean":
            values = ds["mean"].isel(unit=int(unit)).values
        else:
            values = ds["max" if direction == "max" else "min"].isel(unit=int(unit)).values
        out.append(np.nanmax(values) if direction == "max" else np.nanmin(values))
    return np.asarray(out, dtype=np.float64)


def _check_same_model(store: str | Path, loaded: LoadedModel) -> None:
    """Fractions of the strongest photo only mean something for the store's own model and weights."""
    from ..store.location import open_group

    provenance = dict(open_group(store).attrs).get("provenance", {})
    ours = loaded.provenance
    key = "model" if provenance.get("model") != ours.get("model") else (
        "weights_sha256" if provenance.get("weights_sha256") or ours.get("weights_sha256") else "weights")
    if provenance.get(key) != ours.get(key):
        raise NeuroprobeError(f"{store} was made with another model ({key} {provenance.get(key)!r}, not "
                              f"{ours.get(key)!r}); omit --model to use the store's, or pass its store")


def visualize(model: str | LoadedModel, layer: str, units: Sequence[int], *, direction: str = "max",
              objective: str = "mean", param: str = "fft", steps: int = 256, size: int | None = None,
              transforms: Transforms | None = None, seed: int = 0, lr: float | None = None,
              spectrum: torch.Tensor | None = None, store: str | Path | None = None, batch_size: int = 64,
              redirect: bool = True, weights: str | None = None, device: str | None = None,
              allow_incomplete: bool = False) -> Visualization:
    """One manufactured image per unit (and per direction for ``both``); see the module doc.

    ``param``: fft (default), maco (needs ``spectrum``, :func:`~neuroprobe.synthesis.params.natural_spectrum`)
    or pixel. ``transforms``: Lucid's standard set by default, ``Transforms.none()`` for none. ``size``: the
    model's input size by default. ``store``: a store of natural images of the same model and layer, for
    the fraction of the strongest natural response. ``redirect``: Lucid's redirected gradient through
    ReLU-like clamps for an image whose exact gradient is zero (a grey start can switch off every path to
    a unit), during the first max(16, steps / 8) steps; the objective and the measured activation are unchanged.
    An incomplete ``store`` is refused unless ``allow_incomplete`` (the table then has a ``completeness`` column).
    """
    if direction not in DIRECTIONS:
        raise NeuroprobeError(f"--direction must be one of {', '.join(DIRECTIONS)}, not '{direction}'")
    if objective not in OBJECTIVES:
        raise NeuroprobeError(f"--objective must be one of {', '.join(OBJECTIVES)}, not '{objective}'")
    if param not in PARAMS:
        raise NeuroprobeError(f"--param must be one of {', '.join(PARAMS)}, not '{param}'")
    if not len(units):
        raise NeuroprobeError("give at least one unit")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights)
    if store is not None:
        from ..store.completeness import require_complete

        _check_same_model(store, loaded)
        state = require_complete(store, allow_incomplete)
    dev = resolve_device(device)
    module = loaded.module.to(dev).eval()
    size = size or loaded.preprocessing.crop
    transforms = Transforms() if transforms is None else transforms
    lr = DEFAULT_LR[param] if lr is None else lr
    directions = ["max", "min"] if direction == "both" else [direction]
    jobs = [(int(u), d) for u in units for d in directions]
    layouts: dict = {}
    channels = layer_values(module, layer, torch.zeros(1, 3, size, size, device=dev), keep_graph=False,
                            layouts=layouts).shape[1]
    bad = [u for u, _ in jobs if not 0 <= u < channels]
    if bad:
        raise NeuroprobeError(f"unit {bad[0]} is out of range: layer '{layer}' has {channels} units (0-{channels - 1})")
    started = time.perf_counter()
    images, traces, reached = [], [], []
    batches = -(-len(jobs) // batch_size)
    meter = Progress(batches * steps, f"visualize ({layer}, {len(jobs)} images in {batches} batch(es))", "step")
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        image, trace = _optimize(loaded, module, layer, chunk, objective, param, steps, size, transforms, seed, lr,
                                 spectrum, dev, redirected if redirect else plain, layouts, meter)
        with torch.no_grad():
            values = layer_values(module, layer, loaded.preprocessing.normalize(image.to(dev)), keep_graph=False,
                                  layouts=layouts)
            reached.append(unit_statistic(values, torch.tensor([u for u, _ in chunk]), objective,
                                          torch.tensor([1.0 if d == "max" else -1.0 for _, d in chunk])).cpu())
        images.append(image)
        traces.append(trace)
    meter.close()
    seconds = time.perf_counter() - started
    table = pd.DataFrame({"unit": [u for u, _ in jobs], "direction": [d for _, d in jobs],
                          "objective": objective, "param": param, "layer": layer,
                          "seed": [unit_seed(seed, u, d) for u, d in jobs],
                          "activation": torch.cat(reached).double().numpy()})
    if store is not None:
        table["natural"] = natural_extremes(store, layer, [u for u, _ in jobs], [d for _, d in jobs], objective,
                                            allow_incomplete=allow_incomplete)
        sign = np.where(table["direction"] == "max", 1.0, -1.0)
        # a fraction of the strongest photo only means something when that photo pushes the unit the same way
        table["fraction"] = np.where(sign * table["natural"] > 0, table["activation"] / table["natural"], np.nan)
    if store is not None:
        from ..store.completeness import mark_table

        table = mark_table(table, state)
    table.attrs.update(seconds=seconds, steps=steps, size=size, lr=lr, model=loaded.name)
    log.info("%d images of %s in %.1f s (%.3f s per image)", len(jobs), layer, seconds, seconds / len(jobs))
    return Visualization(torch.cat(images), table, np.concatenate(traces))


def _optimize(loaded: LoadedModel, module: torch.nn.Module, layer: str, jobs: list[tuple[int, str]], objective: str,
              param: str, steps: int, size: int, transforms: Transforms, seed: int, lr: float,
              spectrum: torch.Tensor | None, dev: torch.device, rewrite, layouts: dict,
              meter: Progress | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Optimize one batch of images; returns them as uint8 (on the CPU) and the objective at every step."""
    seeds = [unit_seed(seed, u, d) for u, d in jobs]
    batch = ImageBatch(param, seeds, size, spectrum=spectrum, device=dev)
    generators = [torch.Generator().manual_seed(s + 1) for s in seeds]     # transforms: their own streams
    units = torch.tensor([u for u, _ in jobs], device=dev)
    signs = torch.tensor([1.0 if d == "max" else -1.0 for _, d in jobs], device=dev)
    optimizer = torch.optim.Adam(batch.parameters(), lr=lr)
    trace = torch.empty(len(jobs), steps, device=dev)       # stays on the device: no host sync per step
    for step in range(steps):
        x = transforms.apply(batch(), transforms.draw(generators))
        early = step < max(16, steps // 8)          # the redirected gradient is only needed to leave a dead start
        values = layer_values(module, layer, _normalize(loaded, x), rewrite=rewrite if early else plain,
                              layouts=layouts)
        stat = unit_statistic(values, units, objective, signs)
        (grad,) = torch.autograd.grad(-(signs * stat).sum(), [batch.values])
        batch.values.grad = grad
        optimizer.step()
        trace[:, step] = stat.detach().float()
        if meter is not None:
            meter.update(1)
    with torch.no_grad():
        return (batch() * 255).round().to(torch.uint8).cpu(), trace.cpu().numpy()
