"""Figures for maps that need the model: discrepancy maps over their images, a unit's empirical RF
with its theoretical RF drawn on it, and empirical vs theoretical RF size by depth."""
from __future__ import annotations

import textwrap
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter
from scipy import ndimage

from .empirical_rf import EmpiricalReceptiveFields
from .occlusion import DiscrepancyMaps


def _symmetric_limit(values: np.ndarray) -> float:
    """99.5th percentile of |values| over the finite non-zero ones: maps made with ``rf_only`` are exactly 0
    outside the field, and counting those zeros would saturate most of the field."""
    finite = np.abs(values[np.isfinite(values)])
    finite = finite[finite > 0]
    return float(np.percentile(finite, 99.5)) if finite.size else 1.0


def discrepancy_figure(maps: DiscrepancyMaps, images: torch.Tensor, units: Sequence[int] | None = None,
                       max_units: int = 5) -> plt.Figure:
    """One row per image: the image, then each unit's pixel-resolution discrepancy map over it (red: the
    patch lowers the response), with the unit's peak position marked."""
    columns = list(range(len(maps.units))) if units is None else [int(np.flatnonzero(maps.units == u)[0]) for u in units]
    columns = columns[:max_units]
    view = maps.pixel_view()
    # one colour scale for every panel, so that the single colour bar reads true for all of them
    limit = _symmetric_limit(view[:len(images)][:, columns])
    fig, axes = plt.subplots(len(images), len(columns) + 1, figsize=(2.0 * (len(columns) + 1), 2.1 * len(images)),
                             layout="constrained", squeeze=False)
    for row, image in enumerate(images):
        picture = image.permute(1, 2, 0).cpu().numpy()
        axes[row, 0].imshow(picture)
        axes[row, 0].set_title("image", fontsize=8)
        for c, column in enumerate(columns, start=1):
            ax = axes[row, c]
            ax.imshow(picture, alpha=0.35)
            shown = ax.imshow(view[row, column], cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=0.8)
            py, px = maps.peak_px[row, column]
            ax.plot(px, py, marker="+", color="black", markersize=8)
            ax.set_title(f"unit {maps.units[column]} ({maps.reference[row, column]:.2f})", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.colorbar(shown, ax=axes[:, -1], shrink=0.6, label="original - occluded (same scale in every panel)")
    fig.suptitle(f"{maps.layer}: occlusion discrepancy ({maps.window} px {maps.fill} patch, stride {maps.stride}, "
                 f"response at {maps.response})", fontsize=9)
    return fig


def receptive_field_figure(fields: EmpiricalReceptiveFields, units: Sequence[int] | None = None,
                           max_units: int = 6) -> plt.Figure:
    """Each unit's averaged re-centred discrepancy map, its empirical RF (solid contour: the region above the
    threshold that holds the maximum, the one measured; dotted: other regions above the threshold) and its
    theoretical RF (dashed square, clipped to the canvas), centred on the unit's position.

    Each panel zooms on its unit's middle: 0.75 x the theoretical size or 1.5 x the empirical size either
    side of it (at least 16 px, at most the whole canvas), so a small field is not a dot on a large canvas."""
    chosen = list(fields.units[:max_units]) if units is None else list(units)[:max_units]
    height, width = fields.image_size
    fig, axes = plt.subplots(1, len(chosen), figsize=(2.8 * len(chosen), 3.1), layout="constrained", squeeze=False)
    for ax, unit in zip(axes[0], chosen, strict=True):
        canvas = fields.map_of(int(unit))
        row = fields.table.set_index("unit").loc[int(unit)]
        limit = _symmetric_limit(canvas)
        ax.imshow(canvas, cmap="RdBu_r", vmin=-limit, vmax=limit)
        peak = np.nanmax(canvas) if np.isfinite(canvas).any() else np.nan
        if np.isfinite(peak) and peak > 0:
            above = np.nan_to_num(canvas, nan=-np.inf) >= fields.threshold * peak
            labels, _ = ndimage.label(above)
            measured = labels == labels[np.unravel_index(np.nanargmax(canvas), canvas.shape)]
            if (above & ~measured).any():   # above threshold but not connected to the maximum: not measured
                ax.contour(above & ~measured, levels=[0.5], colors="black", linewidths=0.6, linestyles=":")
            ax.contour(measured, levels=[0.5], colors="black", linewidths=1.2)
        size = row["theoretical_rf_px"]
        half = min(size, 2 * max(height, width)) / 2
        ax.add_patch(Rectangle((width - 1 - half, height - 1 - half), 2 * half, 2 * half, fill=False,
                               linestyle="--", edgecolor="dimgray", linewidth=1))
        ax.plot(width - 1, height - 1, marker="+", color="black")
        empirical = row["empirical_rf_px"] if np.isfinite(row["empirical_rf_px"]) else 0.0
        extent = max(0.75 * min(size, 2 * max(height, width)), 1.5 * empirical, 16.0)
        ax.set_xlim(max(-0.5, width - 1 - extent), min(2 * width - 1.5, width - 1 + extent))
        ax.set_ylim(min(2 * height - 1.5, height - 1 + extent), max(-0.5, height - 1 - extent))
        ax.set_title(f"unit {unit}: {row['empirical_rf_px']:.0f} px of {size:.0f} (k={row['k']})", fontsize=8)
        ax.axis("off")
    legend = (f"{fields.layer}: empirical RF (solid: the region >= {fields.threshold:g} x max that holds the max, "
              "as measured; dotted: other regions above it) and theoretical RF (dashed)")
    fig.suptitle(textwrap.fill(legend, width=max(30, int(12 * 2.8 * len(chosen)))), fontsize=9)
    return fig


def rf_size_by_depth(table: pd.DataFrame) -> plt.Figure:
    """Empirical RF sizes per unit (points) against the theoretical size (line), layers in the table's order.

    The size axis is logarithmic (theoretical sizes of deep layers are tens of times the empirical ones);
    a dotted line marks the image's size where some theoretical field exceeds it."""
    order = list(dict.fromkeys(table["layer"]))
    fig, ax = plt.subplots(figsize=(1.2 * len(order) + 3.5, 3.8), layout="constrained")
    sns.stripplot(table, x="layer", y="empirical_rf_px", order=order, color="tab:blue", alpha=0.6, ax=ax,
                  label="empirical (per unit)")
    medians = table.groupby("layer", sort=False)["empirical_rf_px"].median().reindex(order)
    ax.plot(range(len(order)), medians.to_numpy(), "o-", color="tab:blue", label="empirical (median)")
    theoretical = table.groupby("layer", sort=False)["theoretical_rf_px"].first().reindex(order)
    ax.plot(range(len(order)), theoretical.to_numpy(), "s--", color="dimgray", label="theoretical")
    beyond = table[table["theoretical_rf_px"] > table["theoretical_rf_px_in_image"]]
    if len(beyond):
        ax.axhline(float(beyond["theoretical_rf_px_in_image"].iloc[0]), color="gray", linestyle=":", linewidth=1,
                   label="image size")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=False))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set(xlabel="layer (by depth)", ylabel="receptive field size (px, sqrt of area)",
           title="Empirical and theoretical receptive field size by depth")
    return fig


def grid_pointing_figure(game, names: pd.Series | None = None, max_mosaics: int = 4) -> plt.Figure:
    """One row per example mosaic: the mosaic with the target cell outlined, then each method's map for that
    cell's class (each map scaled to its own 99.5th percentile) with its grid pointing score."""
    methods = list(game.examples)
    count = min(max_mosaics, len(game.example_images))
    cells = game.grid * game.grid
    fig, axes = plt.subplots(count, len(methods) + 1, figsize=(1.9 * (len(methods) + 1), 2.0 * count),
                             layout="constrained", squeeze=False)
    scores = game.scores.set_index(["method", "mosaic", "cell"])["grid"]
    mosaic_ids = sorted(game.scores["mosaic"].unique())[:count]
    for row, mosaic_id in enumerate(mosaic_ids):
        cell = row % cells
        picture = game.example_images[row].transpose(1, 2, 0)
        size = picture.shape[0] // game.grid
        corner = ((cell % game.grid) * size, (cell // game.grid) * size)
        image = game.mosaics[(game.mosaics.mosaic == mosaic_id) & (game.mosaics.cell == cell)]["image"].iat[0]
        label = names.iat[image] if names is not None else game.mosaics[(game.mosaics.mosaic == mosaic_id)
                                                                        & (game.mosaics.cell == cell)]["label"].iat[0]
        axes[row, 0].imshow(picture)
        axes[row, 0].set_title(textwrap.shorten(f"target: {label}", 28), fontsize=8)
        for c, method in enumerate(methods, start=1):
            values = game.examples[method][row, cell]
            axes[row, c].imshow(picture, alpha=0.3)
            top = np.percentile(values, 99.5)   # a few extreme pixels would leave pixel-level maps dark
            axes[row, c].imshow(values, cmap="magma", vmin=0, vmax=top if top > 0 else 1, alpha=0.75)
            axes[row, c].set_title(f"{method} {scores.loc[(method, mosaic_id, cell)]:.2f}", fontsize=8)
        for ax in axes[row]:
            ax.add_patch(Rectangle((corner[0] - 0.5, corner[1] - 0.5), size, size, fill=False, edgecolor="cyan",
                                   linewidth=1.2))
            ax.axis("off")
    fig.suptitle(f"grid pointing game: share of positive attribution in the target cell (cyan; uniform map "
                 f"{1 / cells:.2f})", fontsize=9)
    return fig
