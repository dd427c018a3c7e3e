"""Streaming accumulators over image chunks: each has ``add(values, rows)``, ``merge(other)`` and a result.

``values`` is one chunk of a layer statistic, float32 (n_images_in_chunk, units), and ``rows`` the
store rows it covers. Memory depends on the number of units, never on the number of images.
``a.add(block)`` equals ``a.merge(fresh.add(block))`` bit for bit, so a block's accumulator can be
computed anywhere (a dask worker) and merged in block order into the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

INDEX_BITS = 31  # images per store: up to 2**31 - 1
PADDING = torch.iinfo(torch.int64).min  # below every real key
SPARSE_SHARE = 0.05  # above this share of passing values, a block goes through topk first


def _sortable(values: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 (>= 0) whose order is the float order (-0.0 == 0.0; NaN must be removed first)."""
    bits = (values + 0.0).view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits + (1 << 31), (1 << 31) - 1 - (bits & 0x7FFFFFFF))


def _unsortable(ordered: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_sortable`."""
    bits = torch.where(ordered >= (1 << 31), ordered - (1 << 31), ((1 << 31) - 1 - ordered) | 0x80000000)
    return bits.to(torch.int32).view(torch.float32)  # int64 -> int32 keeps the low 32 bits


class RunningTopK:
    """The ``k`` largest (or smallest) values per unit with their rows; ties go to the earlier row.

    Once k are kept, a block's values are compared with the k-th kept value and only those strictly
    better become keys; otherwise (first blocks, or many passing) a float ``topk`` over the block gives
    each unit's k-th value first. Keys are order-preserving float bits above the reversed row index,
    so the final ``topk`` over keys is exact and deterministic.
    """

    def __init__(self, k: int, largest: bool = True) -> None:
        self.k, self.largest = k, largest
        self.keys: torch.Tensor | None = None   # (<= k, units) best first
        self.kth: torch.Tensor | None = None    # value of the k-th key, once k are kept

    def add(self, values: np.ndarray, rows: np.ndarray) -> None:
        v = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        rows_t = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        if self.kth is not None:
            # k are held: a value enters only if strictly better than the k-th (an equal one comes from a
            # later row and loses the tie). Usually few pass, and no topk over the block is needed.
            passing = v > self.kth if self.largest else v < -self.kth
            if int(passing.sum()) <= SPARSE_SHARE * passing.numel():
                row, unit = passing.nonzero(as_tuple=True)
                chosen = v[row, unit]
                self._merge(row, unit, chosen if self.largest else -chosen, rows_t, v.shape[1])
                return
        signed = torch.nan_to_num(v if self.largest else -v, nan=-float("inf"))
        threshold = torch.topk(signed, min(self.k, v.shape[0]), dim=0).values[-1]
        if self.kth is not None:
            threshold = torch.maximum(threshold, self.kth)
        row, unit = (signed >= threshold).nonzero(as_tuple=True)
        self._merge(row, unit, signed[row, unit], rows_t, v.shape[1])

    def merge(self, other: "RunningTopK") -> None:
        """Keep the best k of both (keys hold the row, so the result does not depend on the merge order)."""
        if other.keys is not None:
            self._keep(other.keys if self.keys is None else torch.cat([self.keys, other.keys]))

    def _merge(self, row: torch.Tensor, unit: torch.Tensor, signed: torch.Tensor, rows: torch.Tensor,
               units: int) -> None:
        """Merge candidates (block row, unit, signed value) into the kept keys."""
        if row.numel() == 0 and self.keys is not None:
            return
        order = torch.argsort(unit, stable=True)                       # by unit, earlier rows first
        row, unit, signed = row[order], unit[order], signed[order]
        counts = torch.bincount(unit, minlength=units)
        position = torch.arange(unit.numel()) - (torch.cumsum(counts, 0) - counts)[unit]
        block = torch.full((max(int(counts.max()) if unit.numel() else 1, 1), units), PADDING, dtype=torch.int64)
        block[position, unit] = (_sortable(signed) << INDEX_BITS) | ((1 << INDEX_BITS) - 1 - rows[row])
        self._keep(block if self.keys is None else torch.cat([self.keys, block]))

    def _keep(self, keys: torch.Tensor) -> None:
        self.keys = torch.topk(keys, min(self.k, keys.shape[0]), dim=0).values
        if self.keys.shape[0] == self.k and bool((self.keys[-1] != PADDING).all()):
            self.kth = _unsortable(self.keys[-1] >> INDEX_BITS)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values), each (k, units), best first; value NaN where a unit has fewer valid images."""
        keys = self.keys
        rows = ((1 << INDEX_BITS) - 1 - (keys & ((1 << INDEX_BITS) - 1))).numpy()
        values = _unsortable(keys >> INDEX_BITS).numpy().astype(np.float32)
        values[np.isneginf(values) | (keys == PADDING).numpy()] = np.nan
        return rows, values if self.largest else -values


class UnitSums:
    """Per unit over the analysed images: count, min, max, sum, and the sum of max(value, 0)."""

    def __init__(self) -> None:
        self.n = 0
        self.low = self.high = self.total = self.positive = None

    def add(self, values: np.ndarray) -> None:
        if values.shape[0] == 0:
            return
        block = UnitSums()
        block.low, block.high = values.min(0).astype(np.float64), values.max(0).astype(np.float64)
        block.total = values.sum(0, dtype=np.float64)
        block.positive = np.maximum(values, 0).sum(0, dtype=np.float64)
        block.n = values.shape[0]
        self.merge(block)

    def merge(self, other: "UnitSums") -> None:
        if other.total is None:
            return
        if self.total is None:
            self.low, self.high, self.total, self.positive = other.low, other.high, other.total, other.positive
        else:
            self.low, self.high = np.minimum(self.low, other.low), np.maximum(self.high, other.high)
            self.total, self.positive = self.total + other.total, self.positive + other.positive
        self.n += other.n


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
        block = GroupSums(self.positive, self.dtype == torch.float32)
        block.sums = (v.T @ torch.from_numpy(membership).to(self.dtype)).double().numpy()
        block.counts = membership.sum(0, dtype=np.float64)
        self.merge(block)

    def merge(self, other: "GroupSums") -> None:
        if other.sums is None:
            return
        if self.sums is None:
            self.sums, self.counts = other.sums.copy(), other.counts.copy()
        else:
            self.sums += other.sums
            self.counts += other.counts


@dataclass
class PermutationDraw:
    """One block's share of the permutations: how many members land in it per permutation (``take``)
    and the generator state where its placement draws begin (None: an empty block draws nothing)."""

    size: int
    take: np.ndarray | None = None
    state: dict | None = None

    def membership(self, observed: np.ndarray, permutations: int) -> np.ndarray:
        """(size, 1 + permutations) 0/1: the observed labels, then the block's rows of each permutation."""
        out = np.zeros((self.size, 1 + permutations), dtype=np.float32)
        out[:, 0] = observed
        if self.state is None:
            return out
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = self.state
        order = np.argsort(rng.random((self.size, permutations)), axis=0)  # a random order per column
        chosen = np.arange(self.size)[:, None] < self.take[None, :]          # its first `take` places
        out[order[chosen], np.nonzero(chosen)[1] + 1] = 1
        return out


class ChunkedPermutation:
    """Uniformly random permutations of a 0/1 label vector, drawn chunk by chunk with bounded memory.

    A permutation of labels with ``n_members`` ones among ``n`` places the ones uniformly; chunk by
    chunk, how many land in the chunk is hypergeometric given what remains, and where they land is a
    uniform choice inside the chunk. Column 0 is the observed labelling, columns 1.. permutations.
    Only the counts are sequential: :meth:`draw` skips the generator past a chunk's placement draws
    (PCG64 jumps ahead), so the placements can be drawn later, anywhere, in any order.
    """

    def __init__(self, n: int, n_members: int, permutations: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.permutations = permutations
        self.left = n
        self.members_left = np.full(permutations, n_members, dtype=np.int64)

    def draw(self, size: int) -> PermutationDraw:
        """The next chunk of ``size`` labelled images: its member counts and placement seed state."""
        if size == 0 or self.permutations == 0:
            return PermutationDraw(size)
        take = self.rng.hypergeometric(self.members_left, self.left - self.members_left, size) \
            if self.left > size else self.members_left.copy()
        draw = PermutationDraw(size, take, self.rng.bit_generator.state)
        _skip_doubles(self.rng.bit_generator, size * self.permutations)
        self.members_left -= take
        self.left -= size
        return draw

    def membership(self, observed: np.ndarray) -> np.ndarray:
        """(n_chunk, 1 + permutations) 0/1 for the next ``len(observed)`` labelled images."""
        return self.draw(len(observed)).membership(observed, self.permutations)


def _skip_doubles(bit_generator: np.random.PCG64, n: int) -> None:
    """Advance as ``random(n)`` would: one 64-bit output per double, the buffered 32-bit half untouched
    (``advance`` alone clears that buffer, which a later small-range draw would have used)."""
    before = bit_generator.state
    bit_generator.advance(n)
    after = bit_generator.state
    after["has_uint32"], after["uinteger"] = before["has_uint32"], before["uinteger"]
    bit_generator.state = after
