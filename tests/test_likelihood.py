"""Likelihood stores against the model run view by view; corrupt images, resume and refusals."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import zarr

from neuroprobe.data import ImageDataset, Manifest, read_manifest
from neuroprobe.errors import NeuroprobeError
from neuroprobe.models.loading import load_model
from neuroprobe.retina.layouts import make_layout
from neuroprobe.retina.likelihood import LikelihoodStore, ViewSettings, likelihood_maps

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "labels.csv"


@pytest.fixture(scope="module")
def model():
    return load_model("efficientnet_lite0")


def subset(rows) -> Manifest:
    manifest = read_manifest(SAMPLE)
    return Manifest(manifest.table.iloc[list(rows)].reset_index(drop=True), manifest.root)


def view_by_view(loaded, manifest: Manifest, layout: str, n: int, radius: float, kind: str, padding: str):
    """Reference: each image decoded alone, each view's grid written from its definition, one forward per view."""
    fixations = make_layout(layout, n, radius)
    source = ViewSettings().source(loaded.preprocessing)
    dataset = ImageDataset(manifest, source)
    size = loaded.preprocessing.crop
    out = []
    for i in range(len(manifest)):
        image = source.normalize(dataset[i][1][None])
        h, w = image.shape[-2:]
        per_view = []
        for (cx, cy), r in zip(fixations.centers.reshape(-1, 2), fixations.radii.reshape(-1), strict=True):
            grid = np.zeros((size, size, 2))
            for row in range(size):
                for col in range(size):
                    if kind == "logpolar":
                        rho, theta = r * 2.0 ** (-5 * row / (size - 1)), 2 * math.pi * col / size
                        dx, dy = rho * math.cos(theta), rho * math.sin(theta)
                    else:
                        dx, dy = r * ((2 * col + 1) / size - 1), r * ((2 * row + 1) / size - 1)
                    grid[row, col] = (cx + dx * min(h, w) / w, cy + dy * min(h, w) / h)
            view = F.grid_sample(image, torch.from_numpy(grid).float()[None], padding_mode=padding,
                                 align_corners=False)
            with torch.no_grad():
                per_view.append(loaded.module(view)[0].log_softmax(-1))
        out.append(torch.stack(per_view).reshape(*fixations.shape, -1))
    return torch.stack(out).numpy()


@pytest.mark.parametrize("layout,n,radius,kind,padding", [("grid", 2, 0.6, "logpolar", "zeros"),
                                                           ("rings", 3, 0.4, "crop", "reflection")])
def test_likelihood_maps_equal_the_model_view_by_view(model, tmp_path, layout, n, radius, kind, padding):
    manifest = subset([0, 5, 17])
    store = likelihood_maps(model, manifest, tmp_path / "lk.zarr", layout=layout, n=n, radius=radius, view=kind,
                            padding=padding, batch_size=2, views_per_pass=3)
    expected = view_by_view(model, manifest, layout, n, radius, kind, padding)
    group = zarr.open_group(str(store), mode="r")
    stored = group["log_probability"][:].astype(np.float64)
    assert stored.shape == expected.shape and group["log_probability"].dtype == np.float16
    # float16 keeps ~3 significant digits of each log-probability
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(group["top1"][:], expected.argmax(-1))
    np.testing.assert_allclose(group["top1_probability"][:], np.exp(expected.max(-1)), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(group["target"][:], manifest.table["class_index"].to_numpy())
    assert group["done"][:].all() and list(group["images/status"][:]) == ["ok"] * 3


def test_corrupt_images_are_recorded_and_skipped_and_a_killed_run_resumes(model, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    manifest = read_manifest(SAMPLE)
    rows = manifest.table.iloc[[0, 1, 2]].copy()
    for path in rows["path"]:
        shutil.copy(manifest.root / path, images / Path(path).name)
    (images / "broken.jpg").write_bytes((images / Path(rows["path"].iat[0]).name).read_bytes()[:500])
    rows["path"] = "images/" + rows["path"].map(lambda p: Path(p).name)
    table = pd.concat([rows.iloc[:1], pd.DataFrame({"path": ["images/broken.jpg"], "class_index": [3]}), rows.iloc[1:]])
    table.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "lk.zarr"
    options = dict(layout="grid", n=2, view="crop", batch_size=2)
    likelihood_maps(model, tmp_path / "labels.csv", out, **options)
    group = zarr.open_group(str(out), mode="r+")
    assert list(group["images/status"][:]) == ["ok", "error", "ok", "ok"]
    assert "broken.jpg" not in group["images/reason"][1] and group["images/reason"][1]
    assert np.isnan(group["log_probability"][1].astype(np.float32)).all() and (group["top1"][1] == -1).all()
    finished = group["log_probability"][:]
    # a run killed after the first batch: the second batch's rows were never marked done nor written
    group["done"][2:] = False
    group["log_probability"][2:] = np.nan
    group["images/status"][2:] = "pending"
    likelihood_maps(model, tmp_path / "labels.csv", out, **options)
    group = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(group["log_probability"][:], finished)
    assert list(group["images/status"][:]) == ["ok", "error", "ok", "ok"]
    with pytest.raises(NeuroprobeError, match="other settings"):
        likelihood_maps(model, tmp_path / "labels.csv", out, **(options | {"view": "logpolar"}))
    store = LikelihoodStore.open(out)
    assert store.fixations.shape == (2, 2) and store.settings["view"]["kind"] == "crop"


def test_wrong_options_fail_in_one_line(model, tmp_path):
    manifest = subset([0])
    for options, match in (({"view": "fisheye"}, "--view"), ({"padding": "wrap"}, "--padding"),
                           ({"layout": "spiral"}, "layout"), ({"label_column": "nope"}, "label-column")):
        with pytest.raises(NeuroprobeError, match=match):
            likelihood_maps(model, manifest, tmp_path / "x.zarr", **options)
    with pytest.raises(NeuroprobeError, match="not a likelihood store"):
        zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
        LikelihoodStore.open(tmp_path / "other.zarr")
