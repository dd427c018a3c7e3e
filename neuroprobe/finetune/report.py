"""``finetune`` as a job: train, then write the checkpoint, tables and figures."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from ..models.checkpoint import save_checkpoint
from .train import FineTuned, finetune


def confusion_figure(result: FineTuned) -> plt.Figure:
    """Counts and row-normalized (recall per true class) confusion matrices side by side."""
    counts = result.confusion
    normalized = counts.div(counts.sum(axis=1).clip(lower=1), axis=0)
    n = len(counts)
    side = min(3.0 + 0.35 * n, 14.0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side, side * 0.85), layout="constrained")
    annotate = n <= 25
    sns.heatmap(counts, annot=annotate, fmt="d", cmap="Blues", cbar=False, square=True, ax=axes[0])
    sns.heatmap(normalized, annot=annotate, fmt=".2f", cmap="Blues", vmin=0, vmax=1, cbar=True, square=True, ax=axes[1])
    axes[0].set_title("counts")
    axes[1].set_title("row-normalized (recall of each true class)")
    accuracy = result.predictions["correct"].mean()
    split = result.predictions["split"].iat[0]
    fig.suptitle(f"{result.model.name}, new head for {n} classes: {split} accuracy {accuracy:.3f} "
                 f"({len(result.predictions)} images)")
    return fig


def history_figure(result: FineTuned) -> plt.Figure:
    history = result.history
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    for part, style in (("train", "-"), ("val", "--")):
        if f"{part}_loss" in history:
            axes[0].plot(history["epoch"], history[f"{part}_loss"], style, label=part)
            axes[1].plot(history["epoch"], history[f"{part}_accuracy"], style, label=part)
    axes[0].set(xlabel="epoch", title="cross-entropy")
    axes[1].set(xlabel="epoch", title="accuracy", ylim=(0, 1.02))
    axes[0].legend(frameon=False)
    return fig


def finetune_run(out: str | Path, model, data, label_column: str, **options) -> FineTuned:
    """:func:`finetune`, then in ``out``: checkpoint.pt (``--weights`` in every command, with the same
    ``--model``), history.csv, predictions.csv, confusion.csv, confusion_normalized.csv, per_class.csv,
    confusion.png and history.png."""
    result = finetune(model, data, label_column, **options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(result.model.module, out / "checkpoint.pt", result.model.name, result.model.provenance["edits"],
                    finetune=result.model.provenance["finetune"], data=str(data) if not hasattr(data, "table") else "")
    result.history.to_csv(out / "history.csv", index=False)
    result.predictions.to_csv(out / "predictions.csv", index=False)
    result.confusion.to_csv(out / "confusion.csv")
    result.confusion.div(result.confusion.sum(axis=1).clip(lower=1), axis=0).to_csv(out / "confusion_normalized.csv")
    result.per_class.to_csv(out / "per_class.csv", index=False)
    confusion_figure(result).savefig(out / "confusion.png", dpi=110)
    history_figure(result).savefig(out / "history.png", dpi=110)
    plt.close("all")
    return result
