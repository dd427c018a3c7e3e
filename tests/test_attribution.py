"""Attribution methods against Captum, pytorch-grad-cam and hand-written out-of-place references."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from references import bn, resnet_block
from torchvision.models import resnet18, vgg11

from neuroprobe.maps.attribution import gradcam, gradient, guided_backprop, smoothgrad
from neuroprobe.maps.dff import factorize, nmf
from neuroprobe.maps.feedback import feedback, global_perception, trace_norm_penalty


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(3)
    return resnet18().eval()


@pytest.fixture(scope="module")
def inputs():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(scale))


def test_gradient_equals_captum_saliency_for_several_targets(resnet, inputs):
    from captum.attr import Saliency

    ours = gradient(resnet, inputs, [[1, 7], [3, 4]])             # two targets per image, one backward
    for t in range(2):
        theirs = Saliency(resnet).attribute(inputs.clone(), target=ours.targets[:, t], abs=False)
        close(ours.raw[:, t], theirs)
        close(ours.map[:, t], theirs.abs().amax(1))


def test_guided_backprop_equals_captum_where_captum_works(inputs):
    from captum.attr import GuidedBackprop

    torch.manual_seed(0)
    model = vgg11().eval()
    for module in model.modules():               # Captum needs ReLUs that are neither in place nor reused
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    ours = guided_backprop(model, inputs, [2, 9])
    theirs = GuidedBackprop(model).attribute(inputs.clone(), target=torch.tensor([2, 9]))
    close(ours.raw[:, 0], theirs)


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


def guided_resnet_reference(model, x, target):
    """torchvision ResNet-18 written out of place with a guided ReLU at every call (reused ones too)."""
    relu = _GuidedReLU.apply
    x = x.clone().requires_grad_(True)
    h = model.maxpool(relu(bn(model.bn1, model.conv1(x))))
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            out = relu(bn(block.bn1, block.conv1(h)))
            out = bn(block.bn2, block.conv2(out))
            identity = block.downsample(h) if block.downsample is not None else h
            h = relu(out + identity)
    logits = model.fc(torch.flatten(model.avgpool(h), 1))
    return torch.autograd.grad(logits[torch.arange(len(x)), target].sum(), x)[0]


def test_guided_backprop_is_right_for_reused_in_place_relus(resnet, inputs):
    """ResNet's ReLU module is in place and called twice per block (Captum's GuidedBackprop breaks here)."""
    ours = guided_backprop(resnet, inputs, [5, 6])
    close(ours.raw[:, 0], guided_resnet_reference(resnet, inputs, torch.tensor([5, 6])))
    plain = gradient(resnet, inputs, [5, 6])
    assert not torch.allclose(ours.raw, plain.raw)


def test_smoothgrad_equals_captum_noise_tunnel_with_the_same_noise(resnet, inputs):
    from captum.attr import NoiseTunnel, Saliency

    samples, stdev = 6, 0.3
    torch.manual_seed(11)                          # Captum draws (B * S) noise, sample index inner
    noise = torch.normal(0, torch.tensor(stdev).repeat((len(inputs) * samples, *inputs.shape[1:])))
    ours = smoothgrad(resnet, inputs, [1, 2], noise_tensor=noise.view(len(inputs), samples, *inputs.shape[1:])
                      .transpose(0, 1), batch_size=5)
    tunnel = NoiseTunnel(Saliency(resnet))
    for absolute, expected in ((False, ours.raw[:, 0]), (True, None)):
        torch.manual_seed(11)
        theirs = tunnel.attribute(inputs.clone(), nt_type="smoothgrad", nt_samples=samples, stdevs=stdev,
                                  target=torch.tensor([1, 2]), abs=absolute)
        close(expected if expected is not None else ours.map[:, 0], theirs if not absolute else theirs.amax(1))


def test_smoothgrad_noise_is_a_fraction_of_the_range_and_seeded(resnet, inputs):
    a = smoothgrad(resnet, inputs, 1, samples=4, noise=0.2, seed=3)
    b = smoothgrad(resnet, inputs, 1, samples=4, noise=0.2, seed=3)
    c = smoothgrad(resnet, inputs, 1, samples=4, noise=0.2, seed=4)
    torch.testing.assert_close(a.raw, b.raw)
    assert not torch.allclose(a.raw, c.raw)


@pytest.mark.parametrize("relu", [False, True])
def test_gradcam_equals_captum_layer_gradcam(resnet, inputs, relu):
    from captum.attr import LayerGradCam

    ours = gradcam(resnet, inputs, [[4, 8], [0, 3]], "layer3", relu=relu, upsample=False)
    for t in range(2):
        theirs = LayerGradCam(resnet, resnet.layer3).attribute(inputs.clone(), target=ours.targets[:, t],
                                                              relu_attributions=relu)
        close(ours.map[:, t], theirs[:, 0])


def test_gradcam_equals_pytorch_grad_cam(resnet, inputs):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ours = gradcam(resnet, inputs, [4, 0], "layer4", upsample=False)
    with GradCAM(model=resnet, target_layers=[resnet.layer4]) as cam:
        theirs = cam(input_tensor=inputs.clone(), targets=[ClassifierOutputTarget(4), ClassifierOutputTarget(0)])
    scaled = scale_cam_image(ours.map[:, 0].detach().numpy(), (inputs.shape[-1], inputs.shape[-2]))
    np.testing.assert_allclose(scaled, theirs, rtol=1e-4, atol=1e-4)


def test_unit_targets_use_the_pre_activation_capture_point(resnet, inputs):
    """Target = spatial mean of layer2.1's pre-activation (the residual sum before its in-place ReLU)."""
    ours = gradient(resnet, inputs, [[3, 50], [7, 8]], target_layer="layer2.1")
    x = inputs.clone().requires_grad_(True)
    value = resnet_block(resnet, x, 2, 1, post=False).mean(dim=(2, 3))
    for t in range(2):
        expected = torch.autograd.grad(value[torch.arange(2), ours.targets[:, t]].sum(), x, retain_graph=True)[0]
        close(ours.raw[:, t], expected)


def test_gradcam_backward_stops_at_the_layer(resnet, inputs):
    """Grad-CAM needs no gradient below the layer: none reaches the stem's weights."""
    resnet.zero_grad(set_to_none=True)
    gradcam(resnet, inputs, 1, "layer4")
    assert all(p.grad is None for p in resnet.parameters())


def test_nmf_reconstructs_at_least_as_well_as_scikit_learn():
    from sklearn.decomposition import NMF

    generator = torch.Generator().manual_seed(0)
    matrix = (torch.rand(64, 5, generator=generator) @ torch.rand(5, 300, generator=generator)
              + 0.05 * torch.rand(64, 300, generator=generator)).double()
    w, h = nmf(matrix, 5)
    ours = float((matrix - w @ h).norm() / matrix.norm())
    model = NMF(n_components=5, init="random", random_state=0)
    W = model.fit_transform(matrix.numpy())
    theirs = float(np.linalg.norm(matrix.numpy() - W @ model.components_) / np.linalg.norm(matrix.numpy()))
    assert ours <= theirs * (1 + 1e-3)
    assert (w >= 0).all() and (h >= 0).all()


def test_dff_reconstructs_activations_as_well_as_pytorch_grad_cam(resnet):
    import pandas as pd
    from conftest import SAMPLE_CSV
    from PIL import Image
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff as their_dff

    from neuroprobe.models.capture import Capture
    paths = pd.read_csv(SAMPLE_CSV).path[:4]
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(SAMPLE_CSV.parent / p).convert("RGB")
                                                      .resize((96, 96)))).permute(2, 0, 1).float() / 255
                          for p in paths])
    ours = factorize(resnet, images, "layer4", concepts=4)
    values = {}
    with torch.no_grad(), Capture(resnet, ["layer4"], values.__setitem__, post_activation=True) as capture:
        capture.run(images)
    activation = values["layer4"].numpy().copy()
    concepts, explanations = their_dff(activation.copy(), n_components=4)
    matrix = activation.transpose(1, 0, 2, 3).reshape(activation.shape[1], -1)
    offset = matrix.min(axis=1, keepdims=True)
    theirs = np.linalg.norm(matrix - offset - (concepts - offset) @ explanations.transpose(1, 0, 2, 3).reshape(4, -1))
    theirs /= np.linalg.norm(matrix - offset)
    assert ours.relative_error <= theirs * (1 + 1e-3), (ours.relative_error, theirs)
    assert ours.concept_scores.shape == (4, 1000) and ours.maps.shape == (4, 4, 3, 3)


def test_trace_norm_penalty_equals_singular_values():
    z = torch.rand(2, 6, 5, 4, generator=torch.Generator().manual_seed(1))
    singular = torch.linalg.svdvals(z.flatten(2))
    expected = torch.sqrt(singular ** 2 + 1e-3).sum(1)
    close(trace_norm_penalty(z, 1e-3, energy=1.0), expected, rtol=1e-5)
    first = torch.sqrt(singular[:, :1] ** 2 + 1e-3).sum(1)
    close(trace_norm_penalty(z, 1e-3, energy=1e-9), first, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 6, 5, 4), (2, 40, 2, 2), (1, 3, 1, 1)])
def test_trace_norm_gradient_equals_autograd_through_svd(shape):
    """The closed-form backward equals autograd through singular values, wide and tall gate matrices."""
    z = torch.rand(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    ours = torch.autograd.grad(trace_norm_penalty(z, 1e-3, energy=1.0).sum(), z)[0]
    reference = torch.autograd.grad(torch.sqrt(torch.linalg.svdvals(z.flatten(2)) ** 2 + 1e-3).sum(), z)[0]
    close(ours, reference, rtol=1e-8)
    constant = torch.full(shape, 0.25, dtype=torch.float64, requires_grad=True)   # repeated eigenvalues
    assert torch.isfinite(torch.autograd.grad(trace_norm_penalty(constant).sum(), constant)[0]).all()


def test_feedback_and_global_perception_gate_the_gradient(resnet, inputs):
    """Optimised gates close part of the network, so the map differs from the plain gradient's."""
    small = inputs[:, :, :32, :32]
    plain = gradient(resnet, small, [3, 4])
    for method, lam in ((feedback, 1e-4), (global_perception, 1e-3)):   # lambdas for this random model
        result = method(resnet, small, [3, 4], iterations=6, step=0.25, lam=lam)
        assert result.map.shape == (2, 1, 32, 32) and torch.isfinite(result.map).all()
        share = float(result.reduction.split("; ")[1].split("%")[0]) / 100
        assert 0 < share < 1
        assert not torch.allclose(result.map, plain.map)


def test_gates_cover_every_activation_call_of_resnet(resnet, inputs):
    """torchvision's ResNet reuses one in-place ReLU per block: 1 + 8 x 2 = 17 activation calls, each
    gated separately; with open gates (0 iterations) the map is exactly the plain gradient."""
    from neuroprobe.maps.activations import ActivationRewrite
    from neuroprobe.maps.attribution import _Scorer
    from neuroprobe.maps.feedback import _Gates

    gates = _Gates()
    with torch.enable_grad(), ActivationRewrite(gates):
        _Scorer(resnet)(inputs, torch.tensor([[3], [4]]))
    assert len(gates.z) == 17
    shapes = sorted(tuple(z.shape[1:]) for z in gates.z.values())
    assert shapes.count((64, 16, 16)) == 4 and shapes.count((512, 2, 2)) == 4
    close(feedback(resnet, inputs, [3, 4], iterations=0).map, gradient(resnet, inputs, [3, 4]).map, rtol=1e-6)
