"""Unit analyses from stores against independent NumPy/Python computations of the same definitions."""
from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import stats as sps

from neuroprobe.analysis import analyze, category_membership, opponent, selectivity, top_images
from neuroprobe.data import Manifest
from neuroprobe.models.capture import LayerInfo
from neuroprobe.store.layout import Store

scan_module = importlib.import_module("neuroprobe.analysis.scan")

STATS = ("min", "mean", "max", "area")
EPS = 1e-6


def make_store(path, values: dict[str, dict[str, np.ndarray]], table: pd.DataFrame, chunk: int = 7,
               failed: np.ndarray | None = None):
    """A real store (Store.create + write_chunk) holding the given statistics."""
    n = len(table)
    layers = {name: LayerInfo(name, "Synthetic", (v["mean"].shape[1], 3, 3), "pre-activation: output", 1)
              for name, v in values.items()}
    store = Store.create(path, Manifest(table, path.parent), layers, {"provenance": {"model": "synthetic"}}, chunk)
    ok = np.ones(n, bool) if failed is None else ~failed
    for c in range(store.n_chunks):
        rows = store.chunk_rows(c)
        sl = slice(rows.start, rows.stop)
        stats = {name: np.stack([v[s][sl] for s in STATS]).astype(np.float32).copy() for name, v in values.items()}
        store.write_chunk(c, stats, {}, ok[sl].copy(), ["" if o else "broken" for o in ok[sl]])
    return path


def random_layer(rng, n, units, ties=False):
    mean = rng.normal(size=(n, units)).astype(np.float32)
    if ties:
        mean = np.round(mean * 2) / 2
    spread = rng.uniform(0.1, 2, size=(n, units)).astype(np.float32)
    return {"mean": mean, "min": mean - spread, "max": mean + spread,
            "area": np.round(rng.uniform(size=(n, units)) * 9) / 9}


@pytest.fixture()
def small_reads(monkeypatch):
    """Read one store chunk at a time, so every test exercises the streaming path."""
    monkeypatch.setattr(scan_module, "READ_BYTES", 1)


@pytest.fixture()
def synthetic(tmp_path, small_reads):
    rng = np.random.default_rng(42)
    n, units = 240, 6
    classes = rng.integers(140, 280, size=n)
    table = pd.DataFrame({"path": [f"img{i}.jpg" for i in range(n)], "class_index": classes.astype(float)})
    table.loc[rng.choice(n, 15, replace=False), "class_index"] = np.nan  # unlabelled images
    failed = np.zeros(n, bool)
    failed[rng.choice(n, 5, replace=False)] = True
    layer = random_layer(rng, n, units, ties=True)
    dog = table.class_index.between(151, 268).to_numpy()
    layer["mean"][:, 0] = np.where(dog, rng.uniform(1, 2, n), 0.0)   # responds to dogs only
    layer["mean"][:, 1] = rng.normal(size=n)                          # indifferent
    for stat in STATS:
        layer[stat][failed] = np.nan
    store = make_store(tmp_path / "syn.zarr", {"conv": layer, "fc": random_layer(rng, n, 3)}, table, failed=failed)
    return store, table, layer, failed


def reference_indices(values, member, classes, normalization="minmax"):
    """Malakhova, balanced and Morcos per unit, by a plain loop."""
    out = {"malakhova": [], "balanced": [], "morcos": []}
    for u in range(values.shape[1]):
        a = values[:, u].astype(np.float64)
        norm = (a - a.min()) / (a.max() - a.min()) if normalization == "minmax" else np.maximum(a, 0) / a.max()
        out["malakhova"].append(norm[member].sum() / (norm.sum() + EPS))
        mc, mr = norm[member].mean(), norm[~member].mean()
        out["balanced"].append(mc / (mc + mr + EPS))
        means = np.array([norm[classes == c].mean() for c in np.unique(classes)])
        top = means.max()
        rest = (means.sum() - top) / (len(means) - 1)
        out["morcos"].append((top - rest) / (top + rest + EPS))
    return out


@pytest.mark.parametrize("normalization", ["minmax", "rectify"])
@pytest.mark.parametrize("stat", ["mean", "max"])
def test_indices_equal_numpy(synthetic, stat, normalization):
    store, table, layer, failed = synthetic
    result = selectivity(store, "dog", layers=["conv"], stat=stat, normalization=normalization, permutations=0)
    analysed = table.class_index.notna().to_numpy() & ~failed
    member = table.class_index.between(151, 268).to_numpy()[analysed]
    want = reference_indices(layer[stat][analysed], member, table.class_index.to_numpy()[analysed], normalization)
    for index, values in want.items():
        got = result[result["index"] == index].sort_values("unit")["value"].to_numpy()
        np.testing.assert_allclose(got, values, rtol=1e-6, err_msg=index)
    mal = result[result["index"] == "malakhova"].set_index("unit")
    assert (mal["selective"] == (mal["value"] >= 0.65)).all()


def test_dog_only_unit_scores_one_and_indifferent_unit_scores_chance(synthetic):
    store, table, layer, failed = synthetic
    result = selectivity(store, "dog", layers=["conv"], permutations=500, seed=1).set_index(["index", "unit"])
    analysed = table.class_index.notna().to_numpy() & ~failed
    share = table.class_index.between(151, 268).to_numpy()[analysed].mean()
    assert result.loc[("malakhova", 0), "value"] == pytest.approx(1.0, abs=1e-5)
    assert result.loc[("balanced", 0), "value"] == pytest.approx(1.0, abs=1e-5)
    assert result.loc[("malakhova", 0), "selective"] and result.loc[("malakhova", 0), "p"] < 0.01
    assert result.loc[("malakhova", 1), "value"] == pytest.approx(share, abs=0.06)
    assert result.loc[("balanced", 1), "value"] == pytest.approx(0.5, abs=0.08)


def test_unlabelled_images_are_excluded_not_negatives(tmp_path, small_reads):
    """Changing what unlabelled images respond does not change any index."""
    rng = np.random.default_rng(3)
    n = 60
    table = pd.DataFrame({"path": [f"{i}.jpg" for i in range(n)], "class_index": rng.integers(100, 300, n).astype(float)})
    table.loc[:9, "class_index"] = np.nan
    layer = random_layer(rng, n, 4)
    other = {k: v.copy() for k, v in layer.items()}
    for stat in STATS:
        other[stat][:10] = rng.normal(size=(10, 4)) * 100
    a = selectivity(make_store(tmp_path / "a.zarr", {"l": layer}, table), permutations=0)
    b = selectivity(make_store(tmp_path / "b.zarr", {"l": other}, table), permutations=0)
    np.testing.assert_allclose(a["value"], b["value"], rtol=1e-9)


def test_permutation_null_is_uniform_and_matches_numpy(tmp_path, small_reads):
    """Random labels: p-values spread uniformly; one unit's p agrees with a NumPy permutation test."""
    rng = np.random.default_rng(7)
    n, units = 300, 200
    table = pd.DataFrame({"path": [f"{i}.jpg" for i in range(n)], "class_index": rng.integers(0, 1000, n)})
    layer = random_layer(rng, n, units)
    store = make_store(tmp_path / "null.zarr", {"l": layer}, table, chunk=32)
    result = selectivity(store, permutations=400, seed=5, classes=None)
    p = result[result["index"] == "malakhova"]["p"].to_numpy()
    assert sps.kstest(p, "uniform").pvalue > 0.01
    assert 0.02 < (p < 0.05).mean() < 0.09
    member = table.class_index.between(151, 268).to_numpy()
    a = layer["mean"][:, 0].astype(np.float64)
    observed = a[member].sum()
    null = np.array([a[rng.permutation(member)].sum() for _ in range(4000)])
    p_numpy = (1 + (null >= observed).sum()) / (1 + null.size)
    assert p[0] == pytest.approx(p_numpy, abs=0.06)


def test_topk_equals_python_sort_with_ties_by_image_order(synthetic):
    store, table, layer, failed = synthetic
    got = top_images(store, k=5, layers=["conv"])
    for (stat, direction), group in got.groupby(["criterion", "direction"]):
        for unit, rows in group.groupby("unit"):
            col = layer[stat][:, unit]
            valid = [i for i in range(len(col)) if not np.isnan(col[i])]
            sign = -1 if direction == "top" else 1
            want = sorted(valid, key=lambda i: (sign * col[i], i))[:5]
            assert list(rows.sort_values("rank")["image"]) == want, (stat, direction, unit)
            np.testing.assert_allclose(rows.sort_values("rank")["value"], col[want])
    assert not set(got["image"]) & set(np.flatnonzero(failed))


def test_opponent_counts_equal_numpy(synthetic):
    store, table, layer, failed = synthetic
    got = opponent(store, "dog", n=20, layers=["conv"]).set_index("unit")
    labelled = table.class_index.notna().to_numpy() & ~failed
    dog = table.class_index.between(151, 268).to_numpy()
    for unit in range(layer["mean"].shape[1]):
        pool = [i for i in np.flatnonzero(labelled)]
        top = sorted(pool, key=lambda i: (-layer["max"][i, unit], i))[:20]
        bottom = sorted(pool, key=lambda i: (layer["min"][i, unit], i))[:20]
        assert got.loc[unit, "positive_in_category"] == dog[top].sum()
        assert got.loc[unit, "negative_in_category"] == dog[bottom].sum()


def test_single_pass_equals_separate_calls(synthetic):
    store = synthetic[0]
    together = analyze(store, "dog", k=4, n=10, permutations=50, seed=3)
    pd.testing.assert_frame_equal(together["selectivity"], selectivity(store, "dog", permutations=50, seed=3))
    pd.testing.assert_frame_equal(together["topk"], top_images(store, k=4))
    pd.testing.assert_frame_equal(together["opponent"], opponent(store, "dog", n=10))


def test_categories_from_column_mapping_and_builtin(tmp_path):
    table = pd.DataFrame({"path": ["a", "b", "c", "d", "e"], "label": ["cat", "dog", "", "wolf", "cat"],
                          "class_index": [151, 300, np.nan, 268, 269], "status": ["ok"] * 4 + ["error"]})
    np.testing.assert_array_equal(category_membership(table, "cat", column="label"), [1, 0, np.nan, 0, np.nan])
    mapping = tmp_path / "map.csv"
    mapping.write_text("label,category\ncat,feline\nwolf,canine\ndog,canine\n")
    np.testing.assert_array_equal(category_membership(table, "canine", mapping=mapping), [0, 1, np.nan, 1, np.nan])
    np.testing.assert_array_equal(category_membership(table, "dog"), [1, 0, np.nan, 1, np.nan])


def test_real_store_report(tmp_path, small_csv):
    """The report on a real extraction: CSVs equal NumPy on the stored arrays, figures are written."""
    from neuroprobe import extract
    from neuroprobe.analysis.report import report

    store = extract("efficientnet_lite0", small_csv, ["blocks.3"], tmp_path / "r.zarr", progress=False)
    summary = report(store, tmp_path / "rep", "dog", k=2, n=3, permutations=20, rdm_by="class_index")
    for name in ("selectivity.csv", "topk.csv", "opponent.csv", "summary.csv", "selectivity.png", "opponent_blocks.3.png",
                 "rdm_blocks.3.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    rdm_table = pd.read_csv(tmp_path / "rep" / "rdm_blocks.3.csv", index_col=0)  # category means: 1 - r
    classes = sorted(pd.read_csv(small_csv).class_index.unique())
    assert list(rdm_table.index) == classes and rdm_table.shape == (len(classes), len(classes))
    means = zarr.open_group(str(store), mode="r")["blocks.3/mean"][:].astype(float)
    by_class = np.stack([means[pd.read_csv(small_csv).class_index.to_numpy() == c].mean(0) for c in classes])
    np.testing.assert_allclose(rdm_table.to_numpy(), 1 - np.corrcoef(by_class), atol=1e-9)
    mean = zarr.open_group(str(store), mode="r")["blocks.3/mean"][:]
    table = pd.read_csv(small_csv)
    member = table.class_index.between(151, 268).to_numpy()
    want = reference_indices(mean, member, table.class_index.to_numpy())["malakhova"]
    sel = pd.read_csv(tmp_path / "rep" / "selectivity.csv")
    got = sel[sel["index"] == "malakhova"].sort_values("unit")["value"]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert summary.loc[0, "selective"] == int((np.asarray(want) >= 0.65).sum())
    assert len(list((tmp_path / "rep").glob("unit_blocks.3_*.png"))) == 3


def test_verify_catches_a_stale_store(tmp_path, small_csv):
    from neuroprobe import extract
    from neuroprobe.analysis.verify import verify

    store = extract("efficientnet_lite0", small_csv, ["bn2"], tmp_path / "v.zarr", progress=False)
    top = top_images(store, k=2, layers=["bn2"], criteria=[("max", "top")])
    top = top[top.unit < 8]
    assert verify(store, top)["agrees"].all()
    tampered = zarr.open_group(str(store), mode="r+")["bn2/max"]
    row, unit = int(top.iloc[0]["image"]), int(top.iloc[0]["unit"])
    tampered[row, unit] = tampered[row, unit] + 1.0
    checked = verify(store, top_images(store, k=2, layers=["bn2"], criteria=[("max", "top")]).query("unit < 8"))
    bad = checked[~checked["agrees"]]
    assert list(zip(bad["image"], bad["unit"], strict=False)) == [(row, unit)]


@pytest.mark.parametrize("largest", [True, False])
def test_running_topk_exact_with_ties_nan_and_signed_zero(largest):
    from neuroprobe.analysis.running import RunningTopK

    rng = np.random.default_rng(11)
    values = rng.integers(-2, 3, size=(500, 7)).astype(np.float32)
    values[rng.random(values.shape) < 0.05] = np.nan
    values[rng.random(values.shape) < 0.1] = -0.0
    values[:, 6] = 1.0  # one unit where everything ties
    running = RunningTopK(9, largest)
    for lo in range(0, 500, 37):
        running.add(values[lo:lo + 37], np.arange(lo, min(lo + 37, 500)))
    rows, got = running.result()
    for unit in range(7):
        col = values[:, unit]
        valid = [i for i in range(500) if not np.isnan(col[i])]
        want = sorted(valid, key=lambda i: ((-1 if largest else 1) * (col[i] + 0.0), i))[:9]
        assert list(rows[:, unit]) == want
        np.testing.assert_array_equal(got[:, unit], col[want] + 0.0)
