"""Feedback gates (Cao et al. 2015, "Look and Think Twice") and global perception (Fu et al.).

Every hidden activation's output is multiplied by a gate z in [0, 1] of the same shape (one per
neuron and image), through :class:`~neuroprobe.maps.activations.ActivationRewrite`, so in-place,
reused and functional ReLUs are all gated. The gates are found by projected gradient ascent on

* feedback: ``score(target) - lambda * sum |z|`` (Cao's L1 sparsity);
* global perception: ``score(target) - lambda * sum_layers tr(g)``, ``g = (Z Z^T + mu I)^(1/2)`` with
  ``Z`` a layer's gates as (channels, positions): tr(g) = sum_i sqrt(s_i^2 + mu) over Z's singular
  values s_i, keeping the largest ones that hold ``energy`` of sum s_i^2 (the minor ones dropped).

The map is then the input gradient of the target score with the gates fixed (max |.| over channels).

lambda trades the score against the penalty, so its scale depends on the model and the penalty: the
defaults (1e-3 for L1, 1.0 for the trace norm) are the best of a sweep (1e-5..1e-1, 0.01..20) on the
grid pointing game with EfficientNet-Lite0, on 2x2 mosaics of the embedded sample (seed 1) that the
notebook's evaluation does not use. Too large a lambda closes every gate: the map is then 0 and scores
exclude it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import NeuroprobeError
from .activations import ActivationRewrite
from .attribution import Attribution, _Scorer, as_targets


class _Gates:
    """Gate tensors created at the first pass, one per activation call, applied as out * z."""

    def __init__(self) -> None:
        self.z: dict[int, torch.Tensor] = {}

    def __call__(self, call: int, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if call not in self.z:
            self.z[call] = torch.ones_like(out, requires_grad=True)
        return out * self.z[call]


class _TraceNorm(torch.autograd.Function):
    """sum_i keep_i * sqrt(s_i^2 + mu) per image, from one eigendecomposition of the smaller Gram matrix
    (float64 when float32 fails to converge). The backward is its closed form, U diag(keep / sqrt(s^2 +
    mu)) U^T Z (or Z U ... U^T): no gradient flows through the eigensolver, whose backward is unstable
    for the repeated eigenvalues that constant gate matrices have."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, mu: float, energy: float) -> torch.Tensor:
        tall = matrix.shape[1] > matrix.shape[2]
        m = matrix.detach()
        gram = m.transpose(1, 2) @ m if tall else m @ m.transpose(1, 2)      # in the gates' precision
        try:
            squares, vectors = torch.linalg.eigh(gram)
        except torch.linalg.LinAlgError:        # float32 LAPACK can fail on constant gates: float64 does not
            squares, vectors = torch.linalg.eigh(gram.double())
        squares, vectors = squares.flip(1).clamp(min=0), vectors.flip(2)                  # s^2, descending
        share = squares.cumsum(1) / squares.sum(1, keepdim=True).clamp(min=1e-300)
        keep = torch.cat([torch.ones_like(share[:, :1], dtype=torch.bool), share[:, :-1] < energy], dim=1)
        roots = torch.sqrt(squares + mu)
        ctx.save_for_backward(m, vectors, (keep / roots).to(vectors.dtype))
        ctx.tall = tall
        return (roots * keep).sum(1).to(matrix.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        m, vectors, weights = ctx.saved_tensors
        projector = ((vectors * weights[:, None, :]) @ vectors.transpose(1, 2)).to(m.dtype)
        out = m @ projector if ctx.tall else projector @ m
        return out * grad.to(m.dtype)[:, None, None], None, None


def trace_norm_penalty(z: torch.Tensor, mu: float = 1e-3, energy: float = 0.95) -> torch.Tensor:
    """Per image: tr(g) = sum over kept singular values s of Z (gates as channels x positions) of
    sqrt(s^2 + mu), keeping the largest ones that hold ``energy`` of sum s^2 (the minor ones dropped)."""
    matrix = z.flatten(2) if z.ndim > 2 else z[:, :, None]
    return _TraceNorm.apply(matrix, mu, energy)


def _gated_attribution(model: nn.Module, x: torch.Tensor, targets, *, method: str, iterations: int, lam: float,
                       step: float, mu: float, energy: float, target_layer: str | None) -> Attribution:
    targets = as_targets(targets, len(x), x.device)
    if targets.shape[1] != 1:
        raise NeuroprobeError(f"{method} optimizes gates per target: pass one target per image")
    gates = _Gates()
    scorer = _Scorer(model, target_layer)
    for _ in range(iterations):
        with torch.enable_grad(), ActivationRewrite(gates):
            score = scorer(x.detach(), targets)[:, 0]
            if method == "feedback":
                penalty = sum(z.abs().flatten(1).sum(1) for z in gates.z.values())
            else:
                penalty = sum(trace_norm_penalty(z, mu, energy) for z in gates.z.values())
            objective = (score - lam * penalty).sum()
        grads = torch.autograd.grad(objective, list(gates.z.values()))
        with torch.no_grad():
            for z, g in zip(gates.z.values(), grads, strict=True):
                z.add_(step * g.sign()).clamp_(0, 1)          # projected (sign) gradient ascent in the box
    inputs = x.detach().requires_grad_(True)
    fixed = {k: z.detach() for k, z in gates.z.items()}
    with torch.enable_grad(), ActivationRewrite(lambda call, name, _x, out: out * fixed[call] if call in fixed else out):
        score = scorer(inputs, targets)
    raw = torch.autograd.grad(score.sum(), inputs)[0][:, None]
    kept = sum(float((z > 0.5).float().mean()) for z in fixed.values()) / max(len(fixed), 1)
    return Attribution(method, raw, raw.abs().amax(2), targets,
                       f"max over channels of |input gradient| with optimized gates ({iterations} steps; "
                       f"{kept:.0%} of gates open)")



def feedback(model: nn.Module, x: torch.Tensor, targets, *, iterations: int = 10, lam: float = 1e-3,
             step: float = 0.1, target_layer: str | None = None) -> Attribution:
    """Cao et al.'s feedback CNN: gates maximising the target score minus lambda times their L1 norm."""
    return _gated_attribution(model, x, targets, method="feedback", iterations=iterations, lam=lam, step=step,
                              mu=0.0, energy=1.0, target_layer=target_layer)


def global_perception(model: nn.Module, x: torch.Tensor, targets, *, iterations: int = 10, lam: float = 1.0,
                      step: float = 0.1, mu: float = 1e-3, energy: float = 0.95,
                      target_layer: str | None = None) -> Attribution:
    """Fu et al.'s global perception feedback: gates maximising the target score minus lambda times the
    smoothed, truncated trace norm of each layer's gate matrix."""
    return _gated_attribution(model, x, targets, method="global", iterations=iterations, lam=lam, step=step,
                              mu=mu, energy=energy, target_layer=target_layer)
