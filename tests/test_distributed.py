"""``torchrun --nproc-per-node 2 -m neuroprobe extract`` (gloo on CPU) gives the store of one process.

Both sides run with one thread per process (torchrun's default, OMP_NUM_THREADS=1), so that the
forward passes are the same computations and the stores can be compared bit for bit.
"""
from __future__ import annotations

import re
import subprocess

import pandas as pd
import pytest
import torch
from helpers_robustness import BIN, ROOT, assert_stores_equal, cli_env, sample_with_bad

import neuroprobe

LAYERS = ["blocks.3", "bn2"]
TORCHRUN = BIN / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_torchrun_two_processes_equal_one(tmp_path):
    csv, bad_rows = sample_with_bad(tmp_path / "data", {3: "truncated.jpg", 22: "empty.jpg"})
    n_images = len(pd.read_csv(csv))
    options = dict(spatial=["blocks.3"], chunk_size=4, batch_size=4, device="cpu", progress=False)
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "neuroprobe", "extract",
               "--data", str(csv), "--layers", *LAYERS, "--out", str(tmp_path / "two.zarr"), "--spatial", "blocks.3",
               "--chunk-size", "4", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    result = subprocess.run(command, cwd=ROOT, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"{n_images} images, 0 already done, 11 chunks to do over 2 process\(es\)", result.stderr)
    assert len(re.findall(r"extract: \d+ img in", result.stderr)) == 2  # both processes did work
    assert len(re.findall(r"^images ", result.stdout, re.M)) == 1  # one summary, printed by rank 0
    assert re.search(rf"images\s+{n_images}: 40 done, 2 skipped \(unreadable\), 0 missing", result.stdout)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        neuroprobe.extract("efficientnet_lite0", csv, LAYERS, tmp_path / "one.zarr", **options,
                           extra_attrs={"command": "in-process"})
    finally:
        torch.set_num_threads(threads)
    assert_stores_equal(tmp_path / "two.zarr", tmp_path / "one.zarr")
    status = neuroprobe.read_images(tmp_path / "two.zarr").status
    assert [i for i, s in enumerate(status) if s == "error"] == bad_rows
