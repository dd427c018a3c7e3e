"""The grid pointing game end to end, checked against an independent computation.

Mosaics are built from images no other test uses: the shared ImageNet sample minus the embedded
40 (or a labelled CSV named by NEUROPROBE_UNSEEN_CSV); without either, the embedded sample. The
reference composes each mosaic with NumPy, runs Captum's LayerGradCam on it, upsamples, and
scores with plain loops over the cell rectangles.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SAMPLE_CSV, SHARED_SAMPLE
from scipy import stats

from neuroprobe.cli import main

GRID, N_MOSAICS, SEED = 2, 6, 20261121


@pytest.fixture(scope="module")
def loaded():
    from neuroprobe import load_model

    return load_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def unseen(loaded):
    """(uint8 images (N, 3, 224, 224), class indices, source) of 48 images no other test reads."""
    from neuroprobe.data import ImageDataset, read_manifest

    csv = os.environ.get("NEUROPROBE_UNSEEN_CSV")
    if csv:
        manifest, source = read_manifest(csv), csv
    elif SHARED_SAMPLE.exists():
        manifest = read_manifest(SHARED_SAMPLE)
        embedded = set(pd.read_csv(SAMPLE_CSV).path)
        rows = np.flatnonzero(~manifest.table.path.isin(embedded))
        pick = np.sort(np.random.default_rng(SEED).choice(rows, 48, replace=False))
        manifest.table = manifest.table.iloc[pick].reset_index(drop=True)
        source = "shared sample minus the embedded images"
    else:
        manifest, source = read_manifest(SAMPLE_CSV), "embedded sample (../shared absent)"
    dataset = ImageDataset(manifest, loaded.preprocessing)
    images = torch.stack([dataset[i][1] for i in range(len(dataset))])
    return images, manifest.table["class_index"].to_numpy(), source


def reference_mosaic(images: np.ndarray) -> np.ndarray:
    """(4, 3, H, W) -> (3, 2H, 2W): cells row-major, by concatenation."""
    top = np.concatenate([images[0], images[1]], axis=2)
    bottom = np.concatenate([images[2], images[3]], axis=2)
    return np.concatenate([top, bottom], axis=1)


def reference_scores(cam: np.ndarray, cell: int, tolerance: float = 15) -> tuple[float, float]:
    """Share of positive values in the cell's rectangle; hit if every maximum is within tolerance of it."""
    size = cam.shape[0] // GRID
    y0, x0 = (cell // GRID) * size, (cell % GRID) * size
    positive = np.maximum(cam, 0)
    share = positive[y0:y0 + size, x0:x0 + size].sum() / positive.sum()
    hits = []
    for y, x in zip(*np.nonzero(cam == cam.max())):
        dy = max(y0 - y, 0, y - (y0 + size - 1))
        dx = max(x0 - x, 0, x - (x0 + size - 1))
        hits.append(np.hypot(dy, dx) <= tolerance)
    return share, float(all(hits))


def test_grid_pointing_game_matches_independent_gradcam(loaded, unseen):
    from captum.attr import LayerAttribution, LayerGradCam

    from neuroprobe.maps.localize import grid_pointing_game

    images, labels, source = unseen
    module = loaded.module.eval()
    with torch.no_grad():
        predicted = module(loaded.preprocessing.normalize(images)).argmax(1).numpy()
    correct = predicted == labels
    game = grid_pointing_game(loaded, images, labels, ["gradcam", "gradient"], grid=GRID, n=N_MOSAICS, seed=SEED)

    mosaics = game.mosaics
    assert mosaics.groupby("mosaic").label.nunique().eq(GRID * GRID).all(), "classes differ within a mosaic"
    assert correct[mosaics.image].all(), "only correctly classified images are used"
    per_method = game.scores.pivot_table(index=["mosaic", "cell"], columns="method", values="image")
    assert (per_method["gradcam"] == per_method["gradient"]).all(), "every method scores the same mosaics"

    scores = game.scores[game.scores.method == "gradcam"].set_index(["mosaic", "cell"])
    mean_std = loaded.preprocessing
    for mosaic_id, members in mosaics.groupby("mosaic"):
        members = members.sort_values("cell")
        picture = reference_mosaic(images[members.image.to_numpy()].numpy().copy())
        x = torch.from_numpy(picture)[None].float() / 255
        x = (x - torch.tensor(mean_std.mean).view(1, 3, 1, 1)) / torch.tensor(mean_std.std).view(1, 3, 1, 1)
        for cell, label in zip(members.cell, members.label):
            cam = LayerGradCam(module, module.bn2).attribute(x, target=int(label), relu_attributions=True)
            cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), "bilinear")[0, 0].detach().numpy()
            share, hit = reference_scores(cam, cell)
            assert scores.loc[(mosaic_id, cell), "grid"] == pytest.approx(share, rel=1e-4, abs=1e-6)
            assert scores.loc[(mosaic_id, cell), "pointing"] == hit

    grid = game.table("grid").set_index("method")
    assert grid.loc["gradcam", "mean"] > 0.5, f"Grad-CAM should be far above a uniform map's 0.25 ({source})"
    assert grid.loc["gradcam", "ci_low"] > 0.25
    assert grid.loc["gradcam", "n"] == N_MOSAICS * GRID * GRID


def test_summary_is_mean_and_t_interval_of_the_scores(loaded, unseen):
    from neuroprobe.maps.localize import grid_pointing_game

    images, labels, _ = unseen
    game = grid_pointing_game(loaded, images, labels, "dff,gradcam", n=3, seed=1, cell_size=112)
    assert game.example_images.shape[-2:] == (224, 224), "cell_size 112 makes 224 px mosaics"
    for (method, metric), group in game.scores.melt(id_vars=["method"], value_vars=["grid", "pointing"],
                                                    var_name="metric").groupby(["method", "metric"]):
        values = group.value.dropna().to_numpy()
        low, high = np.clip(stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values)), 0, 1)
        row = game.summary[(game.summary.method == method) & (game.summary.metric == metric)].iloc[0]
        assert row["mean"] == pytest.approx(values.mean())
        if values.std() > 0:
            assert (row.ci_low, row.ci_high) == pytest.approx((low, high))


def test_localize_cli_writes_tables_and_figure(tmp_path):
    out = tmp_path / "loc"
    code = main(["localize", "--data", str(SAMPLE_CSV), "--methods", "gradcam,gradient", "--n", "2",
                 "--cell-size", "112", "--device", "cpu", "--out", str(out)])
    assert code == 0
    scores = pd.read_csv(out / "scores.csv")
    summary = pd.read_csv(out / "summary.csv")
    mosaics = pd.read_csv(out / "mosaics.csv")
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(scores) == 2 * 2 * 4 and set(scores.method) == {"gradcam", "gradient"}
    means = scores.groupby("method").grid.mean()
    got = summary[summary.metric == "grid"].set_index("method")["mean"]
    np.testing.assert_allclose(got[means.index], means)
    assert predictions.set_index("image").loc[mosaics.image, "correct"].all()
    assert (out / "examples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_localize_cli_refuses_a_missing_label_column(tmp_path, capsys):
    code = main(["localize", "--data", str(SAMPLE_CSV), "--label-column", "label", "--n", "1",
                 "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no column 'label'" in err[0]


def test_localize_cli_records_and_skips_a_corrupt_image(tmp_path):
    table = pd.read_csv(SAMPLE_CSV).iloc[:8].reset_index(drop=True)
    for path in table.path:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes((SAMPLE_CSV.parent / path).read_bytes())
    (tmp_path / table.path[2]).write_bytes(b"\xff\xd8 truncated jpeg")
    table.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "loc"
    code = main(["localize", "--data", str(tmp_path / "labels.csv"), "--methods", "gradcam", "--n", "2",
                 "--cell-size", "112", "--device", "cpu", "--out", str(out)])
    predictions = pd.read_csv(out / "predictions.csv")
    mosaics = pd.read_csv(out / "mosaics.csv")
    assert code == 0
    assert predictions.status[2] == "error" and not predictions.correct[2] and predictions.reason[2]
    assert 2 not in set(mosaics.image) and predictions.set_index("image").loc[mosaics.image, "correct"].all()
