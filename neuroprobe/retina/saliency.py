"""The untrained dorsal map: the ventral network's own attribution map of the coarse glimpse.

The ventral model sees the glimpse (a low-resolution view of the whole image, resized to its input),
names its most likely class, and an attribution method (Grad-CAM by default, or DFF, gradient, ...)
says where in the glimpse that class comes from. A fixation's score is the share of the map's total
that its field holds: look where the evidence is. A share, not a mean: with views of several sizes (the
rings layout) the mean favours the smallest views that sit on the object, which the ventral network
misreads (800 photos, rings-crop: one saccade by the mean 0.442, by the share 0.865, centre view 0.865);
with views of one size (the grid) both rank the fixations alike. Nothing is trained, so no image can
leak into its own score.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..maps.methods import attribute, check_methods
from ..models.loading import LoadedModel
from .dorsal import Glimpse, GlimpseEncoder
from .fields import field_weights
from .layouts import Fixations

SALIENCY_METHODS = ("gradcam", "dff", "gradient", "smoothgrad", "guided")


class SaliencyDorsal:
    """Fixation scores (B, rows, cols): the share of the ``method`` map of the ventral model's top class that
    each field holds; and the glimpse maps (B, s, s)."""

    def __init__(self, ventral: LoadedModel, fixations: Fixations, view_kind: str, glimpse: Glimpse,
                 method: str = "gradcam", device: torch.device | str = "cpu") -> None:
        check_methods([method])
        self.encoder = GlimpseEncoder(ventral, glimpse, device=device)
        self.method, self.fixations = method, fixations
        self.fields = field_weights(fixations, view_kind, (glimpse.size, glimpse.size), glimpse.kind,
                                    rs_min=glimpse.rs_min, rs_max=glimpse.rs_max, mean=False).to(self.encoder.device)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encoder.inputs(images)
        module = self.encoder.module
        with torch.no_grad():
            top = module(x).argmax(1)
        with torch.enable_grad():                          # also inside a caller's no_grad (the live loop)
            shown = attribute(module, x, top, self.method).map.detach()                   # (B, 1, H, W) or (B, T, ...)
        shown = shown.reshape(len(x), -1, *shown.shape[-2:])[:, :1].float()
        size = self.encoder.glimpse.size
        glimpse_map = F.adaptive_avg_pool2d(shown, (size, size))[:, 0]
        total = glimpse_map.flatten(1).sum(1, keepdim=True).clamp_min(1e-12)
        scores = glimpse_map.flatten(1) @ self.fields.T / total
        return scores.unflatten(1, self.fixations.shape).cpu(), glimpse_map.cpu()
