"""Every architecture a user brings: torchvision's classification models and timm's families, one layer per stage.

For each model (random weights, small inputs) and each picked layer:

- ``layers`` lists it, with a layout;
- the capture equals the value read off the model's FX graph (tests/references.py, no shared code);
- the pooled statistics equal a NumPy loop over that value laid out by hand from the architecture's source
  (channels-last inside ConvNeXt blocks and Swin, tokens with a class token in ViT);
- the theoretical receptive field equals the support of the input gradient of the central position in a
  linearized copy (clipped to the image); after global attention (ViT) the support is the whole image.

CI runs a fast subset; ``pytest tests/test_families.py --full-matrix`` runs every model (minutes).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import references as ref
import torch
import torchvision

from neuroprobe.engine.reduce import pool_units
from neuroprobe.maps.receptive_field import theoretical_receptive_fields
from neuroprobe.models.capture import Capture, all_layers, probe

TORCHVISION = torchvision.models.list_models(module=torchvision.models)
TIMM = ["resnet18", "efficientnet_b0", "convnext_tiny", "regnetx_002", "mobilenetv3_small_050", "ghostnet_100",
        "cspresnet50", "vit_small_patch16_224", "swin_tiny_patch4_window7_224"]
FAST = ["convnext_tiny", "vit_b_16", "swin_t", "shufflenet_v2_x0_5", "regnet_y_400mf", "timm:ghostnet_100",
        "timm:cspresnet50", "timm:vit_small_patch16_224"]
FIXED_224 = ("vit_", "maxvit", "timm:vit", "timm:swin")     # position embeddings or window partitions fix the size
INPUT = {"inception_v3": 96}
EXTRA_LAYERS = {     # block internals in another layout, and the first attention block, besides one layer per stage
    "convnext_tiny": ["features.1.0.block.3", "features.1.0.block.4"],
    "vit_b_16": ["encoder.layers.encoder_layer_0.ln_1", "encoder.layers.encoder_layer_0",
                 "encoder.layers.encoder_layer_0.mlp.0"],
    "swin_t": ["features.1.0.mlp.0"],
    "timm:vit_small_patch16_224": ["blocks.0.norm1", "blocks.0", "blocks.0.mlp.fc1"],
    "timm:swin_tiny_patch4_window7_224": ["layers.0.blocks.0.mlp.fc1"],
    "timm:convnext_tiny": ["stages.0.blocks.0.mlp.fc1"],     # Linear on NHWC (conv_mlp=False)
}


def pytest_generate_tests(metafunc):
    if "model_name" in metafunc.fixturenames:
        names = TORCHVISION + [f"timm:{n}" for n in TIMM] if metafunc.config.getoption("--full-matrix") else FAST
        metafunc.parametrize("model_name", names)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], pretrained=False).eval()
    return torchvision.models.get_model(name).eval()


def input_size(name: str) -> int:
    return 224 if name.startswith(FIXED_224) else INPUT.get(name, 64)


def expected_layout(name: str, layer: str, ndim: int) -> str:
    """The layout of a layer's units, from the architectures' source code."""
    base = name.removeprefix("timm:")
    if ndim == 2:
        return "vector"
    if base.startswith("vit_"):
        return "tokens" if layer.startswith(("encoder", "blocks", "norm")) else "channels-first"
    if base.startswith("swin") and ".mlp" in layer and name.startswith("timm:"):
        return "tokens"             # timm's blocks run their Mlp on x.reshape(B, H * W, C)
    if base.startswith("swin"):      # NHWC from the patch embedding's norm to the head's permute back
        nhwc = layer.startswith(("features", "layers", "norm", "patch_embed")) and \
            layer not in ("features.0.0", "patch_embed.proj")
        return "channels-last" if nhwc else "channels-first"
    if base.startswith("convnext") and (".block." in layer and layer.split(".block.")[1].split(".")[0] in "12345"
                                        or ".mlp." in layer or layer.endswith(".mlp")):
        return "channels-last"      # between the block's permutes (torchvision) or around its Mlp (timm)
    return "channels-first"


def extra_tokens(name: str) -> int:
    """Tokens before the patch tokens: ViT's class token; none in Swin."""
    return 1 if name.removeprefix("timm:").startswith("vit_") else 0


def by_hand(value: torch.Tensor, layout: str, extra_tokens: int = 1) -> torch.Tensor:
    """(batch, units, *positions) from the layer's own tensor, by a reader of the architecture."""
    if layout == "channels-last":
        return torch.movedim(value, -1, 1)
    if layout == "tokens":
        patches = value[:, extra_tokens:, :]
        side = math.isqrt(patches.shape[1])
        return torch.movedim(patches.reshape(len(value), side, side, -1), -1, 1)
    return value


def stage_layers(model: torch.nn.Module, infos: dict, example: torch.Tensor, most: int = 6) -> list[str]:
    """One layer per stage: the stem, then the last block-level layer (at most three name parts) to finish at
    each grid, in the order the forward pass finishes them; containers that span several grids are left out."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, n=n: order.append(n)) for n, m in model.named_modules() if n in infos]
    with torch.no_grad():
        model(example)
    for hook in hooks:
        hook.remove()
    blocks = [n for n in dict.fromkeys(order) if len(infos[n].shape) == 3 and n.count(".") <= 2]
    grids = {n: infos[n].shape[1:] for n in blocks}
    spans = {n for n in blocks if any(o.startswith(n + ".") and grids[o] != grids[n] for o in blocks)}
    blocks = [n for n in blocks if n not in spans]
    last = {}
    for name in blocks:
        last.pop(grids[name], None)          # re-insert: dicts keep the order of the last finisher per grid
        last[grids[name]] = name
    picked = list(dict.fromkeys([blocks[0], *last.values()]))
    return picked[:1] + picked[1:][-(most - 1):]


GATES = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.Hardtanh, torch.nn.Hardswish, torch.nn.Hardsigmoid)


def linearized(model: torch.nn.Module) -> torch.nn.Module:
    """Same geometry without gating, in float64: activations with flat parts (ReLU and its kin) removed (smooth
    ones kept: they keep values bounded, as SE gates need), max pooling averaged, and parameters that start at
    zero (the last norm of a residual branch, layer scales) drawn at random, so that no branch is cut."""
    import copy

    clone = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in clone.parameters():
            if parameter.is_floating_point() and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    for parent in clone.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, GATES):
                setattr(parent, child_name, torch.nn.Identity())
            elif isinstance(child, torch.nn.MaxPool2d):
                setattr(parent, child_name, torch.nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                               ceil_mode=child.ceil_mode))
    return clone.double()


def test_every_family(model_name):
    model = build(model_name)
    size = input_size(model_name)
    example = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        infos = {info.name: info for info in all_layers(model, example)}
    extra = EXTRA_LAYERS["vit_b_16"] if model_name.startswith("vit_") else EXTRA_LAYERS.get(model_name, [])
    layers = list(dict.fromkeys(stage_layers(model, infos, example) + extra))
    assert len(layers) >= 3, f"{model_name}: found stages {layers}"
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size)
    plan = probe(model, layers, example)
    values = {}
    with torch.no_grad(), Capture(model, layers, lambda n, v: values.__setitem__(n, v.clone()), plan=plan) as capture:
        capture.run(x)
    reference = ref.fx_preactivations(model, layers, x)
    layouts = {}
    for layer in layers:
        assert layer in infos                          # `layers` lists it, with a layout
        raw = reference[layer]
        layouts[layer] = expected_layout(model_name, layer, raw.dim())
        assert infos[layer].layout.kind == layouts[layer], (layer, infos[layer].layout)
        expected = by_hand(raw, layouts[layer], extra_tokens(model_name))
        torch.testing.assert_close(values[layer], expected, msg=lambda m: f"{model_name} {layer}: {m}")
        if expected.dim() >= 3:
            stats = pool_units(values[layer]).numpy()
            loop = ref.numpy_stats(expected.numpy(), eps=1e-5)
            scale = float(np.abs(expected.numpy()).max())        # float32 sums of large values round at this scale
            for i, stat in enumerate(("min", "mean", "max")):
                np.testing.assert_allclose(stats[:, i], loop[stat], rtol=1e-5, atol=1e-6 * scale, err_msg=f"{layer} {stat}")
            assert np.all((loop["area_low"] - 1e-6 <= stats[:, 3]) & (stats[:, 3] <= loop["area_high"] + 1e-6))
    spatial = [layer for layer in layers if reference[layer].dim() >= 3]
    check_fields(model, model_name, spatial, size, layouts)


def check_fields(model, model_name: str, layers: list[str], size: int, layouts: dict[str, str]) -> None:
    """Theoretical fields against the input-gradient support of each layer's central position."""
    table = theoretical_receptive_fields(model, layers, input_size=size).set_index("layer")
    supports = gradient_supports(linearized(model), layers, size, layouts, extra_tokens(model_name))
    for layer in layers:
        field = table.loc[layer]
        (top, bottom), (left, right), (py, px), seen = supports[layer]
        for (low, high), p, axis, (first, last) in zip(((top, bottom), (left, right)), (py, px), "yx", seen):
            if math.isinf(field[f"size_{axis}"]):
                if model_name.removeprefix("timm:").startswith("vit_"):   # global attention: the whole image
                    assert (low, high) == (first, last) == (0, size - 1), (layer, axis)
                continue        # windowed attention (Swin, MaxViT) is reported global: an upper bound
            center, half = field[f"center_{axis}"] + p * field[f"jump_{axis}"], (field[f"size_{axis}"] - 1) / 2
            assert (low, high) == (max(center - half, first), min(center + half, last)), (layer, axis, field.to_dict())


def gradient_supports(model, layers: list[str], size: int, layouts: dict[str, str], extra: int) -> dict[str, tuple]:
    """For each layer, the input rows and columns its central position depends on (units summed with random
    signs), clipped to those any of its positions depends on (valid convs with strides never read the last rows
    of an image whose size they do not divide); one forward pass, two backward passes per layer."""
    modules = dict(model.named_modules())
    out = {}

    def keep(name, value):
        out.setdefault(name, value)

    hooks = [modules[n].register_forward_hook(lambda _m, _a, o, n=n: keep(n, o)) for n in layers]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, size, size, generator=generator, dtype=torch.float64).requires_grad_(True)
    try:
        with torch.enable_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    supports = {}
    for layer in layers:
        value = by_hand(out[layer], layouts[layer], extra)
        py, px = value.shape[-2] // 2, value.shape[-1] // 2
        signs = torch.randn(value.shape[1], generator=generator, dtype=torch.float64)
        (grad,) = torch.autograd.grad((value[0, :, py, px] * signs).sum(), x, retain_graph=True)
        (whole,) = torch.autograd.grad((value[0] * signs[:, None, None]).sum(), x, retain_graph=True)
        seen = [_span((whole != 0).any(1)[0], axis) for axis in (1, 0)]
        supports[layer] = (*[_span((grad != 0).any(1)[0], axis) for axis in (1, 0)], (py, px), seen)
    return supports


def _span(mask: torch.Tensor, axis: int) -> tuple[int, int]:
    """First and last row (axis 1) or column (axis 0) of a 2-D mask with a True."""
    index = np.flatnonzero(mask.any(axis).numpy())
    return int(index.min()), int(index.max())
