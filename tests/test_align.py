"""``align`` against an independent computation: plain autograd saliency, scipy's Spearman."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from resnet_cli_fixtures import run_main
from scipy import stats

from neuroprobe.attention.align_report import load_map
from neuroprobe.attention.alignment import CLICKME_CEILING
from neuroprobe.attention.maps import preprocess_human_maps
from neuroprobe.data import ImageDataset, read_manifest
from neuroprobe.models.loading import load_model

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    table = pd.read_csv(SAMPLE / "labels.csv").iloc[:5]
    table["path"] = [str(SAMPLE / p) for p in table["path"]]
    table.to_csv(root / "five.csv", index=False)
    rng = np.random.default_rng(0)
    for i, path in enumerate(table["path"]):
        target = root / "maps" / Path(path).relative_to("/").with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        ys, xs = np.mgrid[0:300, 0:400]
        blob = np.exp(-((xs - rng.uniform(100, 300)) ** 2 + (ys - rng.uniform(80, 220)) ** 2) / (2 * 60.0 ** 2))
        if i == 4:
            continue                                              # one image without a map
        Image.fromarray((blob * 255).astype(np.uint8)).save(target)
    return root


def test_align_equals_autograd_and_scipy(data, tmp_path):
    code, stdout, _ = run_main(["align", "--data", data / "five.csv", "--maps", data / "maps" / "", "--out",
                                tmp_path / "out"])
    assert code == 0 and "alignment of gradient maps" in stdout
    table = pd.read_csv(tmp_path / "out" / "alignment.csv")
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").iloc[0]
    assert len(table) == 4 and summary.without_map == 1
    loaded = load_model("efficientnet_lite0")
    manifest = read_manifest(data / "five.csv")
    dataset = ImageDataset(manifest, loaded.preprocessing)
    for row in table.itertuples():
        x = loaded.preprocessing.normalize(dataset[row.image][1][None]).requires_grad_(True)
        loaded.module(x)[0, row.label].backward()
        saliency = x.grad[0].abs().amax(0).numpy()
        map_path = data / "maps" / Path(row.path).relative_to("/").with_suffix(".png")
        human = preprocess_human_maps(load_map(map_path, loaded.preprocessing)[None], 224)[0].numpy()
        rho = stats.spearmanr(saliency.ravel(), human.ravel()).statistic
        assert row.spearman == pytest.approx(rho, abs=1e-6)
        assert row.alignment == pytest.approx(rho / CLICKME_CEILING, abs=1e-6)
    assert summary.alignment == pytest.approx(table.alignment.mean())
    assert (tmp_path / "out" / "alignment.png").stat().st_size > 0


def test_maps_from_a_column_of_the_table_give_the_same_scores(data, tmp_path):
    table = pd.read_csv(data / "five.csv")
    table["map"] = [str((data / "maps" / Path(p).relative_to("/").with_suffix(".png")).relative_to(data))
                    if i < 4 else "" for i, p in enumerate(table["path"])]
    table.to_csv(data / "five-maps.csv", index=False)
    assert run_main(["align", "--data", data / "five-maps.csv", "--maps", "map", "--out", tmp_path / "a"])[0] == 0
    assert run_main(["align", "--data", data / "five.csv", "--maps", data / "maps", "--out", tmp_path / "b"])[0] == 0
    a, b = (pd.read_csv(tmp_path / name / "alignment.csv") for name in ("a", "b"))
    np.testing.assert_allclose(a.spearman, b.spearman)


def test_align_errors_are_one_line(data, tmp_path):
    code, _, err = run_main(["align", "--data", data / "five.csv", "--maps", tmp_path / "nowhere", "--out", tmp_path])
    assert code == 2 and "--maps" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    code, _, err = run_main(["align", "--data", data / "five.csv", "--maps", tmp_path / "empty", "--out", tmp_path])
    assert code == 2 and "no map" in err
