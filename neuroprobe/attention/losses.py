"""Losses that align a model with importance maps, as ``nn.Module``s for any training loop.

* :class:`GALAAttentionLoss` (Linsley et al.): each GALA module's attention, reduced over channels, against
  the importance map blurred and resized to it; both L2-normalized per image; squared error summed over
  positions, averaged over the images that have a map, times ``weight``, summed over modules.
* :class:`HarmonizationLoss` (Fel et al. 2022, as serre-lab/Harmonization's ``harmonizer_loss``): the
  input gradient of the true class's logit (signed, averaged over colour channels), taken with
  ``create_graph=True`` so the loss back-propagates to the weights (double backpropagation; a detached
  saliency gives no gradient, the bug of the unofficial ports); both maps standardized and rectified,
  the human map rescaled to the saliency's maximum (held constant); squared error on a 5-level binomial
  pyramid, averaged over levels and over the batch with images without a map weighted 0.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .maps import as_maps, conv_same, gaussian_kernel

BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def standardize_cut(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per map: zero mean, unit (population) standard deviation, then ReLU. (B, H, W) or (B, 1, H, W)."""
    dims = (-2, -1)
    centred = maps - maps.mean(dims, keepdim=True)
    return F.relu(centred / (maps.std(dims, keepdim=True, unbiased=False) + eps))


def pyramid(maps: torch.Tensor, levels: int = 5) -> list[torch.Tensor]:
    """[maps, then ``levels - 1`` times: 5 x 5 binomial filter, stride 2, 'SAME' zero padding]."""
    kernel = torch.outer(BINOMIAL, BINOMIAL)
    kernel = kernel / kernel.sum()
    out = [as_maps(maps)]
    for _ in range(levels - 1):
        out.append(conv_same(out[-1], kernel, stride=2))
    return out


class GALAAttentionLoss(nn.Module):
    """weight x sum over modules of mean over mapped images of ||a/|a| - m/|m| ||^2 (see the module doc)."""

    def __init__(self, weight: float = 1.0, blur_size: int = 10, blur_sigma: float = 10.0) -> None:
        super().__init__()
        self.weight = weight
        self.register_buffer("kernel", gaussian_kernel(blur_size, blur_sigma), persistent=False)

    def forward(self, attention: Sequence[torch.Tensor], maps: torch.Tensor, has_map: torch.Tensor) -> torch.Tensor:
        has_map = torch.as_tensor(has_map, dtype=torch.bool, device=maps.device)
        total = maps.new_zeros(())
        if not has_map.any():
            return total + sum(a.sum() * 0 for a in attention)   # keeps the graph, adds nothing
        blurred = conv_same(as_maps(maps[has_map]).float(), self.kernel)
        for a in attention:
            a = a[has_map].mean(1, keepdim=True)
            m = F.interpolate(blurred, size=a.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
            a = F.normalize(a.flatten(1), dim=1)
            m = F.normalize(m.flatten(1), dim=1)
            total = total + (a - m).pow(2).sum(1).mean()
        return self.weight * total


class HarmonizationLoss(nn.Module):
    """weight x pyramidal MSE between the standardized-cut input gradient and human maps (module doc).

    ``forward(model, images, labels, maps, has_map)`` returns (loss, logits); add your classification
    loss on the logits and back-propagate the sum.
    """

    def __init__(self, weight: float = 1.0, levels: int = 5) -> None:
        super().__init__()
        self.weight = weight
        self.levels = levels

    def saliency(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W) signed input gradient of each image's label, mean over channels, kept in the graph."""
        images = images.detach().requires_grad_(True)
        logits = model(images)
        score = logits.gather(1, labels[:, None]).sum()
        grad = torch.autograd.grad(score, images, create_graph=True)[0]
        return grad.mean(1), logits

    def forward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, maps: torch.Tensor,
                has_map: torch.Tensor, human_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        saliency, logits = self.saliency(model, images, labels)
        return self.weight * self.compare(saliency, maps, has_map, human_scale), logits

    @staticmethod
    def human_scale(saliency: torch.Tensor) -> torch.Tensor:
        """The (held constant) maximum of each standardized-cut saliency map that the human maps are scaled to."""
        return standardize_cut(saliency).amax((-2, -1), keepdim=True).detach() + 1e-6

    def compare(self, saliency: torch.Tensor, maps: torch.Tensor, has_map: torch.Tensor,
                human_scale: torch.Tensor | None = None) -> torch.Tensor:
        """The loss between (B, H, W) saliency maps and human maps, unweighted. ``human_scale`` fixes the
        constant the human maps are scaled to (default: :meth:`human_scale` of this saliency)."""
        tokens = torch.as_tensor(has_map, dtype=saliency.dtype, device=saliency.device)
        s = standardize_cut(saliency)
        h = standardize_cut(maps.to(saliency.dtype))
        scale = self.human_scale(saliency) if human_scale is None else human_scale
        h = h / (h.amax((-2, -1), keepdim=True) + 1e-6) * scale
        errors = [((ph - ps).pow(2) * tokens[:, None, None, None]).mean()
                  for ph, ps in zip(pyramid(h, self.levels), pyramid(s, self.levels), strict=True)]
        return torch.stack(errors).mean()
