"""``analyze(..., scheduler=...)`` on a 2-worker LocalCluster equals the single-process tables exactly
(ties, NaN rows of unreadable images, unlabelled images, the permutation null), block by block."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_CSV
from test_analysis import STATS, make_store, random_layer, scan_module

from neuroprobe.analysis import analyze

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

OPTIONS = {"category": "dog", "k": 5, "n": 12, "permutations": 200, "seed": 4}


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


@pytest.fixture()
def tied_store(tmp_path, monkeypatch):
    """Values rounded to halves (many ties across chunks), 6 unreadable images, 12 unlabelled ones."""
    monkeypatch.setattr(scan_module, "READ_BYTES", 1)  # one store chunk per block: many blocks, many merges
    rng = np.random.default_rng(8)
    n = 150
    table = pd.DataFrame({"path": [f"img{i}.jpg" for i in range(n)],
                          "class_index": rng.integers(140, 280, size=n).astype(float)})
    table.loc[rng.choice(n, 12, replace=False), "class_index"] = np.nan
    failed = np.zeros(n, bool)
    failed[rng.choice(n, 6, replace=False)] = True
    layers = {"conv": random_layer(rng, n, 5, ties=True), "fc": random_layer(rng, n, 3, ties=True)}
    for layer in layers.values():
        layer["max"] = np.round(layer["max"])  # ties in every criterion
        for stat in STATS:
            layer[stat][failed] = np.nan
    return make_store(tmp_path / "tied.zarr", layers, table, chunk=9, failed=failed), failed


def assert_tables_equal(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for part in want:
        pd.testing.assert_frame_equal(got[part], want[part], check_exact=True, obj=part)


def test_dask_tables_equal_single_process_exactly(tied_store, client):
    store, failed = tied_store
    want = analyze(store, **OPTIONS)
    got = analyze(store, scheduler=client, **OPTIONS)
    assert_tables_equal(got, want)
    top = want["topk"]
    assert top.duplicated(["layer", "unit", "criterion", "direction", "value"]).any()  # ties were there to break
    assert not set(top["image"]) & set(np.flatnonzero(failed))
    assert want["selectivity"]["p"].notna().any()


def test_dask_redraws_when_a_readable_image_has_nan_values(tied_store, client, caplog):
    """A readable image whose values are NaN (no extraction writes one) changes the permutation counts;
    the dask pass notices and runs the layer again with the counts it found."""
    import zarr

    store, failed = tied_store
    group = zarr.open_group(str(store), mode="r+")
    row = int(np.flatnonzero(~failed & (np.arange(len(failed)) > 20))[0])
    for layer in ("conv", "fc"):
        group[f"{layer}/mean"][row] = np.nan
    want = analyze(store, **OPTIONS)
    assert_tables_equal(analyze(store, scheduler=client, **OPTIONS), want)
    assert "drawing the permutations again" in caplog.text


def test_report_scheduler_address(client, tmp_path, monkeypatch, capsys):
    """``report --scheduler ADDRESS`` writes the same CSV files byte for byte (a store of the sample's images)."""
    from neuroprobe.cli import main
    from neuroprobe.data import Manifest
    from neuroprobe.models.capture import LayerInfo
    from neuroprobe.models.loading import Preprocessing
    from neuroprobe.store.layout import Store

    monkeypatch.setenv("NEUROPROBE_NO_MALLOPT", "1")
    table = pd.read_csv(SAMPLE_CSV)
    n, rng = len(table), np.random.default_rng(2)
    values = random_layer(rng, n, 4, ties=True)
    store = Store.create(tmp_path / "s.zarr", Manifest(table, SAMPLE_CSV.parent),
                         {"conv": LayerInfo("conv", "Synthetic", (4, 3, 3), "pre-activation: output", 1)},
                         {"provenance": {"model": "synthetic"}, "preprocessing": Preprocessing().to_dict()}, 8)
    ok = np.ones(n, bool)
    ok[[3, 17]] = False
    for c in range(store.n_chunks):
        rows = store.chunk_rows(c)
        stats = np.stack([values[stat][rows.start:rows.stop] for stat in STATS]).astype(np.float32)
        store.write_chunk(c, {"conv": stats}, {}, ok[rows.start:rows.stop].copy(), [""] * len(rows))
    args = ["report", str(store.path), "--k", "2", "--n", "5", "--permutations", "50"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--scheduler", client.scheduler.address, "--out", str(tmp_path / "dask")]) == 0
    for name in ("selectivity.csv", "topk.csv", "opponent.csv", "summary.csv"):
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    capsys.readouterr()
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main([*args, "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the dask scheduler at tcp://127.0.0.1:9" in err[0], err


class SequentialPermutation:
    """The permutation generator as it was before draws could be split from placements (the reference)."""

    def __init__(self, n, n_members, permutations, seed):
        self.rng, self.permutations, self.left = np.random.default_rng(seed), permutations, n
        self.members_left = np.full(permutations, n_members, dtype=np.int64)

    def membership(self, observed):
        size = len(observed)
        out = np.zeros((size, 1 + self.permutations), dtype=np.float32)
        out[:, 0] = observed
        if size == 0:
            return out
        take = self.rng.hypergeometric(self.members_left, self.left - self.members_left, size) \
            if self.left > size else self.members_left.copy()
        order = np.argsort(self.rng.random((size, self.permutations)), axis=0)
        chosen = np.arange(size)[:, None] < take[None, :]
        out[order[chosen], np.nonzero(chosen)[1] + 1] = 1
        self.members_left -= take
        self.left -= size
        return out


def test_drawn_permutations_equal_the_sequential_generator_in_any_order():
    """Counts drawn first and placements realised later, last block first, give the same labels as one
    sequential generator (small blocks use the generator's buffered 32-bit draws too)."""
    from neuroprobe.analysis.running import ChunkedPermutation

    rng = np.random.default_rng(1)
    for trial in range(25):
        sizes = list(rng.integers(0, 40, size=rng.integers(1, 12)))
        n, permutations = int(sum(sizes)), int(rng.integers(1, 50))
        members = int(rng.integers(0, n + 1))
        observed = [rng.integers(0, 2, s).astype(np.float32) for s in sizes]
        reference = SequentialPermutation(n, members, permutations, trial)
        want = [reference.membership(o) for o in observed]
        permuter = ChunkedPermutation(n, members, permutations, trial)
        draws = [permuter.draw(len(o)) for o in observed]
        for draw, o, w in reversed(list(zip(draws, observed, want))):
            np.testing.assert_array_equal(draw.membership(o, permutations), w)
