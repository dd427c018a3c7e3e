"""Figures of manufactured images: a grid for a layer, and each unit's images beside its natural extremes."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from .visualize import Visualization


def layer_grid(vis: Visualization, columns: int | None = None) -> plt.Figure:
    """Every manufactured image, titled with its unit, direction and activation (and its fraction of the
    strongest natural response when a store was given)."""
    n = len(vis.table)
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 1.65 * rows), layout="constrained", squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, entry in enumerate(vis.table.itertuples()):
        ax = axes.ravel()[i]
        ax.imshow(vis.images[i].permute(1, 2, 0).numpy())
        detail = f"{entry.activation:.2f}"
        if "fraction" in vis.table and pd.notna(entry.fraction):
            detail += f" ({entry.fraction:.1f}x)"
        ax.set_title(f"{entry.unit} {entry.direction}: {detail}", fontsize=7)
    attrs = vis.table.attrs
    fig.suptitle(f"{attrs.get('model', '')} {vis.table['layer'].iat[0]}: manufactured images ({vis.table['param'].iat[0]}, "
                 f"{attrs.get('steps')} steps; {vis.table['objective'].iat[0]} pre-activation reached"
                 + (", x strongest natural image" if "fraction" in vis.table else "") + ")", fontsize=9)
    return fig


def unit_figures(vis: Visualization, store: str | Path, out: str | Path, k: int = 6) -> list[Path]:
    """Per unit: the max (min) manufactured image beside its top-K (bottom-K) natural images by the same
    statistic, one PNG per unit in ``out``; returns the paths."""
    from ..analysis import top_images
    from ..analysis.plots import unit_images

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layer, objective = vis.table["layer"].iat[0], vis.table["objective"].iat[0]
    top, bottom = ("max", "min") if objective == "max" else ("mean", "mean")
    units = sorted(set(vis.table["unit"]))
    from ..store.completeness import COLUMN, completeness, mark_figure

    allow_incomplete = COLUMN in vis.table  # visualize() accepted an incomplete store
    state = completeness(store)
    topk = top_images(store, k=k, layers=[layer], criteria=((top, "top"), (bottom, "bottom")),
                      allow_incomplete=allow_incomplete)
    paths = []
    for unit in units:
        made = {}
        for i, entry in enumerate(vis.table.itertuples()):
            if entry.unit == unit:
                side = "top" if entry.direction == "max" else "bottom"
                made[side] = (vis.images[i], entry.activation, f"manufactured ({entry.direction})")
        fig = unit_images(store, topk[topk["unit"] == unit], layer, unit, k=k, top=top, bottom=bottom,
                          manufactured=made)
        mark_figure(fig, state)
        paths.append(out / f"unit{unit:04d}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
