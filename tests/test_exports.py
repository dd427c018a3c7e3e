"""Exports read back by their own ecosystem's readers (xarray, rsatoolbox), compared with the store's arrays.

Every export but hdf5 leaves out the unreadable images; the ``image`` coordinate maps each kept row
back to the store.
"""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import xarray as xr
import zarr
from helpers_robustness import PYTHON, ROOT, cli_env
from helpers_stores import STATS, synthetic

from neuroprobe.analysis import rdm
from neuroprobe.cli import main
from neuroprobe.errors import NeuroprobeError
from neuroprobe.exports import export


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    path, table, values, maps, failed = synthetic(folder / "syn.zarr")
    return folder, path, table, values, maps, failed


def test_netcdf_groups_equal_the_store(store):
    folder, path, table, values, _, failed = store
    target = export(path, folder / "pooled.nc", "netcdf")
    ok = ~failed
    for layer in ("conv", "fc"):
        ds = xr.open_dataset(target, group=layer)
        assert set(ds.data_vars) == set(STATS)
        assert ds.sizes == {"image": ok.sum(), "unit": values[layer]["mean"].shape[1]}
        np.testing.assert_array_equal(ds["image"].values, np.flatnonzero(ok))
        for stat in STATS:
            np.testing.assert_array_equal(ds[stat].values, values[layer][stat][ok])
        np.testing.assert_array_equal(ds["path"].values, table.path[ok].to_numpy())
        np.testing.assert_array_equal(ds["class_index"].values, table.class_index[ok].to_numpy())
        assert ds["flipped"].dtype == bool
        np.testing.assert_array_equal(ds["flipped"].values, table.flipped[ok].to_numpy())
        assert list(ds["stimulus_id"].values[:2]) == ["img000", "img001"]
    assert xr.open_dataset(target).attrs["provenance"] == '{"model": "synthetic"}'
    one = xr.open_dataset(export(path, folder / "mean.nc", "netcdf", stat="max", layers=["fc"]), group="fc")
    assert list(one.data_vars) == ["max"]


def test_brainscore_assembly_holds_maps_per_position_and_pooled_units(store):
    folder, path, table, values, maps, failed = store
    target = export(path, folder / "assembly.nc", "brainscore", stat="max")
    ok = ~failed
    assembly = xr.open_dataarray(target)
    assert assembly.dims == ("presentation", "neuroid")
    conv = assembly.sel(neuroid=(assembly.layer == "conv").values)
    assert conv.sizes["neuroid"] == 5 * 3 * 4
    # each conv neuroid is the stored float16 map at its (channel, y, x), independently indexed
    for k in range(conv.sizes["neuroid"]):
        c, y, x = (int(conv[coord].values[k]) for coord in ("channel", "channel_y", "channel_x"))
        np.testing.assert_array_equal(conv.values[:, k], maps["conv"][ok][:, c, y, x].astype(np.float32))
    fc = assembly.sel(neuroid=(assembly.layer == "fc").values)
    np.testing.assert_array_equal(fc.values, values["fc"]["max"][ok])
    np.testing.assert_array_equal(fc.channel.values, np.arange(6))
    assert np.isnan(fc.channel_x.values).all() and np.isnan(fc.channel_y.values).all()
    np.testing.assert_array_equal(assembly.stimulus_id.values, [p.split("/")[1][:-4] for p in table.path[ok]])
    np.testing.assert_array_equal(assembly.class_name.values, table.class_name[ok].to_numpy())
    # the documented recipe gives Brain-Score's multi-indexes back
    indexed = assembly.set_index(presentation=assembly.attrs["presentation_index"].split(),
                                 neuroid=assembly.attrs["neuroid_index"].split())
    assert indexed.sel(stimulus_id="img005", image=5).sizes == {"neuroid": 60 + 6}
    pooled = xr.open_dataarray(export(path, folder / "pooled-assembly.nc", "brainscore", spatial=False,
                                      layers=["conv"], id_column="path"))
    np.testing.assert_array_equal(pooled.values, values["conv"]["mean"][ok])
    np.testing.assert_array_equal(pooled.stimulus_id.values, table.path[ok].to_numpy())


def test_rsatoolbox_dataset_loads_without_neuroprobe(store):
    folder, path, table, values, _, failed = store
    target = folder / "dataset.h5"
    ok = ~failed
    script = ("import sys, numpy as np, rsatoolbox; d = rsatoolbox.data.load_dataset(sys.argv[1], file_type='hdf5');"
              "np.save(sys.argv[2], d.measurements); print(d.descriptors['stat'], "
              "' '.join(d.obs_descriptors['class_name'])); "
              "assert 'neuroprobe' not in sys.modules")
    result = subprocess.run([PYTHON, "-m", "neuroprobe", "export", str(path), str(target), "--to", "rsatoolbox",
                             "--stat", "area"], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("dataset.h5")
    read = subprocess.run([PYTHON, "-c", script, str(target), str(folder / "m.npy")], capture_output=True, text=True,
                          timeout=300)
    assert read.returncode == 0, read.stderr
    stat, names = read.stdout.strip().split(" ", 1)
    assert stat == "area"
    measurements = np.load(folder / "m.npy")
    np.testing.assert_array_equal(measurements, np.hstack([values["conv"]["area"], values["fc"]["area"]])[ok])
    assert names.split() == list(table.class_name[ok])


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # inside rsatoolbox's calc_rdm
def test_rsatoolbox_descriptors(store):
    import rsatoolbox

    folder, path, table, values, _, failed = store
    target = export(path, folder / "fc.h5", "rsatoolbox", layers=["fc"])
    data = rsatoolbox.data.load_dataset(str(target), file_type="hdf5")
    ok = ~failed
    np.testing.assert_array_equal(data.measurements, values["fc"]["mean"][ok])
    np.testing.assert_array_equal(data.obs_descriptors["image"], np.flatnonzero(ok))
    np.testing.assert_array_equal(data.obs_descriptors["class_index"], table.class_index[ok])
    np.testing.assert_array_equal(data.channel_descriptors["unit"], np.arange(6))
    assert list(data.channel_descriptors["layer"]) == ["fc"] * 6
    assert data.descriptors["model"] == "synthetic" and data.descriptors["stat"] == "mean"
    # rsatoolbox's own analyses run on it
    rdms = rsatoolbox.rdm.calc_rdm(data, method="correlation", descriptor="class_name")
    assert rdms.n_cond == 4
    # and its RDM of the exported dataset is neuroprobe's rdm() of the store
    expected = rsatoolbox.rdm.calc_rdm(data, method="euclidean").get_matrices()[0]
    np.testing.assert_allclose(rdm(path, "fc", method="euclidean").values, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("args, words", [
    (["--to", "netcdf", "--stat", "median"], ["unknown statistic 'median'", "mean", "--stat"]),
    (["--to", "brainscore", "--layers", "fcc"], ["layer 'fcc'", "fc"]),
    (["--to", "brainscore", "--id-column", "nope"], ["no column 'nope'", "--id-column", "class_name"]),
    (["--to", "rsatoolbox", "--id-column", "class_name"], ["names several images", "--id-column"]),
    (["--layers", "fc"], ["--to hdf5 copies the whole store", "--layers"]),
])
def test_mistakes_give_one_line(store, capsys, args, words):
    folder, path, *_ = store
    assert main(["export", str(path), str(folder / "x.out"), *args]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("neuroprobe: error:")
    for word in words:
        assert word in line, (word, line)
    assert not list(folder.glob("x.out*"))


def test_target_in_missing_folder(store, capsys):
    folder, path, *_ = store
    assert main(["export", str(path), str(folder / "nowhere" / "a.nc"), "--to", "netcdf"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_rows_not_extracted_yet_are_left_out_like_unreadable_ones(tmp_path, caplog):
    """A store whose chunk 1 (rows 7-13) was never written is refused; with allow_incomplete, every export and the
    RDM skip those rows alike."""
    path, table, values, _, failed = synthetic(tmp_path / "partial.zarr", chunks=[0, 2, 3, 4, 5])
    with pytest.raises(NeuroprobeError, match="33 of 40 images done"):
        export(path, tmp_path / "refused.nc", "brainscore")
    with pytest.raises(NeuroprobeError, match="incomplete"):
        rdm(path, "fc")
    kept = ~failed
    kept[7:14] = False
    assembly = xr.open_dataarray(export(path, tmp_path / "a.nc", "brainscore", spatial=False, allow_incomplete=True))
    np.testing.assert_array_equal(assembly.image.values, np.flatnonzero(kept))
    np.testing.assert_array_equal(assembly.values, np.hstack([values["conv"]["mean"], values["fc"]["mean"]])[kept])
    assert "leaving out 2 unreadable and 7 not yet extracted images (of 40)" in caplog.text
    partial = rdm(path, "fc", allow_incomplete=True)
    np.testing.assert_array_equal(partial["image"].values, np.flatnonzero(kept))
    assert partial.attrs["completeness"] == "incomplete store: 33 of 40 images"
