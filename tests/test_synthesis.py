"""Feature visualization against independent references: NumPy FFTs, an out-of-place ResNet block, a store."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import neuroprobe as npb
from neuroprobe.data import read_manifest
from neuroprobe.synthesis import ImageBatch, Transforms, fourier_image, natural_spectrum, visualize
from neuroprobe.synthesis.params import phase_image

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "labels.csv"


def test_fourier_image_equals_a_numpy_inverse_fft():
    rng = np.random.default_rng(0)
    h, w = 12, 10
    spectrum = rng.normal(size=(3, h, w // 2 + 1)) + 1j * rng.normal(size=(3, h, w // 2 + 1))
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    scale = 1 / np.maximum(np.sqrt(fx ** 2 + fy ** 2), 1 / max(h, w))
    expected = np.fft.irfft2(spectrum * scale, s=(h, w), norm="ortho") / 4
    got = fourier_image(torch.from_numpy(spectrum), h, w)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)   # the 1/f scale is float32
    magnitude, phase = np.abs(spectrum), np.angle(spectrum)
    np.testing.assert_allclose(phase_image(torch.from_numpy(magnitude), torch.from_numpy(phase), h, w).numpy(),
                               np.fft.irfft2(magnitude * np.exp(1j * phase), s=(h, w)), atol=1e-12)


def test_maco_keeps_the_magnitude_spectrum_fixed_through_optimization():
    images = torch.stack([npb.data.ImageDataset(read_manifest(SAMPLE), npb.load_model("efficientnet_lite0").preprocessing)[i][1]
                          for i in range(6)])
    spectrum = natural_spectrum(images, 32)
    assert spectrum.shape == (3, 32, 17) and (spectrum[:, 0, 1] > spectrum[:, 0, 8]).all()   # 1/f-like
    batch = ImageBatch("maco", [0, 1], 32, spectrum=spectrum)
    start = batch.values.detach().clone()
    optimizer = torch.optim.Adam(batch.parameters(), lr=0.5)
    for _ in range(5):
        loss = -batch()[:, 0, :16].mean()                  # any objective: redden the upper half
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.allclose(batch.values, start)         # the phase moved
    assert torch.equal(batch.magnitude, spectrum)          # the magnitude is a buffer, untouched
    # the image's spectrum keeps the magnitude (columns 1..W/2-1 are free of the real-FFT symmetry constraints)
    got = torch.fft.rfft2(batch.raw().detach()).abs()[..., 1:16]
    torch.testing.assert_close(got, spectrum.expand(2, -1, -1, -1)[..., 1:16], rtol=1e-4, atol=1e-4)


def test_transforms_are_the_affine_maps_they_claim():
    images = torch.rand(2, 3, 16, 16)
    none = Transforms.none()
    assert torch.equal(none.apply(images, none.draw([torch.Generator()] * 2)), images)
    shift = Transforms(pad=0, jitter=(0, 0), scales=(1.0,), angles=(0.0,))
    moved = shift.apply(images, torch.tensor([[1.0, 0.0, 3.0, 0.0], [1.0, 0.0, 0.0, -2.0]]))
    torch.testing.assert_close(moved[0, :, :, 3:], images[0, :, :, :-3])
    torch.testing.assert_close(moved[1, :, :-2, :], images[1, :, 2:, :])
    turned = shift.apply(images, torch.tensor([[1.0, math.pi / 2, 0.0, 0.0]] * 2))
    torch.testing.assert_close(turned, torch.rot90(images, k=1, dims=(2, 3)), atol=1e-5, rtol=0)
    # a batch draws for each image what that image's generator draws alone
    standard = Transforms()
    together = standard.draw([torch.Generator().manual_seed(s) for s in (5, 9)])
    alone = [standard.draw([torch.Generator().manual_seed(s)]) for s in (5, 9)]
    torch.testing.assert_close(together, torch.cat(alone))


@pytest.fixture(scope="module")
def resnet(random_weights):
    return npb.load_model("resnet18", str(random_weights("resnet18")))


def block_preactivation(model, x: torch.Tensor) -> torch.Tensor:
    """layer1.0's pre-activation written out of place: bn2(conv2(relu(bn1(conv1(x0))))) + x0."""
    m = model.module
    x0 = m.maxpool(F.relu(m.bn1(m.conv1(x))))
    b = m.layer1[0]
    return b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x0))))) + x0


def test_visualize_optimizes_the_pre_activation_and_min_goes_below_every_natural_image(resnet, tmp_path):
    units = [3, 7]
    store = npb.extract(resnet, SAMPLE, ["layer1.0"], tmp_path / "natural.zarr", batch_size=20)
    vis = visualize(resnet, "layer1.0", units, direction="both", steps=24, size=96, store=store, seed=1)
    assert vis.images.dtype == torch.uint8 and vis.images.shape == (4, 3, 96, 96)
    x = resnet.preprocessing.normalize(vis.images)
    with torch.no_grad():
        reference = block_preactivation(resnet, x).mean((2, 3))
    expected = reference[torch.arange(4), torch.tensor([3, 3, 7, 7])].double().numpy()
    np.testing.assert_allclose(vis.table["activation"], expected, rtol=1e-4, atol=1e-5)
    natural = npb.open_layer(store, "layer1.0")["mean"].values
    for entry in vis.table.itertuples():
        column = natural[:, entry.unit]
        if entry.direction == "min":
            assert entry.activation < column.min() and entry.natural == pytest.approx(column.min())
        else:
            assert entry.activation > np.percentile(column, 90) and entry.fraction > 0.5
    assert (np.diff(vis.trace[0]) != 0).any()


def test_units_in_one_batch_equal_separate_calls(resnet):
    settings = dict(direction="max", steps=12, size=64, seed=3, param="fft")
    together = visualize(resnet, "layer1.0", [1, 4, 6], **settings)
    for row, unit in enumerate([1, 4, 6]):
        alone = visualize(resnet, "layer1.0", [unit], **settings)
        difference = (together.images[row].int() - alone.images[0].int()).abs()
        assert difference.max() <= 2 and (difference == 0).float().mean() > 0.95
        assert together.table["activation"].iat[row] == pytest.approx(alone.table["activation"].iat[0], rel=1e-3)


def test_visualize_errors_are_one_line(resnet):
    with pytest.raises(npb.NeuroprobeError, match="out of range"):
        visualize(resnet, "layer1.0", [64], steps=1, size=32)
    with pytest.raises(npb.NeuroprobeError, match="unknown layer"):
        visualize(resnet, "layer9", [0], steps=1, size=32)
    with pytest.raises(npb.NeuroprobeError, match="--direction"):
        visualize(resnet, "layer1.0", [0], direction="up", steps=1, size=32)


def test_visualize_cli_writes_images_whose_activation_is_the_table(resnet, random_weights, tmp_path):
    from PIL import Image
    from resnet_cli_fixtures import run_main

    store = npb.extract(resnet, SAMPLE, ["layer1.0"], tmp_path / "natural.zarr", batch_size=20)
    code, stdout, err = run_main(["visualize", "--store", store, "--layer", "layer1.0", "--units", "2-3",
                                  "--param", "maco", "--steps", 6, "--size", 64, "--k", 3, "--out", tmp_path / "vis"])
    assert code == 0, err
    assert "strongest natural image" in stdout
    table = pd.read_csv(tmp_path / "vis" / "visualize.csv")
    assert list(zip(table.unit, table.direction)) == [(2, "max"), (2, "min"), (3, "max"), (3, "min")]
    images = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / "vis" / f))).permute(2, 0, 1)
                          for f in table["file"]])
    with torch.no_grad():
        values = block_preactivation(resnet, resnet.preprocessing.normalize(images)).mean((2, 3))
    np.testing.assert_allclose(table["activation"], values[torch.arange(4), torch.tensor(table.unit.to_numpy())],
                               rtol=1e-4, atol=1e-5)
    assert (tmp_path / "vis" / "grid.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "vis" / "units").iterdir()) == ["unit0002.png", "unit0003.png"]
    code, _, err = run_main(["visualize", "--store", store, "--layer", "layer1.0", "--units", "a-b", "--out", tmp_path])
    assert code == 2 and "--units" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(["visualize", "--model", "resnet18", "--weights", "none", "--store", store, "--layer",
                             "layer1.0", "--units", "1", "--out", tmp_path])
    assert code == 2 and "another model" in err and len(err.strip().splitlines()) == 1


def test_redirected_gradient_leaves_a_dead_start_and_keeps_exact_gradients_elsewhere():
    from neuroprobe.maps.activations import ActivationRewrite, redirected

    x = torch.tensor([[-1.0, -2.0, -0.5], [1.0, -1.0, 2.0]], requires_grad=True)
    with ActivationRewrite(redirected):
        y = F.relu(x)
    (grad,) = torch.autograd.grad(-(y * torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, 1.0]])).sum(), x)
    # image 0: every input is off, the exact gradient is 0: redirected, except where descent pushes lower
    assert grad[0].tolist() == [-1.0, 0.0, -1.0]
    # image 1: some input is on: the exact ReLU gradient (redirected would give -1 to the off input too)
    assert grad[1].tolist() == [-1.0, 0.0, -1.0] and torch.equal(y, F.relu(x))
    with ActivationRewrite(redirected):
        z = F.relu6(torch.tensor([[7.0, 8.0]], requires_grad=True))
    assert torch.equal(z, torch.tensor([[6.0, 6.0]]))
