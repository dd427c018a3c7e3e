"""Category selectivity of every unit: Malakhova's index, a class-balanced variant, Morcos et al.'s CSI.

All indices work on activations normalized per unit over the analysed images (labelled, readable):

- ``minmax`` (default): a' = (a - min) / (max - min), so a' is in [0, 1] and the negative half of the
  pre-activation counts as weak response rather than being discarded;
- ``rectify``: a' = max(a, 0) / max(a): what a ReLU would pass on, scaled to [0, 1].

Malakhova: S = sum(a' over category images) / (sum(a' over all images) + eps); chance is the category's
share of the images. Balanced: mC / (mC + mRest + eps) with m the means over category and other
images; chance is 0.5 whatever the share. Morcos: (mu_max - mu_rest) / (mu_max + mu_rest + eps) over
class means of a' (non-negative by construction, so the index lies in [0, 1]); its ``category``
column names the preferred class. p-values come from a label-permutation null on the category sum
(both Malakhova and balanced are increasing in it, so they share one p): p = (1 + #null >= observed) /
(1 + permutations).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .running import ChunkedPermutation, GroupSums, UnitSums

NORMALIZATIONS = ("minmax", "rectify")


class ClassSums:
    """Per class and unit sums, by index_add (O(images x units)): float32 within a block, float64 across."""

    def __init__(self, n_classes: int, positive: bool) -> None:
        self.n_classes, self.positive = n_classes, positive
        self.sums: torch.Tensor | None = None
        self.counts = np.zeros(n_classes)

    def add(self, values: np.ndarray, codes: np.ndarray) -> None:
        v = torch.from_numpy(values)
        if self.positive:
            v = v.clamp(min=0)
        block = torch.zeros(self.n_classes, values.shape[1], dtype=torch.float32)
        block.index_add_(0, torch.from_numpy(codes), v)
        self.sums = block.double() if self.sums is None else self.sums.add_(block)
        self.counts += np.bincount(codes, minlength=self.n_classes)


class CategorySums:
    """Per unit: sum (of max(value, 0) when ``positive``) over category images, and their count."""

    def __init__(self, positive: bool) -> None:
        self.positive = positive
        self.sums: np.ndarray | float = 0.0
        self.count = 0

    def add(self, values: np.ndarray, member: np.ndarray) -> None:
        chosen = values[member == 1]
        if self.positive:
            chosen = np.maximum(chosen, 0)
        self.sums = self.sums + chosen.sum(0, dtype=np.float64)
        self.count += chosen.shape[0]


class SelectivityCollector:
    """Accumulates one layer's selectivity statistics in a single pass over one statistic."""

    def __init__(self, layer: str, stat: str, category: str, membership: np.ndarray,
                 classes: tuple[np.ndarray, list[str]] | None = None, normalization: str = "minmax",
                 eps: float = 1e-6, threshold: float = 0.65, permutations: int = 1000, seed: int = 0) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}")
        self.layer, self.stat, self.category = layer, stat, category
        self.stats = (stat,)
        self.membership, self.classes = membership, classes
        self.normalization, self.eps, self.threshold = normalization, eps, threshold
        self.analysed = np.isfinite(membership)
        positive = normalization == "rectify"
        self.units = UnitSums()
        self.in_category = CategorySums(positive)
        self.null = GroupSums(positive, float32=True) if permutations else None
        self.permuter = ChunkedPermutation(int(self.analysed.sum()), int(np.nansum(membership)), permutations,
                                           seed) if permutations else None
        self.class_sums = ClassSums(len(classes[1]), positive) if classes is not None else None

    def add(self, rows: np.ndarray, blocks: dict[str, np.ndarray], valid: np.ndarray) -> None:
        values = blocks[self.stat]
        keep = self.analysed[rows] & valid
        chosen, member = values[keep], self.membership[rows][keep]
        self.units.add(chosen)
        self.in_category.add(chosen, member)
        if self.null is not None:
            self.null.add(chosen, self.permuter.membership(member))
        if self.class_sums is not None:
            codes = self.classes[0][rows]
            labelled = valid & (codes >= 0)
            self.class_sums.add(values[labelled], codes[labelled])

    def _normalize(self, sums: np.ndarray, counts: np.ndarray | float) -> np.ndarray:
        """Sum of normalized values from raw (or rectified) sums over ``counts`` images."""
        u = self.units
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.normalization == "minmax":
                return (sums - counts * u.low) / np.where(u.high > u.low, u.high - u.low, np.nan)
            return sums / np.where(u.high > 0, u.high, np.nan)

    def frame(self) -> pd.DataFrame:
        u, eps = self.units, self.eps
        n, n_cat = u.n, float(self.in_category.count)
        total = self._normalize(u.positive if self.normalization == "rectify" else u.total, n)
        in_cat = self._normalize(self.in_category.sums, n_cat)
        with np.errstate(invalid="ignore", divide="ignore"):
            malakhova = in_cat / (total + eps)
            mean_cat, mean_rest = in_cat / n_cat, (total - in_cat) / (n - n_cat)
            balanced = mean_cat / (mean_cat + mean_rest + eps)
        p = np.full(malakhova.shape, np.nan)
        if self.null is not None:
            observed, null = self.null.sums[:, :1], self.null.sums[:, 1:]
            p = (1 + (null >= observed).sum(1)) / (1 + null.shape[1])
        units = np.arange(malakhova.size)
        frames = [self._rows(units, "malakhova", malakhova, self.category, malakhova >= self.threshold, p),
                  self._rows(units, "balanced", balanced, self.category, balanced >= self.threshold, p)]
        if self.class_sums is not None:
            frames.append(self._morcos(units))
        return pd.concat(frames, ignore_index=True)

    def _morcos(self, units: np.ndarray) -> pd.DataFrame:
        seen = self.class_sums.counts > 0
        sums = self.class_sums.sums.numpy()[seen]
        means = self._normalize(sums, self.class_sums.counts[seen][:, None]) / self.class_sums.counts[seen][:, None]
        names = np.asarray(self.classes[1])[seen]
        best = np.nanargmax(np.nan_to_num(means, nan=-np.inf), axis=0)
        top = means[best, units]
        rest = (np.nansum(means, 0) - top) / max(means.shape[0] - 1, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            csi = (top - rest) / (top + rest + self.eps)
        return self._rows(units, "morcos", csi, names[best], np.full(units.size, np.nan), np.full(units.size, np.nan))

    def _rows(self, units, index, value, category, selective, p) -> pd.DataFrame:
        return pd.DataFrame({"layer": self.layer, "unit": units, "stat": self.stat, "category": category,
                             "index": index, "value": value, "selective": selective, "p": p,
                             "normalization": self.normalization})
