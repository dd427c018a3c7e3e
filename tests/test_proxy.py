"""Object mosaics for the proxy experiment: the map is the photo's cell, the other cells keep only spectra."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from neuroprobe.attention.proxy import object_mosaics, phase_scrambled
from neuroprobe.data import ImageDataset, read_manifest
from neuroprobe.models.loading import load_model

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "labels.csv"


def test_phase_scrambling_keeps_the_amplitude_spectrum_and_removes_the_picture():
    image = ImageDataset(read_manifest(SAMPLE), load_model("efficientnet_lite0").preprocessing)[0][1]
    scrambled = phase_scrambled(image, torch.Generator().manual_seed(0))
    amplitude = [torch.fft.fft2(t.double()).abs() for t in (image, scrambled)]
    # the same spectrum up to the clipping to 0..255 and rounding
    assert (amplitude[0] - amplitude[1]).norm() / amplitude[0].norm() < 0.15
    correlation = np.corrcoef(image.double().ravel(), scrambled.double().ravel())[0, 1]
    assert abs(correlation) < 0.2


def test_object_mosaics_put_the_photo_in_its_cell_and_the_map_on_it():
    loaded = load_model("efficientnet_lite0")
    manifest = read_manifest(SAMPLE)
    labels = manifest.table["class_index"].to_numpy()
    mosaics = object_mosaics(loaded, manifest, range(8), 6, labels, seed=3)
    half = loaded.preprocessing.crop // 2
    dataset = ImageDataset(manifest, loaded.preprocessing)
    tiles = {i: F.interpolate(dataset[i][1][None].float(), size=(half, half), mode="bilinear", antialias=True,
                              align_corners=False)[0].round().to(torch.uint8) for i in range(8)}
    for k in range(6):
        r, c = divmod(int(mosaics.cells[k]), 2)
        tile = mosaics.images[k][:, r * half:(r + 1) * half, c * half:(c + 1) * half]
        matches = [i for i, t in tiles.items() if torch.equal(t, tile)]
        assert len(matches) == 1 and labels[matches[0]] == int(mosaics.labels[k])
        expected = torch.zeros(2 * half, 2 * half)
        expected[r * half:(r + 1) * half, c * half:(c + 1) * half] = 1
        assert torch.equal(mosaics.maps[k], expected)
