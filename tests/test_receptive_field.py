"""Theoretical receptive fields: published values, and the support of the input gradient."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import get_model

from neuroprobe.maps.receptive_field import theoretical_receptive_fields


@pytest.mark.parametrize("name,layer,size", [
    ("alexnet", "features.10", 163),   # conv5
    ("vgg16", "features.29", 196),     # conv5_3
    ("vgg16", "features.30", 212),     # pool5
    ("resnet18", "layer4", 435),       # through residual branches
])
def test_published_values(name, layer, size):
    table = theoretical_receptive_fields(get_model(name), [layer])
    assert table.loc[0, "size_y"] == table.loc[0, "size_x"] == size


def linearized(model: nn.Module) -> nn.Module:
    """Same geometry, no gating: activations removed and max pools averaged, so that every input pixel
    of the receptive field reaches the unit (random weights make exact cancellation improbable)."""
    clone = copy.deepcopy(model).eval()
    for parent in clone.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.GELU)):
                setattr(parent, child_name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                         ceil_mode=child.ceil_mode))
    return clone


def gradient_support(model: nn.Module, layer: str, size: int, to_grid=lambda v: v) -> tuple[tuple[int, int], tuple[int, int], tuple]:
    """Rows and columns of the input that the central position of ``layer`` depends on, over all its units (the
    layer's field is the largest of its units': ShuffleNet's pass-through half has a smaller one). The units are
    summed with random signs, so that a LayerNorm's outputs, which sum to a constant, do not cancel."""
    out = {}
    module = dict(model.named_modules())[layer]
    hook = module.register_forward_hook(lambda _m, _a, o: out.__setitem__("v", o))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=generator).requires_grad_(True)
    try:
        with torch.enable_grad():
            model(x)
    finally:
        hook.remove()
    value = to_grid(out["v"])        # (1, units, H, W)
    py, px = value.shape[-2] // 2, value.shape[-1] // 2
    (value[0, :, py, px] * torch.randn(value.shape[1], generator=generator)).sum().backward()
    support = x.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = np.flatnonzero(support.any(1).numpy()), np.flatnonzero(support.any(0).numpy())
    return (rows.min(), rows.max()), (cols.min(), cols.max()), (py, px)


@pytest.mark.parametrize("name,layer,size", [
    ("alexnet", "features.10", 224), ("resnet18", "layer4", 512), ("resnet18", "layer2.0", 224),
    ("efficientnet_lite0", "blocks.3", 224),
    ("convnext_tiny", "features.1.0", 224),          # channels-last Linear and LayerNorm inside the block
    ("shufflenet_v2_x1_0", "stage2.3", 224),         # chunk into two branches, channel shuffle by view
])
def test_equals_input_gradient_support(name, layer, size):
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        from neuroprobe import load_model

        model = load_model(name).module
    else:
        model = get_model(name)
    flat = linearized(model)
    (top, bottom), (left, right), (py, px) = gradient_support(flat, layer, size)
    field = theoretical_receptive_fields(model, [layer], input_size=size).iloc[0]
    for low, high, p, axis in ((top, bottom, py, "y"), (left, right, px, "x")):
        center, half = field[f"center_{axis}"] + p * field[f"jump_{axis}"], (field[f"size_{axis}"] - 1) / 2
        assert 0 <= center - half and center + half <= size - 1, "pick a unit whose field lies inside the image"
        assert (low, high) == (center - half, center + half), axis


def test_an_op_without_a_rule_is_named():
    from neuroprobe.errors import NeuroprobeError

    class Warp(nn.Module):
        def forward(self, x):
            grid = torch.zeros(x.shape[0], x.shape[2], x.shape[3], 2)
            return F.grid_sample(x, grid, align_corners=False)

    model = nn.Sequential(nn.Conv2d(3, 8, 3), Warp(), nn.Conv2d(8, 2, 3))
    with pytest.raises(NeuroprobeError, match="grid_sample"):
        theoretical_receptive_fields(model, ["2"], 32)


class Lambda(nn.Module):
    """A named step for the shape-op models below."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def shape_op(step) -> nn.Module:
    """conv 3x3 stride 2 -> the op -> conv 3x3: the op sits between two windows, as in a real block."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), step, nn.LazyConv2d(4, 3, padding=1))


EXACT = {
    "dilated and grouped": nn.Sequential(nn.Conv2d(8, 8, 3, dilation=3, padding=2, groups=4)),
    "channels-last pad": Lambda(lambda x: F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 2, 3, 0)).permute(0, 3, 1, 2)),
    "pixel_unshuffle": nn.PixelUnshuffle(2),
    "roll, undone": Lambda(lambda x: torch.roll(torch.roll(x, (3, -2), (2, 3)) * 2, (-3, 2), (2, 3))),
    "strided slice": Lambda(lambda x: x[:, :, 1::2, ::2]),
    "flip": Lambda(lambda x: torch.flip(x, (-1,))),
    "chunk along width": Lambda(lambda x: torch.cat(torch.chunk(x, 2, dim=3)[1:], dim=1)),
}
RESAMPLING = {
    "nearest x2": nn.Upsample(scale_factor=2, mode="nearest"),
    "bilinear x2": nn.Upsample(scale_factor=2, mode="bilinear"),
    "bilinear x1.5": Lambda(lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear")),
    "bicubic to 23": Lambda(lambda x: F.interpolate(x, size=(23, 23), mode="bicubic")),
    "conv_transpose k4 s2": nn.LazyConvTranspose2d(8, 4, stride=2, padding=1),
    "pixel_shuffle": nn.PixelShuffle(2),
    "adaptive pool to 5": nn.AdaptiveAvgPool2d(5),
}


def field_and_support(model: nn.Module, size: int = 48):
    """The theoretical interval of the central position of the model's output, and its input-gradient support."""
    model(torch.zeros(1, 3, size, size))          # materialize lazy modules
    layer = str(len(model) - 1)
    (top, bottom), (left, right), (py, px) = gradient_support(model, layer, size)
    field = theoretical_receptive_fields(model, [layer], input_size=size).iloc[0]
    intervals = []
    for p, axis in ((py, "y"), (px, "x")):
        center, half = field[f"center_{axis}"] + p * field[f"jump_{axis}"], (field[f"size_{axis}"] - 1) / 2
        intervals.append((min(center - half, center + half), max(center - half, center + half)))
    return intervals, [(top, bottom), (left, right)]


@pytest.mark.parametrize("op", list(EXACT))
def test_shape_ops_give_the_exact_field(op):
    predicted, support = field_and_support(shape_op(EXACT[op]))
    assert predicted == [tuple(map(float, s)) for s in support]


@pytest.mark.parametrize("op", list(RESAMPLING))
def test_resampling_gives_the_tightest_affine_bound(op):
    """After resampling, positions are not an affine function of the input: the field contains the true one and
    exceeds it by less than two input steps (the first conv's stride, 2 px, times 2)."""
    predicted, support = field_and_support(shape_op(RESAMPLING[op]))
    for (low, high), (s_low, s_high) in zip(predicted, support):
        assert low <= s_low and s_high <= high
        assert (high - low) - (s_high - s_low) < 2 * 2


def test_vit_tokens_keep_their_patch_field_until_attention_mixes_them():
    """ViT-B/16: patch embedding and the tokens before the first attention see 16 px; after it, everything."""
    table = theoretical_receptive_fields(get_model("vit_b_16"), ["conv_proj", "encoder.layers.encoder_layer_0.ln_1",
                                                                  "encoder.layers.encoder_layer_0"]).set_index("layer")
    assert table.loc["conv_proj", "size_y"] == table.loc["encoder.layers.encoder_layer_0.ln_1", "size_x"] == 16
    assert table.loc["encoder.layers.encoder_layer_0.ln_1", "jump_y"] == 16
    assert np.isinf(table.loc["encoder.layers.encoder_layer_0", "size_y"])
