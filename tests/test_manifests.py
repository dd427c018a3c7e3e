"""Manifests users actually have: Excel's UTF-8 with BOM, Windows line endings, repeated paths, spaces and
non-ASCII in names, absolute and relative paths mixed, symlinks, and an image above the pixel limit."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import neuroprobe
from neuroprobe import load_model
from neuroprobe.data import read_manifest


@pytest.fixture(scope="module")
def model(random_weights):
    return load_model("resnet18", str(random_weights("resnet18")))


def save(path, seed: int, size=(40, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_a_messy_csv_extracts_every_row_as_a_user_expects(tmp_path, model):
    save(tmp_path / "photos" / "a cat.png", 1)
    save(tmp_path / "photos" / "Ærø café 猫.png", 2)
    save(tmp_path / "elsewhere" / "b.png", 3)
    save(tmp_path / "photos" / "huge.png", 4, size=(300, 300))
    os.symlink(tmp_path / "elsewhere" / "b.png", tmp_path / "photos" / "link.png")
    rows = ["path,subject", "photos/a cat.png,s1", "photos/Ærø café 猫.png,s2",
            f"{tmp_path / 'elsewhere' / 'b.png'},s3", "photos/link.png,s4", "photos/a cat.png,s5", "photos/huge.png,s6"]
    csv = tmp_path / "trials.csv"
    csv.write_bytes("\ufeff".encode() + "\r\n".join(rows).encode("utf-8") + b"\r\n")    # Excel's CSV UTF-8
    manifest = read_manifest(csv)
    assert list(manifest.table.columns) == ["path", "subject"]
    assert list(manifest.table.subject) == ["s1", "s2", "s3", "s4", "s5", "s6"]
    store = neuroprobe.extract(model, csv, ["layer1"], tmp_path / "s.zarr", chunk_size=4, progress=False,
                               max_pixels=200 * 200)
    images = neuroprobe.read_images(store)
    assert list(images.status) == ["ok"] * 5 + ["error"]
    assert "decompression bomb" in images.reason.iat[5]
    import zarr
    mean = zarr.open_group(str(store), mode="r")["layer1/mean"][:]
    np.testing.assert_array_equal(mean[0], mean[4])        # the repeated path: the same values in both rows
    np.testing.assert_array_equal(mean[2], mean[3])        # the symlink and its target, one absolute path
    assert not np.allclose(mean[0], mean[1]) and np.isnan(mean[5]).all()


def test_a_folder_with_symlinked_class_folders(tmp_path):
    save(tmp_path / "shared" / "dogs" / "d1.png", 5)
    save(tmp_path / "data" / "cats" / "c1.png", 6)
    os.symlink(tmp_path / "shared" / "dogs", tmp_path / "data" / "dogs")
    os.symlink(tmp_path / "data", tmp_path / "data" / "cats" / "loop")        # a cycle: visited once
    manifest = read_manifest(tmp_path / "data")
    assert list(manifest.table.path) == ["cats/c1.png", "dogs/d1.png"]
    assert list(manifest.table.label) == ["cats", "dogs"]
