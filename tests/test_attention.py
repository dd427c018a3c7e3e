"""GALA modules, the alignment losses and the alignment score against hand-written references."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from neuroprobe.attention import GALA, GALAAttentionLoss, HarmonizationLoss, add_gala, pyramid, standardize_cut
from neuroprobe.attention.alignment import alignment_scores, alignment_summary, spearman_rows, split_half_ceiling
from neuroprobe.attention.maps import preprocess_human_maps
from neuroprobe.data import ImageDataset, read_manifest
from neuroprobe.errors import NeuroprobeError
from neuroprobe.models.capture import probe
from neuroprobe.models.loading import load_model

SAMPLE_CSV = Path(__file__).resolve().parents[1] / "data" / "sample" / "labels.csv"


def conv_numpy(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, pad: int) -> np.ndarray:
    """(C, H, W) correlated with (O, C, k, k) weights, zero padding ``pad``, stride 1: plain loops."""
    c, h, w = x.shape
    o, _, k, _ = weight.shape
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad))
    padded[:, pad:pad + h, pad:pad + w] = x
    out = np.zeros((o, h, w))
    for i in range(h):
        for j in range(w):
            out[:, i, j] = np.tensordot(weight, padded[:, i:i + k, j:j + k], axes=([1, 2, 3], [0, 1, 2])) + bias
    return out


def test_gala_forward_equals_the_formula():
    torch.manual_seed(0)
    gala = GALA(6, reduction=2).double()
    with torch.no_grad():
        gala.alpha.normal_()
        gala.beta.normal_()
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    out = gala(x).detach().numpy()
    p = {k: v.detach().numpy() for k, v in gala.named_parameters()}
    for b in range(2):
        xb = x[b].numpy()
        h = np.maximum(conv_numpy(xb, p["local.0.weight"], p["local.0.bias"], 0), 0)
        h = np.maximum(conv_numpy(h, p["local.2.weight"], p["local.2.bias"], 2), 0)
        s = conv_numpy(h, p["local.4.weight"], p["local.4.bias"], 0)                      # (1, H, W)
        pooled = xb.mean((1, 2))
        g = p["glob.4.weight"] @ np.maximum(p["glob.2.weight"] @ pooled + p["glob.2.bias"], 0) + p["glob.4.bias"]
        z = p["alpha"][:, None, None] * (s + g[:, None, None]) + p["beta"][:, None, None] * (s * g[:, None, None])
        attention = 1 / (1 + np.exp(-z))
        np.testing.assert_allclose(out[b], xb * 2 * attention, rtol=1e-10, atol=1e-12)


def test_gala_starts_as_the_identity_and_its_attention_is_a_capture_point():
    loaded = load_model("efficientnet_lite0")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = loaded.module(x)
    added = add_gala(loaded.module, ["blocks.3.0", "blocks.5.0"])
    with torch.no_grad():
        after = loaded.module(x)
    assert torch.equal(before, after)                           # bit for bit at insertion
    assert set(added) == {"blocks.3.0", "blocks.5.0"}
    info = probe(loaded.module, ["blocks.3.0.gala.attention"], torch.zeros(1, 3, 224, 224))["blocks.3.0.gala.attention"]
    assert info.shape[0] == added["blocks.3.0"].alpha.numel()
    with torch.no_grad():                                        # training moves it away from the identity
        added["blocks.3.0"].alpha.fill_(1.0)
        assert not torch.equal(loaded.module(x), before)


def test_gala_on_resnet50_layer3_as_in_the_paper():
    model = load_model("resnet50", "none").module
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    add_gala(model, [f"layer3.{i}" for i in range(6)])
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert model.layer3[0].gala.alpha.numel() == 512 and model.layer3[1].gala.alpha.numel() == 1024
    with pytest.raises(NeuroprobeError, match="container"):
        add_gala(model, ["layer2"])
    with pytest.raises(NeuroprobeError, match="already"):
        add_gala(model, ["layer3.0"])
    with pytest.raises(NeuroprobeError, match="closest"):
        add_gala(model, ["layer9.0"])


def authors_kernel(size=10, sigma=10.0):
    """serre-lab/Harmonization gaussian_kernel, rewritten with NumPy."""
    xs = np.arange(-(size - 1) // 2, (size - 1) // 2 + 1)
    ys = np.arange((size - 1) // 2, -(size - 1) // 2 - 1, -1)
    xx, yy = np.meshgrid(xs, ys)
    k = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2)) / (2 * np.pi * sigma ** 2)
    return k / k.sum()


def same_correlate(image: np.ndarray, kernel: np.ndarray, stride: int = 1) -> np.ndarray:
    """tf.nn.conv2d(padding='SAME') of one (H, W) map, by loops."""
    k, (h, w) = kernel.shape[0], image.shape
    outs = [-(-n // stride) for n in (h, w)]
    pads = [max((o - 1) * stride + k - n, 0) for o, n in zip(outs, (h, w), strict=True)]
    padded = np.pad(image, ((pads[0] // 2, pads[0] - pads[0] // 2), (pads[1] // 2, pads[1] - pads[1] // 2)))
    out = np.zeros(outs)
    for i in range(outs[0]):
        for j in range(outs[1]):
            out[i, j] = (padded[i * stride:i * stride + k, j * stride:j * stride + k] * kernel).sum()
    return out


def test_gala_loss_equals_a_numpy_computation():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 12, 12))
    attention = [rng.random((3, 4, 12, 12)), rng.random((3, 2, 12, 12))]
    has_map = np.array([True, False, True])
    loss = GALAAttentionLoss(weight=0.5)(
        [torch.from_numpy(a) for a in attention], torch.from_numpy(maps), torch.from_numpy(has_map)).item()
    kernel = authors_kernel()
    expected = 0.0
    for a in attention:
        per_image = []
        for b in np.flatnonzero(has_map):
            m = same_correlate(maps[b], kernel).ravel()
            r = a[b].mean(0).ravel()
            per_image.append(((r / np.linalg.norm(r) - m / np.linalg.norm(m)) ** 2).sum())
        expected += np.mean(per_image)
    assert loss == pytest.approx(0.5 * expected, rel=1e-6)


def test_standardize_cut_and_pyramid_equal_numpy():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(2, 20, 17))
    cut = standardize_cut(torch.from_numpy(maps)).numpy()
    for b in range(2):
        expected = np.maximum((maps[b] - maps[b].mean()) / (maps[b].std() + 1e-5), 0)
        np.testing.assert_allclose(cut[b], expected, atol=1e-12)
    levels = pyramid(torch.from_numpy(maps), 5)
    binomial = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0
    current = maps[0]
    assert [tuple(level.shape[-2:]) for level in levels] == [(20, 17), (10, 9), (5, 5), (3, 3), (2, 2)]
    for level in levels[1:]:
        current = same_correlate(current, binomial, stride=2)
        np.testing.assert_allclose(level[0, 0].numpy(), current, atol=1e-12)


class Small(nn.Module):
    """A smooth model (tanh, no kinks) so that finite differences are exact to second order."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def test_harmonization_gradient_reaches_the_weights_and_equals_finite_differences():
    torch.manual_seed(0)
    model = Small().double()
    images = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1])
    maps = torch.rand(3, 8, 8, dtype=torch.float64)
    has_map = torch.tensor([True, True, False])
    loss_fn = HarmonizationLoss(weight=1.0, levels=3)
    loss, logits = loss_fn(model, images, labels, maps, has_map)
    assert logits.shape == (3, 5)
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    reached = {n: g is not None and g.abs().sum().item() > 0 for n, g in zip(names, grads, strict=True)}
    # double backprop reaches every weight the input gradient depends on; the output bias is not one of them
    assert reached == {"conv.weight": True, "conv.bias": True, "head.weight": True, "head.bias": False}
    # the authors hold the human maps' scale constant (a stop-gradient): finite differences must too
    scale = loss_fn.human_scale(loss_fn.saliency(model, images, labels)[0])
    weight = model.conv.weight
    eps = 1e-6
    for index in [(0, 0, 0, 0), (1, 2, 1, 1), (3, 1, 2, 0)]:
        with torch.no_grad():
            weight[index] += eps
        up = loss_fn(model, images, labels, maps, has_map, human_scale=scale)[0].item()
        with torch.no_grad():
            weight[index] -= 2 * eps
        down = loss_fn(model, images, labels, maps, has_map, human_scale=scale)[0].item()
        with torch.no_grad():
            weight[index] += eps
        assert grads[0][index].item() == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-9)


def test_spearman_alignment_and_intervals_equal_scipy():
    rng = np.random.default_rng(2)
    saliency = rng.random((6, 16, 16))
    human = np.round(rng.random((6, 16, 16)) * 4)                 # many ties, as in clicked maps
    human[5] = np.round(saliency[5] * 3)                          # one strongly aligned image
    rho = spearman_rows(torch.from_numpy(saliency), torch.from_numpy(human)).numpy()
    expected = [stats.spearmanr(saliency[i].ravel(), human[i].ravel()).statistic for i in range(6)]
    np.testing.assert_allclose(rho, expected, atol=1e-9)
    scores = alignment_scores(torch.from_numpy(saliency), torch.from_numpy(human), ceiling=0.5)
    np.testing.assert_allclose(scores.alignment, np.array(expected) / 0.5, atol=1e-9)
    summary = alignment_summary(scores)
    low, high = stats.t.interval(0.95, 5, loc=np.mean(np.array(expected) / 0.5),
                                 scale=stats.sem(np.array(expected) / 0.5))
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx((low, high))
    raters = torch.from_numpy(np.repeat(saliency[:, None], 4, axis=1))   # four identical raters
    assert split_half_ceiling(raters) == pytest.approx(1.0)
    assert preprocess_human_maps(torch.from_numpy(human), 224).shape == (6, 224, 224)


def test_extract_stores_gala_attention_maps(tmp_path):
    """The attention of an inserted module is a layer like any other: extract pools it into a store."""
    import neuroprobe as npb

    loaded = load_model("efficientnet_lite0")
    (gala,) = add_gala(loaded.module, ["blocks.3.0"]).values()
    with torch.no_grad():
        gala.alpha.fill_(0.5)                                     # a trained-looking module: A varies
    manifest = read_manifest(SAMPLE_CSV).subset(range(3))
    store = npb.extract(loaded, manifest, ["blocks.3.0.gala.attention"], tmp_path / "run.zarr", batch_size=3)
    layer = npb.open_layer(store, "blocks.3.0.gala.attention")
    values = {}
    dataset = ImageDataset(manifest, loaded.preprocessing)
    x = loaded.preprocessing.normalize(torch.stack([dataset[i][1] for i in range(3)]))
    handle = gala.attention.register_forward_hook(lambda m, a, out: values.setdefault("a", out.detach()))
    with torch.no_grad():
        loaded.module(x)
    handle.remove()
    np.testing.assert_allclose(layer["mean"].values, values["a"].mean((2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    assert float(layer["min"].min()) > 0 and float(layer["max"].max()) < 1   # a sigmoid's range
