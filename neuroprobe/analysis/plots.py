"""Figures a reader understands without the code: selectivity distributions, the opponent figure,
a unit's strongest positive and negative images. Each function returns a matplotlib Figure."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .opponent import correlation  # noqa: E402

INDEX_LABELS = {"malakhova": "Malakhova selectivity index", "balanced": "class-balanced selectivity index",
                "morcos": "class selectivity index (Morcos et al.)"}


def selectivity_distribution(selectivity: pd.DataFrame, index: str = "malakhova", threshold: float = 0.65,
                             category_share: float | None = None) -> plt.Figure:
    """Histogram of one index per layer, with the selectivity threshold and the chance level."""
    data = selectivity[selectivity["index"] == index].copy()
    counts = data.groupby("layer", sort=False)["value"].agg(total="size", selective=lambda v: int((v >= threshold).sum()))
    labels = {layer: f"{layer}: {row.selective} of {row.total} units >= {threshold:g}" for layer, row in counts.iterrows()}
    data["layer"] = data["layer"].map(labels)
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    sns.histplot(data, x="value", hue="layer", hue_order=list(labels.values()), element="step", stat="percent",
                 common_norm=False, bins=40, ax=ax)
    lines = [(threshold, "--", f"threshold {threshold:g}")]
    chance = 0.5 if index == "balanced" else category_share
    if chance is not None and index != "morcos":
        lines.append((chance, ":", f"chance {chance:.2f}"))
    for x, style, text in lines:
        ax.axvline(x, color="black", linestyle=style, linewidth=1)
        ax.text(x, 0.98, f" {text}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    category = "preferred class" if index == "morcos" else data["category"].iloc[0]
    ax.set(xlabel=f"{INDEX_LABELS[index]} ({data['stat'].iloc[0]} pre-activation, "
                  f"{data['normalization'].iloc[0]} normalized per unit)",
           ylabel="units (% of layer)", title=f"Selectivity for {category}, by layer")
    return fig


def opponent_figure(opponent: pd.DataFrame, selectivity: pd.DataFrame, layer: str, index: str = "malakhova",
                    threshold: float = 0.65) -> plt.Figure:
    """Malakhova's Figure 2: for units sorted by selectivity, category images among the top-N positive
    (up) and top-N negative (down) responses; selective units highlighted; and the two counts against
    each other."""
    opp = opponent[opponent["layer"] == layer]
    sel = selectivity[(selectivity["layer"] == layer) & (selectivity["index"] == index)][["unit", "value"]]
    frame = opp.merge(sel, on="unit").sort_values("value", ascending=False, kind="stable").reset_index(drop=True)
    category, n = frame["category"].iloc[0], int(frame["n"].iloc[0])
    expected = n * float(frame["category_share"].iloc[0])
    selective = frame["value"] >= threshold
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=[2.2, 1], layout="constrained")
    x = np.arange(len(frame))
    colors = np.where(selective, "#d62728", "#4c72b0")
    bars.bar(x, frame["positive_in_category"], width=1.0, color=colors, linewidth=0)
    bars.bar(x, -frame["negative_in_category"], width=1.0, color=colors, alpha=0.55, linewidth=0)
    for level in (expected, -expected):
        bars.axhline(level, color="grey", linestyle=":", linewidth=1)
    bars.axhline(0, color="black", linewidth=0.6)
    bars.set(xlim=(-0.5, len(frame) - 0.5), xlabel=f"units of {layer}, sorted by {category} selectivity (most selective left)",
             ylabel=f"{category} images among the unit's {n}\nstrongest positive (up) / negative (down)",
             title=f"red: {int(selective.sum())} units with {index} index >= {threshold:g}; dotted: chance")
    bars.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    bars.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda t, _: f"{abs(t):g}"))
    r = correlation(frame["positive_in_category"], frame["negative_in_category"])
    points = scatter.scatter(frame["positive_in_category"], frame["negative_in_category"], c=frame["value"], s=10,
                             cmap="viridis", alpha=0.8)
    fig.colorbar(points, ax=scatter, label=f"{index} selectivity")
    scatter.set(xlabel=f"{category} images among top-{n} positive", ylabel=f"{category} images among top-{n} negative",
                title=f"positive vs negative, r = {r:.2f}")
    fig.suptitle(f"{layer}: {category} images among each unit's strongest positive and negative responses")
    return fig


def unit_images(store: str | Path, topk: pd.DataFrame, layer: str, unit: int, k: int | None = None,
                top: str = "max", bottom: str = "min", manufactured: dict | None = None) -> plt.Figure:
    """A unit's top-K images by ``top`` (first row) and bottom-K by ``bottom`` (second row), with their
    values, cropped as the model saw them. ``manufactured``: {"top"|"bottom": (uint8 (3, H, W) image,
    value, label)} puts a synthesized image in an extra first column of that row."""
    from ..data import load_image
    from ..models.loading import Preprocessing
    from ..store.layout import read_images
    from ..store.location import open_group

    attrs = dict(open_group(store).attrs)
    prep = attrs["preprocessing"]
    preprocessing = Preprocessing(**{**prep, "mean": tuple(prep["mean"]), "std": tuple(prep["std"])})
    images = read_images(store)
    root = Path(attrs["data_root"])
    rows = topk[(topk["layer"] == layer) & (topk["unit"] == unit)]
    sides = [(top, "top", f"strongest positive ({top})"), (bottom, "bottom", f"strongest negative ({bottom})")]
    k = k or int(rows["rank"].max())
    extra = 1 if manufactured else 0
    fig, axes = plt.subplots(2, k + extra, figsize=(1.6 * (k + extra), 4.0), layout="constrained", squeeze=False)
    for r, (stat, direction, label) in enumerate(sides):
        if extra:
            axes[r, 0].axis("off")
            if direction in manufactured:
                picture, value, title = manufactured[direction]
                axes[r, 0].imshow(picture.permute(1, 2, 0).numpy())
                axes[r, 0].set_title(f"{title}\n{value:.2f}", fontsize=7, color="C3")
        chosen = rows[(rows["criterion"] == stat) & (rows["direction"] == direction)].sort_values("rank").head(k)
        for c in range(k):
            ax = axes[r, c + extra]
            ax.axis("off")
            if c >= len(chosen):
                continue
            entry = chosen.iloc[c]
            path = images["path"].iat[int(entry["image"])]
            picture = preprocessing.to_uint8(load_image(root / path)).permute(1, 2, 0).numpy()
            ax.imshow(picture)
            name = images["class_name"].iat[int(entry["image"])] if "class_name" in images else Path(path).stem
            ax.set_title(f"{stat} {entry['value']:.2f}\n{str(name)[:18]}", fontsize=7)
        axes[r, 0].text(-0.08, 0.5, label, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=8)
    made = "manufactured images (red) and natural " if manufactured else ""
    fig.suptitle(f"{layer} unit {unit}: {made}images with the strongest positive and negative pre-activation",
                 fontsize=10)
    return fig


def rdm_figure(rdm, category: str | np.ndarray | None = None, max_conditions: int = 2000) -> plt.Figure:
    """An RDM (from :func:`neuroprobe.analysis.rdm`) as a heat map with its conditions grouped by category.

    ``category``: a coordinate of the RDM (an image-table column) or one label per condition; the
    conditions are sorted by it (stably) and each category's block is outlined. An RDM of category means
    (``by=``) is shown in its own order. Above ``max_conditions``, evenly spaced conditions of the
    sorted order are shown (the title says how many).
    """
    n = rdm.shape[0]
    labels = rdm[category].values if isinstance(category, str) else category
    if labels is None and rdm.attrs.get("by"):
        labels = rdm["condition_a"].values
    labels = np.asarray(labels if labels is not None else np.zeros(n, int))
    codes, names = pd.factorize(pd.Series(labels).astype(str), sort=True)
    order = np.argsort(codes, kind="stable")
    shown = order[np.linspace(0, n - 1, max_conditions).round().astype(int)] if n > max_conditions else order
    values = np.asarray(rdm.isel(condition_a=shown, condition_b=shown).values, dtype=float)
    shown_codes = codes[shown]
    fig, ax = plt.subplots(figsize=(7.2, 6.2), layout="constrained")
    image = ax.imshow(values, cmap="rocket_r", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.85, label=rdm.attrs.get("definition", "dissimilarity"))
    edges = np.flatnonzero(np.diff(shown_codes)) + 0.5
    for edge in edges:
        ax.axhline(edge, color="white", linewidth=0.6)
        ax.axvline(edge, color="white", linewidth=0.6)
    bounds = np.concatenate([[-0.5], edges, [len(shown) - 0.5]])
    centres = (bounds[:-1] + bounds[1:]) / 2
    present = [names[c] for c in shown_codes[np.r_[0, (edges + 0.5).astype(int)]]] if len(shown) else []
    if 1 < len(present) <= 40:
        ax.set_xticks(centres, present, rotation=90, fontsize=7)
        ax.set_yticks(centres, present, fontsize=7)
    else:
        ax.set(xticks=[], yticks=[])
    what = (f"{n} categories of '{rdm.attrs['by']}' (means)" if rdm.attrs.get("by") else
            f"{n} images" + (f" ordered by {category}" if isinstance(category, str) else ""))
    if n > max_conditions:
        what += f", {max_conditions} evenly spaced shown"
    ax.set_title(f"{rdm.attrs.get('layer', '')}: RDM of {rdm.attrs.get('stat', '')} pre-activation, "
                 f"{rdm.attrs.get('method', '')}\n{what}", fontsize=10)
    return fig
