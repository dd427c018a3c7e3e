"""Every capture point against an out-of-place recomputation written by hand (tests/references.py)."""
from __future__ import annotations

import numpy as np
import pytest
import references as ref
import torch
from torchvision.models import get_model

from neuroprobe.errors import NeuroprobeError
from neuroprobe.models.capture import Capture, probe


@pytest.fixture(autouse=True)
def _no_grad():
    """Every test here runs without autograd (and leaves it as it found it)."""
    with torch.no_grad():
        yield


def captured(model, layers, x, post=False):
    values = {}
    with Capture(model, layers, lambda name, v: values.__setitem__(name, v.clone()), post_activation=post) as capture:
        capture.run(x)
    return values


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5 * max(scale, 1.0))


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(0)
    return torch.randn(3, 3, 224, 224)


@pytest.fixture(scope="module")
def alexnet():
    torch.manual_seed(1)
    return get_model("alexnet").eval()


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(2)
    model = get_model("resnet18").eval()
    for m in model.modules():  # random BN statistics so that the residual sum has both signs
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2)
    return model


@pytest.fixture(scope="module")
def googlenet():
    torch.manual_seed(3)
    return get_model("googlenet", init_weights=False).eval()


@pytest.fixture(scope="module")
def effnet():
    from neuroprobe.models.loading import load_model

    return load_model("efficientnet_lite0").module


@pytest.mark.parametrize("post", [False, True])
@pytest.mark.parametrize("layer", ["features.0", "features.1", "features.10", "classifier.1", "classifier.4"])
def test_alexnet_modules_followed_by_inplace_relu(alexnet, x, layer, post):
    value = captured(alexnet, [layer], x, post)[layer]
    assert_close(value, ref.alexnet_like(alexnet, x, layer, post))
    if layer != "features.1" or not post:
        assert value.min() < 0, "pre-activation keeps negative values despite the in-place ReLU after it"


def test_vgg_features_and_classifier(x):
    torch.manual_seed(4)
    vgg = get_model("vgg11").eval()
    small = x[:, :, :64, :64]
    values = captured(vgg, ["features.3", "classifier.0"], small)
    for layer in values:
        assert_close(values[layer], ref.alexnet_like(vgg, small, layer, False))


@pytest.mark.parametrize("post", [False, True])
@pytest.mark.parametrize("stage,block", [(4, 1), (2, 0)])
def test_resnet_reused_relu_gives_residual_sum(resnet18, x, stage, block, post):
    layer = f"layer{stage}.{block}"
    value = captured(resnet18, [layer], x, post)[layer]
    assert_close(value, ref.resnet_block(resnet18, x, stage, block, post))
    assert (value.min() < 0) != post


def test_relu_module_called_twice_gives_last_call(resnet18, x):
    """``layer4.1.relu`` runs twice in a BasicBlock; its pre-activation is the input of the last call."""
    value = captured(resnet18, ["layer4.1.relu"], x)["layer4.1.relu"]
    assert_close(value, ref.resnet_block(resnet18, x, 4, 1, False))


@pytest.mark.parametrize("post", [False, True])
@pytest.mark.parametrize("layer", ["conv1", "conv3", "inception3a.branch1"])
def test_googlenet_functional_inplace_relu(googlenet, x, layer, post):
    value = captured(googlenet, [layer], x, post)[layer]
    if layer == "inception3a.branch1":
        m = ref.out_of_place(googlenet)
        expected = ref.basic_conv_pre(m.inception3a.branch1, ref.googlenet_until(m, x, "inception3a"))
        expected = torch.relu(expected) if post else expected
    else:
        expected = ref.googlenet_conv(googlenet, x, layer, post)
    assert_close(value, expected)


@pytest.mark.parametrize("post", [False, True])
def test_googlenet_concatenation_block(googlenet, x, post):
    value = captured(googlenet, ["inception4c"], x, post)["inception4c"]
    assert value.shape[1] == 512
    assert_close(value, ref.googlenet_inception(googlenet, x, "inception4c", post))
    assert (value.min() < 0) != post, "negatives included in the pre-activation, none after the ReLUs"


@pytest.mark.parametrize("post", [False, True])
def test_timm_batchnorm_act(effnet, x, post):
    values = captured(effnet, ["bn2", "blocks.5.0.bn2"], x, post)
    assert_close(values["bn2"], ref.effnet_head_bn(effnet, x, post))
    assert_close(values["blocks.5.0.bn2"], ref.effnet_block_bn2(effnet, x, 5, 0, post))


@pytest.mark.parametrize("post", [False, True])
def test_timm_block_without_final_activation(effnet, x, post):
    value = captured(effnet, ["blocks.3"], x, post)["blocks.3"]
    assert_close(value, ref.effnet_blocks(effnet, x, 3))
    assert value.min() < 0


def test_nested_layers_and_stop_after_deepest(effnet, x):
    """Nested requests each get their own value; stopping early leaves them unchanged."""
    layers = ["blocks.3", "blocks.3.0", "blocks.3.0.bn1"]
    full = captured(effnet, layers, x)
    info = probe(effnet, layers, x[:1])
    seen, ran = {}, []
    hook = effnet.conv_head.register_forward_hook(lambda *a: ran.append(1))
    try:
        with Capture(effnet, layers, lambda n, v: seen.__setitem__(n, v.clone()), plan=info) as capture:
            capture.run(x)
    finally:
        hook.remove()
    assert not ran, "the forward pass went past the deepest requested layer"
    for layer in layers:
        assert torch.equal(seen[layer], full[layer])
    assert info["blocks.3"].activation_calls == frozenset() and info["blocks.3.0.bn1"].activation_calls == {0}
    m = ref.out_of_place(effnet)
    h = m.blocks[:3](ref.effnet_stem(m, x))
    assert_close(full["blocks.3.0.bn1"], ref.bn(m.blocks[3][0].bn1, m.blocks[3][0].conv_pw(h)))


def test_probe_describes_capture(resnet18, googlenet, x):
    assert probe(resnet18, ["layer4.1"], x[:1])["layer4.1"].captured == "pre-activation: input of relu"
    assert probe(resnet18, ["layer4.1.relu"], x[:1])["layer4.1.relu"].calls == 2
    # the plan keeps only what is needed: the block's second ReLU call; nothing for a linear bottleneck
    assert probe(resnet18, ["layer4.1"], x[:1])["layer4.1"].activation_calls == {1}
    info = probe(googlenet, ["inception4c"], x[:1])["inception4c"]
    assert info.shape == (512, 14, 14) and info.captured.startswith("pre-activation: concatenation of 4")


def test_unknown_layer_names_the_closest(resnet18):
    with pytest.raises(NeuroprobeError, match="layer4.1"):
        Capture(resnet18, ["layer4.11"], lambda n, v: None)
