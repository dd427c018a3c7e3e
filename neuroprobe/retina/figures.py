"""Figures of retinotopic search: views drawn on their image, likelihood maps beside Grad-CAM and DFF,
accuracy of the search policies, and the dorsal network's fixation maps."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Circle, Rectangle

from .layouts import Fixations

POLICY_NAMES = {"centre": "centre view", "label": "label-driven", "uncued": "uncued (max logit)",
                "igub": "IGUB", "vote": "majority vote", "sum_logits": "summed logits", "oracle": "oracle (any view)"}


def _pixels(fixations: Fixations, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixation centres (rows, cols, 2) and radii in pixels of a square ``size`` image."""
    return (fixations.centers + 1) * size / 2, fixations.radii * size / 2


def _map_extent(fixations: Fixations, size: int) -> list[float]:
    """imshow extent placing each map cell on its fixation (the layouts are uniform lattices)."""
    centres, _ = _pixels(fixations, size)
    xs, ys = centres[0, :, 0], centres[:, 0, 1]
    dx = (xs[-1] - xs[0]) / max(len(xs) - 1, 1) if len(xs) > 1 else size
    dy = (ys[-1] - ys[0]) / max(len(ys) - 1, 1) if len(ys) > 1 else size
    return [xs[0] - dx / 2, xs[-1] + dx / 2, ys[-1] + dy / 2, ys[0] - dy / 2]


def views_on_image(image: np.ndarray, fixations: Fixations, values: np.ndarray | None = None,
                   views: Sequence[np.ndarray] = (), view_titles: Sequence[str] = (), ax_title: str = "",
                   marked: Sequence[int] = (), kind: str = "logpolar", panel: float = 3.2) -> plt.Figure:
    """The image with every fixation's field drawn (a circle for log-polar views, the square for crop
    views; coloured by ``values`` (rows, cols) with a colour bar when given), the ``marked`` fixations in
    red, and the given views beside it. ``panel``: inches per panel."""
    size = image.shape[0]
    centres, radii = _pixels(fixations, size)
    fig, axes = plt.subplots(1, 1 + len(views), figsize=(panel * (1 + len(views)) + (0.6 if values is not None else 0),
                                                         panel + 0.3), layout="constrained", squeeze=False)
    ax = axes[0, 0]
    ax.imshow(image)
    cmap = plt.get_cmap("viridis")
    flat_values = None if values is None else np.asarray(values).reshape(-1)
    for i, ((x, y), r) in enumerate(zip(centres.reshape(-1, 2), radii.reshape(-1), strict=True)):
        colour = "white" if flat_values is None else cmap(float(flat_values[i]))
        bold = i in marked
        style = dict(fill=False, lw=2.2 if bold else 0.9, ec="red" if bold else colour, alpha=1.0 if bold else 0.8)
        ax.add_patch(Rectangle((x - r, y - r), 2 * r, 2 * r, **style) if kind == "crop" else Circle((x, y), r, **style))
        ax.plot(x, y, "o", ms=3.5, color="red" if bold else colour)
    ax.set_title(ax_title or f"{fixations.layout}: {len(fixations)} fixations", fontsize=9, pad=6)
    ax.axis("off")
    if flat_values is not None:
        fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1)), ax=ax, shrink=0.8,
                     label="p(label | view)")
    for k, (view, title) in enumerate(zip(views, list(view_titles) + [""] * len(views), strict=False), start=1):
        axes[0, k].imshow(view)
        axes[0, k].set_title(title, fontsize=9)
        axes[0, k].axis("off")
    return fig


def likelihood_figure(images: Sequence[np.ndarray], likelihood: np.ndarray, fixations: Fixations,
                      attributions: dict[str, np.ndarray], titles: Sequence[str]) -> plt.Figure:
    """The seed's Figure 3: per image, the photo, p(label | view) over the fixations, and each
    attribution method's map (e.g. Grad-CAM, DFF) for the same label."""
    columns = 2 + len(attributions)
    fig, axes = plt.subplots(len(images), columns, figsize=(2.6 * columns, 2.6 * len(images)),
                             layout="constrained", squeeze=False)
    for row, image in enumerate(images):
        size = image.shape[0]
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(titles[row], fontsize=8)
        axes[row, 1].imshow(image, alpha=0.45)
        shown = axes[row, 1].imshow(likelihood[row], cmap="magma", vmin=0, vmax=1, alpha=0.75,
                                    extent=_map_extent(fixations, size), interpolation="nearest")
        axes[row, 1].set_xlim(0, size)
        axes[row, 1].set_ylim(size, 0)
        axes[row, 1].set_title("p(label | view) at each fixation", fontsize=8)
        for c, (name, maps) in enumerate(attributions.items(), start=2):
            m = maps[row]
            axes[row, c].imshow(image, alpha=0.45)
            axes[row, c].imshow(m / (np.abs(m).max() or 1), cmap="magma", alpha=0.7, vmin=0, vmax=1,
                                extent=[0, size, size, 0])
            axes[row, c].set_title(name, fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.colorbar(shown, ax=axes, shrink=0.4, label="p(label | view); attribution maps scaled to their maximum")
    return fig


def accuracy_figure(summary: pd.DataFrame, column: str = "policy", names: dict | None = None,
                    hue: str | None = None, title: str = "") -> plt.Figure:
    """Accuracy per policy with 95% intervals (the seed's Figures 4 and 5); ``hue`` splits by layout/view.

    Bars and error bars are placed from the same table rows, so an interval can never sit on the
    wrong bar; the legend goes outside the axes."""
    names = POLICY_NAMES if names is None else names
    data = summary.copy()
    data["name"] = data[column].map(lambda p: names.get(p, p))
    x_order = list(dict.fromkeys(data["name"]))
    levels = list(dict.fromkeys(data[hue])) if hue else [None]
    width = 0.8 / len(levels)
    colours = sns.color_palette("deep", len(levels)) if hue else ["steelblue"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * len(x_order) * max(1, 0.6 * len(levels)), 3.6),
                           layout="constrained")
    for k, level in enumerate(levels):
        rows = data if level is None else data[data[hue] == level]
        xs = np.array([x_order.index(n) for n in rows["name"]]) - 0.4 + width * (k + 0.5)
        acc = rows["accuracy"].to_numpy(dtype=float)
        ax.bar(xs, acc, width=width * 0.95, color=colours[k], label=None if level is None else str(level))
        ax.errorbar(xs, acc, yerr=[acc - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - acc],
                    fmt="none", ecolor="black", capsize=2, lw=1)
    ax.set_xticks(range(len(x_order)), x_order, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("top-1 accuracy (95% Wilson interval)")
    ax.set_title(title, fontsize=9)
    if hue:
        ax.legend(fontsize=7, title=hue, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def save_figure(fig: plt.Figure, path, state=None) -> None:
    """Write ``fig`` (marked as made from an incomplete store when ``state`` says so) and close it."""
    if state is not None:
        from ..store.completeness import mark_figure

        mark_figure(fig, state)
    fig.savefig(path, dpi=110)
    plt.close(fig)


LOOP_NAMES = {"saccade": "one saccade, class of that view (Fig. 7)", "evidence": "+ evidence, up to 3 saccades",
              "igub": "+ evidence, IGUB among the map's best 5"}


def active_vision_figure(summary: pd.DataFrame, title: str = "") -> plt.Figure:
    """Each fixation map driving each loop: paired difference in accuracy from the centre view (left) and from
    the image-blind prior driving the same loop (right), with 95% intervals; the oracle's gain for scale."""
    rows = summary[summary["map"].fillna("").astype(str) != ""]
    maps = list(dict.fromkeys(rows["map"]))
    loops = list(dict.fromkeys(rows["loop"]))
    colours = sns.color_palette("deep", len(loops))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained", sharey=False)
    width = 0.8 / len(loops)
    for ax, column, label in ((axes[0], "vs_centre", "accuracy - centre view"),
                              (axes[1], "vs_prior", "accuracy - prior map, same loop")):
        for k, loop in enumerate(loops):
            part = rows[rows["loop"] == loop]
            xs = np.array([maps.index(m) for m in part["map"]]) - 0.4 + width * (k + 0.5)
            mean = part[column].to_numpy(float)
            low, high = part[f"{column}_low"].to_numpy(float), part[f"{column}_high"].to_numpy(float)
            ax.bar(xs, mean, width=width * 0.95, color=colours[k], label=LOOP_NAMES.get(loop, loop))
            ax.errorbar(xs, mean, yerr=[np.maximum(mean - low, 0), np.maximum(high - mean, 0)], fmt="none",
                        ecolor="black", capsize=2, lw=1)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(maps)), maps, fontsize=8)
        ax.set_ylabel(f"{label} (95% paired interval)", fontsize=8)
    oracle = summary[summary["policy"] == "oracle"]
    if len(oracle):
        axes[0].axhline(float(oracle["vs_centre"].iat[0]), color="grey", ls="--", lw=0.8)
        axes[0].annotate("oracle (any view right)", (len(maps) - 0.5, float(oracle["vs_centre"].iat[0])), fontsize=7,
                         ha="right", va="bottom", color="grey")
    axes[1].legend(fontsize=7, title="loop", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=9)
    return fig


def dorsal_maps_figure(images: Sequence[np.ndarray], maps: dict[str, np.ndarray], actual: np.ndarray,
                       fixations: Fixations, chosen: dict[str, Sequence[int]], titles: Sequence[str],
                       kind: str = "logpolar") -> plt.Figure:
    """Per image: the photo with each map's first saccade, each dorsal map (a (rows, cols) map of predicted
    p(right) per fixation, or a saliency map over the whole image) and where the ventral network was right."""
    names = list(maps)
    colours = dict(zip(names, sns.color_palette("bright", len(names)), strict=True))
    columns = 2 + len(names)
    fig, axes = plt.subplots(len(images), columns, figsize=(2.5 * columns, 2.5 * len(images)),
                             layout="constrained", squeeze=False)
    shown = None
    for row, image in enumerate(images):
        size = image.shape[0]
        centres, radii = _pixels(fixations, size)
        axes[row, 0].imshow(image)
        for name in names:
            target = int(chosen[name][row])
            if target >= 0:
                (x, y), r = centres.reshape(-1, 2)[target], radii.reshape(-1)[target]
                style = dict(fill=False, ec=colours[name], lw=1.5, label=name)
                axes[row, 0].add_patch(Rectangle((x - r, y - r), 2 * r, 2 * r, **style) if kind == "crop"
                                       else Circle((x, y), r, **style))
        axes[row, 0].set_title(titles[row], fontsize=7)
        if row == 0:
            axes[row, 0].legend(fontsize=6, loc="lower left", title="first saccade", title_fontsize=6)
        panels = [(name, maps[name][row]) for name in names] + [("ventral right here", actual[row])]
        for ax, (name, values) in zip(axes[row, 1:], panels, strict=True):
            ax.imshow(image, alpha=0.4)
            extent = _map_extent(fixations, size) if values.shape == fixations.shape else [0, size, size, 0]
            shown = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, alpha=0.75, extent=extent,
                              interpolation="nearest")
            ax.set_xlim(0, size)
            ax.set_ylim(size, 0)
            ax.set_title(name if name != "saliency" else "saliency (glimpse, scaled)", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.colorbar(shown, ax=axes[:, -1], shrink=0.5, label="predicted p(right) / outcome / scaled saliency")
    return fig
