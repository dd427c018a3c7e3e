"""Top-K and bottom-K images per unit, streamed over chunks; ties go to the earlier image."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .running import RunningTopK

# Nguyen & Lambert rank by max value, mean value and largest active area; the opponent side of
# Malakhova's analysis needs the most negative responses.
DEFAULT_CRITERIA = (("max", "top"), ("mean", "top"), ("area", "top"), ("min", "bottom"), ("mean", "bottom"))


class TopKCollector:
    """Running top/bottom-K per unit for each (statistic, direction) criterion."""

    def __init__(self, layer: str, k: int = 9, criteria: Sequence[tuple[str, str]] = DEFAULT_CRITERIA,
                 eligible: np.ndarray | None = None) -> None:
        for _stat, direction in criteria:
            if direction not in ("top", "bottom"):
                raise ValueError(f"direction must be 'top' or 'bottom', not {direction!r}")
        self.layer, self.k, self.criteria = layer, k, list(criteria)
        self.stats = tuple(dict.fromkeys(stat for stat, _ in self.criteria))
        self.eligible = eligible
        self.running = {c: RunningTopK(k, largest=c[1] == "top") for c in self.criteria}

    def add(self, rows: np.ndarray, blocks: dict[str, np.ndarray], valid: np.ndarray) -> None:
        keep = valid if self.eligible is None else valid & self.eligible[rows]
        if not keep.any():
            return
        for (stat, _direction), running in self.running.items():
            running.add(blocks[stat][keep], rows[keep])

    def block(self, rows: np.ndarray, blocks: dict[str, np.ndarray], valid: np.ndarray, draw=None,
              into: dict[tuple[str, str], RunningTopK] | None = None) -> dict[tuple[str, str], RunningTopK]:
        """The top/bottom-K per criterion of ``into``'s blocks and this one, without touching this
        collector (dask workers: streamed, so later blocks of a group are compared with the k-th kept)."""
        partial = TopKCollector(self.layer, self.k, self.criteria, self.eligible)
        if into is not None:
            partial.running = into
        partial.add(rows, blocks, valid)
        return partial.running

    def merge(self, partial: dict[tuple[str, str], RunningTopK]) -> None:
        """Fold a block's top/bottom-K in: exact in any order (ties go to the earlier image all the same)."""
        for criterion, running in partial.items():
            self.running[criterion].merge(running)

    def result(self, stat: str, direction: str) -> tuple[np.ndarray, np.ndarray]:
        return self.running[(stat, direction)].result()

    def frame(self) -> pd.DataFrame:
        frames = []
        for (stat, direction), running in self.running.items():
            if running.keys is None:
                continue
            rows, values = running.result()
            k, units = rows.shape
            frames.append(pd.DataFrame({
                "layer": self.layer, "unit": np.tile(np.arange(units), k), "criterion": stat,
                "direction": direction, "rank": np.repeat(np.arange(1, k + 1), units),
                "image": rows.ravel(), "value": values.ravel()}))
        if not frames:
            return pd.DataFrame(columns=["layer", "unit", "criterion", "direction", "rank", "image", "value"])
        frame = pd.concat(frames, ignore_index=True).dropna(subset=["value"])
        return frame.sort_values(["unit", "criterion", "direction", "rank"], kind="stable", ignore_index=True)
