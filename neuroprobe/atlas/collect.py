"""The numbers of every unit of a layer, from the same ``analyze`` call ``report`` makes (same defaults).

One :class:`LayerNumbers` per layer: the selectivity indices and p per category, the opponent counts, the
top-K and bottom-K images by the chosen statistic, a histogram of the unit's pooled values over all images
and the most frequent labels among its top-N images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..analysis import analyze
from ..analysis.topk import DEFAULT_CRITERIA
from ..store.layout import open_layer

LABEL_COLUMNS = ("class_name", "label", "category", "class_index", "wnid")
INDICES = (("malakhova", "Malakhova"), ("balanced", "balanced"))


@dataclass
class Options:
    """What ``report`` is asked for (its defaults), plus what only the atlas needs."""

    categories: Sequence[str] = ("dog",)
    stat: str = "mean"
    k: int = 9
    n: int = 50
    column: str | None = None
    mapping: str | Path | None = None
    normalization: str = "minmax"
    threshold: float = 0.65
    permutations: int = 1000
    seed: int = 0
    bins: int = 20
    classes: int = 5
    allow_incomplete: bool = False

    def analysis(self) -> dict:
        return {"stat": self.stat, "k": self.k, "n": self.n, "column": self.column, "mapping": self.mapping,
                "normalization": self.normalization, "threshold": self.threshold,
                "permutations": self.permutations, "seed": self.seed, "image_columns": True,
                "allow_incomplete": self.allow_incomplete, "criteria": self.criteria()}

    def criteria(self) -> tuple:
        """report's criteria, plus the top and bottom of ``stat`` (report has no bottom by max or area): the
        rows report writes are the same, each criterion has its own running top-K."""
        return tuple(dict.fromkeys(DEFAULT_CRITERIA + ((self.stat, "top"), (self.stat, "bottom"))))


@dataclass
class LayerNumbers:
    layer: str
    units: list[int]
    fields: list[dict]                          # key, label, kind of each sortable number
    values: np.ndarray                          # (units, fields) float, NaN where none
    top: dict[int, list[tuple[int, float]]]     # unit -> [(image, value)] best first
    bottom: dict[int, list[tuple[int, float]]]
    hist: dict[int, dict]
    classes: dict[int, list[list]]
    opponent: dict[int, dict[str, dict]]
    preferred: dict[int, str] = field(default_factory=dict)  # CSI's preferred class (a class_index value)
    class_names: dict[str, str] = field(default_factory=dict)  # class_index value -> class_name, where both exist


def label_column(images: pd.DataFrame) -> str:
    """The image-table column shown as each image's label."""
    return next((c for c in LABEL_COLUMNS if c in images), "path")


def fields_for(categories: Sequence[str], empirical: bool) -> list[dict]:
    """The sortable numbers of a layer, in the order of :attr:`LayerNumbers.values` columns."""
    out = []
    for category in categories:
        for key, label in INDICES:
            out.append({"key": f"{key}[{category}]", "label": f"{label} ({category})", "kind": "index"})
        out.append({"key": f"p[{category}]", "label": f"permutation p ({category})", "kind": "p"})
        out.append({"key": f"opp+[{category}]", "label": f"{category} among top-N", "kind": "count"})
        out.append({"key": f"opp-[{category}]", "label": f"{category} among bottom-N", "kind": "count"})
    out += [{"key": "csi", "label": "CSI (Morcos)", "kind": "index"},
            {"key": "top1", "label": "largest value", "kind": "value"},
            {"key": "bottom1", "label": "smallest value", "kind": "value"},
            {"key": "mean", "label": "mean over images", "kind": "value"},
            {"key": "rf", "label": "theoretical RF (px)", "kind": "rf"}]
    if empirical:
        out.append({"key": "erf", "label": "empirical RF (px)", "kind": "rf"})
    return out


def collect(store: str | Path, layers: Sequence[str], options: Options, units: Sequence[int] | None = None,
            rf: dict[str, float] | None = None, empirical: dict[tuple[str, int], float] | None = None,
            images: pd.DataFrame | None = None) -> dict[str, LayerNumbers]:
    """The numbers of ``layers`` (``units`` of each, default all); ``rf``: theoretical size per layer."""
    tables: dict[str, list[pd.DataFrame]] = {"selectivity": [], "topk": [], "opponent": []}
    for i, category in enumerate(options.categories):
        parts = ("selectivity", "topk", "opponent") if i == 0 else ("selectivity", "opponent")
        got = analyze(store, category, layers=list(layers), parts=parts, **options.analysis())
        for part, frame in got.items():
            tables[part].append(frame)
    frames = {part: pd.concat(f, ignore_index=True) for part, f in tables.items()}
    with_empirical = empirical is not None
    out = {}
    for layer in layers:
        out[layer] = _layer(store, layer, frames, options, units, (rf or {}).get(layer, math.nan),
                            empirical if with_empirical else None, images)
    return out


def _layer(store, layer, frames, options: Options, units, rf_size, empirical, images) -> LayerNumbers:
    values = open_layer(store, layer)[options.stat].values  # (image, unit)
    all_units = list(range(values.shape[1])) if units is None else [u for u in units if u < values.shape[1]]
    fields = fields_for(options.categories, empirical is not None)
    column = {f["key"]: j for j, f in enumerate(fields)}
    table = np.full((len(all_units), len(fields)), np.nan)
    row_of = {u: r for r, u in enumerate(all_units)}
    sel = frames["selectivity"][frames["selectivity"]["layer"] == layer]
    sel = sel[sel["unit"].isin(all_units)]
    preferred: dict[int, str] = {}
    for rec in sel.itertuples(index=False):
        r = row_of[int(rec.unit)]
        if rec.index == "morcos":
            table[r, column["csi"]] = rec.value
            preferred[int(rec.unit)] = str(rec.category)
        else:
            table[r, column[f"{rec.index}[{rec.category}]"]] = rec.value
            if rec.index == "malakhova":
                table[r, column[f"p[{rec.category}]"]] = rec.p
    opponent: dict[int, dict[str, dict]] = {u: {} for u in all_units}
    opp = frames["opponent"][frames["opponent"]["layer"] == layer]
    for rec in opp[opp["unit"].isin(all_units)].itertuples(index=False):
        r, u = row_of[int(rec.unit)], int(rec.unit)
        table[r, column[f"opp+[{rec.category}]"]] = rec.positive_in_category
        table[r, column[f"opp-[{rec.category}]"]] = rec.negative_in_category
        opponent[u][str(rec.category)] = {"n": int(rec.n), "positive_images": int(rec.positive_images),
                                          "positive_in_category": int(rec.positive_in_category),
                                          "negative_images": int(rec.negative_images),
                                          "negative_in_category": int(rec.negative_in_category),
                                          "category_share": float(rec.category_share)}
    top, bottom = _ranked(frames["topk"], layer, options.stat, all_units)
    labels = images[label_column(images)].astype(str).to_numpy() if images is not None else None
    hist, classes = {}, {}
    for r, u in enumerate(all_units):
        column_values = values[:, u]
        finite = column_values[np.isfinite(column_values)]
        hist[u] = _histogram(finite, options.bins)
        table[r, column["mean"]] = float(finite.mean()) if finite.size else math.nan
        table[r, column["top1"]] = top[u][0][1] if top[u] else math.nan
        table[r, column["bottom1"]] = bottom[u][0][1] if bottom[u] else math.nan
        table[r, column["rf"]] = rf_size
        if empirical is not None:
            table[r, column["erf"]] = empirical.get((layer, u), math.nan)
        classes[u] = _top_classes(column_values, labels, options.n, options.classes)
    names = {}
    if images is not None and {"class_index", "class_name"} <= set(images.columns):
        from ..analysis.categories import class_labels

        codes, labels_of = class_labels(images, "class_index")
        for code, name in zip(codes, images["class_name"].astype(str)):
            if 0 <= code < len(labels_of):
                names.setdefault(str(labels_of[code]), name)
    return LayerNumbers(layer, all_units, fields, table, top, bottom, hist, classes, opponent, preferred, names)


def _ranked(topk: pd.DataFrame, layer: str, stat: str, units: Sequence[int]):
    """unit -> [(image, value)] of the top-K (``stat``, top) and bottom-K (``stat``, bottom), rank order."""
    rows = topk[(topk["layer"] == layer) & (topk["criterion"] == stat)].sort_values(["unit", "direction", "rank"])
    top: dict[int, list] = {u: [] for u in units}
    bottom: dict[int, list] = {u: [] for u in units}
    for rec in rows.itertuples(index=False):
        target = top if rec.direction == "top" else bottom
        if int(rec.unit) in target:
            target[int(rec.unit)].append((int(rec.image), float(rec.value)))
    return top, bottom


def _histogram(values: np.ndarray, bins: int) -> dict:
    if not values.size:
        return {"lo": None, "hi": None, "counts": []}
    lo, hi = float(values.min()), float(values.max())
    counts, _ = np.histogram(values, bins=bins, range=(lo, hi if hi > lo else lo + 1))
    return {"lo": lo, "hi": hi, "counts": counts.astype(int).tolist()}


def _top_classes(values: np.ndarray, labels: np.ndarray | None, n: int, keep: int) -> list[list]:
    """[[label, count]] of the most frequent labels among the unit's ``n`` largest values."""
    if labels is None:
        return []
    finite = np.flatnonzero(np.isfinite(values))
    order = finite[np.argsort(-values[finite], kind="stable")[:n]]
    counts = pd.Series(labels[order]).value_counts(sort=True)
    return [[str(label), int(count)] for label, count in counts.head(keep).items()]
