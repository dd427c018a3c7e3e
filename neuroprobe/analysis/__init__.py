"""Unit analyses from a store, chunk by chunk: selectivity, top/bottom-K images, opponent responses.

:func:`analyze` reads each needed statistic of each layer once and feeds every analysis from that
single pass; :func:`selectivity`, :func:`top_images` and :func:`opponent` are the same with one part.
:func:`rdm` gives a layer's representational dissimilarity matrix (rsatoolbox's definitions).

Lives here: ``scan`` and ``dask_scan`` (one pass over a layer's blocks, locally or on a dask cluster), the
collectors (``selectivity``, ``topk``, ``opponent``), ``categories``, ``rdm``, ``verify`` (stored values
against the model), ``report`` (the ``report`` command's tables and figures) and ``plots``.

May import: ``neuroprobe.engine``, ``neuroprobe.store``, ``neuroprobe.models``, ``neuroprobe.data``,
``neuroprobe.training``, ``neuroprobe.progress`` and ``neuroprobe.errors``; never the capabilities beside or
above it (exports, maps, retina, ...).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..progress import Progress
from ..store.completeness import mark_table, require_complete
from ..store.integrity import readable
from ..store.layout import read_images
from .categories import category_membership, class_labels
from .dask_scan import dask_client, scan_dask
from .opponent import OpponentCollector
from .rdm import rdm
from .scan import layer_names, scan
from .selectivity import SelectivityCollector
from .topk import DEFAULT_CRITERIA, TopKCollector

PARTS = ("selectivity", "topk", "opponent")
log = logging.getLogger(__name__)


def analyze(store: str | Path, category: str = "dog", *, layers: Sequence[str] | None = None, stat: str = "mean",
            k: int = 9, n: int = 50, column: str | None = None, mapping: Mapping | str | Path | None = None,
            classes: str | None = "class_index", normalization: str = "minmax", eps: float = 1e-6,
            threshold: float = 0.65, permutations: int = 1000, seed: int = 0,
            criteria: Sequence[tuple[str, str]] = DEFAULT_CRITERIA, image_columns: bool = False,
            parts: Sequence[str] = PARTS, scheduler: Any = None,
            allow_incomplete: bool = False) -> dict[str, pd.DataFrame]:
    """Selectivity, top/bottom-K and opponent tables for ``layers`` of ``store`` in one pass per layer.

    See :mod:`neuroprobe.analysis.selectivity` for the indices and their normalization.
    ``image_columns=True`` joins the image table's columns onto the top-K rows. ``scheduler``: a
    ``distributed.Client`` or a scheduler address; the blocks are then read and reduced on its workers
    (:mod:`neuroprobe.analysis.dask_scan`), with tables equal to the single-process ones.
    An incomplete store (a killed extraction) is refused unless ``allow_incomplete``; then only its
    finished images are analysed and every table carries a ``completeness`` column.
    """
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    state = require_complete(store, allow_incomplete)
    images = read_images(store)
    needs_category = "selectivity" in parts or "opponent" in parts
    membership = category_membership(images, category, column, mapping) if needs_category else None
    if "opponent" in parts and n >= np.isfinite(membership).sum():
        log.warning("n=%d covers all %d labelled images: every unit's opponent counts are the same; use a smaller n",
                    n, int(np.isfinite(membership).sum()))
    class_codes = class_labels(images, classes) if "selectivity" in parts and classes and classes in images else None
    frames: dict[str, list[pd.DataFrame]] = {part: [] for part in parts}

    def make_collectors(layer: str) -> list:
        made = []
        if "selectivity" in parts:
            made.append(SelectivityCollector(layer, stat, category, membership, class_codes, normalization, eps,
                                             threshold, permutations, seed))
        if "topk" in parts:
            made.append(TopKCollector(layer, k, criteria))
        if "opponent" in parts:
            made.append(OpponentCollector(layer, category, membership, n))
        return made

    with contextlib.ExitStack() as stack:
        stack.enter_context(readable(store))  # a chunk that does not decode: one line naming it
        client = stack.enter_context(dask_client(scheduler)) if scheduler is not None else None
        names = layer_names(store, layers)
        meter = stack.enter_context(Progress(len(images) * len(names), f"analyze ({', '.join(parts)})", "row"))
        for layer in names:
            if client is None:
                collectors = make_collectors(layer)
                scan(store, layer, collectors, progress=meter.update)
            else:
                collectors = scan_dask(client, store, layer, lambda: make_collectors(layer), progress=meter.update)
            for part, collector in zip([p for p in PARTS if p in parts], collectors, strict=True):
                frames[part].append(collector.frame())
    out = {part: pd.concat(f, ignore_index=True) for part, f in frames.items()}
    if image_columns and "topk" in out:
        out["topk"] = out["topk"].join(images, on="image")
    return {part: mark_table(frame, state) for part, frame in out.items()}


def selectivity(store: str | Path, category: str = "dog", **options) -> pd.DataFrame:
    """Selectivity indices per unit (tidy: layer, unit, stat, category, index, value, selective, p)."""
    return analyze(store, category, parts=("selectivity",), **options)["selectivity"]


def top_images(store: str | Path, *, k: int = 9, **options) -> pd.DataFrame:
    """Top-K and bottom-K images per unit (layer, unit, criterion, direction, rank, image, value)."""
    return analyze(store, k=k, parts=("topk",), **options)["topk"]


def opponent(store: str | Path, category: str = "dog", *, n: int = 50, **options) -> pd.DataFrame:
    """Category images among each unit's N strongest positive (max) and negative (min) responses."""
    return analyze(store, category, n=n, parts=("opponent",), **options)["opponent"]


__all__ = ["analyze", "category_membership", "opponent", "rdm", "selectivity", "top_images"]
