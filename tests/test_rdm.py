"""RDMs from a store against rsatoolbox's calc_rdm on the same data, and against a NumPy loop."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import rsatoolbox
import zarr
from helpers_stores import synthetic

from neuroprobe.analysis import rdm
from neuroprobe.errors import NeuroprobeError

scan_module = importlib.import_module("neuroprobe.analysis.scan")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic(tmp_path_factory.mktemp("rdm") / "syn.zarr", n=61, seed=3, chunk=6)


@pytest.fixture()
def small_reads(monkeypatch):
    """Read one store chunk at a time, so that the RDM is assembled from many tiles."""
    monkeypatch.setattr(scan_module, "READ_BYTES", 1)


def reference(values, table, ok, method, by=None):
    """rsatoolbox's calc_rdm on the same float32 values (as float64), as a square matrix and its labels."""
    data = rsatoolbox.data.Dataset(values[ok].astype(np.float64),
                                   obs_descriptors={"class_name": table.class_name[ok].to_numpy()})
    rdms = rsatoolbox.rdm.calc_rdm(data, method=method, descriptor=by)
    labels = rdms.pattern_descriptors[by] if by else np.flatnonzero(ok)
    return rdms.get_matrices()[0], np.asarray(labels)


@pytest.mark.parametrize("method", ["correlation", "euclidean"])
@pytest.mark.parametrize("memory", [1, 1 << 30])  # one cached block per pass, or all of them in one pass
def test_image_rdm_equals_rsatoolbox(store, small_reads, method, memory):
    path, table, values, _, failed = store
    for layer in ("conv", "fc"):
        result = rdm(path, layer, "mean", method, memory=memory)
        expected, labels = reference(values[layer]["mean"], table, ~failed, method)
        np.testing.assert_array_equal(result["condition_a"].values, labels)
        np.testing.assert_array_equal(result["image"].values, labels)
        np.testing.assert_allclose(result.values, expected, rtol=1e-6, atol=1e-6)
        assert result.attrs["method"] == method and result.attrs["units"] == values[layer]["mean"].shape[1]


@pytest.mark.parametrize("method", ["correlation", "euclidean"])
def test_category_rdm_equals_rsatoolbox(store, small_reads, method):
    path, table, values, _, failed = store
    result = rdm(path, "fc", "max", method, by="class_name")
    expected, labels = reference(values["fc"]["max"], table, ~failed, method, by="class_name")
    order = np.argsort(labels)  # rsatoolbox: order of first appearance; neuroprobe: sorted
    assert list(result["condition_a"].values) == sorted(labels)
    np.testing.assert_allclose(result.values, expected[np.ix_(order, order)], rtol=1e-6, atol=1e-6)
    counts = table.class_name[~failed].value_counts()
    assert dict(zip(result["class_name"].values, result["n_images"].values)) == counts.to_dict()


def test_definitions_by_a_numpy_loop(store):
    path, table, values, _, failed = store
    x = values["fc"]["min"][~failed].astype(np.float64)
    corr = rdm(path, "fc", "min", "correlation").values
    euc = rdm(path, "fc", "min", "euclidean").values
    for i, j in [(0, 1), (3, 17), (20, 5)]:
        assert corr[i, j] == pytest.approx(1 - np.corrcoef(x[i], x[j])[0, 1], abs=1e-12)
        assert euc[i, j] == pytest.approx(np.sum((x[i] - x[j]) ** 2) / x.shape[1], rel=1e-10)


def test_written_to_zarr_equals_in_memory(store, small_reads, tmp_path):
    path, *_ = store
    in_memory = rdm(path, "conv", method="euclidean")
    on_disk = rdm(path, "conv", method="euclidean", out=tmp_path / "rdm.zarr", memory=1)
    assert on_disk.dtype == np.float32
    np.testing.assert_allclose(on_disk.values, in_memory.values, rtol=1e-6)
    raw = zarr.open_array(str(tmp_path / "rdm.zarr" / "dissimilarity"), mode="r")
    assert raw.shape == in_memory.shape and raw.attrs["method"] == "euclidean"
    np.testing.assert_array_equal(on_disk["path"].values, in_memory["path"].values)


def test_mistakes(store):
    path, *_ = store
    cases = [(dict(method="cosine"), "unknown RDM method 'cosine'"), (dict(stat="median"), "unknown statistic"),
             (dict(by="species"), "no column 'species'"), (dict(layer="fcc"), "layer 'fcc'"),
             (dict(max_bytes=100), "out='rdm.zarr'")]
    for options, words in cases:
        options = {"layer": "fc"} | options
        with pytest.raises(NeuroprobeError, match=words):
            rdm(path, **options)
    with pytest.raises(NeuroprobeError, match="not an RDM"):  # never replaces what it did not write
        rdm(path, "fc", out=path)
    assert (path / "fc" / "mean").exists()


def test_figure_orders_images_by_category(store):
    import matplotlib.pyplot as plt

    from neuroprobe.analysis.plots import rdm_figure

    path, table, _, _, failed = store
    result = rdm(path, "conv")
    fig = rdm_figure(result, "class_name")
    shown = fig.axes[0].images[0].get_array()
    names = table.class_name[~failed].to_numpy()
    order = np.argsort(names, kind="stable")
    np.testing.assert_allclose(shown, result.values[np.ix_(order, order)])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == sorted(set(names))
    plt.close(fig)
