"""Empirical receptive fields against a brute-force NumPy computation on a model whose field is known."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from neuroprobe.maps import discrepancy_maps
from neuroprobe.maps.empirical_rf import empirical_receptive_fields, measure_field, recentre
from neuroprobe.models.loading import LoadedModel, Preprocessing

SIZE, KERNEL, WINDOW, STRIDE = 48, 15, 7, 2


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def box_model() -> LoadedModel:
    """One conv layer summing a KERNEL x KERNEL box of the red channel: its RF is exactly that box."""
    conv = nn.Conv2d(3, 1, KERNEL, padding=KERNEL // 2, bias=False)
    conv.weight.data.zero_()
    conv.weight.data[0, 0] = 1.0
    model = nn.Sequential()
    model.add_module("conv", conv)
    model.add_module("relu", nn.ReLU())
    prep = Preprocessing(resize=SIZE, crop=SIZE, interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return LoadedModel(model, prep, {"model": "box"})


def bump_images(centres) -> torch.Tensor:
    """Grey images with a bright bump, so the unit peaks at a known place."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = []
    for cy, cx in centres:
        red = 120 + 100 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0 ** 2))
        images.append(np.stack([red, np.full_like(red, 50), np.full_like(red, 50)]))
    return torch.from_numpy(np.round(np.stack(images))).to(torch.uint8)


def numpy_reference(images: np.ndarray, threshold: float):
    """Occlude with zeros, box-sum at the peak, average covering occluders per pixel, shift, average, flood-fill."""
    red = images[:, 0].astype(np.float64) / 255
    half = KERNEL // 2
    canvases = []
    for img in red:
        padded = np.pad(img, half)
        sums = np.array([[padded[y:y + KERNEL, x:x + KERNEL].sum() for x in range(SIZE)] for y in range(SIZE)])
        py, px = np.unravel_index(np.argmax(sums), sums.shape)
        total, count = np.zeros((SIZE, SIZE)), np.zeros((SIZE, SIZE))
        for oy in range(0, SIZE - WINDOW + 1, STRIDE):
            for ox in range(0, SIZE - WINDOW + 1, STRIDE):
                occluded = img.copy()
                occluded[oy:oy + WINDOW, ox:ox + WINDOW] = 0
                value = np.pad(occluded, half)[py:py + KERNEL, px:px + KERNEL].sum()
                total[oy:oy + WINDOW, ox:ox + WINDOW] += sums[py, px] - value
                count[oy:oy + WINDOW, ox:ox + WINDOW] += 1
        view = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        canvas = np.full((2 * SIZE - 1, 2 * SIZE - 1), np.nan)
        canvas[SIZE - 1 - py:2 * SIZE - 1 - py, SIZE - 1 - px:2 * SIZE - 1 - px] = view
        canvases.append(canvas)
    stack = np.stack(canvases)
    seen = np.isfinite(stack).sum(0)
    mean = np.where(seen > 0, np.nansum(stack, 0) / np.maximum(seen, 1), np.nan)
    filled = np.where(np.isfinite(mean), mean, -np.inf)
    start = np.unravel_index(np.argmax(filled), filled.shape)
    keep = filled >= threshold * filled[start]
    region, todo = set(), [start]
    while todo:                                           # 4-connected flood fill from the maximum
        y, x = todo.pop()
        if (y, x) in region or not (0 <= y < keep.shape[0] and 0 <= x < keep.shape[1]) or not keep[y, x]:
            continue
        region.add((y, x))
        todo += [(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)]
    rows, cols = np.array(sorted(region)).T
    return mean, np.sqrt(len(region)), rows.mean() - (SIZE - 1), cols.mean() - (SIZE - 1)


def test_empirical_field_equals_a_numpy_loop_and_sits_on_the_theoretical_centre():
    model = box_model()
    images = bump_images([(20, 24), (30, 17), (24, 30)])
    top = pd.DataFrame({"unit": [0, 0, 0], "image": [0, 1, 2]})
    result = empirical_receptive_fields(model, images, "conv", top, threshold=0.5, window=WINDOW, stride=STRIDE,
                                        fill="zero")
    mean, size, dy, dx = numpy_reference(images.numpy(), 0.5)
    np.testing.assert_allclose(result.map_of(0), mean, rtol=1e-4, atol=1e-4 * np.nanmax(mean))
    row = result.table.iloc[0]
    assert row.k == 3 and row.theoretical_rf_px == KERNEL
    assert row.empirical_rf_px == pytest.approx(size)
    assert (row.offset_y, row.offset_x) == (pytest.approx(dy, abs=1e-6), pytest.approx(dx, abs=1e-6))
    assert abs(row.offset_y) < 1 and abs(row.offset_x) < 1       # a symmetric box field is centred
    assert KERNEL * 0.5 < row.empirical_rf_px < KERNEL + WINDOW   # the threshold shrinks a smeared box


def test_discrepancy_is_zero_outside_the_box_field():
    maps = discrepancy_maps(box_model(), bump_images([(20, 24)]), "conv", window=WINDOW, stride=STRIDE, fill="zero")
    peak_y, peak_x = maps.peak_px[0, 0]
    far_y = np.abs(maps.positions_y + (WINDOW - 1) / 2 - peak_y) > (KERNEL + WINDOW) / 2
    far_x = np.abs(maps.positions_x + (WINDOW - 1) / 2 - peak_x) > (KERNEL + WINDOW) / 2
    assert np.all(maps.values[0, 0][far_y][:, far_x] == 0) and maps.values[0, 0].max() > 0


def test_recentre_and_measure_field_by_hand():
    view = np.zeros((5, 5), np.float32)
    view[1:3, 1:4] = 1.0
    canvas = recentre(view, (2, 2))
    assert canvas.shape == (9, 9) and canvas[4, 4] == view[2, 2] and np.isnan(canvas[0, 0])
    measured = measure_field(canvas, 0.5)
    assert measured["area_px"] == 6 and measured["empirical_rf_px"] == pytest.approx(np.sqrt(6))
    assert measured["offset_y"] == pytest.approx(-0.5) and measured["offset_x"] == pytest.approx(0.0)
    assert np.isnan(measure_field(-canvas, 0.5)["empirical_rf_px"])
