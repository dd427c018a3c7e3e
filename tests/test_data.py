"""The loader: every PIL mode to the intended RGB, bad files recorded (never fatal), manifests.

References are NumPy computations of the intended conversion (16-bit: x * 255 / 65535 rounded;
transparency: a * rgb + (1 - a) * 255 on white), not neuroprobe's own code.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from helpers_robustness import SAMPLE_DIR, make_bad_files, png_bomb, sample_table, store_arrays
from PIL import Image

import neuroprobe
from neuroprobe.data import load_image, read_manifest

LAYERS = ["blocks.3", "bn2"]
STATS = ["min", "mean", "max", "area"]
ROUNDED = 0.5 + 1e-6  # "correctly rounded to uint8"


@pytest.fixture(scope="module")
def model():
    return neuroprobe.load_model("efficientnet_lite0")


def _rgb(path) -> np.ndarray:
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


# -- modes --------------------------------------------------------------------------------------------
RNG = np.random.default_rng(2024)


def test_grayscale_is_replicated(tmp_path):
    gray = RNG.integers(0, 256, (31, 47), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    Image.fromarray(gray, "L").save(tmp_path / "gray.jpg", quality=100)
    np.testing.assert_array_equal(_rgb(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, axis=2))
    decoded = np.asarray(Image.open(tmp_path / "gray.jpg"))  # lossy: compare with what the file holds
    assert Image.open(tmp_path / "gray.jpg").mode == "L"
    np.testing.assert_array_equal(_rgb(tmp_path / "gray.jpg"), np.repeat(decoded[..., None], 3, axis=2))


@pytest.mark.parametrize("suffix", ["jpg", "tif"])
def test_cmyk(tmp_path, suffix):
    cmyk = RNG.integers(0, 256, (24, 40, 4), dtype=np.uint8)
    path = tmp_path / f"cmyk.{suffix}"
    Image.fromarray(cmyk, "CMYK").save(path, **({"quality": 95} if suffix == "jpg" else {}))
    with Image.open(path) as image:
        assert image.mode == "CMYK"
        stored = np.asarray(image).astype(np.float64)
        pil_rgb = np.asarray(image.convert("RGB"))
    expected = (255 - stored[..., :3]) * (255 - stored[..., 3:]) / 255  # subtractive: (1-C)(1-K)
    out = _rgb(path)
    assert np.abs(out - expected).max() <= ROUNDED
    np.testing.assert_array_equal(out, pil_rgb)


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return a * rgb.astype(np.float64) + (1 - a) * 255.0


def test_rgba_composited_on_white(tmp_path):
    rgba = RNG.integers(0, 256, (50, 70, 4), dtype=np.uint8)
    rgba[:5, :, 3] = 0     # fully transparent rows must come out white, whatever the colour
    rgba[5:10, :, 3] = 255  # opaque rows unchanged
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = _rgb(tmp_path / "rgba.png")
    assert np.abs(out - _on_white(rgba[..., :3], rgba[..., 3])).max() <= ROUNDED
    assert (out[:5] == 255).all()
    np.testing.assert_array_equal(out[5:10], rgba[5:10, :, :3])


def test_la_composited_on_white(tmp_path):
    la = RNG.integers(0, 256, (33, 20, 2), dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    gray = np.repeat(la[..., :1], 3, axis=2)
    assert np.abs(_rgb(tmp_path / "la.png") - _on_white(gray, la[..., 1])).max() <= ROUNDED


def _palette_image():
    index = RNG.integers(0, 16, (30, 45), dtype=np.uint8)
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.ravel().tolist())
    return image, index, palette


def test_palette_without_transparency(tmp_path):
    image, index, palette = _palette_image()
    image.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(_rgb(tmp_path / "p.png"), palette[index])


@pytest.mark.parametrize("suffix", ["png", "gif"])
def test_palette_transparent_index_is_white(tmp_path, suffix):
    image, index, palette = _palette_image()
    path = tmp_path / f"pt.{suffix}"
    image.save(path, transparency=3)
    with Image.open(path) as opened:
        assert opened.mode == "P" and opened.info.get("transparency") == 3
    expected = palette[index].copy()
    expected[index == 3] = 255
    assert (index == 3).any()
    np.testing.assert_array_equal(_rgb(path), expected)


def test_palette_with_alpha_per_entry(tmp_path):
    image, index, palette = _palette_image()
    alpha = RNG.integers(0, 256, 16).astype(np.uint8)
    image.save(tmp_path / "pa.png", transparency=alpha.tobytes())
    assert isinstance(Image.open(tmp_path / "pa.png").info.get("transparency"), bytes)
    assert np.abs(_rgb(tmp_path / "pa.png") - _on_white(palette[index], alpha[index])).max() <= ROUNDED


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_png_colour_key_is_white(tmp_path, mode):
    """PNG tRNS for RGB/L images: one colour is fully transparent, like a palette index."""
    shape = (18, 26, 3) if mode == "RGB" else (18, 26)
    pixels = RNG.integers(0, 256, shape, dtype=np.uint8)
    key = pixels[2, 3].copy()
    Image.fromarray(pixels, mode).save(tmp_path / "key.png", transparency=tuple(key.tolist()) if mode == "RGB" else int(key))
    with Image.open(tmp_path / "key.png") as image:
        assert image.mode == mode and "transparency" in image.info
    rgb = pixels if mode == "RGB" else np.repeat(pixels[..., None], 3, axis=2)
    keyed = (pixels == key).all(axis=-1) if mode == "RGB" else pixels == key
    expected = rgb.copy()
    expected[keyed] = 255
    assert keyed.sum() >= 1 and (~keyed).sum() > 100
    np.testing.assert_array_equal(_rgb(tmp_path / "key.png"), expected)


def _sixteen_bit(dark: bool) -> np.ndarray:
    top = 200 if dark else 65536  # a dark 16-bit image still means x / 65535, not x / 255
    values = RNG.integers(0, top, (21, 34)).astype(np.uint16)
    values[0, :2] = (0, top - 1)
    return values


@pytest.mark.parametrize("dark", [False, True], ids=["full-range", "dark"])
@pytest.mark.parametrize("kind", ["I;16 png", "I tif", "I pgm"])
def test_sixteen_bit_scaled_to_eight(tmp_path, kind, dark):
    values = _sixteen_bit(dark)
    mode, suffix = kind.split()
    path = tmp_path / f"deep.{suffix}"
    if kind == "I tif":
        Image.fromarray(values.astype(np.int32), "I").save(path)
    else:
        Image.fromarray(values).save(path)  # I;16, written as 16-bit PNG / PGM (maxval 65535)
    with Image.open(path) as image:
        assert image.mode == mode
        np.testing.assert_array_equal(np.asarray(image), values)
    expected = np.rint(values.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    np.testing.assert_array_equal(_rgb(path), np.repeat(expected[..., None], 3, axis=2))


def test_max_pixels_refuses_before_decoding(tmp_path):
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", max_pixels=1200).size == (40, 30)
    with pytest.raises(ValueError, match="decompression bomb"):
        load_image(tmp_path / "big.png", max_pixels=1199)
    png_bomb(tmp_path / "huge.png", 20000, 20000)
    assert (tmp_path / "huge.png").stat().st_size < 200_000
    with pytest.raises(Exception, match="decompression bomb"):
        load_image(tmp_path / "huge.png")


# -- bad files in a run -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def robustness_runs(tmp_path_factory, model):
    """A run over good and broken files (workers=2) and a run over only the good ones (workers=0)."""
    folder = tmp_path_factory.mktemp("robust")
    bad = make_bad_files(folder / "bad")
    png_bomb(folder / "bad" / "bomb-warning.png", 10000, 10000)  # over max_pixels, under PIL's error limit
    bad["bomb-warning.png"] = (folder / "bad" / "bomb-warning.png", "decompression bomb refused")
    good = sample_table().iloc[:6].reset_index(drop=True)
    # rows 4-7 (chunk 1) are all broken: a chunk that is never filled must read as NaN too
    order = [("good", 0), ("bad", "random.jpg"), ("good", 1), ("bad", "truncated.jpg"),
             ("bad", "empty.jpg"), ("bad", "notes.png"), ("bad", "missing.jpg"), ("bad", "bomb.png"),
             ("good", 2), ("good", 3), ("bad", "bomb-warning.png"), ("good", 4), ("good", 5)]
    rows = []
    for kind, key in order:
        if kind == "good":
            rows.append({"path": good.path[key], "kind": "good", "word": ""})
        else:
            rows.append({"path": str(bad[key][0]), "kind": key, "word": bad[key][1]})
    table = pd.DataFrame(rows)
    mixed_csv, good_csv = folder / "mixed.csv", folder / "good.csv"
    table[["path", "kind"]].to_csv(mixed_csv, index=False)
    good[["path"]].to_csv(good_csv, index=False)
    mixed = neuroprobe.extract(model, mixed_csv, LAYERS, folder / "mixed.zarr", spatial=["blocks.3"],
                               chunk_size=4, batch_size=2, workers=2, progress=False)
    clean = neuroprobe.extract(model, good_csv, LAYERS, folder / "good.zarr", spatial=["blocks.3"],
                               chunk_size=4, batch_size=2, workers=0, progress=False)
    return table, mixed, clean


def test_bad_files_recorded_with_reason(robustness_runs):
    table, mixed, _ = robustness_runs
    images = neuroprobe.read_images(mixed)
    is_bad = table.kind.to_numpy() != "good"
    assert list(images.status) == ["error" if b else "ok" for b in is_bad]
    for row, (kind, word) in enumerate(zip(table.kind, table.word)):
        reason = images.reason.iat[row]
        if kind == "good":
            assert reason == ""
        else:
            assert word in reason.lower(), (kind, reason)
            assert "\n" not in reason and len(reason) <= 300
    summary = neuroprobe.summary(mixed)
    assert (summary["done"], summary["skipped"], summary["missing"]) == (6, 7, 0)


def test_bad_rows_are_nan_in_every_array(robustness_runs):
    table, mixed, _ = robustness_runs
    arrays = store_arrays(mixed)
    is_bad = table.kind.to_numpy() != "good"
    stat_keys = [f"{layer}/{stat}" for layer in LAYERS for stat in STATS] + ["blocks.3/spatial"]
    assert set(stat_keys) <= set(arrays)
    for key in stat_keys:
        values = arrays[key].reshape(len(table), -1)
        assert np.isnan(values[is_bad]).all(), key
        assert not np.isnan(values[~is_bad]).any(), key


def test_good_rows_unaffected_by_bad_neighbours(robustness_runs):
    table, mixed, clean = robustness_runs
    good_rows = np.flatnonzero(table.kind.to_numpy() == "good")
    a, b = store_arrays(mixed), store_arrays(clean)
    for layer in LAYERS:
        for stat in STATS:
            key = f"{layer}/{stat}"
            np.testing.assert_allclose(a[key][good_rows], b[key], rtol=1e-5, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(a["blocks.3/spatial"][good_rows].astype(np.float32),
                               b["blocks.3/spatial"].astype(np.float32), rtol=2e-3, atol=2e-3)
    # the good run is not trivially equal to anything: units and images differ from one another
    assert np.ptp(b["bn2/mean"], axis=0).min() > 0


# -- manifests ----------------------------------------------------------------------------------------
def _tiny_images(folder, names):
    for k, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        colour = tuple(int(c) for c in np.random.default_rng(k).integers(0, 256, 3))
        Image.new("RGB", (48, 40), colour).save(path)


def test_imagefolder_layout_gives_labels(tmp_path, model):
    names = ["zebra/b.png", "zebra/a.png", "ant/c.png", "ant/nested/d.png", "moth/e.png"]
    _tiny_images(tmp_path / "data", names)
    (tmp_path / "data" / "ant" / "readme.txt").write_text("not an image")
    (tmp_path / "data" / "moth" / ".hidden.png").write_bytes(b"")
    _tiny_images(tmp_path / "data" / ".ipynb_checkpoints", ["e-checkpoint.png"])  # hidden folder: not a class
    _tiny_images(tmp_path / "data" / "ant" / ".thumbs", ["c.png"])
    expected = sorted(names)
    classes = sorted({n.split("/")[0] for n in names})
    manifest = read_manifest(tmp_path / "data")
    assert list(manifest.table.columns) == ["path", "label", "label_index"]
    assert list(manifest.table.path) == expected
    assert list(manifest.table.label) == [n.split("/")[0] for n in expected]
    assert list(manifest.table.label_index) == [classes.index(n.split("/")[0]) for n in expected]

    store = neuroprobe.extract(model, tmp_path / "data", ["blocks.1"], tmp_path / "f.zarr", chunk_size=2,
                               batch_size=2, progress=False)
    images = xr.open_zarr(str(store), group="images").to_dataframe()
    assert list(images.path) == expected
    assert list(images.label_index) == [classes.index(n.split("/")[0]) for n in expected]
    assert (images.status == "ok").all()


def test_flat_folder_gives_paths_only(tmp_path):
    _tiny_images(tmp_path, ["b.png", "a.jpg", "C.PNG"])
    _tiny_images(tmp_path / ".ipynb_checkpoints", ["b-checkpoint.png"])  # Jupyter's copies are not data
    (tmp_path / "list.txt").write_text("x")
    manifest = read_manifest(tmp_path)
    assert list(manifest.table.columns) == ["path"]
    assert list(manifest.table.path) == ["C.PNG", "a.jpg", "b.png"]
    assert [manifest.absolute(i) for i in range(3)] == [tmp_path.resolve() / n for n in ["C.PNG", "a.jpg", "b.png"]]


def test_csv_columns_carried_into_store(tmp_path, model):
    _tiny_images(tmp_path / "img", ["a.png", "b.png", "c.png"])
    csv = tmp_path / "meta.csv"
    csv.write_text("path,subject,rating,trial,practice\n"
                   "img/a.png,s01,0.5,1,True\n"
                   "img/b.png,s02,,2,False\n"
                   "img/c.png,,3.25,3,True\n")
    store = neuroprobe.extract(model, csv, ["blocks.1"], tmp_path / "m.zarr", chunk_size=2, batch_size=2,
                               progress=False)
    expected = pd.read_csv(csv)
    for images in (xr.open_zarr(str(store), group="images").to_dataframe(), neuroprobe.read_images(store)):
        assert set(images.columns) == set(expected.columns) | {"status", "reason"}
        assert list(images.path) == list(expected.path)
        assert list(images.subject) == ["s01", "s02", ""]
        np.testing.assert_array_equal(images.rating.to_numpy(), expected.rating.to_numpy())  # NaN kept
        assert list(images.trial) == [1, 2, 3] and images.trial.dtype.kind == "i"
        assert list(images.practice) == [True, False, True]
        assert list(images.status) == ["ok"] * 3
    raw = zarr.open_group(str(store), mode="r")
    assert list(raw["images/subject"][:]) == ["s01", "s02", ""]


def test_csv_paths_relative_to_csv_folder(tmp_path, model, monkeypatch):
    _tiny_images(tmp_path / "pics", ["x.png", "deep/y.png"])
    (tmp_path / "meta").mkdir()
    relative = tmp_path / "meta" / "rel.csv"
    relative.write_text("path\n../pics/x.png\n../pics/deep/y.png\n")
    absolute = tmp_path / "abs.csv"
    absolute.write_text(f"path\n{tmp_path / 'pics' / 'x.png'}\n{tmp_path / 'pics' / 'deep' / 'y.png'}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the CSV, not to the working folder
    manifest = read_manifest("../meta/rel.csv")
    assert [manifest.absolute(i).resolve() for i in range(2)] == [tmp_path.resolve() / "pics" / "x.png",
                                                                 tmp_path.resolve() / "pics" / "deep" / "y.png"]
    rel_store = neuroprobe.extract(model, "../meta/rel.csv", ["blocks.1"], "rel.zarr", chunk_size=2, progress=False)
    abs_store = neuroprobe.extract(model, absolute, ["blocks.1"], "abs.zarr", chunk_size=2, progress=False)
    assert list(neuroprobe.read_images(rel_store).status) == ["ok", "ok"]
    rel, ref = store_arrays(rel_store), store_arrays(abs_store)
    np.testing.assert_array_equal(rel["blocks.1/mean"], ref["blocks.1/mean"])
    assert not np.allclose(ref["blocks.1/mean"][0], ref["blocks.1/mean"][1])  # two different images


def test_csv_with_reserved_column_is_refused(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text(f"path,status\n{SAMPLE_DIR / 'images' / 'n01440764.jpg'},kept\n")
    with pytest.raises(neuroprobe.NeuroprobeError, match="status"):
        read_manifest(csv)
