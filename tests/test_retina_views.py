"""Retinotopic views against per-pixel NumPy sampling, and the geometry a user relies on."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neuroprobe.data import load_image
from neuroprobe.errors import NeuroprobeError
from neuroprobe.models.loading import Preprocessing
from neuroprobe.retina.layouts import fixation_grid, fixation_rings, make_layout
from neuroprobe.retina.views import inverse_views, retinotopic_views

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def bilinear_zeros(image: np.ndarray, px: float, py: float) -> np.ndarray:
    """Value of (C, H, W) ``image`` at pixel coordinates (px, py), bilinear, zero outside (grid_sample's rule)."""
    _, h, w = image.shape
    x0, y0 = math.floor(px), math.floor(py)
    out = np.zeros(image.shape[0])
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * image[:, yy, xx]
    return out


def numpy_view(image: np.ndarray, cx: float, cy: float, radius: float, size: tuple[int, int], kind: str,
               rs_min: float = 0.0, rs_max: float = -5.0) -> np.ndarray:
    """One view, pixel by pixel: positions in pixels from the definitions, then bilinear sampling."""
    c, h, w = image.shape
    half = min(h, w) / 2                          # the inscribed circle's radius in pixels
    centre_x, centre_y = ((cx + 1) * w - 1) / 2, ((cy + 1) * h - 1) / 2
    rows, cols = size
    out = np.zeros((c, rows, cols))
    for i in range(rows):
        for j in range(cols):
            if kind == "logpolar":
                r = radius * 2.0 ** (rs_min + (rs_max - rs_min) * i / (rows - 1)) * half
                theta = 2 * math.pi * j / cols
                dx, dy = r * math.cos(theta), r * math.sin(theta)
            else:
                dx = radius * half * ((2 * j + 1) / cols - 1)
                dy = radius * half * ((2 * i + 1) / rows - 1)
            out[:, i, j] = bilinear_zeros(image, centre_x + dx, centre_y + dy)
    return out


@pytest.mark.parametrize("kind", ["logpolar", "crop"])
def test_views_equal_a_numpy_sampling_loop(kind):
    rng = np.random.default_rng(0)
    images = rng.random((2, 3, 20, 30))                      # not square: circles must stay circles
    centers = torch.tensor([[[0.0, 0.0], [0.5, -0.3], [-0.9, 0.8]], [[0.1, 0.2], [-0.4, 0.4], [0.95, -0.95]]],
                           dtype=torch.float64)
    radii = torch.tensor([[1.0, 0.4, 0.7], [0.3, 1.2, 0.5]], dtype=torch.float64)
    views = retinotopic_views(torch.from_numpy(images), centers, radii, (8, 12), kind).numpy()
    assert views.shape == (2, 3, 3, 8, 12)
    for b in range(2):
        for f in range(3):
            expected = numpy_view(images[b], *centers[b, f].tolist(), radii[b, f].item(), (8, 12), kind)
            np.testing.assert_allclose(views[b, f], expected, atol=1e-10)


def test_centred_crop_of_radius_one_is_a_bilinear_resize():
    image = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    view = retinotopic_views(image, [[0.0, 0.0]], 1.0, 32, "crop")[:, 0]
    np.testing.assert_allclose(view, F.interpolate(image, size=(32, 32), mode="bilinear", align_corners=False),
                               atol=1e-12)


def _photo(size: int) -> torch.Tensor:
    prep = Preprocessing(resize=round(size * 256 / 224), crop=size)
    return prep.to_uint8(load_image(SAMPLE / "images" / "n01440764.jpg")).double()[None] / 255


def test_inverse_recovers_a_photo_inside_the_annulus():
    """224 x 224 log-polar view of a 224 px sample photo, mapped back: PSNR over the sampled annulus."""
    image = _photo(224)
    centers, radii = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    back, mask = inverse_views(retinotopic_views(image, centers, radii, 224), centers, radii, 224)
    inside = mask[0, 0, 0].numpy()
    error = ((back[0, 0] - image[0]).numpy() ** 2)[:, inside].mean()
    psnr = 10 * np.log10(1 / error)
    assert psnr > 30, psnr                                  # measured: 33.1 dB
    assert inside.mean() > 0.75                             # the annulus covers the inscribed disc but its hole
    crop_back, crop_mask = inverse_views(retinotopic_views(image, centers, radii, 224, "crop"), centers, radii, 224,
                                         "crop")
    np.testing.assert_allclose(crop_back[0, 0], image[0], atol=1e-12)   # a same-size crop is the identity
    assert crop_mask.all()


def test_inverse_wraps_the_azimuth():
    """A view whose columns hold their own azimuth index maps back to a smooth angle map, including across
    the seam between the last column and the first."""
    h, w = 16, 32
    views = torch.zeros(1, 1, 1, h, w, dtype=torch.float64)
    views[..., :] = torch.cos(2 * math.pi * torch.arange(w, dtype=torch.float64) / w)   # cos(theta), periodic
    back, mask = inverse_views(views, torch.zeros(1, 2, dtype=torch.float64), 1.0, 64)
    ys, xs = np.mgrid[0:64, 0:64]
    dx, dy = (2 * xs + 1) / 64 - 1, (2 * ys + 1) / 64 - 1
    expected = np.cos(np.arctan2(dy, dx))
    inside = mask[0, 0, 0].numpy()
    # linear interpolation of cos between samples 2 pi / 32 apart: error <= (2 pi / 32)^2 / 8
    assert np.abs(back[0, 0, 0].numpy() - expected)[inside].max() < (2 * math.pi / w) ** 2 / 8 + 1e-9


def test_circles_become_rows_and_rays_become_columns():
    h, w = 90, 120
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = 0.2, -0.1                                       # off-centre, on a non-square image
    px, py = ((cx + 1) * w - 1) / 2, ((cy + 1) * h - 1) / 2
    rho, theta = np.hypot(xs - px, ys - py), np.arctan2(ys - py, xs - px)
    circles = torch.from_numpy(np.cos(rho / 4))[None, None]  # concentric rings around the fixation
    rays = torch.from_numpy(np.cos(3 * theta))[None, None]   # three-fold rays from it
    both = torch.cat([circles, rays], 1)
    views = retinotopic_views(both, [[cx, cy]], 0.8, 64, "logpolar", padding="border")[0, 0].numpy()
    ring_views = views[0]
    assert ring_views.std(axis=1).max() < 0.02               # each row (one radius) is constant
    assert ring_views.std(axis=0).mean() > 0.3               # ... and the rows differ
    radius_px = 0.8 * min(h, w) / 2 * 2.0 ** np.linspace(0, -5, 64)
    far = radius_px > 8                                      # rays are resolved where the pixel grid is fine enough
    assert views[1][far].std(axis=0).max() < 0.05            # each column (one azimuth) is constant
    np.testing.assert_allclose(views[1][far].mean(0), np.cos(3 * 2 * np.pi * np.arange(64) / 64), atol=0.05)


def test_moving_the_fixation_equals_moving_the_image():
    image = torch.zeros(1, 3, 48, 64, dtype=torch.float64)
    image[..., 8:40, 8:56] = torch.rand(1, 3, 32, 48, dtype=torch.float64)   # content away from the border
    shifted = torch.roll(image, shifts=(5, -7), dims=(2, 3))                 # down 5 px, left 7 px
    centre = torch.tensor([[0.1, -0.2]], dtype=torch.float64)
    moved = centre + torch.tensor([[2 * -7 / 64, 2 * 5 / 48]], dtype=torch.float64)
    for kind in ("logpolar", "crop"):
        np.testing.assert_allclose(retinotopic_views(shifted, moved, 0.5, 32, kind),
                                   retinotopic_views(image, centre, 0.5, 32, kind), atol=1e-12)


def test_views_are_differentiable_in_the_image_and_the_fixation():
    image = torch.rand(1, 1, 24, 24, dtype=torch.float64, requires_grad=True)
    centre = torch.tensor([[0.13, -0.21]], dtype=torch.float64, requires_grad=True)
    radius = torch.tensor([0.6], dtype=torch.float64, requires_grad=True)
    weights = torch.rand(1, 1, 1, 12, 12, dtype=torch.float64)

    def score(c, r):
        return (retinotopic_views(image, c, r, 12) * weights).sum()

    torch.autograd.grad(score(centre, radius), [image, centre, radius])   # nothing is detached
    g_centre, g_radius = torch.autograd.grad(score(centre, radius), [centre, radius])
    eps = 1e-6
    for axis in range(2):
        step = torch.zeros_like(centre)
        step[0, axis] = eps
        numeric = (score(centre + step, radius) - score(centre - step, radius)) / (2 * eps)
        assert abs(numeric.item() - g_centre[0, axis].item()) < 1e-5 * max(1, abs(numeric.item()))
    numeric = (score(centre, radius + eps) - score(centre, radius - eps)) / (2 * eps)
    assert abs(numeric.item() - g_radius.item()) < 1e-5 * max(1, abs(numeric.item()))


def test_padding_modes_differ_only_outside_the_image():
    image = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    inside = retinotopic_views(image, [[0.0, 0.0]], 0.9, 16, padding="zeros")
    for padding in ("border", "reflection"):
        np.testing.assert_allclose(retinotopic_views(image, [[0.0, 0.0]], 0.9, 16, padding=padding), inside)
    corner = [[0.9, 0.9]]
    zeros = retinotopic_views(image, corner, 0.9, 16, padding="zeros")
    assert not torch.allclose(zeros, retinotopic_views(image, corner, 0.9, 16, padding="border"))
    with pytest.raises(NeuroprobeError, match="padding"):
        retinotopic_views(image, corner, 0.9, 16, padding="wrap")


def test_ring_layout_is_the_authors():
    """bicv/Retinotopy multi_sacade_map with resolution 11 and size_ratio 0.1, built independently."""
    rings = fixation_rings(11, 0.1)
    ratios = np.linspace(1, 0.1, 6)
    expected_r = np.zeros((11, 11))
    expected_c = np.zeros((11, 11, 2))
    for num, size in enumerate(np.linspace(1, 11, 6, dtype=int)):
        border = 1 - ratios[num]
        pos = np.linspace(-border, border, size) if size > 1 else np.zeros(1)
        grid_r = np.full((size, size), ratios[num])
        grid_c = np.stack(np.meshgrid(pos, pos, indexing="xy"), -1)
        if num == 0:
            expected_r, expected_c = grid_r, grid_c
        else:
            grid_r[1:-1, 1:-1], grid_c[1:-1, 1:-1] = expected_r, expected_c
            expected_r, expected_c = grid_r, grid_c
    np.testing.assert_allclose(rings.radii, expected_r)
    np.testing.assert_allclose(rings.centers, expected_c)
    assert rings.center_index == 60 and rings.radii.flat[60] == 1.0
    assert (np.abs(rings.centers).max(-1) + rings.radii <= 1 + 1e-12).all()   # every view inside the image


def test_grid_layout_and_errors():
    grid = fixation_grid(7, 0.5)
    assert grid.shape == (7, 7) and grid.center_index == 24
    np.testing.assert_allclose(grid.centers[0, :, 0], np.linspace(-0.5, 0.5, 7))
    np.testing.assert_allclose(grid.centers[:, 0, 1], np.linspace(-0.5, 0.5, 7))
    assert make_layout("rings").shape == (11, 11)
    for bad in (lambda: make_layout("spiral"), lambda: fixation_rings(10), lambda: fixation_grid(0),
                lambda: fixation_grid(3, 1.5)):
        with pytest.raises(NeuroprobeError):
            bad()
