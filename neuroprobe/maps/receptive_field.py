"""Theoretical receptive fields of every unit position of a layer, through any eager forward pass.

The geometry is followed op by op by :class:`neuroprobe.models.geometry.Tracker` (convs, pooling, padding,
resampling, permutes and reshapes, splits, token layouts, attention). The union of the inputs' fields
for elementwise ops and concatenations makes residual branches and Inception blocks come out right
where chain-only formulas do not. Global pooling, Linear layers over positions and attention see the
whole image (size ``inf``).
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from torch import nn

from ..errors import NeuroprobeError, closest
from ..models.geometry import LOST, layer_layouts


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
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    parameter = next(model.parameters(), None)
    image = torch.zeros(1, 3, int(height), int(width), device=parameter.device if parameter is not None else None)
    layouts, lost = layer_layouts(model, layers, image)
    rows = []
    for name in layers:
        layout = layouts.get(name)
        if layout is None or layout is LOST:
            op = f" (first lost at '{lost}')" if lost else ""
            raise NeuroprobeError(f"layer '{name}': its receptive field could not be followed{op}: an op neuroprobe "
                                  "does not know changes the spatial layout")
        if any(layout.roll):
            raise NeuroprobeError(f"layer '{name}': its positions are circularly shifted (roll by {layout.roll}); "
                                  "request the layer where the shift is undone")
        fy, fx = layout.fields
        rows.append({"layer": name, "size_y": fy.size, "size_x": fx.size, "jump_y": fy.jump, "jump_x": fx.jump,
                     "center_y": fy.center, "center_x": fx.center})
    return pd.DataFrame(rows)
