"""Streaming accumulators over image chunks: each has ``add(values, rows)`` and a result.

``values`` is one chunk of a layer statistic, float32 (n_images_in_chunk, units), and ``rows`` the
store rows it covers. Memory depends on the number of units, never on the number of images.
"""
from __future__ import annotations

import numpy as np
import torch

INDEX_BITS = 31  # images per store: up to 2**31 - 1


def _sortable(values: np.ndarray) -> np.ndarray:
    """float32 -> int64 whose order is the float order (NaN lowest; -0.0 == 0.0)."""
    v = np.where(np.isnan(values), -np.inf, values).astype(np.float32) + np.float32(0.0)
    bits = v.view(np.int32).astype(np.int64)
    return np.where(bits >= 0, bits + (1 << 31), (1 << 31) - 1 - (bits & 0x7FFFFFFF))


class RunningTopK:
    """The ``k`` largest (or smallest) values per unit with their rows; ties go to the earlier row.

    Each (value, row) pair becomes one int64 key (order-preserving float bits above the reversed
    row index), so ``torch.topk`` selects exactly and deterministically, chunk after chunk.
    """

    def __init__(self, k: int, largest: bool = True) -> None:
        self.k, self.largest = k, largest
        self.keys: torch.Tensor | None = None

    def add(self, values: np.ndarray, rows: np.ndarray) -> None:
        signed = values if self.largest else -values
        keys = (_sortable(signed) << INDEX_BITS) | ((1 << INDEX_BITS) - 1 - rows.astype(np.int64))[:, None]
        keys = torch.from_numpy(keys)
        if self.keys is not None:
            keys = torch.cat([self.keys, keys])
        self.keys = torch.topk(keys, min(self.k, keys.shape[0]), dim=0).values

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values), each (k, units), best first; value NaN where a unit has fewer valid images."""
        keys = self.keys.numpy()
        rows = (1 << INDEX_BITS) - 1 - (keys & ((1 << INDEX_BITS) - 1))
        ordered = keys >> INDEX_BITS
        bits = np.where(ordered >= (1 << 31), ordered - (1 << 31), ((1 << 31) - 1 - ordered) | 0x80000000)
        values = bits.astype(np.uint32).view(np.float32).astype(np.float32)
        values = np.where(np.isneginf(values), np.nan, values)
        return rows, values if self.largest else -values


class UnitSums:
    """Per unit over the analysed images: count, min, max, sum, and the sum of max(value, 0)."""

    def __init__(self) -> None:
        self.n = 0
        self.low = self.high = self.total = self.positive = None

    def add(self, values: np.ndarray) -> None:
        if values.shape[0] == 0:
            return
        v = values.astype(np.float64)
        low, high = v.min(0), v.max(0)
        total, positive = v.sum(0), np.maximum(v, 0).sum(0)
        if self.total is None:
            self.low, self.high, self.total, self.positive = low, high, total, positive
        else:
            self.low, self.high = np.minimum(self.low, low), np.maximum(self.high, high)
            self.total, self.positive = self.total + total, self.positive + positive
        self.n += values.shape[0]


class GroupSums:
    """Per unit and group (category, permutation): sums and counts, by one matrix product per chunk.

    ``add(values, membership)`` with membership (n, groups) of 0/1 accumulates values.T @ membership
    (of max(values, 0) when ``positive``) into float64 totals. ``float32=True`` multiplies in float32,
    several times faster for many groups (permutation nulls), still summing chunks in float64.
    """

    def __init__(self, positive: bool = False, float32: bool = False) -> None:
        self.positive, self.dtype = positive, torch.float32 if float32 else torch.float64
        self.sums: np.ndarray | None = None
        self.counts: np.ndarray | None = None

    def add(self, values: np.ndarray, membership: np.ndarray) -> None:
        v = torch.from_numpy(values).to(self.dtype)
        if self.positive:
            v = v.clamp(min=0)
        sums = (v.T @ torch.from_numpy(membership).to(self.dtype)).double().numpy()
        counts = membership.sum(0, dtype=np.float64)
        if self.sums is None:
            self.sums, self.counts = sums, counts
        else:
            self.sums += sums
            self.counts += counts


class ChunkedPermutation:
    """Uniformly random permutations of a 0/1 label vector, drawn chunk by chunk with bounded memory.

    A permutation of labels with ``n_members`` ones among ``n`` places the ones uniformly; chunk by
    chunk, how many land in the chunk is hypergeometric given what remains, and where they land is a
    uniform choice inside the chunk. Column 0 is the observed labelling, columns 1.. permutations.
    """

    def __init__(self, n: int, n_members: int, permutations: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.permutations = permutations
        self.left = n
        self.members_left = np.full(permutations, n_members, dtype=np.int64)

    def membership(self, observed: np.ndarray) -> np.ndarray:
        """(n_chunk, 1 + permutations) 0/1 for the next ``len(observed)`` labelled images."""
        size = len(observed)
        out = np.zeros((size, 1 + self.permutations), dtype=np.float32)
        out[:, 0] = observed
        if size == 0 or self.permutations == 0:
            return out
        take = self.rng.hypergeometric(self.members_left, self.left - self.members_left, size) \
            if self.left > size else self.members_left.copy()
        order = np.argsort(self.rng.random((size, self.permutations)), axis=0)  # a random order per column
        chosen = np.arange(size)[:, None] < take[None, :]                        # its first `take` places
        out[order[chosen], np.nonzero(chosen)[1] + 1] = 1
        self.members_left -= take
        self.left -= size
        return out
