"""Discrepancy maps against a plain loop (occlude, forward, read the unit) and against Captum's Occlusion."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SAMPLE_CSV
from PIL import Image
from references import effnet_blocks, resnet_block

from neuroprobe import load_model
from neuroprobe.errors import NeuroprobeError
from neuroprobe.maps import discrepancy_maps
from neuroprobe.maps.occlusion import occluder_positions


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def resnet(random_weights):
    return load_model("resnet18", str(random_weights("resnet18")))


def sample_images(size: int, n: int = 2) -> torch.Tensor:
    """The first ``n`` embedded sample images resized to size x size, as uint8 (n, 3, H, W)."""
    import pandas as pd
    paths = pd.read_csv(SAMPLE_CSV).path[:n]
    arrays = [np.asarray(Image.open(SAMPLE_CSV.parent / p).convert("RGB").resize((size, size), Image.BICUBIC))
              for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def reference_fill(pixels: torch.Tensor, fill: str, seed: int = 0) -> torch.Tensor:
    if fill == "zero":
        return torch.zeros_like(pixels)
    if fill == "mean":
        return pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels)
    if fill == "noise":
        return torch.rand(pixels.shape, generator=torch.Generator().manual_seed(seed))
    raise ValueError(fill)


def plain_loop(loaded, images: torch.Tensor, unit_fn, window: int, stride: int, fill: str, response: str):
    """One occluded image at a time through an out-of-place reference forward pass; float64 differences."""
    mean = torch.tensor(loaded.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.preprocessing.std).view(1, 3, 1, 1)
    pixels = images.float() / 255
    fills = reference_fill(pixels, fill)
    height, width = pixels.shape[-2:]
    ys, xs = range(0, height - window + 1, stride), range(0, width - window + 1, stride)
    out = np.zeros((len(images), unit_fn(((pixels[:1] - mean) / std)).shape[1], len(ys), len(xs)))
    for b in range(len(images)):
        original = unit_fn((pixels[b:b + 1] - mean) / std)[0]              # (U, h, w)
        flat = original.flatten(1)
        peak = flat.argmax(1)
        for iy, y in enumerate(ys):
            for ix, x in enumerate(xs):
                copy = pixels[b:b + 1].clone()
                copy[..., y:y + window, x:x + window] = fills[b:b + 1, :, y:y + window, x:x + window]
                occluded = unit_fn((copy - mean) / std)[0].flatten(1)
                if response == "peak":
                    a, o = flat.gather(1, peak[:, None])[:, 0], occluded.gather(1, peak[:, None])[:, 0]
                elif response == "max":
                    a, o = flat.amax(1), occluded.amax(1)
                else:
                    a, o = flat.mean(1), occluded.mean(1)
                out[b, :, iy, ix] = (a.double() - o.double()).numpy()
    return out


def assert_close_relative(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("fill,response", [("noise", "peak"), ("mean", "max"), ("zero", "mean")])
def test_maps_equal_a_plain_loop(resnet, fill, response):
    images = sample_images(48)
    maps = discrepancy_maps(resnet, images, "layer2.1", window=11, stride=6, fill=fill, response=response,
                            batch_size=13)
    expected = plain_loop(resnet, images, lambda x: resnet_block(resnet.module, x, 2, 1, post=False),
                          11, 6, fill, response)
    assert maps.values.shape == expected.shape == (2, 128, 7, 7)
    assert_close_relative(maps.values, expected)


def test_random_units_of_the_offline_model_equal_a_plain_loop():

    loaded = load_model("efficientnet_lite0")
    images = sample_images(64, n=1)
    units = [3, 17, 31]
    maps = discrepancy_maps(loaded, images, "blocks.3", units=units, window=11, stride=9, fill="noise")
    expected = plain_loop(loaded, images, lambda x: effnet_blocks(loaded.module, x, 3)[:, units], 11, 9, "noise", "peak")
    assert_close_relative(maps.values, expected)


def test_absolute_and_batching_do_not_change_values(resnet):
    images = sample_images(40)
    one = discrepancy_maps(resnet, images, "layer1.0", units=[1, 2], stride=5, batch_size=1)
    many = discrepancy_maps(resnet, images, "layer1.0", units=[1, 2], stride=5, memory_budget=1 << 28)
    absolute = discrepancy_maps(resnet, images, "layer1.0", units=[1, 2], stride=5, absolute=True)
    np.testing.assert_allclose(one.values, many.values, rtol=1e-5, atol=1e-5 * np.abs(one.values).max())
    np.testing.assert_allclose(absolute.values, np.abs(many.values), rtol=1e-5, atol=1e-6)
    assert (np.abs(one.values) > 0).any()


def test_receptive_field_occluders_match_the_full_sweep(resnet):
    """Outside a unit's theoretical field the full sweep gives 0; inside, rf_only gives the same values."""
    images = sample_images(96)
    full = discrepancy_maps(resnet, images, "layer1.1", stride=4)
    limited = discrepancy_maps(resnet, images, "layer1.1", stride=4, rf_only=True)
    scale = np.abs(full.values).max()
    np.testing.assert_allclose(limited.values, full.values, rtol=1e-5, atol=1e-5 * scale)
    outside = limited.values == 0
    assert outside.mean() > 0.5 and np.abs(full.values[outside]).max() <= 1e-5 * scale
    one = discrepancy_maps(resnet, images, "layer1.1", units=[3], stride=4, rf_only=True)
    assert one.evaluated.mean() < 0.3                  # layer1 fields are 43 px: most occluders are skipped
    np.testing.assert_allclose(one.values[:, 0], full.values[:, 3], rtol=1e-5, atol=1e-5 * scale)


def test_pixel_view_equals_captum_occlusion(resnet):
    """Captum's Occlusion on the same unit (its value at the unit's peak) = our pixel view."""
    from captum.attr import Occlusion

    images = sample_images(65, n=1)       # (65 - 11) / 3 = 18: the occluders tile the image exactly
    maps = discrepancy_maps(resnet, images, "layer2.1", units=[7, 40], window=11, stride=3, fill="zero")
    mean = torch.tensor(resnet.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(resnet.preprocessing.std).view(1, 3, 1, 1)
    inputs = (images.float() / 255 - mean) / std
    baseline = ((torch.zeros_like(inputs) - mean) / std)
    view = maps.pixel_view()
    for column, unit in enumerate(maps.units):
        py, px = maps.peak[0, column]

        def unit_at_peak(x, unit=unit, py=py, px=px):
            return resnet_block(resnet.module, x, 2, 1, post=False)[:, unit, py, px]

        attribution = Occlusion(unit_at_peak).attribute(inputs, baselines=baseline, sliding_window_shapes=(3, 11, 11),
                                                        strides=(3, 3, 3), perturbations_per_eval=64)
        assert_close_relative(view[0, column], attribution[0, 0].double().numpy())
        np.testing.assert_array_equal(attribution[0, 0].numpy(), attribution[0, 2].numpy())


def test_geometry_and_xarray_view(resnet):
    images = sample_images(52, n=1)
    maps = discrepancy_maps(resnet, images, "layer1.0", units=[0], window=11, stride=3)
    assert list(maps.positions_y) == list(occluder_positions(52, 11, 3)) == list(range(0, 40, 3))
    array = maps.to_xarray()
    assert array.dims == ("image", "unit", "y", "x")
    assert array.attrs["window"] == 11 and float(array.y[0]) == 5.0
    view = maps.pixel_view()
    assert np.isnan(view[0, 0, :, 50:]).all() and np.isfinite(view[0, 0, :50, :50]).all()  # last patch: 39..49


@pytest.mark.parametrize("kwargs,message", [
    ({"window": 99}, "larger than the image"),
    ({"fill": "gray"}, "unknown fill"),
    ({"response": "max", "rf_only": True}, "rf_only needs"),
    ({"units": [999]}, "out of range"),
])
def test_bad_input_names_the_fix(resnet, kwargs, message):
    with pytest.raises(NeuroprobeError, match=message):
        discrepancy_maps(resnet, sample_images(48, n=1), "layer1.0", **kwargs)


def test_units_without_a_map_such_as_logits_equal_a_plain_loop(resnet):
    """The logits of the classes (a fine-tuned head's units, say): the whole response drops or not."""
    images = sample_images(48)
    units = [1, 7]
    maps = discrepancy_maps(resnet, images, "fc", units=units, window=16, stride=16, fill="zero")
    expected = plain_loop(resnet, images, lambda x: resnet.module(x)[:, units, None, None], 16, 16, "zero", "peak")
    assert maps.values.shape == (2, 2, 3, 3)
    assert_close_relative(maps.values, expected)
    with pytest.raises(NeuroprobeError, match="no spatial map"):
        discrepancy_maps(resnet, images, "fc", rf_only=True)
