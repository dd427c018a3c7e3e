"""Human-alignment scores: per-image Spearman correlation of a saliency map with a human importance map,
batched on the device (average ranks for ties, as scipy), divided by the human inter-rater ceiling."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import stats

CLICKME_CEILING = 0.6575315343478081    # serre-lab/Harmonization's HUMAN_SPEARMAN_CEILING


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based) of each row of (B, N) ``values``, ties sharing their average rank (scipy's rankdata)."""
    batch, n = values.shape
    order = values.argsort(dim=1)            # any order within a tie: the group gets its mean rank
    ordered = values.gather(1, order)
    new_group = torch.ones_like(ordered, dtype=torch.bool)
    new_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = new_group.long().cumsum(1) - 1 + torch.arange(batch, device=values.device)[:, None] * n
    positions = torch.arange(1, n + 1, device=values.device, dtype=torch.float64).expand(batch, n).reshape(-1)
    sums = torch.zeros(batch * n, dtype=torch.float64, device=values.device).scatter_add_(0, group.reshape(-1), positions)
    counts = torch.zeros(batch * n, dtype=torch.float64, device=values.device).scatter_add_(
        0, group.reshape(-1), torch.ones_like(positions))
    ranks_sorted = (sums / counts.clamp_min(1))[group.reshape(-1)].reshape(batch, n)
    return torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted)


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of each row pair of (B, ...) tensors (flattened), float64; NaN for a constant row."""
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))


def alignment_scores(saliency: torch.Tensor, human: torch.Tensor, ceiling: float = CLICKME_CEILING) -> pd.DataFrame:
    """Per image: Spearman correlation and alignment (correlation / ``ceiling``)."""
    rho = spearman_rows(saliency, human).cpu().numpy()
    return pd.DataFrame({"spearman": rho, "alignment": rho / ceiling})


def alignment_summary(scores: pd.DataFrame, column: str = "alignment") -> dict:
    """Mean with its 95% t-interval over images (NaN rows, from constant maps, excluded and counted)."""
    values = scores[column].to_numpy(dtype=np.float64)
    finite = values[np.isfinite(values)]
    n = len(finite)
    mean = float(finite.mean()) if n else float("nan")
    half = float(stats.t.ppf(0.975, n - 1) * finite.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"n": n, "excluded": int(len(values) - n), "mean": mean, "ci_low": mean - half, "ci_high": mean + half}


def split_half_ceiling(maps: torch.Tensor, repeats: int = 10, seed: int = 0) -> float:
    """Inter-rater ceiling from (images, raters, H, W) maps: mean Spearman between the averages of two
    random halves of the raters, over ``repeats`` splits and the images."""
    raters = maps.shape[1]
    if raters < 2:
        raise ValueError("a split-half ceiling needs at least 2 maps per image")
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(repeats):
        order = torch.randperm(raters, generator=generator)
        first, second = order[: raters // 2], order[raters // 2:]
        values.append(spearman_rows(maps[:, first].mean(1), maps[:, second].mean(1)))
    rho = torch.stack(values)
    return float(rho[torch.isfinite(rho)].mean())
