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

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .running import ChunkedPermutation, GroupSums, PermutationDraw, UnitSums
from .scan import GROUP_BLOCKS

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

    def merge(self, other: "ClassSums") -> None:
        if other.sums is not None:
            self.sums = other.sums.clone() if self.sums is None else self.sums.add_(other.sums)
        self.counts += other.counts


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

    def merge(self, other: "CategorySums") -> None:
        self.sums = self.sums + other.sums
        self.count += other.count


@dataclass
class SelectivityPartial:
    """Sums over consecutive blocks (see :meth:`SelectivityCollector.block`); ``kept`` = images each analysed."""

    units: UnitSums
    in_category: CategorySums
    null: GroupSums | None
    class_sums: ClassSums | None
    kept: list[int]

    def merge(self, other: "SelectivityPartial") -> None:
        """Add the next blocks' sums (in block order: float sums depend on it)."""
        self.units.merge(other.units)
        self.in_category.merge(other.in_category)
        if self.null is not None and other.null is not None:
            self.null.merge(other.null)
        else:  # a block drawn for another number of images: no null here (the dask pass draws again)
            self.null = None
        if self.class_sums is not None:
            self.class_sums.merge(other.class_sums)
        self.kept = self.kept + other.kept


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
        self.permutations, self.seed = permutations, seed
        self.analysed = np.isfinite(membership)
        self.positive = normalization == "rectify"
        self.units = UnitSums()
        self.in_category = CategorySums(self.positive)
        self.null = GroupSums(self.positive, float32=True) if permutations else None
        self.permuter = self._permuter()
        self.class_sums = ClassSums(len(classes[1]), self.positive) if classes is not None else None
        self.group: SelectivityPartial | None = None  # the blocks since the last GROUP_BLOCKS boundary

    def _permuter(self) -> ChunkedPermutation | None:
        if not self.permutations:
            return None
        return ChunkedPermutation(int(self.analysed.sum()), int(np.nansum(self.membership)), self.permutations,
                                  self.seed)

    def kept(self, rows: np.ndarray, valid: np.ndarray | None = None) -> int:
        """Images of ``rows`` the indices use: labelled, readable (and, given ``valid``, finite)."""
        keep = self.analysed[rows]
        return int((keep if valid is None else keep & valid).sum())

    def draws(self, kept: list[int]) -> list[PermutationDraw | None]:
        """The permutation draws of consecutive blocks that keep ``kept`` images each (sequential, cheap)."""
        permuter = self._permuter()
        return [permuter.draw(k) if permuter else None for k in kept]

    def add(self, rows: np.ndarray, blocks: dict[str, np.ndarray], valid: np.ndarray) -> None:
        """Blocks are summed in groups of GROUP_BLOCKS, then the group into the total (as a dask task does)."""
        draw = self.permuter.draw(self.kept(rows, valid)) if self.permuter else None
        self.group = self.block(rows, blocks, valid, draw, into=self.group)
        if len(self.group.kept) == GROUP_BLOCKS:
            self.flush()

    def flush(self) -> None:
        if self.group is not None:
            self.merge(self.group)
            self.group = None

    def block(self, rows: np.ndarray, blocks: dict[str, np.ndarray], valid: np.ndarray,
              draw: PermutationDraw | None = None, into: SelectivityPartial | None = None) -> SelectivityPartial:
        """The sums of ``into``'s blocks followed by this one, without touching this collector (runs on a
        dask worker as well)."""
        values = blocks[self.stat]
        keep = self.analysed[rows] & valid
        chosen, member = values[keep], self.membership[rows][keep]
        units, in_category = UnitSums(), CategorySums(self.positive)
        units.add(chosen)
        in_category.add(chosen, member)
        null = class_sums = None
        if self.permutations and draw is not None and draw.size == len(chosen):
            null = GroupSums(self.positive, float32=True)
            null.add(chosen, draw.membership(member, self.permutations))
        if self.classes is not None:
            class_sums = ClassSums(len(self.classes[1]), self.positive)
            codes = self.classes[0][rows]
            labelled = valid & (codes >= 0)
            class_sums.add(values[labelled], codes[labelled])
        partial = SelectivityPartial(units, in_category, null, class_sums, [len(chosen)])
        if into is None:
            return partial
        into.merge(partial)
        return into

    def merge(self, partial: SelectivityPartial) -> None:
        """Fold one group's sums into the total (in group order: float sums depend on it)."""
        self.units.merge(partial.units)
        self.in_category.merge(partial.in_category)
        if self.null is not None:
            if partial.null is None:
                raise ValueError("a block was drawn for another number of images; redraw with the kept counts")
            self.null.merge(partial.null)
        if self.class_sums is not None:
            self.class_sums.merge(partial.class_sums)

    def _normalize(self, sums: np.ndarray, counts: np.ndarray | float) -> np.ndarray:
        """Sum of normalized values from raw (or rectified) sums over ``counts`` images."""
        u = self.units
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.normalization == "minmax":
                return (sums - counts * u.low) / np.where(u.high > u.low, u.high - u.low, np.nan)
            return sums / np.where(u.high > 0, u.high, np.nan)

    def frame(self) -> pd.DataFrame:
        self.flush()
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
