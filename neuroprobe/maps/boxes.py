"""Maps to boxes to localization error: the scoring half of weakly supervised localization.

Box convention, used everywhere in :mod:`neuroprobe.maps`: a box is ``(x0, y0, x1, y1)`` in
**inclusive integer pixel coordinates** (x = column, y = row), so it covers the pixels
``map[y0:y1 + 1, x0:x1 + 1]`` and has area ``(x1 - x0 + 1) * (y1 - y0 + 1)``. Boxes are int64
numpy arrays of shape (4,) or (N, 4). (ILSVRC annotations use the same inclusive convention;
torchvision's ``box_iou`` uses continuous coordinates, i.e. ``(x0, y0, x1 + 1, y1 + 1)`` here.)

Maps are 2-D (H, W) or batched (B, H, W), torch tensors (any device) or numpy arrays.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..errors import NeuroprobeError

log = logging.getLogger(__name__)
RTOL = 1e-9  # energy comparisons forgive this share of the total, to absorb float rounding
PAIRS_PER_CHUNK = 2048  # (top, bottom) row pairs searched at once: bounds memory to ~2048 x W floats


def _as_numpy(maps) -> np.ndarray:
    """Any map (torch on any device, numpy, list) as a float64 numpy array."""
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().to("cpu", torch.float64).numpy()
    return np.asarray(maps, dtype=np.float64)


def _batched(maps) -> tuple[np.ndarray, bool]:
    """(B, H, W) float64 array and whether the input was a single 2-D map."""
    array = _as_numpy(maps)
    if array.ndim not in (2, 3):
        raise NeuroprobeError(f"maps must be (H, W) or (B, H, W), got shape {array.shape}; squeeze the channel axis")
    return (array[None], True) if array.ndim == 2 else (array, False)


def full_box(height: int, width: int) -> np.ndarray:
    """The box covering the whole map (the fallback when a map has nothing to localize)."""
    return np.array([0, 0, width - 1, height - 1], dtype=np.int64)


def _energy_box_one(energy: np.ndarray, fraction: float) -> np.ndarray:
    """Smallest-area box of one non-negative (H, W) map holding ``fraction`` of its energy."""
    height, width = energy.shape
    total = float(energy.sum())
    if total <= 0:
        log.warning("a map has no positive energy; its energy box is the whole map")
        return full_box(height, width)
    target = max(fraction - RTOL, RTOL) * total  # > 0, so every box found has at least one column
    rows = np.concatenate([np.zeros((1, width)), np.cumsum(energy, axis=0)])  # rows[i]: energy of rows < i
    tops, bottoms = np.triu_indices(height)
    row_totals = rows.sum(axis=1)
    feasible = row_totals[bottoms + 1] - row_totals[tops] >= target - RTOL * total
    tops, bottoms = tops[feasible], bottoms[feasible]  # row pairs whose full-width strip could suffice
    best_area, candidates = np.inf, []  # (top, bottom, left, right, energy) arrays at the best area
    for chunk in range(0, len(tops), PAIRS_PER_CHUNK):
        t, b = tops[chunk:chunk + PAIRS_PER_CHUNK], bottoms[chunk:chunk + PAIRS_PER_CHUNK]
        # prefix[k, j]: energy of rows t[k]..b[k], columns 0..j-1 (non-decreasing along j)
        strips = np.clip(rows[b + 1] - rows[t], 0, None)
        prefix = np.concatenate([np.zeros((len(t), 1)), np.cumsum(strips, axis=1)], axis=1)
        # for each (pair, left): the first j with prefix[j] >= prefix[left] + target -> right = j - 1
        ends = torch.searchsorted(torch.from_numpy(prefix), torch.from_numpy(prefix[:, :width] + target)).numpy()
        area = np.where(ends <= width, (ends - np.arange(width)) * (b - t + 1)[:, None], np.iinfo(np.int64).max)
        smallest = area.min()
        if smallest > best_area or smallest == np.iinfo(np.int64).max:
            continue
        if smallest < best_area:
            best_area, candidates = smallest, []
        k, left = np.nonzero(area == smallest)
        right = ends[k, left]
        candidates.append((t[k], b[k], left, right - 1, prefix[k, right] - prefix[k, left]))
    y0, y1, x0, x1, kept = (np.concatenate(part) for part in zip(*candidates))
    pick = np.lexsort((y1, x0, y0, -kept))[0]  # most energy, then top-most, then left-most
    return np.array([x0[pick], y0[pick], x1[pick], y1[pick]], dtype=np.int64)


def energy_box(maps, fraction: float = 0.95) -> np.ndarray:
    """Tightest box keeping ``fraction`` of a map's energy (Cao et al. 2015, "Look and Think Twice").

    Energy is the map clipped at 0 (``max(map, 0)``); the box is the one of smallest area whose
    energy is at least ``fraction`` of the total (up to a relative 1e-9 for rounding). Ties between
    equal areas go to the box with the most energy, then the top-most, then the left-most, then the
    shorter. Exact: a summed-area table over rows and a binary search over columns for every
    (top, bottom, left) triple, O(H^2 W log W). A map without positive energy gets the whole map.
    Returns (4,) for an (H, W) map, (B, 4) for (B, H, W).
    """
    if not 0 < fraction <= 1:
        raise NeuroprobeError(f"fraction must be in (0, 1], got {fraction}; pass e.g. fraction=0.95")
    array, single = _batched(maps)
    boxes = np.stack([_energy_box_one(np.clip(m, 0, None), fraction) for m in array])
    return boxes[0] if single else boxes


def _component_boxes(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """One box per connected component of a boolean mask, largest component (in pixels) first."""
    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return np.zeros((0, 4), dtype=np.int64)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    slices = ndimage.find_objects(labels)
    boxes = np.array([[s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1] for s in slices], dtype=np.int64)
    return boxes[np.argsort(-sizes, kind="stable")]  # ties keep raster order of the components


def threshold_boxes(maps, threshold: float = 0.2, largest_only: bool = False, connectivity: int = 8,
                    normalize: bool = False) -> np.ndarray | list[np.ndarray]:
    """One box per object: pixels strictly above ``threshold`` x the map's maximum, per connected component.

    ``normalize=True`` first min-max scales the map to [0, 1] (as Choe et al. 2020's wsolevaluation
    does); otherwise the cut is ``map > threshold * max(map)`` and a map whose maximum is <= 0 has
    no boxes. Components are ``connectivity``-connected (8: diagonal neighbours join, like OpenCV's
    external contours; 4: they do not); a component inside another's hole gets its own box. Boxes
    come largest component first (ties in raster order). Returns an (N, 4) array for an (H, W) map,
    a list of them for (B, H, W); ``largest_only`` keeps at most one box per map.
    """
    if connectivity not in (4, 8):
        raise NeuroprobeError(f"connectivity must be 4 or 8, got {connectivity}")
    array, single = _batched(maps)
    out = []
    for m in array:
        if normalize:
            span = m.max() - m.min()
            m = (m - m.min()) / span if span > 0 else np.zeros_like(m)
        peak = m.max()
        boxes = _component_boxes(m > threshold * peak, connectivity) if peak > 0 else np.zeros((0, 4), np.int64)
        out.append(boxes[:1] if largest_only else boxes)
    return out[0] if single else out


def cam_box(maps) -> np.ndarray:
    """The CAM rule (Zhou et al. 2016): box around the largest component above 20% of the maximum.

    A map with no positive value gets the whole map. Returns (4,) for (H, W), (B, 4) for (B, H, W).
    """
    array, single = _batched(maps)
    boxes = []
    for m in array:
        found = threshold_boxes(m, 0.2, largest_only=True)
        if len(found) == 0:
            log.warning("a map has no positive value; its CAM box is the whole map")
            found = full_box(*m.shape)[None]
        boxes.append(found[0])
    return boxes[0] if single else np.stack(boxes)


def _as_boxes(boxes) -> np.ndarray:
    """Boxes as an int64 (N, 4) array, checked."""
    array = _as_numpy(boxes)
    array = array.reshape(-1, 4) if array.size else np.zeros((0, 4))
    if np.any(array[:, 2] < array[:, 0]) or np.any(array[:, 3] < array[:, 1]):
        raise NeuroprobeError("a box has x1 < x0 or y1 < y0; boxes are inclusive (x0, y0, x1, y1)")
    return array.astype(np.int64)


def iou(boxes_a, boxes_b) -> np.ndarray:
    """Pairwise intersection over union (N, M) of inclusive pixel boxes (counts pixels, not lengths)."""
    a, b = _as_boxes(boxes_a), _as_boxes(boxes_b)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def boxes_to_mask(boxes, height: int, width: int) -> np.ndarray:
    """Boolean (H, W) union of inclusive boxes (clipped to the map), e.g. a target for the pointing games."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in _as_boxes(boxes):
        mask[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = True
    return mask


def localization_hits(pred_classes, true_classes, pred_boxes, gt_boxes_per_image: Sequence,
                      iou_threshold: float = 0.5) -> np.ndarray:
    """Per image: class right AND IoU >= ``iou_threshold`` with at least one ground-truth box."""
    pred_classes, true_classes = np.asarray(pred_classes).ravel(), np.asarray(true_classes).ravel()
    pred_boxes = _as_boxes(pred_boxes)
    if not len(pred_classes) == len(true_classes) == len(pred_boxes) == len(gt_boxes_per_image):
        raise NeuroprobeError("pred_classes, true_classes, pred_boxes and gt_boxes_per_image need one entry per image")
    hits = np.zeros(len(pred_boxes), dtype=bool)
    for i, (box, gts) in enumerate(zip(pred_boxes, gt_boxes_per_image)):
        gts = _as_boxes(gts)
        if len(gts) == 0:
            raise NeuroprobeError(f"image {i} has no ground-truth box; drop it before scoring localization")
        hits[i] = pred_classes[i] == true_classes[i] and iou(box, gts).max() >= iou_threshold
    return hits


def localization_error(pred_classes, true_classes, pred_boxes, gt_boxes_per_image: Sequence,
                       iou_threshold: float = 0.5) -> float:
    """Top-1 localization error (ILSVRC): share of images NOT (class right and IoU >= 0.5 with a gt box)."""
    hits = localization_hits(pred_classes, true_classes, pred_boxes, gt_boxes_per_image, iou_threshold)
    if len(hits) == 0:
        raise NeuroprobeError("no images to score; pass at least one prediction")
    return float(1 - hits.mean())
