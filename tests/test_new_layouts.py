"""Every tool on channels-last and token layers: occlusion, empirical fields, Grad-CAM and unit targets on a
ConvNeXt block's Linear layers (NHWC) and a ViT's tokens (class token left out), against plain references
that lay the layers out by hand as the architectures' source does."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_occlusion import assert_close_relative, plain_loop
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.vision_transformer import VisionTransformer

from neuroprobe.maps import discrepancy_maps
from neuroprobe.maps.attribution import gradcam, gradient
from neuroprobe.maps.empirical_rf import empirical_receptive_fields
from neuroprobe.models.loading import LoadedModel, Preprocessing

SIZE, PATCH = 32, 8
VIT_LAYERS = {"tokens before attention": "encoder.layers.encoder_layer_0.ln_1",
              "tokens after attention": "encoder.layers.encoder_layer_0.mlp.0"}
CONVNEXT_LAYERS = {"channels-last Linear": "features.1.0.block.3"}


def loaded(module: torch.nn.Module) -> LoadedModel:
    prep = Preprocessing(resize=SIZE, crop=SIZE, interpolation="bilinear", mean=(0.5,) * 3, std=(0.25,) * 3)
    return LoadedModel(module.eval(), prep, {"model": type(module).__name__})


@pytest.fixture(scope="module")
def vit() -> LoadedModel:
    torch.manual_seed(0)
    return loaded(VisionTransformer(image_size=SIZE, patch_size=PATCH, num_layers=2, num_heads=2, hidden_dim=32,
                                    mlp_dim=64, num_classes=10))


@pytest.fixture(scope="module")
def convnext() -> LoadedModel:
    torch.manual_seed(0)
    model = ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)
    for block in model.modules():             # layer scale starts at 1e-6: make the residual branch count
        if hasattr(block, "layer_scale"):
            block.layer_scale.data.fill_(1.0)
    model.classifier[-1].weight.data.mul_(1000)   # Grad-CAMs well above pytorch-grad-cam's 1e-7 scaling epsilon
    return loaded(model)


def output_by_hand(model: torch.nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's output (its pre-activation: these layers end in no activation) as (B, units, h, w): NHWC moved
    to NCHW, or the patch tokens after the class token reshaped to the grid."""
    out = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _a, o: out.setdefault("v", o))
    try:
        model(x)
    finally:
        handle.remove()
    value = out["v"]
    if value.dim() == 4:                      # (B, H, W, C)
        return value.permute(0, 3, 1, 2)
    side = SIZE // PATCH
    return value[:, 1:, :].reshape(len(value), side, side, -1).permute(0, 3, 1, 2)


def images(n: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)


@pytest.mark.parametrize("family,layer", [("vit", v) for v in VIT_LAYERS.values()] +
                         [("convnext", v) for v in CONVNEXT_LAYERS.values()])
def test_occlusion_equals_a_plain_loop(family, layer, request):
    model = request.getfixturevalue(family)
    with torch.no_grad():
        maps = discrepancy_maps(model, images(), layer, units=[0, 5, 9], window=6, stride=5, fill="noise",
                                response="peak", batch_size=7)
        expected = plain_loop(model, images(), lambda x: output_by_hand(model.module, layer, x)[:, [0, 5, 9]], 6, 5,
                              "noise", "peak")
    assert maps.values.shape == expected.shape
    assert_close_relative(maps.values, expected)


def test_a_token_before_attention_sees_only_its_patch(vit):
    """Occluding outside a patch token's 8 px patch changes nothing; the empirical field says 8 px theoretically."""
    layer = VIT_LAYERS["tokens before attention"]
    with torch.no_grad():
        maps = discrepancy_maps(vit, images(1), layer, units=[0, 1, 2], window=4, stride=4, fill="zero")
        field = empirical_receptive_fields(vit, images(1), layer, pd.DataFrame({"unit": [0], "image": [0]}),
                                           window=4, stride=4, fill="zero")
    assert field.table.iloc[0].theoretical_rf_px == PATCH
    for u in range(3):
        peak_y, peak_x = maps.peak_px[0, u]
        inside_y = (maps.positions_y // PATCH) == int(peak_y // PATCH)
        inside_x = (maps.positions_x // PATCH) == int(peak_x // PATCH)
        assert np.all(maps.values[0, u][~inside_y] == 0) and np.all(maps.values[0, u][:, ~inside_x] == 0)
        assert np.abs(maps.values[0, u][inside_y][:, inside_x]).max() > 0


@pytest.mark.parametrize("family,layer", [("vit", VIT_LAYERS["tokens after attention"]),
                                          ("convnext", CONVNEXT_LAYERS["channels-last Linear"])])
def test_gradcam_equals_pytorch_grad_cam_with_its_reshape_transform(family, layer, request):
    """pytorch-grad-cam's documented recipe for these models: a reshape_transform to (B, C, h, w)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = request.getfixturevalue(family).module
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    ours = gradcam(model, x, [4, 0], layer, upsample=False)
    side = SIZE // PATCH

    def reshape(value):
        if value.dim() == 4:
            return value.permute(0, 3, 1, 2)
        return value[:, 1:, :].reshape(len(value), side, side, -1).permute(0, 3, 1, 2)

    target = dict(model.named_modules())[layer]
    with GradCAM(model=model, target_layers=[target], reshape_transform=reshape) as cam:
        theirs = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(4), ClassifierOutputTarget(0)])
    # as pytorch-grad-cam does: scale and resize per layer, then scale the layers' mean again
    scaled = scale_cam_image(scale_cam_image(ours.map[:, 0].detach().numpy(), (SIZE, SIZE)))
    np.testing.assert_allclose(scaled, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family,layer", [("vit", VIT_LAYERS["tokens after attention"]),
                                          ("convnext", CONVNEXT_LAYERS["channels-last Linear"])])
def test_unit_targets_average_the_grid_of_the_units_axis(family, layer, request):
    """Target = the unit's mean over the grid (patch tokens only), its gradient taken by hand."""
    model = request.getfixturevalue(family).module
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    ours = gradient(model, x, [[3, 7], [1, 2]], target_layer=layer)
    inputs = x.clone().requires_grad_(True)
    with torch.enable_grad():
        value = output_by_hand(model, layer, inputs).mean(dim=(2, 3))
        for t in range(2):
            expected = torch.autograd.grad(value[torch.arange(2), ours.targets[:, t]].sum(), inputs, retain_graph=True)[0]
            torch.testing.assert_close(ours.raw[:, t], expected, rtol=1e-4, atol=1e-6)
