"""Fixtures shared by the map-store CLI tests (occlude, saliency): ResNet-18 with seeded random weights
from a file, and three sample images of which the one at BAD_ROW is garbage bytes."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuroprobe.cli import main

BAD_ROW = 1                                                    # the corrupt file's row in the CSV


def run_main(args: list) -> tuple[int, str, str]:
    """``python -m neuroprobe ARGS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def weights(random_weights) -> Path:
    return random_weights("resnet18")


@pytest.fixture(scope="module")
def loaded(weights):
    from neuroprobe import load_model

    return load_model("resnet18", str(weights))


@pytest.fixture(scope="module")
def data3(small_csv, tmp_path_factory) -> Path:
    """Three images copied beside a CSV; the copy at BAD_ROW is overwritten with garbage bytes."""
    table = pd.read_csv(small_csv).iloc[:3].reset_index(drop=True)
    folder = tmp_path_factory.mktemp("data3")
    for row, path in enumerate(table.path):
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        content = (small_csv.parent / path).read_bytes()
        if row == BAD_ROW:
            content = np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes()
        target.write_bytes(content)
    table.to_csv(folder / "labels.csv", index=False)
    return folder / "labels.csv"
