"""Incremental occlusion (only the region each patch can change, per op) equals the dense sweep and a plain loop.

Equal means within 1e-5 of each unit's response scale (the largest |reference| or |discrepancy| of that unit),
on every fill, both kinds of response, rf_only, patches on the image borders, stride-2 and depthwise convs,
max pooling, residual sums, channels-last, and a squeeze-excitation gate (a global op: dense from there on).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from references import resnet_block
from test_occlusion import _no_grad, plain_loop, sample_images  # noqa: F401 (_no_grad: an autouse fixture)

from neuroprobe import load_model
from neuroprobe.errors import NeuroprobeError
from neuroprobe.maps import discrepancy_maps

# 67 px, window 11, stride 8: corners 0, 8, ..., 56, so patches touch all four borders
SIZE, WINDOW, STRIDE = 67, 11, 8


@pytest.fixture(scope="module")
def resnet(random_weights):
    return load_model("resnet18", str(random_weights("resnet18")))


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


def assert_equal_per_unit(actual, expected, tol: float = 1e-5) -> None:
    """|actual - expected| <= tol x each unit's response scale."""
    assert actual.values.shape == expected.values.shape
    scale = np.maximum(np.abs(expected.reference).max(0), np.abs(expected.values).max(axis=(0, 2, 3)))
    assert (scale > 0).all()
    error = np.abs(actual.values - expected.values) / scale[None, :, None, None]
    assert error.max() <= tol, f"largest error {error.max():.2e} of the response scale"
    np.testing.assert_array_equal(actual.evaluated, expected.evaluated)
    np.testing.assert_allclose(actual.reference, expected.reference, rtol=0, atol=0)


def both(model, images, layer, caplog=None, **options):
    dense = discrepancy_maps(model, images, layer, method="dense", **options)
    with caplog.at_level(logging.DEBUG, "neuroprobe.maps.incremental") if caplog else _nothing():
        incremental = discrepancy_maps(model, images, layer, method="incremental", **options)
    return dense, incremental


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def replayed(caplog) -> str:
    """The incremental path's debug line (which ops, if any, ran densely); fails if it fell back whole."""
    assert "falls back to the dense method" not in caplog.text
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("incremental occlusion of")]
    assert lines, "the incremental path did not run"
    return lines[-1]


@pytest.mark.parametrize("layer,fill,response,size,stride", [
    ("layer1", "noise", "peak", SIZE, STRIDE), ("layer2", "mean", "max", SIZE, STRIDE),
    ("layer3", "zero", "mean", SIZE, STRIDE), ("layer3", "blur", "peak", SIZE, STRIDE),
    ("layer2.0", "blur", "mean", SIZE, STRIDE), ("layer3", "noise", "max", SIZE, STRIDE),
    ("layer3", "noise", "peak", 111, 25), ("layer2", "blur", "max", 111, 25)])
def test_resnet18_equals_the_dense_sweep(resnet, layer, fill, response, size, stride, caplog):
    """Stride-2 convs (conv1, layer2/3 downsampling), max pooling with padding, residual sums, both images;
    at 111 px the patched regions stay smaller than the map into layer3."""
    images = sample_images(size)
    dense, incremental = both(resnet, images, layer, caplog, window=WINDOW, stride=stride, fill=fill,
                              response=response, batch_size=23)
    assert_equal_per_unit(incremental, dense)
    assert "no op ran densely" in replayed(caplog)


def test_resnet18_equals_a_plain_loop(resnet):
    images = sample_images(48, n=1)
    maps = discrepancy_maps(resnet, images, "layer2.1", window=11, stride=6, fill="noise", method="incremental")
    expected = plain_loop(resnet, images, lambda x: resnet_block(resnet.module, x, 2, 1, post=False),
                          11, 6, "noise", "peak")
    scale = np.abs(expected).max(axis=(0, 2, 3))[None, :, None, None]
    assert (np.abs(maps.values - expected) <= 1e-5 * scale).all()


def test_the_accelerator_gather_equals_the_cpu_one(resnet, monkeypatch, caplog):
    """On CUDA windows are gathered with advanced indexing (no host round trip per copy): same maps."""
    from neuroprobe.maps import incremental
    monkeypatch.setattr(incremental, "SLICE_DEVICES", frozenset())
    images = sample_images(111, n=1)
    dense, indexed = both(resnet, images, "layer3", caplog, window=WINDOW, stride=25, fill="noise")
    assert_equal_per_unit(indexed, dense)
    assert "no op ran densely" in replayed(caplog)


def test_rf_only_and_units(resnet, caplog):
    images = sample_images(SIZE)
    dense, incremental = both(resnet, images, "layer1.1", caplog, units=[3, 7, 60], window=WINDOW, stride=4,
                              rf_only=True)
    assert dense.evaluated.mean() < 1
    assert_equal_per_unit(incremental, dense)
    replayed(caplog)


def test_channels_last(random_weights, caplog):
    loaded = load_model("resnet18", str(random_weights("resnet18")))
    loaded.module.to(memory_format=torch.channels_last)
    images = sample_images(SIZE, n=1)
    dense, incremental = both(loaded, images, "layer2", caplog, window=WINDOW, stride=STRIDE, fill="noise")
    assert_equal_per_unit(incremental, dense)
    assert "no op ran densely" in replayed(caplog)


@pytest.mark.parametrize("layer,response,size,stride", [
    ("blocks.1", "peak", SIZE, STRIDE), ("blocks.2", "max", SIZE, STRIDE), ("blocks.3", "peak", SIZE, STRIDE),
    ("blocks.3", "mean", 111, 25)])
def test_efficientnet_lite0_equals_the_dense_sweep(lite0, layer, response, size, stride, caplog):
    """Depthwise stride-2 convs with TensorFlow's asymmetric "same" padding (F.pad), ReLU6, residual sums."""
    images = sample_images(size, n=1)
    dense, incremental = both(lite0, images, layer, caplog, window=WINDOW, stride=stride, fill="noise",
                              response=response)
    assert_equal_per_unit(incremental, dense)
    replayed(caplog)


@pytest.mark.parametrize("layer", ["features.1", "features.4"])
def test_a_squeeze_excitation_gate_continues_densely(layer, caplog):
    """mobilenet_v3_small: the SE gate pools over space, so everything after it is computed on full copies."""
    from torchvision.models import mobilenet_v3_small
    torch.manual_seed(5)
    model = mobilenet_v3_small().eval()
    images = torch.randn(1, 3, SIZE, SIZE)
    dense, incremental = both(model, images, layer, caplog, window=WINDOW, stride=STRIDE, fill="noise")
    assert_equal_per_unit(incremental, dense)
    assert "dense from adaptive_avg_pool2d" in replayed(caplog)


def test_a_model_that_cannot_be_replayed_falls_back_whole(caplog):
    """A forward pass that branches on tensor values gets the dense sweep (and the same maps)."""
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.out = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            x = self.conv(x)
            return self.out(x if bool(x.mean() > -1e9) else -x)

    torch.manual_seed(0)
    model = Branchy().eval()
    images = torch.randn(1, 3, 24, 24)
    with caplog.at_level(logging.INFO, "neuroprobe.maps.incremental"):
        dense, incremental = both(model, images, "out", window=5, stride=4)
    assert "falls back to the dense method" in caplog.text
    assert_equal_per_unit(incremental, dense)


def test_inference_mode_runs_the_dense_method(caplog):
    """Inference tensors have no version counters, which the tape needs to see in-place ops: dense, same maps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3)).eval()
    images = torch.randn(1, 3, 24, 24)
    expected = discrepancy_maps(model, images, "2", window=5, stride=4, method="dense")
    with torch.inference_mode(), caplog.at_level(logging.INFO, "neuroprobe.maps.incremental"):
        maps = discrepancy_maps(model, images, "2", window=5, stride=4)
    assert "inference_mode" in caplog.text
    assert_equal_per_unit(maps, expected)


def test_unknown_method_names_the_choices(resnet):
    with pytest.raises(NeuroprobeError, match="incremental, dense"):
        discrepancy_maps(resnet, sample_images(SIZE, n=1), "layer1", method="fast")


def test_channel_splits_slices_concatenations_and_ceil_mode_pooling(caplog):
    """The CSP / Ghost / Inception / DenseNet / SqueezeNet ops replay on patches, not densely."""
    class Blocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.branch = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.pool = torch.nn.MaxPool2d(3, 2, ceil_mode=True)
            self.out = torch.nn.Conv2d(6, 5, 3, padding=2, dilation=2)

        def forward(self, x):
            a, b = torch.relu(self.stem(x)).chunk(2, dim=1)
            x = torch.cat([a, self.branch(b), a * 0.5], dim=1)[:, :6]
            return self.out(torch.nn.functional.avg_pool2d(self.pool(x), 3, 1, 1))

    torch.manual_seed(0)
    model = Blocks().eval()
    images = torch.randn(1, 3, SIZE, SIZE)
    dense, incremental = both(model, images, "out", caplog, window=WINDOW, stride=STRIDE, fill="noise")
    assert_equal_per_unit(incremental, dense)
    assert "no op ran densely" in replayed(caplog)
