"""End to end: stores written by ``extract`` equal NumPy statistics of out-of-place recomputations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import references as ref
import torch
import xarray as xr
import zarr
from conftest import reference_batch

from neuroprobe import extract, load_model, open_layer, read_images, summary
from neuroprobe.models.loading import sha256_of


@pytest.fixture(autouse=True)
def _no_grad():
    """Every test here runs without autograd (and leaves it as it found it)."""
    with torch.no_grad():
        yield
STATS = ("min", "mean", "max", "area")


def assert_store_equals(store, layer: str, expected: torch.Tensor) -> None:
    """Every statistic of ``layer`` equals the float64 NumPy loop over ``expected`` to 1e-4 relative.

    ``area`` must lie between the fractions of positions > +eps and > -eps (eps = 1e-5 x the layer's
    scale): the store's kernels (channels-last by default) may round a position within eps of 0 either way.
    """
    scale = float(np.abs(expected.numpy()).max())
    want = ref.numpy_stats(expected.numpy(), eps=1e-5 * max(scale, 1.0))
    ds = open_layer(store, layer)
    for stat in STATS:
        got = ds[stat].values
        assert got.dtype == np.float32 and ds[stat].dims == ("image", "unit")
        if stat == "area":
            assert np.all((got >= want["area_low"] - 1e-6) & (got <= want["area_high"] + 1e-6)), f"{layer}/area"
            continue
        np.testing.assert_allclose(got, want[stat], rtol=1e-4, atol=1e-5 * max(scale, 1.0), err_msg=f"{layer}/{stat}")


@pytest.fixture(scope="module")
def offline_store(tmp_path_factory, small_csv):
    out = tmp_path_factory.mktemp("stores") / "offline.zarr"
    extract("efficientnet_lite0", small_csv, ["blocks.3", "blocks.5.0.bn2", "bn2"], out, batch_size=4,
            chunk_size=4, spatial=["blocks.3"], progress=False)
    return out


def test_offline_model_statistics(offline_store, small_csv):
    model = load_model("efficientnet_lite0")
    x = reference_batch(small_csv, model.preprocessing)
    assert_store_equals(offline_store, "blocks.3", ref.effnet_blocks(model.module, x, 3))
    assert_store_equals(offline_store, "blocks.5.0.bn2", ref.effnet_block_bn2(model.module, x, 5, 0, False))
    assert_store_equals(offline_store, "bn2", ref.effnet_head_bn(model.module, x, False))


def test_spatial_maps_are_float16_preactivations(offline_store, small_csv):
    model = load_model("efficientnet_lite0")
    expected = ref.effnet_blocks(model.module, reference_batch(small_csv, model.preprocessing), 3)
    maps = open_layer(offline_store, "blocks.3")["spatial"]
    assert maps.dims == ("image", "unit", "y", "x") and maps.dtype == np.float16
    np.testing.assert_allclose(maps.values.astype(np.float32), expected.numpy(), rtol=2e-3, atol=2e-3)


def test_store_layout_opens_without_neuroprobe(offline_store, small_csv):
    root = zarr.open_group(str(offline_store), mode="r")
    assert root["bn2/mean"].shape == (6, 1280) and root["bn2/mean"].chunks == (4, 1280)
    table = xr.open_zarr(str(offline_store), group="images").to_dataframe()
    manifest = pd.read_csv(small_csv)
    assert list(table["path"]) == list(manifest["path"])
    assert list(table["class_index"]) == list(manifest["class_index"])
    assert (table["status"] == "ok").all()
    attrs = dict(root.attrs)
    assert attrs["provenance"]["weights_sha256"] == sha256_of(attrs["provenance"]["weights"])
    assert attrs["preprocessing"]["interpolation"] == "bicubic" and attrs["preprocessing"]["mean"] == [0.5] * 3
    assert attrs["capture"] == "pre-activation"
    assert root["bn2"].attrs["captured"] == "pre-activation: input of hardtanh"
    assert read_images(offline_store).index.name == "image"
    assert summary(offline_store)["done"] == 6


@pytest.mark.parametrize("name,layers,reference", [
    ("resnet18", ["layer4.1", "layer2.0"],
     lambda m, x: {"layer4.1": ref.resnet_block(m, x, 4, 1, False), "layer2.0": ref.resnet_block(m, x, 2, 0, False)}),
    ("googlenet", ["inception4c", "conv1"],
     lambda m, x: {"inception4c": ref.googlenet_inception(m, x, "inception4c", False),
                   "conv1": ref.googlenet_conv(m, x, "conv1", False)}),
    ("alexnet", ["features.10", "classifier.4"],
     lambda m, x: {k: ref.alexnet_like(m, x, k, False) for k in ("features.10", "classifier.4")}),
])
def test_torchvision_models_from_seeded_state_dict_files(tmp_path, small_csv, random_weights, name, layers, reference):
    weights = random_weights(name)
    out = extract(name, small_csv, layers, tmp_path / f"{name}.zarr", weights=str(weights), batch_size=4,
                  progress=False)
    model = load_model(name, str(weights))
    expected = reference(model.module, reference_batch(small_csv, model.preprocessing))
    for layer in layers:
        assert_store_equals(out, layer, expected[layer])
    provenance = zarr.open_group(str(out), mode="r").attrs["provenance"]
    assert provenance["weights_sha256"] == sha256_of(weights)


def test_post_activation(tmp_path, small_csv):
    out = extract("efficientnet_lite0", small_csv, ["bn2"], tmp_path / "post.zarr", post_activation=True,
                  progress=False)
    model = load_model("efficientnet_lite0")
    assert_store_equals(out, "bn2", ref.effnet_head_bn(model.module, reference_batch(small_csv, model.preprocessing), True))
    assert open_layer(out, "bn2")["min"].values.min() >= 0


def test_values_do_not_depend_on_batch_size(tmp_path, small_csv):
    stores = [extract("efficientnet_lite0", small_csv, ["blocks.3", "bn2"], tmp_path / f"b{b}.zarr", batch_size=b,
                      chunk_size=c, progress=False) for b, c in [(1, 2), (4, 4), (6, 1024)]]
    for layer in ("blocks.3", "bn2"):
        first = open_layer(stores[0], layer)
        for other in stores[1:]:
            for stat in STATS:
                np.testing.assert_allclose(open_layer(other, layer)[stat].values, first[stat].values,
                                           rtol=1e-5, atol=1e-5)


def test_autocast_pools_in_float32(tmp_path, small_csv):
    """Under bf16 autocast the stored values are float32 statistics of the bf16 maps, near the fp32 ones."""
    out = extract("efficientnet_lite0", small_csv, ["bn2"], tmp_path / "bf16.zarr", amp="bf16", progress=False)
    model = load_model("efficientnet_lite0")
    full = ref.effnet_head_bn(model.module, reference_batch(small_csv, model.preprocessing), False)
    got = open_layer(out, "bn2")["mean"].values
    assert got.dtype == np.float32
    want = ref.numpy_stats(full.numpy())["mean"]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
    assert not np.allclose(got, want, rtol=1e-6, atol=0), "bf16 should differ slightly from float32"
