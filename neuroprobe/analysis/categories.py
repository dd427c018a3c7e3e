"""Which images belong to a category: 1.0 member, 0.0 labelled non-member, NaN unlabelled."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import NeuroprobeError

BUILT_IN = {"dog": ("class_index", range(151, 269))}  # ImageNet dog classes 151-268


def _is_missing(values: pd.Series) -> np.ndarray:
    text = values.astype(str).str.strip()
    return np.array(values.isna() | text.isin(["", "nan", "None", "-1"]))


def category_membership(images: pd.DataFrame, category: str, column: str | None = None,
                        mapping: Mapping | str | Path | None = None) -> np.ndarray:
    """Membership of every image in ``category`` from a column, a label->category mapping, or a built-in.

    - ``mapping`` (dict, or CSV with columns label,category): labels read from ``column`` (default:
      the first of label, class_name, class_index, wnid) are mapped; unmapped labels are non-members.
    - ``column`` alone: members are the images whose ``column`` equals ``category``.
    - ``category='dog'`` with neither: ImageNet classes 151-268 of the ``class_index`` column.
    - otherwise a ``category`` column is used when present.
    Images with an empty label are NaN: excluded from category statistics, not counted as negatives.
    """
    if mapping is not None:
        table = mapping if isinstance(mapping, Mapping) else _read_mapping(mapping)
        column = column or next((c for c in ("label", "class_name", "class_index", "wnid") if c in images), None)
        labels = _column(images, column)
        mapped = labels.astype(str).map({str(k): str(v) for k, v in table.items()})
        out = (mapped == category).to_numpy(dtype=float)
    elif column is None and category in BUILT_IN and "category" not in images:
        column, members = BUILT_IN[category]
        labels = _column(images, column)
        numbers = pd.to_numeric(labels, errors="coerce")
        out = numbers.isin(list(members)).to_numpy(dtype=float)
    else:
        labels = _column(images, column or "category")
        out = (labels.astype(str) == str(category)).to_numpy(dtype=float)
    out[_is_missing(labels)] = np.nan
    if "status" in images:
        out[(images["status"] != "ok").to_numpy()] = np.nan
    if np.nansum(out) == 0:
        raise NeuroprobeError(f"no image belongs to category '{category}' (column {column}); "
                              "check --category, --category-column or --category-map")
    return out


def _column(images: pd.DataFrame, column: str | None) -> pd.Series:
    if column is None or column not in images:
        raise NeuroprobeError(f"the image table has no column '{column}' (columns: {', '.join(images.columns)}); "
                              "name one with --category-column")
    return images[column]


def _read_mapping(path: str | Path) -> dict[str, str]:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if table.shape[1] < 2:
        raise NeuroprobeError(f"{path} needs two columns: label,category")
    return dict(zip(table.iloc[:, 0], table.iloc[:, 1], strict=False))


def class_labels(images: pd.DataFrame, column: str = "class_index") -> tuple[np.ndarray, list[str]]:
    """Integer codes (-1 = unlabelled or unreadable) and the class names, for per-class statistics."""
    labels = _column(images, column)
    missing = _is_missing(labels)
    if "status" in images:
        missing = missing | (images["status"] != "ok").to_numpy()
    codes, names = pd.factorize(labels.astype(str).where(~missing), sort=True)
    return codes.astype(np.int64), [str(n) for n in names]
