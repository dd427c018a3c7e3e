"""Opponent responses (Malakhova): per unit, how many of its strongest positive and strongest
negative responses come from category images."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .topk import TopKCollector


def correlation(a, b) -> float:
    """Pearson r, NaN (quietly) when either side is constant or there are fewer than 3 units."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


class OpponentCollector:
    """Top-N by ``max`` (positive) and bottom-N by ``min`` (negative) among labelled images."""

    def __init__(self, layer: str, category: str, membership: np.ndarray, n: int = 50) -> None:
        self.layer, self.category, self.membership, self.n = layer, category, membership, n
        self.ranking = TopKCollector(layer, n, (("max", "top"), ("min", "bottom")), eligible=np.isfinite(membership))
        self.stats = self.ranking.stats

    def add(self, rows: np.ndarray, blocks: dict[str, np.ndarray], valid: np.ndarray) -> None:
        self.ranking.add(rows, blocks, valid)

    def block(self, rows: np.ndarray, blocks: dict[str, np.ndarray], valid: np.ndarray, draw=None, into=None):
        return self.ranking.block(rows, blocks, valid, into=into)

    def merge(self, partial) -> None:
        self.ranking.merge(partial)

    def frame(self) -> pd.DataFrame:
        counts = {}
        for side, criterion in (("positive", ("max", "top")), ("negative", ("min", "bottom"))):
            rows, values = self.ranking.result(*criterion)
            found = np.isfinite(values)
            members = np.where(found, self.membership[rows], 0.0)
            counts[side] = (found.sum(0), members.sum(0))
        units = np.arange(counts["positive"][0].size)
        frame = pd.DataFrame({"layer": self.layer, "unit": units, "category": self.category, "n": self.n,
                              "positive_images": counts["positive"][0], "positive_in_category": counts["positive"][1],
                              "negative_images": counts["negative"][0], "negative_in_category": counts["negative"][1]})
        frame["positive_share"] = frame.positive_in_category / frame.positive_images
        frame["negative_share"] = frame.negative_in_category / frame.negative_images
        frame["category_share"] = float(np.nanmean(self.membership))
        return frame.astype({"positive_in_category": int, "negative_in_category": int})
