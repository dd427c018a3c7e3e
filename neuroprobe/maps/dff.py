"""Deep feature factorization (Collins et al. 2018): non-negative matrix factorization of a layer's
activations on the device, concepts shared across a batch and labelled through the classifier head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NeuroprobeError
from ..models.capture import Capture, unit_layouts
from .attribution import Attribution, as_targets


def _nndsvda(matrix: torch.Tensor, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NNDSVD start with zeros filled by the mean (Boutsidis & Gallopoulos 2008; scikit-learn's
    ``init='nndsvda'``), from a randomized truncated SVD on the matrix's device."""
    torch.manual_seed(seed)     # svd_lowrank draws its random projection from torch's global generator
    u, s, v = torch.svd_lowrank(matrix, q=rank + 10, niter=4)
    w = torch.zeros(matrix.shape[0], rank, dtype=matrix.dtype, device=matrix.device)
    h = torch.zeros(rank, matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
    w[:, 0] = s[0].sqrt() * u[:, 0].abs()
    h[0] = s[0].sqrt() * v[:, 0].abs()
    for j in range(1, rank):
        x, y = u[:, j], v[:, j]
        xp, xn, yp, yn = x.clamp(min=0), (-x).clamp(min=0), y.clamp(min=0), (-y).clamp(min=0)
        positive, negative = xp.norm() * yp.norm(), xn.norm() * yn.norm()
        if positive >= negative:
            a, b, sigma = xp / xp.norm().clamp(min=1e-30), yp / yp.norm().clamp(min=1e-30), positive
        else:
            a, b, sigma = xn / xn.norm().clamp(min=1e-30), yn / yn.norm().clamp(min=1e-30), negative
        w[:, j] = (s[j] * sigma).sqrt() * a
        h[j] = (s[j] * sigma).sqrt() * b
    mean = matrix.mean()
    return w.masked_fill(w == 0, mean), h.masked_fill(h == 0, mean)


def nmf(matrix: torch.Tensor, rank: int, *, iterations: int = 400, tol: float = 1e-5, seed: int = 0,
        init: str = "random", eps: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """W (M, rank), H (rank, N) >= 0 minimising ||V - W H||_F, by HALS (Cichocki & Phan 2009) on V's
    device; start ``random`` (default, scaled as scikit-learn's) or ``nndsvda`` (fewer iterations, but
    another local optimum, sometimes worse);
    stops when the relative error improves by less than ``tol`` in one iteration."""
    if (matrix < 0).any():
        raise NeuroprobeError("NMF needs a non-negative matrix")
    if init == "nndsvda":
        w, h = _nndsvda(matrix, rank, seed)
    elif init == "random":
        generator = torch.Generator().manual_seed(seed)
        scale = (matrix.mean() / rank).sqrt().item()
        w = (torch.rand(matrix.shape[0], rank, generator=generator) * scale).to(matrix)
        h = (torch.rand(rank, matrix.shape[1], generator=generator) * scale).to(matrix)
    else:
        raise NeuroprobeError(f"init must be 'nndsvda' or 'random', got {init!r}")
    squared_norm = matrix.pow(2).sum()
    previous = float("inf")
    for _ in range(iterations):
        wtv, wtw = w.T @ matrix, w.T @ w
        for j in range(rank):
            h[j] = (h[j] + (wtv[j] - wtw[j] @ h) / wtw[j, j].clamp(min=eps)).clamp(min=eps)
        vht, hht = matrix @ h.T, h @ h.T
        for j in range(rank):
            w[:, j] = (w[:, j] + (vht[:, j] - w @ hht[:, j]) / hht[j, j].clamp(min=eps)).clamp(min=eps)
        # ||V - W H||^2 = ||V||^2 - 2 <W, V H^T> + <W^T W, H H^T>: no (M, N) product per iteration
        residual = squared_norm - 2 * (w * vht).sum() + ((w.T @ w) * hht).sum()
        error = (residual.clamp(min=0) / squared_norm).sqrt().item()
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
    layouts = unit_layouts(model, [layer], x[:1])
    with torch.no_grad(), Capture(model, [layer], values.__setitem__, post_activation=True, layouts=layouts) as capture:
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
