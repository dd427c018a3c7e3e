"""Deep feature factorization (Collins et al. 2018): non-negative matrix factorization of a layer's
activations on the device, concepts shared across a batch and labelled through the classifier head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import Capture
from ..errors import NeuroprobeError
from .attribution import Attribution, as_targets


def nmf(matrix: torch.Tensor, rank: int, *, iterations: int = 400, tol: float = 1e-6, seed: int = 0,
        eps: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """W (M, rank), H (rank, N) >= 0 minimising ||V - W H||_F, by HALS (Cichocki & Phan 2009) on V's
    device; random start scaled as scikit-learn's ``init='random'``; stops when the relative error
    improves by less than ``tol``."""
    if (matrix < 0).any():
        raise NeuroprobeError("NMF needs a non-negative matrix")
    generator = torch.Generator().manual_seed(seed)
    scale = (matrix.mean() / rank).sqrt().item()
    w = (torch.rand(matrix.shape[0], rank, generator=generator) * scale).to(matrix)
    h = (torch.rand(rank, matrix.shape[1], generator=generator) * scale).to(matrix)
    norm = matrix.norm()
    previous = float("inf")
    for _ in range(iterations):
        wtv, wtw = w.T @ matrix, w.T @ w
        for j in range(rank):
            h[j] = (h[j] + (wtv[j] - wtw[j] @ h) / wtw[j, j].clamp(min=eps)).clamp(min=eps)
        vht, hht = matrix @ h.T, h @ h.T
        for j in range(rank):
            w[:, j] = (w[:, j] + (vht[:, j] - w @ hht[:, j]) / hht[j, j].clamp(min=eps)).clamp(min=eps)
        error = ((matrix - w @ h).norm() / norm).item()
        if previous - error < tol * max(previous, 1e-12):
            break
        previous = error
    return w, h


@dataclass
class Factorization:
    """Concepts (channels, K), their maps (B, K, h, w), head scores (K, classes), fit quality."""

    concepts: torch.Tensor
    maps: torch.Tensor
    concept_scores: torch.Tensor | None
    offset: torch.Tensor
    relative_error: float

    def labels(self, top: int = 1) -> torch.Tensor:
        """(K, top) class indices each concept scores highest through the head."""
        if self.concept_scores is None:
            raise NeuroprobeError("no classifier head was found to label the concepts")
        return self.concept_scores.topk(top, dim=1).indices


def classifier_head(model: nn.Module, channels: int) -> nn.Linear | None:
    """The model's last Linear layer, when it reads ``channels`` features (a pooled conv map)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears and linears[-1].in_features == channels else None


def factorize(model: nn.Module, x: torch.Tensor, layer: str, concepts: int = 5, **nmf_options) -> Factorization:
    """DFF of ``layer``'s output over the batch: V (channels, B*h*w), shifted by each channel's minimum
    (as pytorch-grad-cam does, so any layer is non-negative), factorized into ``concepts`` parts."""
    values: dict[str, torch.Tensor] = {}
    with torch.no_grad(), Capture(model, [layer], values.__setitem__, post_activation=True) as capture:
        capture.run(x)
    activation = values[layer].float()
    if activation.ndim != 4:
        raise NeuroprobeError(f"layer '{layer}' has no spatial map; choose a conv layer for DFF")
    batch, channels, height, width = activation.shape
    matrix = activation.transpose(0, 1).reshape(channels, -1)
    offset = matrix.amin(dim=1, keepdim=True)
    shifted = matrix - offset
    w, h = nmf(shifted, concepts, **nmf_options)
    error = ((shifted - w @ h).norm() / shifted.norm()).item()
    head = classifier_head(model, channels)
    with torch.no_grad():
        scores = head((w + offset).T) if head is not None else None
    maps = h.reshape(concepts, batch, height, width).transpose(0, 1)
    return Factorization(w, maps, scores, offset, error)


def dff(model: nn.Module, x: torch.Tensor, targets, layer: str, *, concepts: int = 5, upsample: bool = True,
        **nmf_options) -> Attribution:
    """Per target class, the map of the concept whose head score for that class is highest (raw at the
    layer's resolution; map = that concept's NMF coefficients, bilinear to the input)."""
    targets = as_targets(targets, len(x), x.device)
    fact = factorize(model, x, layer, concepts, **nmf_options)
    if fact.concept_scores is None:
        raise NeuroprobeError("DFF maps for classes need a Linear head reading the layer's channels; use "
                              "neuroprobe.maps.dff.factorize for unlabelled concepts")
    best = fact.concept_scores[:, targets].argmax(dim=0)                   # (B, T) concept per target
    raw = torch.stack([fact.maps[b, best[b]] for b in range(len(x))])      # (B, T, h, w)
    shown = F.interpolate(raw, size=x.shape[-2:], mode="bilinear", align_corners=False) if upsample else raw
    return Attribution("dff", raw, shown, targets, "NMF coefficients of the concept the head scores highest for "
                       "the target" + (", bilinear to the input" if upsample else ""))
