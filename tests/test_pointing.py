"""Grid pointing game, mosaics and pointing games against NumPy loops and hand-made maps."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from neuroprobe.errors import NeuroprobeError
from neuroprobe.maps.pointing import (
    compose_mosaic,
    energy_pointing_game,
    grid_pointing_score,
    make_mosaics,
    pointing_game,
    summarize_scores,
)


def loop_grid_score(m: np.ndarray, cell: int, grid: int) -> float:
    """Positive mass of the cell over all positive mass, pixel by pixel."""
    height, width = m.shape
    inside = total = 0.0
    for y in range(height):
        for x in range(width):
            value = max(m[y, x], 0.0)
            total += value
            if (y * grid // height) * grid + (x * grid // width) == cell:
                inside += value
    return inside / total if total > 0 else math.nan


@pytest.mark.parametrize("grid", [2, 3])
def test_grid_pointing_score_matches_loop(grid):
    rng = np.random.default_rng(grid)
    maps = rng.normal(size=(5, 6 * grid, 4 * grid))
    maps[2] = -np.abs(maps[2])  # no positive attribution: excluded
    cells = rng.integers(0, grid * grid, size=5)
    got = grid_pointing_score(torch.from_numpy(maps), torch.from_numpy(cells), grid)
    expected = [loop_grid_score(m, c, grid) for m, c in zip(maps, cells)]
    np.testing.assert_allclose(got, expected, rtol=1e-12, equal_nan=True)
    assert np.isnan(got[2]) and np.isfinite(np.delete(got, 2)).all()


def test_grid_pointing_score_uniform_and_concentrated():
    assert grid_pointing_score(np.ones((8, 8)), 3, 2)[0] == 0.25
    np.testing.assert_array_equal(grid_pointing_score(np.ones((4, 8, 8)), np.arange(4), 2), [0.25] * 4)
    m = -np.ones((8, 8))
    m[4:, :4] = 2.0  # all positive mass in cell 2 (row 1, col 0); negatives elsewhere do not count
    np.testing.assert_array_equal(grid_pointing_score(m, [2], 2), [1.0])
    np.testing.assert_array_equal(grid_pointing_score(m, [1], 2), [0.0])
    with pytest.raises(NeuroprobeError, match="multiple of 2"):
        grid_pointing_score(np.ones((7, 8)), 0, 2)


def test_make_mosaics_reproducible_distinct_eligible():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=60)
    eligible = rng.random(60) < 0.6
    first = make_mosaics(labels, 25, grid=2, seed=3, eligible=eligible)
    pd.testing.assert_frame_equal(first, make_mosaics(labels, 25, grid=2, seed=3, eligible=eligible))
    assert not first.equals(make_mosaics(labels, 25, grid=2, seed=4, eligible=eligible))
    assert list(first.columns) == ["mosaic", "cell", "row", "col", "image", "label"]
    assert len(first) == 100 and (first.groupby("mosaic").size() == 4).all()
    assert (first.groupby("mosaic").label.nunique() == 4).all()
    assert eligible[first.image].all()
    np.testing.assert_array_equal(labels[first.image], first.label)
    np.testing.assert_array_equal(first.cell, first.row * 2 + first.col)
    assert first.groupby("mosaic").cell.apply(lambda cells: sorted(cells) == [0, 1, 2, 3]).all()
    names = np.array(["cat", "dog", "owl", "eel", "fox", "ant", "bee", "yak", "gnu"])
    nine = make_mosaics(names, 3, grid=3, seed=0)
    assert (nine.groupby("mosaic").label.nunique() == 9).all()


def test_make_mosaics_too_few_classes():
    labels = np.array([0, 1, 2, 3, 3])
    with pytest.raises(NeuroprobeError, match="smaller grid") as error:
        make_mosaics(labels, 2, grid=2, eligible=[True, True, True, False, False])
    assert "\n" not in str(error.value)


def test_compose_mosaic_places_every_cell():
    labels = np.arange(12) % 6
    table = make_mosaics(labels, 3, grid=2, seed=1)
    pixels = torch.rand(12, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    for _, cells in table.groupby("mosaic"):
        images = pixels[torch.tensor(cells.sort_values("cell").image.tolist())]
        mosaic, masks = compose_mosaic(images, 2)
        assert mosaic.shape == (3, 10, 14) and masks.shape == (4, 10, 14)
        assert (masks.sum(0) == 1).all()
        for _, row in cells.iterrows():
            block = mosaic[:, row.row * 5:(row.row + 1) * 5, row.col * 7:(row.col + 1) * 7]
            torch.testing.assert_close(block, pixels[row.image], rtol=0, atol=0)
            torch.testing.assert_close(mosaic[:, masks[row.cell]], pixels[row.image].reshape(3, -1), rtol=0, atol=0)
        assert grid_pointing_score(masks[2].float(), 2, 2)[0] == 1.0  # a cell's mask points at that cell


def test_pointing_game_tolerance():
    target = np.zeros((40, 60), bool)
    target[10, 10] = True
    for distance, hit in [(14, 1.0), (15, 1.0), (16, 0.0)]:
        m = np.zeros((40, 60))
        m[10, 10 + distance] = 1.0
        assert pointing_game(m, target)[0] == hit
    m = np.zeros((40, 60))
    m[10 + 9, 10 + 12] = 1.0  # diagonal distance exactly 15: hit; 10/12 -> 15.6: miss
    assert pointing_game(m, target)[0] == 1.0
    m[10 + 9, 10 + 12], m[10 + 10, 10 + 12] = 0.0, 1.0
    assert pointing_game(m, target)[0] == 0.0
    assert pointing_game(m, target, tolerance=16)[0] == 1.0
    box = np.zeros((40, 60), bool)
    box[15:30, 20:40] = True
    m = np.zeros((40, 60))
    m[22, 55] = 1.0  # 16 px right of the box
    assert pointing_game(m, box)[0] == 0.0
    m[22, 55], m[22, 30] = 0.0, 1.0  # inside
    assert pointing_game(m, box, tolerance=0)[0] == 1.0


def test_pointing_game_empty_target_and_ties():
    m = np.zeros((3, 20, 20))
    m[:, 5, 5] = 1.0
    targets = np.zeros((3, 20, 20), bool)
    targets[0, 5, 5] = True
    targets[2, 19, 19] = True
    np.testing.assert_array_equal(pointing_game(torch.from_numpy(m), torch.from_numpy(targets), tolerance=3),
                                  [1.0, np.nan, 0.0])
    tied = np.zeros((20, 20))
    tied[0, 0] = tied[19, 19] = 1.0  # two maxima, one at the target
    target = np.zeros((20, 20), bool)
    target[19, 19] = True
    assert pointing_game(tied, target, tolerance=2, ties="all")[0] == 0.0
    assert pointing_game(tied, target, tolerance=2, ties="any")[0] == 1.0
    assert pointing_game(tied, target, tolerance=2, ties="first")[0] == 0.0  # (0, 0) comes first
    assert pointing_game(np.ones((20, 20)), target, tolerance=2)[0] == 0.0  # a flat map does not hit


def test_energy_pointing_game_matches_numpy():
    rng = np.random.default_rng(5)
    maps = rng.normal(size=(4, 9, 11))
    targets = rng.random((4, 9, 11)) < 0.3
    targets[3] = False
    got = energy_pointing_game(maps, targets)
    for m, t, score in zip(maps[:3], targets[:3], got[:3]):
        positive = [v for v, inside in zip(m.ravel(), t.ravel()) if v > 0 and inside]
        assert score == pytest.approx(sum(positive) / sum(v for v in m.ravel() if v > 0), rel=1e-12)
    assert np.isnan(got[3])
    assert np.isnan(energy_pointing_game(-np.ones((5, 5)), np.ones((5, 5), bool))[0])


def test_summarize_scores_t_interval():
    rng = np.random.default_rng(0)
    a, b = rng.random(30), (rng.random(12) < 0.7).astype(float)
    frame = pd.DataFrame({"method": ["a"] * 33 + ["b"] * 12,
                          "score": np.concatenate([a, [np.nan] * 3, b])})
    summary = summarize_scores(frame, bounds=None).set_index("method")
    for name, values, excluded in [("a", a, 3), ("b", b, 0)]:
        half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
        row = summary.loc[name]
        assert row.n == len(values) and row.excluded == excluded
        assert row["mean"] == pytest.approx(values.mean())
        assert (row.ci_low, row.ci_high) == pytest.approx((values.mean() - half, values.mean() + half))
    hits = pd.DataFrame({"method": "c", "score": [1.0] * 19 + [0.0]})   # t-interval reaches past 1
    clipped, raw = summarize_scores(hits).iloc[0], summarize_scores(hits, bounds=None).iloc[0]
    assert raw.ci_high > 1 and clipped.ci_high == 1 and clipped.ci_low == pytest.approx(raw.ci_low)
    frame["layer"] = "x"
    assert list(summarize_scores(frame, by=["method", "layer"]).columns) == [
        "method", "layer", "n", "excluded", "mean", "ci_low", "ci_high"]
    with pytest.raises(NeuroprobeError, match="by="):
        summarize_scores(frame, by="model")
