"""Map jobs under ``torchrun --nproc-per-node 2`` (gloo on CPU): occlude, saliency and search give the store
of one process, bit for bit, and a store that one process left half done is finished by two.

Both sides run single-threaded (torchrun's default, OMP_NUM_THREADS=1), so the forward passes are the
same computations. Two unreadable files are among the images.
"""
from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from helpers_robustness import BIN, ROOT, assert_stores_equal, cli_env, sample_with_bad

from neuroprobe import load_model
from neuroprobe.maps.occlusion_store import occlude
from neuroprobe.maps.saliency_store import saliency
from neuroprobe.retina.likelihood import likelihood_maps

TORCHRUN = BIN / "torchrun"
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("maps-data")
    csv, _ = sample_with_bad(folder, {2: "truncated.jpg", 5: "empty.jpg"})
    table = pd.read_csv(csv).iloc[:9]
    table.to_csv(folder / "nine.csv", index=False)
    return folder / "nine.csv"


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "neuroprobe", *args, "--device", "cpu",
               "--no-progress"]
    result = subprocess.run(command, cwd=ROOT, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def one_process(job, *args, **kwargs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return job(load_model("efficientnet_lite0"), *args, device="cpu", **kwargs)
    finally:
        torch.set_num_threads(threads)


def array_attrs(path: Path) -> dict[str, dict]:
    group = zarr.open_group(str(path), mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: dict(array.attrs) for name, array in group.arrays()}


def assert_maps_equal(actual: Path, expected: Path) -> None:
    assert_stores_equal(actual, expected)
    assert array_attrs(actual) == array_attrs(expected)


OCCLUDE = ["--layer", "blocks.1", "--units", "0-2", "--window", "56", "--stride", "56"]


def test_two_processes_finish_what_one_left_half_done_and_back(data, tmp_path):
    one = Path(one_process(occlude, data, "blocks.1", tmp_path / "one.zarr", units=[0, 1, 2], window=56, stride=56))
    half = tmp_path / "half.zarr"
    shutil.copytree(one, half)
    group = zarr.open_group(str(half), mode="r+")
    undone = [0, 3, 4, 5, 8]                                  # a readable and an unreadable row among them
    group["done"].oindex[undone] = False
    group["discrepancy"].oindex[undone] = np.nan
    result = torchrun("occlude", *OCCLUDE, "--data", str(data), "--out", str(half))
    assert "5 of 9 images to do" in result.stderr and "over 2 process(es)" in result.stderr
    assert result.stdout.count("store ") == 1                # rank 0 alone prints the summary
    assert_maps_equal(half, one)

    again = tmp_path / "again.zarr"                         # and back: what two left half done, one finishes
    shutil.copytree(half, again)
    group = zarr.open_group(str(again), mode="r+")
    group["done"].oindex[[1, 2, 6]] = False
    group["discrepancy"].oindex[[1, 2, 6]] = np.nan
    one_process(occlude, data, "blocks.1", again, units=[0, 1, 2], window=56, stride=56)
    assert_maps_equal(again, one)


def test_saliency_on_two_processes_equals_one(data, tmp_path):
    two = tmp_path / "two.zarr"
    torchrun("saliency", "--method", "gradient", "--target", "prediction", "--batch-size", "2", "--data", str(data),
             "--out", str(two))
    one = one_process(saliency, data, tmp_path / "one.zarr", "gradient", target="prediction", batch_size=2)
    assert_maps_equal(two, Path(one))


def test_search_on_two_processes_equals_one(data, tmp_path):
    result = torchrun("search", "--grid", "2", "--view", "crop", "--view-size", "64", "--batch-size", "2",
                      "--examples", "1", "--data", str(data), "--out", str(tmp_path / "two"))
    assert result.stdout.count("visual search") == 1          # rank 0 scores the store and prints
    assert (tmp_path / "two" / "summary.csv").is_file()
    one = one_process(likelihood_maps, data, tmp_path / "one.zarr", layout="grid", n=2, view="crop", view_size=64,
                      batch_size=2)
    assert_maps_equal(tmp_path / "two" / "likelihood.zarr", Path(one))
