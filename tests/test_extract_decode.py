"""``extract(decode="gpu")`` (on the CPU: torchvision's decoder behind the device interface) equals ``decode="cpu"``."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers_robustness import sample_with_bad

from neuroprobe import extract, open_layer, read_images
from neuroprobe.errors import NeuroprobeError

LAYERS = ["layer1", "layer3"]


def test_device_decoding_gives_the_cpu_store_within_the_decoder_tolerance(tmp_path, random_weights):
    csv, bad_rows = sample_with_bad(tmp_path / "data", {2: "truncated.jpg", 5: "notes.png", 9: "bomb.png"})
    table = pd.read_csv(csv).iloc[:14]
    table.to_csv(csv, index=False)
    options = dict(weights=str(random_weights("resnet18")), batch_size=4, chunk_size=8, progress=False, device="cpu")
    cpu = extract("resnet18", csv, LAYERS, tmp_path / "cpu.zarr", **options)
    dev = extract("resnet18", csv, LAYERS, tmp_path / "dev.zarr", decode="gpu", **options)
    a, b = read_images(cpu), read_images(dev)
    pd.testing.assert_frame_equal(a, b)  # the same status and reason for every file
    assert list(np.flatnonzero(a.status != "ok")) == bad_rows
    for layer in LAYERS:
        x, y = open_layer(cpu, layer), open_layer(dev, layer)
        for stat in ("min", "mean", "max"):
            ref, got = x[stat].values, y[stat].values
            assert np.isnan(got[bad_rows]).all()
            good = np.isfinite(ref).all(axis=1)
            # pixels differ by <= 2 levels on < 0.01% of them: pooled values move by far less than their spread
            scale = np.nanstd(ref[good])
            assert np.abs(got[good] - ref[good]).mean() < 1e-2 * scale, (layer, stat)


def test_a_store_keeps_its_decoder(tmp_path, random_weights, small_csv):
    options = dict(weights=str(random_weights("resnet18")), batch_size=4, progress=False, device="cpu")
    out = extract("resnet18", small_csv, ["layer1"], tmp_path / "s.zarr", **options)
    with pytest.raises(NeuroprobeError, match="decode"):
        extract("resnet18", small_csv, ["layer1"], out, decode="gpu", **options)
