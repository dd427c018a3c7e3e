"""Figures of retinotopic search: views drawn on their image, likelihood maps beside Grad-CAM and DFF,
accuracy of the search policies, and the dorsal network's fixation maps."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Circle

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
                   marked: Sequence[int] = ()) -> plt.Figure:
    """The image with every fixation's field drawn as a circle (coloured by ``values`` (rows, cols) when
    given), the ``marked`` fixations in bold, and the given views beside it."""
    size = image.shape[0]
    centres, radii = _pixels(fixations, size)
    fig, axes = plt.subplots(1, 1 + len(views), figsize=(3.2 * (1 + len(views)), 3.4), layout="constrained",
                             squeeze=False)
    ax = axes[0, 0]
    ax.imshow(image)
    cmap = plt.get_cmap("viridis")
    flat_values = None if values is None else np.asarray(values).reshape(-1)
    for i, ((x, y), r) in enumerate(zip(centres.reshape(-1, 2), radii.reshape(-1), strict=True)):
        colour = "white" if flat_values is None else cmap(float(flat_values[i]))
        bold = i in marked
        ax.add_patch(Circle((x, y), r, fill=False, lw=2.2 if bold else 0.5, ec="red" if bold else colour,
                            alpha=1.0 if bold else 0.6))
        ax.plot(x, y, ".", ms=3, color="red" if bold else colour)
    ax.set_title(ax_title or f"{fixations.layout}: {len(fixations)} fixations", fontsize=9)
    ax.axis("off")
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
        axes[row, 1].set_title("likelihood map p(label | view)", fontsize=8)
        for c, (name, maps) in enumerate(attributions.items(), start=2):
            m = maps[row]
            axes[row, c].imshow(image, alpha=0.45)
            axes[row, c].imshow(m / (np.abs(m).max() or 1), cmap="magma", alpha=0.7, vmin=0, vmax=1,
                                extent=[0, size, size, 0])
            axes[row, c].set_title(name, fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.colorbar(shown, ax=axes[:, 1], shrink=0.5, label="p(label | view)")
    return fig


def accuracy_figure(summary: pd.DataFrame, column: str = "policy", names: dict | None = None,
                    hue: str | None = None, title: str = "") -> plt.Figure:
    """Accuracy per policy with 95% intervals (the seed's Figures 4 and 5); ``hue`` splits by layout/view."""
    names = POLICY_NAMES if names is None else names
    data = summary.copy()
    data["name"] = data[column].map(lambda p: names.get(p, p))
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * data["name"].nunique() * (1 if hue is None else 1.4), 3.6),
                           layout="constrained")
    sns.barplot(data=data, x="name", y="accuracy", hue=hue, ax=ax, errorbar=None,
                palette="deep" if hue else None, color=None if hue else "steelblue")
    for bar, (_, row) in zip(ax.patches, _bar_order(data, hue).iterrows(), strict=False):
        x = bar.get_x() + bar.get_width() / 2
        ax.errorbar(x, row.accuracy, yerr=[[row.accuracy - row.ci_low], [row.ci_high - row.accuracy]],
                    color="black", capsize=2, lw=1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("")
    ax.set_ylabel("top-1 accuracy (95% Wilson interval)")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.set_title(title, fontsize=9)
    if hue:
        ax.legend(fontsize=7, title=hue, title_fontsize=7, loc="lower right")
    return fig


def _bar_order(data: pd.DataFrame, hue: str | None) -> pd.DataFrame:
    """Rows in the order seaborn draws bars: hue level by hue level, x order within each."""
    x_order = list(dict.fromkeys(data["name"]))
    if hue is None:
        return data.set_index("name").loc[x_order].reset_index()
    parts = [data[data[hue] == level].set_index("name").reindex(x_order).reset_index()
             for level in dict.fromkeys(data[hue])]
    return pd.concat(parts, ignore_index=True).dropna(subset=["accuracy"])


def dorsal_figure(images: Sequence[np.ndarray], predicted: np.ndarray, actual: np.ndarray, fixations: Fixations,
                  chosen: Sequence[int], titles: Sequence[str]) -> plt.Figure:
    """Per image: the photo with the chosen saccade, the dorsal map (predicted p(ventral right)) and where
    the ventral network really was right."""
    fig, axes = plt.subplots(len(images), 3, figsize=(7.8, 2.6 * len(images)), layout="constrained", squeeze=False)
    for row, image in enumerate(images):
        size = image.shape[0]
        centres, radii = _pixels(fixations, size)
        axes[row, 0].imshow(image)
        if chosen[row] >= 0:
            (x, y), r = centres.reshape(-1, 2)[chosen[row]], radii.reshape(-1)[chosen[row]]
            axes[row, 0].add_patch(Circle((x, y), r, fill=False, ec="red", lw=2))
            axes[row, 0].plot(x, y, "r+", ms=10)
        axes[row, 0].set_title(titles[row], fontsize=8)
        for ax, values, name in ((axes[row, 1], predicted[row], "dorsal map (cross-validated)"),
                                 (axes[row, 2], actual[row], "ventral right here")):
            ax.imshow(image, alpha=0.4)
            shown = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, alpha=0.75, extent=_map_extent(fixations, size),
                              interpolation="nearest")
            ax.set_xlim(0, size)
            ax.set_ylim(size, 0)
            ax.set_title(name, fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.colorbar(shown, ax=axes[:, 2], shrink=0.5, label="probability / outcome")
    return fig
