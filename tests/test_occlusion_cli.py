"""``occlude`` and ``rf`` as a user runs them: stores and tables checked against the library called directly.

ResNet-18 with seeded random weights from a file; 7x7 occluder positions (window = stride = 32 on the
224-pixel input; 4x4 for ``rf``) keep every sweep small. Commands run in-process through
``neuroprobe.cli.main``, stdout/stderr captured; one mistake also runs as a real ``python -m neuroprobe``
process, to show that nothing but the one error line reaches stderr.
"""
from __future__ import annotations

import logging
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from helpers_robustness import cli, one_line_error, tree_digest
from PIL import Image
from resnet_cli_fixtures import BAD_ROW, data3, loaded, run_main, weights  # noqa: F401 (fixtures)

LAYER, UNITS, WINDOW, STRIDE = "layer1", [0, 1, 2], 32, 32
POSITIONS = list(range(0, 224 - WINDOW + 1, STRIDE))          # [0, 32, ..., 192]: 7 per axis
RF_LAYERS, RF_UNITS, RF_K, RF_WINDOW = ["layer1", "layer2"], [0, 1], 2, 56   # 4x4 occluders tile 224 px


def occlude_args(weights, csv, out, *extra) -> list:
    return ["occlude", "--model", "resnet18", "--weights", weights, "--layer", LAYER, "--data", csv,
            "--units", *UNITS, "--window", WINDOW, "--stride", STRIDE, "--device", "cpu", "--out", out, *extra]


@pytest.fixture(scope="module")
def occluded(weights, data3, tmp_path_factory):
    """One finished occlusion store: (path, exit code, stdout, stderr)."""
    out = tmp_path_factory.mktemp("occlude") / "occ.zarr"
    code, stdout, stderr = run_main(occlude_args(weights, data3, out))
    return out, code, stdout, stderr


@pytest.fixture(scope="module")
def processes(weights, small_csv, tmp_path_factory):
    """The rf tests' store from ``extract`` (in-process) while a real process runs ``occlude`` on an
    unknown layer: (folder, extract's (code, stdout, stderr), the process's CompletedProcess)."""
    folder = tmp_path_factory.mktemp("processes")
    mistake = occlude_args(weights, small_csv, folder / "unknown.zarr", "--layer", "layer11")
    with ThreadPoolExecutor(1) as pool:
        unknown = pool.submit(cli, mistake)
        extract = run_main(["extract", "--model", "resnet18", "--weights", weights, "--data", small_csv,
                            "--layers", *RF_LAYERS, "--out", folder / "run.zarr", "--device", "cpu", "--no-progress"])
        return folder, extract, unknown.result()


# -- occlude -------------------------------------------------------------------------------------------
def test_occlude_store_equals_discrepancy_maps(occluded, loaded, data3):
    """Every good row equals discrepancy_maps on the ImageDataset image with noise seed = row."""
    import xarray as xr

    from neuroprobe.data import ImageDataset, read_manifest
    from neuroprobe.maps import discrepancy_maps

    out, code, stdout, _ = occluded
    assert code == 0
    assert "discrepancy 3x3x7x7 (image, unit, y, x); 3 images done" in stdout
    group = zarr.open_group(str(out), mode="r")
    values = group["discrepancy"][:]
    assert values.shape == (3, len(UNITS), len(POSITIONS), len(POSITIONS))
    assert group["done"][:].all()

    dataset = ImageDataset(read_manifest(data3), loaded.preprocessing)
    with torch.no_grad():
        for row in (0, 2):
            _, image, ok, _ = dataset[row]
            assert ok
            expected = discrepancy_maps(loaded, image[None], LAYER, units=UNITS, window=WINDOW, stride=STRIDE,
                                        fill="noise", response="peak", device="cpu", seed=row)
            np.testing.assert_allclose(values[row], expected.values[0], rtol=1e-5, atol=1e-5, err_msg=f"row {row}")
            np.testing.assert_allclose(group["reference"][row], expected.reference[0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(group["peak_px"][row], expected.peak_px[0])
            assert np.abs(values[row]).max() > 0                       # not trivially zero

    attrs = dict(group["discrepancy"].attrs)
    assert attrs["window"] == WINDOW and attrs["stride"] == STRIDE and attrs["layer"] == LAYER
    assert attrs["positions_y"] == POSITIONS and attrs["positions_x"] == POSITIONS
    assert attrs["units"] == UNITS and attrs["image_size"] == [224, 224]
    assert group["images/status"][:].tolist() == ["ok", "error", "ok"]

    dataset_x = xr.open_zarr(str(out))
    assert dataset_x["discrepancy"].dims == ("image", "unit", "y", "x")
    np.testing.assert_array_equal(dataset_x["discrepancy"].values, values)
    assert dataset_x["discrepancy"].attrs["positions_x"] == POSITIONS


def test_corrupt_image_is_an_error_row_with_nan_maps(occluded, data3):
    out, code, _, stderr = occluded
    assert code == 0 and "Traceback" not in stderr
    group = zarr.open_group(str(out), mode="r")
    status, reason = group["images/status"][:].tolist(), group["images/reason"][:].tolist()
    assert status[BAD_ROW] == "error"
    assert "cannot identify" in reason[BAD_ROW] and Path(pd.read_csv(data3).path[BAD_ROW]).name in reason[BAD_ROW]
    assert [reason[r] for r in (0, 2)] == ["", ""]
    assert group["done"][BAD_ROW]
    assert np.isnan(group["discrepancy"][BAD_ROW]).all()
    assert np.isnan(group["reference"][BAD_ROW]).all() and np.isnan(group["peak_px"][BAD_ROW]).all()
    assert np.isfinite(group["discrepancy"][0]).all() and np.isfinite(group["discrepancy"][2]).all()


def test_resume_recomputes_only_unfinished_rows(occluded, weights, data3, tmp_path, caplog):
    original, *_ = occluded
    store = tmp_path / "resume.zarr"
    shutil.copytree(original, store)
    expected = zarr.open_group(str(original), mode="r")["discrepancy"][:]
    group = zarr.open_group(str(store), mode="r+")
    group["done"][2] = False
    group["discrepancy"][2] = np.full(expected.shape[1:], -1e6, np.float32)   # must be replaced
    group["discrepancy"][0] = np.full(expected.shape[1:], 777.0, np.float32)  # done: must stay

    with caplog.at_level(logging.INFO, logger="neuroprobe"):
        code, stdout, _ = run_main(occlude_args(weights, data3, store))
    assert code == 0
    assert "1 of 3 images to do" in caplog.text
    assert "3 images done" in stdout
    after = zarr.open_group(str(store), mode="r")
    np.testing.assert_array_equal(after["discrepancy"][2], expected[2])
    assert (after["discrepancy"][0] == 777.0).all()
    np.testing.assert_array_equal(after["discrepancy"][BAD_ROW], expected[BAD_ROW])
    assert after["done"][:].all()
    assert after["images/status"][:].tolist() == ["ok", "error", "ok"]


def test_other_settings_need_overwrite(occluded, weights, data3, tmp_path):
    original, *_ = occluded
    store = tmp_path / "settings.zarr"
    shutil.copytree(original, store)
    before = tree_digest(store)
    code, _, stderr = run_main(occlude_args(weights, data3, store, "--stride", 64))
    lines = stderr.splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("neuroprobe: error:") and "--overwrite" in lines[0], stderr
    assert tree_digest(store) == before

    code, _, _ = run_main(occlude_args(weights, data3, store, "--stride", 64, "--overwrite"))
    assert code == 0
    group = zarr.open_group(str(store), mode="r")
    assert group["discrepancy"].shape == (3, len(UNITS), 4, 4)
    assert group["discrepancy"].attrs["positions_y"] == [0, 64, 128, 192]


MISTAKES = {  # case -> (argument changes, words the one error line must hold)
    "layer without a spatial map": (["--layer", "fc"], ["'fc'", "no spatial map"]),
    "unit out of range": (["--units", 0, 64], ["--units", "0..63"]),
    "window larger than the image": (["--window", 300], ["300", "--window"]),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_occlude_mistakes_give_one_line_and_exit_2(case, weights, data3, tmp_path):
    changes, words = MISTAKES[case]
    args = occlude_args(weights, data3, tmp_path / "bad.zarr")
    flag = changes[0]
    at = args.index(flag)
    end = at + 1
    while end < len(args) and not str(args[end]).startswith("--"):
        end += 1
    args[at:end] = changes
    code, _, stderr = run_main(args)
    lines = stderr.splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("neuroprobe: error:"), stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "bad.zarr").exists()


def test_unknown_layer_names_the_closest_in_a_real_process(processes):
    folder, _, result = processes
    line = one_line_error(result)
    assert "'layer11'" in line
    closest = [name.strip() for name in line.split("closest:")[1].split("(")[0].split(",")]
    assert "layer1" in closest[:2] and "layer1.1" in closest[:2]
    assert "Traceback" not in result.stdout
    assert not (folder / "unknown.zarr").exists()


# -- rf ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rf_run(processes, tmp_path_factory):
    folder, (code, _, stderr), _ = processes
    assert code == 0, stderr
    store, out = folder / "run.zarr", tmp_path_factory.mktemp("rf") / "report"
    code, stdout, stderr = run_main(["rf", store, "--layers", *RF_LAYERS, "--units", *RF_UNITS, "--k", RF_K,
                                     "--window", RF_WINDOW, "--stride", RF_WINDOW, "--device", "cpu", "--out", out])
    assert code == 0, stderr
    return store, out, stdout


def test_rf_table_against_theory(rf_run, loaded):
    from neuroprobe.maps import theoretical_receptive_fields

    _, out, stdout = rf_run
    table = pd.read_csv(out / "rf.csv")
    assert {"layer", "unit", "k", "theoretical_rf_px", "empirical_rf_px", "ratio", "offset_y", "offset_x"} <= set(table)
    assert len(table) == len(RF_LAYERS) * len(RF_UNITS)
    assert sorted(zip(table.layer, table.unit)) == sorted((l, u) for l in RF_LAYERS for u in RF_UNITS)
    assert (table.k == RF_K).all()
    fields = theoretical_receptive_fields(loaded.module, RF_LAYERS, 224).set_index("layer")
    for layer in RF_LAYERS:
        expected = float(np.sqrt(fields.loc[layer, "size_y"] * fields.loc[layer, "size_x"]))
        np.testing.assert_allclose(table.loc[table.layer == layer, "theoretical_rf_px"], expected)
    # by hand: 7x7/2 conv, 3x3/2 pool, four 3x3 convs at jump 4 -> 43; 3x3/2 + three 3x3 at jump 8 -> 99
    assert dict(zip(table.layer, table.theoretical_rf_px)) == {"layer1": 43.0, "layer2": 99.0}
    measured = table.dropna(subset=["empirical_rf_px"])
    assert len(measured) > 0
    np.testing.assert_allclose(measured.ratio, measured.empirical_rf_px / measured.theoretical_rf_px)
    assert (measured.empirical_rf_px > 0).all()
    for layer, size in (("layer1", 43), ("layer2", 99)):
        assert re.search(rf"^\s+{layer}\s+{len(RF_UNITS)} units\s+theoretical\s+{size}\s", stdout, re.M), stdout


def _reference_top(store) -> pd.DataFrame:
    from neuroprobe.analysis import top_images

    top = top_images(store, k=RF_K, criteria=(("max", "top"),))
    top = top[top.layer.isin(RF_LAYERS) & top.unit.isin(RF_UNITS)]
    return top.sort_values(["layer", "unit", "rank"]).reset_index(drop=True)


def test_rf_top_images_are_the_stores(rf_run):
    from neuroprobe.store.layout import read_images

    store, out, _ = rf_run
    expected = _reference_top(store)
    actual = pd.read_csv(out / "top_images.csv").sort_values(["layer", "unit", "rank"]).reset_index(drop=True)
    assert len(actual) == len(expected) == len(RF_LAYERS) * len(RF_UNITS) * RF_K
    for column in ("layer", "unit", "rank"):
        assert actual[column].tolist() == expected[column].tolist(), column
    np.testing.assert_allclose(actual["value"], expected["value"], rtol=1e-6)
    rows = actual["store_image"] if "store_image" in actual else actual["image"]
    assert rows.tolist() == expected["image"].tolist()
    paths = read_images(store)["path"].to_numpy()
    assert [Path(p).name for p in actual["path"]] == [Path(p).name for p in paths[expected["image"]]]


def test_rf_top_images_image_column_is_the_store_row(rf_run):
    store, out, _ = rf_run
    expected = _reference_top(store)
    actual = pd.read_csv(out / "top_images.csv").sort_values(["layer", "unit", "rank"]).reset_index(drop=True)
    assert actual["image"].tolist() == expected["image"].tolist()


def test_rf_figures_are_real_images(rf_run):
    _, out, _ = rf_run
    for name in [f"rf_{layer}.png" for layer in RF_LAYERS] + ["rf_size_by_depth.png"]:
        with Image.open(out / name) as image:
            width, height = image.size
            pixels = np.asarray(image.convert("RGB"))
        assert width > 100 and height > 100, name
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10, name
