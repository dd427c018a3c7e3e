"""Boxes from maps against brute force (every box of a small map) and hand-made maps; IoU against pixel sets."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from neuroprobe.errors import NeuroprobeError
from neuroprobe.maps.boxes import (
    boxes_to_mask,
    cam_box,
    energy_box,
    iou,
    localization_error,
    localization_hits,
    threshold_boxes,
)


def brute_energy_box(m: np.ndarray, fraction: float) -> np.ndarray:
    """Every box of the map, summed directly; smallest area, then most energy, top-most, left-most, shorter."""
    energy = np.clip(m, 0, None)
    total = energy.sum()
    height, width = m.shape
    best = None
    for y0 in range(height):
        for y1 in range(y0, height):
            for x0 in range(width):
                for x1 in range(x0, width):
                    kept = energy[y0:y1 + 1, x0:x1 + 1].sum()
                    if kept < fraction * total - 1e-9 * total:
                        continue
                    key = ((y1 - y0 + 1) * (x1 - x0 + 1), -kept, y0, x0, y1)
                    if best is None or key < best[0]:
                        best = (key, (x0, y0, x1, y1))
                    break  # wider boxes from this x0 only grow
    return np.array(best[1])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.95, 1.0])
def test_energy_box_matches_brute_force_integer_maps(seed, fraction):
    rng = np.random.default_rng(seed)
    m = rng.integers(-3, 6, size=(12, 12)).astype(float)  # integer energies: exact sums, many ties
    m[rng.random((12, 12)) < 0.5] = 0
    np.testing.assert_array_equal(energy_box(m, fraction), brute_energy_box(m, fraction))


@pytest.mark.parametrize("seed", range(4))
def test_energy_box_matches_brute_force_float_maps_batched(seed):
    rng = np.random.default_rng(100 + seed)
    maps = rng.normal(size=(3, 10, 13)) ** 3
    got = energy_box(torch.from_numpy(maps).float(), 0.9)
    assert got.shape == (3, 4)
    for m, box in zip(maps.astype(np.float32).astype(float), got):
        np.testing.assert_array_equal(box, brute_energy_box(m, 0.9))


def test_energy_box_hand_cases():
    m = np.zeros((8, 8))
    m[2, 5] = 1.0
    np.testing.assert_array_equal(energy_box(m), [5, 2, 5, 2])  # one pixel holds everything
    m[6, 1] = 1.0
    np.testing.assert_array_equal(energy_box(m, 0.5), [5, 2, 5, 2])  # tie in energy and area: top-most...
    m[6, 1] = 2.0  # ...unless the other holds more
    np.testing.assert_array_equal(energy_box(m, 0.5), [1, 6, 1, 6])
    np.testing.assert_array_equal(energy_box(m, 1.0), [1, 2, 5, 6])
    np.testing.assert_array_equal(energy_box(-np.ones((4, 5))), [0, 0, 4, 3])  # no energy: whole map


def test_energy_box_fast_on_224():
    yy, xx = np.mgrid[:224, :224]
    m = np.exp(-((yy - 100) ** 2 + (xx - 60) ** 2) / 800) + 0.01 * np.random.default_rng(0).random((224, 224))
    energy_box(m[:8, :8])  # warm up torch's kernels; the best of three runs discounts a busy shared CPU
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        box = energy_box(m, 0.95)
        seconds.append(time.perf_counter() - start)
    assert min(seconds) < 1.0
    x0, y0, x1, y1 = box
    assert m[y0:y1 + 1, x0:x1 + 1].sum() >= 0.95 * m.sum() - 1e-9 * m.sum()
    assert x0 < 60 < x1 and y0 < 100 < y1


def test_energy_box_rejects_bad_fraction():
    with pytest.raises(NeuroprobeError, match="fraction"):
        energy_box(np.ones((3, 3)), 0.0)


def two_blobs() -> np.ndarray:
    m = np.zeros((20, 30))
    m[2:6, 3:9] = 1.0  # 24 px, strong
    m[10:18, 15:27] = 0.5  # 96 px, weaker but larger
    m[12, 14] = 0.5  # touches the big blob at its side
    m[9, 27] = 0.5  # diagonal neighbour of the big blob's corner (joins with 8-connectivity only)
    m[0, 29] = 0.1  # below 20% of the maximum
    return m


def test_threshold_boxes_one_box_per_blob():
    m = two_blobs()
    np.testing.assert_array_equal(threshold_boxes(m, 0.2), [[14, 9, 27, 17], [3, 2, 8, 5]])
    np.testing.assert_array_equal(threshold_boxes(m, 0.2, connectivity=4),
                                  [[14, 10, 26, 17], [3, 2, 8, 5], [27, 9, 27, 9]])
    np.testing.assert_array_equal(threshold_boxes(m, 0.05), [[14, 9, 27, 17], [3, 2, 8, 5], [29, 0, 29, 0]])
    np.testing.assert_array_equal(threshold_boxes(m, 0.5), [[3, 2, 8, 5]])  # strictly above the cut
    np.testing.assert_array_equal(threshold_boxes(m, 0.2, largest_only=True), [[14, 9, 27, 17]])
    assert threshold_boxes(np.zeros((5, 5)), 0.2).shape == (0, 4)
    batched = threshold_boxes(torch.from_numpy(np.stack([m, m[::-1].copy()])), 0.4)
    np.testing.assert_array_equal(batched[0], [[14, 9, 27, 17], [3, 2, 8, 5]])
    np.testing.assert_array_equal(batched[1], [[14, 2, 27, 10], [3, 14, 8, 17]])


def test_threshold_boxes_normalize_min_max():
    m = two_blobs() + 1.0  # min 1, max 2: nothing is below 20% of the max unless min-max scaled
    np.testing.assert_array_equal(threshold_boxes(m, 0.2), [[0, 0, 29, 19]])
    np.testing.assert_array_equal(threshold_boxes(m, 0.2, normalize=True), [[14, 9, 27, 17], [3, 2, 8, 5]])


def test_cam_box_largest_component():
    m = two_blobs()
    np.testing.assert_array_equal(cam_box(m), [14, 9, 27, 17])
    np.testing.assert_array_equal(cam_box(np.stack([m, np.zeros_like(m)])), [[14, 9, 27, 17], [0, 0, 29, 19]])


def pixel_iou(a, b) -> float:
    """IoU of the pixel sets of two inclusive boxes."""
    pa = {(x, y) for x in range(a[0], a[2] + 1) for y in range(a[1], a[3] + 1)}
    pb = {(x, y) for x in range(b[0], b[2] + 1) for y in range(b[1], b[3] + 1)}
    return len(pa & pb) / len(pa | pb)


def test_iou_against_pixel_sets():
    rng = np.random.default_rng(0)
    corners = rng.integers(0, 15, size=(2, 9, 2, 2))
    a, b = (np.concatenate([c.min(axis=1), c.max(axis=1)], axis=1) for c in corners)
    expected = np.array([[pixel_iou(p, q) for q in b] for p in a])
    np.testing.assert_allclose(iou(a, b), expected, rtol=0, atol=1e-12)
    assert iou([0, 0, 1, 1], [1, 1, 2, 2])[0, 0] == pytest.approx(1 / 7)
    assert iou([0, 0, 0, 0], [0, 0, 0, 0])[0, 0] == 1.0  # a one-pixel box overlaps itself fully
    assert iou([0, 0, 3, 3], [4, 0, 5, 3])[0, 0] == 0.0  # touching edges share no pixel
    with pytest.raises(NeuroprobeError, match="inclusive"):
        iou([3, 0, 1, 1], [0, 0, 1, 1])


def test_boxes_to_mask():
    mask = boxes_to_mask([[1, 2, 3, 2], [0, 0, 0, 0]], 4, 5)
    expected = np.zeros((4, 5), bool)
    expected[2, 1:4] = expected[0, 0] = True
    np.testing.assert_array_equal(mask, expected)


def test_localization_error_hand_cases():
    gt = [np.array([[0, 0, 9, 9]]), np.array([[0, 0, 9, 9], [20, 20, 29, 29]]), np.array([[0, 0, 9, 9]]),
          np.array([[0, 0, 9, 9]])]
    pred = np.array([[0, 0, 9, 9],  # right class, perfect box: hit
                     [20, 20, 29, 29],  # right class, matches the second gt box: hit
                     [0, 0, 9, 9],  # wrong class: miss despite the box
                     [0, 0, 9, 4]])  # right class, IoU exactly 0.5: hit (>=)
    hits = localization_hits([1, 2, 3, 4], [1, 2, 0, 4], pred, gt)
    np.testing.assert_array_equal(hits, [True, True, False, True])
    assert localization_error([1, 2, 3, 4], [1, 2, 0, 4], pred, gt) == pytest.approx(0.25)
    pred[3] = [0, 0, 9, 3]  # IoU 0.4
    assert localization_error([1, 2, 3, 4], [1, 2, 0, 4], pred, gt) == pytest.approx(0.5)
    assert localization_error([1, 2, 3, 4], [1, 2, 0, 4], pred, gt, iou_threshold=0.4) == pytest.approx(0.25)
    with pytest.raises(NeuroprobeError, match="no ground-truth box"):
        localization_error([1], [1], [[0, 0, 1, 1]], [np.zeros((0, 4))])
