"""Image parameterizations for feature visualization: pixels, Fourier (Lucid), MACO (Fel et al. 2023).

Every parameterization holds a batch of N images as parameters and returns (N, 3, H, W) images in
[0, 1]. Each image is initialised from its own seed, so image i of a batch is the image a call with that
image alone would make.

* ``pixel``: a (N, 3, H, W) tensor; colours decorrelated, then a sigmoid.
* ``fft`` (Lucid's ``fft_image``): a half spectrum scaled by 1 / frequency (1/f, ``decay``), an
  orthonormal inverse real FFT, divided by 4; colours decorrelated, then a sigmoid.
* ``maco``: only the phase is optimized; the magnitude is fixed to a spectrum averaged over natural
  images (:func:`natural_spectrum`, computed from the user's images, never downloaded); inverse FFT,
  colours decorrelated, each image standardized, then a sigmoid.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NeuroprobeError

PARAMS = ("fft", "maco", "pixel")
# Lucid's square root of ImageNet's colour correlation matrix (from its SVD), normalized by its
# largest column norm: multiplies decorrelated colours back into RGB.
COLOR_CORRELATION = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = COLOR_CORRELATION / COLOR_CORRELATION.norm(dim=0).max()


def recorrelate_colors(t: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) decorrelated colour channels -> RGB (Lucid's ``_linear_decorrelate_color``)."""
    return torch.einsum("nchw,dc->ndhw", t, COLOR_CORRELATION.to(t))


def decorrelate_colors(t: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`recorrelate_colors`: RGB -> decorrelated channels."""
    return torch.einsum("nchw,dc->ndhw", t, torch.linalg.inv(COLOR_CORRELATION).to(t))


def frequencies(height: int, width: int) -> torch.Tensor:
    """(H, W//2+1) radial frequency of each entry of a real FFT's half spectrum, in cycles per pixel."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def fourier_image(spectrum: torch.Tensor, height: int, width: int, decay: float = 1.0) -> torch.Tensor:
    """Lucid's Fourier image: (..., H, W//2+1) complex half spectrum -> (..., H, W) real image, with each
    frequency scaled by 1 / max(f, 1/max(H, W))^decay and an orthonormal inverse FFT, divided by 4."""
    scale = 1.0 / frequencies(height, width).clamp(min=1.0 / max(height, width)).pow(decay)
    return torch.fft.irfft2(spectrum * scale.to(spectrum.device), s=(height, width), norm="ortho") / 4.0


def phase_image(magnitude: torch.Tensor, phase: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """MACO's image: inverse real FFT of ``magnitude * exp(i phase)`` (same shapes, (..., H, W//2+1))."""
    return torch.fft.irfft2(torch.polar(magnitude, phase), s=(height, width))


def natural_spectrum(images: torch.Tensor, size: int) -> torch.Tensor:
    """(3, size, size//2+1) mean magnitude spectrum of natural images (uint8 or [0, 1], (N, 3, H, W)),
    resized to ``size`` and colour-decorrelated as MACO's parameterization expects."""
    x = images.float() / (255.0 if images.dtype == torch.uint8 else 1.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = decorrelate_colors(x)
    return torch.fft.rfft2(x - x.mean((-2, -1), keepdim=True)).abs().mean(0)


def _standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean((1, 2, 3), keepdim=True)) / (x.std((1, 2, 3), keepdim=True) + 1e-8)


class ImageBatch(nn.Module):
    """N images of (3, size, size) in [0, 1], parameterized by ``param``; image i is seeded by ``seeds[i]``."""

    def __init__(self, param: str, seeds: Sequence[int], size: int, *, spectrum: torch.Tensor | None = None,
                 decorrelate: bool = True, decay: float = 1.0, device: torch.device | str = "cpu") -> None:
        super().__init__()
        if param not in PARAMS:
            raise NeuroprobeError(f"unknown parameterization '{param}'; choose one of {', '.join(PARAMS)}")
        self.param, self.size, self.decorrelate, self.decay = param, size, decorrelate, decay
        half = (size, size // 2 + 1)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        if param == "pixel":
            values = torch.stack([torch.randn(3, size, size, generator=g) * 0.01 for g in generators])
        elif param == "fft":
            values = torch.stack([torch.randn(2, 3, *half, generator=g) * 0.01 for g in generators])
        else:
            if spectrum is None:
                raise NeuroprobeError("param 'maco' needs a magnitude spectrum: natural_spectrum(images, size)")
            spectrum = torch.as_tensor(spectrum, dtype=torch.float32)
            if spectrum.shape != (3, *half):
                spectrum = F.interpolate(spectrum[None], size=half, mode="bilinear", align_corners=False,
                                         antialias=True)[0]
            self.register_buffer("magnitude", spectrum.to(device))
            values = torch.stack([torch.randn(3, *half, generator=g) for g in generators])
        self.values = nn.Parameter(values.to(device))

    def raw(self) -> torch.Tensor:
        """(N, 3, H, W) before colour recorrelation and the sigmoid."""
        if self.param == "pixel":
            return self.values
        if self.param == "fft":
            return fourier_image(torch.complex(self.values[:, 0], self.values[:, 1]), self.size, self.size, self.decay)
        return phase_image(self.magnitude, self.values, self.size, self.size)

    def forward(self) -> torch.Tensor:
        x = self.raw()
        if self.decorrelate:
            x = recorrelate_colors(x)
        if self.param == "maco":
            x = _standardize(x)
        return torch.sigmoid(x)


DEFAULT_LR = {"pixel": 0.05, "fft": 0.05, "maco": 0.5}

