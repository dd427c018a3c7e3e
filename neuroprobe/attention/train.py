"""Fine-tuning a model with GALA modules and a map loss (none, GALA attention supervision, harmonization).

One loop for the CLI's ``train-attention``, the proxy experiment and users' own data: seeded random
batches from any dataset of ``(uint8 image, label, map, has_map, ok)`` items, cross-entropy plus the map
loss, AdamW, BatchNorm statistics frozen (batches of a few images would overwrite ImageNet's). Images
that failed to decode (``ok`` False) are dropped from their batch; images without a map still train the
classifier and give no map loss. The result records its edits, so :func:`neuroprobe.models.checkpoint.save_checkpoint`
writes a file that ``--weights`` loads in every command.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageDataset, Manifest
from ..engine.device import resolve_device
from ..errors import NeuroprobeError
from ..models.gala import add_gala
from ..models.loading import LoadedModel
from ..progress import track
from .losses import GALAAttentionLoss, HarmonizationLoss
from .maps import preprocess_human_maps

log = logging.getLogger(__name__)
LOSSES = ("none", "gala", "harmonization")
TRAINABLE = ("all", "after", "gala")
DEFAULT_WEIGHTS = {"none": 0.0, "gala": 1.0, "harmonization": 0.05}


class MappedImages(torch.utils.data.Dataset):
    """Images of a manifest with their importance maps (``paths[i]`` None: no map), at the model's input size."""

    def __init__(self, manifest: Manifest, paths: Sequence[Path | None], preprocessing, label_column: str) -> None:
        from .align_report import load_map

        self.images = ImageDataset(manifest, preprocessing)
        self.paths, self.preprocessing, self.load_map = list(paths), preprocessing, load_map
        self.labels = manifest.table[label_column].to_numpy()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        _, image, ok, _ = self.images[i]
        crop = self.preprocessing.crop
        if self.paths[i] is None:
            return image, int(self.labels[i]), torch.zeros(crop, crop), False, ok
        human = preprocess_human_maps(self.load_map(self.paths[i], self.preprocessing)[None], crop)[0]
        return image, int(self.labels[i]), human, True, ok


def trainable_parameters(module: nn.Module, layers: Sequence[str], which: str) -> list[nn.Parameter]:
    """``all``; ``gala``: only the GALA modules'; ``after``: those from the first GALA block on (registration
    order, which is execution order in torchvision's and timm's CNNs)."""
    if which not in TRAINABLE:
        raise NeuroprobeError(f"trainable must be one of {', '.join(TRAINABLE)}, not '{which}'")
    named = list(module.named_parameters())
    if which == "all":
        return [p for _, p in named]
    if which == "gala":
        return [p for n, p in named if ".gala." in n or n.startswith("gala.")]
    prefixes = tuple(f"{layer}." for layer in layers)
    first = next(i for i, (n, _) in enumerate(named) if n.startswith(prefixes))
    return [p for _, p in named[first:]]


def train_attention(loaded: LoadedModel, layers: Sequence[str], loss: str, data: torch.utils.data.Dataset, *,
                    steps: int = 200, batch_size: int = 8, lr: float = 1e-3, weight: float | None = None,
                    trainable: str = "gala", reduction: int = 4, seed: int = 0,
                    device: str | None = None) -> LoadedModel:
    """A copy of ``loaded`` with GALA before ``layers``, fine-tuned for ``steps`` batches on ``data``.

    ``loss``: none (cross-entropy only), gala (+ ``weight`` x attention supervision), harmonization
    (+ ``weight`` x the pyramidal saliency loss, double backpropagation). ``weight`` defaults to 1 for gala
    and 0.05 for harmonization (whose pyramid error is ~50x the cross-entropy at the start). ``trainable``
    (default: only the GALA modules, so the pretrained features stay) is one of :data:`TRAINABLE`. The copy's
    ``history`` holds per step: loss, cross_entropy, map_loss, batch accuracy, images with a map.
    """
    if loss not in LOSSES:
        raise NeuroprobeError(f"--loss must be one of {', '.join(LOSSES)}, not '{loss}'")
    if not layers:
        raise NeuroprobeError("give at least one block to put GALA before (--gala LAYER [LAYER ...])")
    weight = DEFAULT_WEIGHTS[loss] if weight is None else weight
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = LoadedModel(copy.deepcopy(loaded.module).to(dev), loaded.preprocessing, dict(loaded.provenance))
    modules = add_gala(model.module, layers, reduction)
    parameters = trainable_parameters(model.module, layers, trainable)
    for p in model.module.parameters():
        p.requires_grad_(False)
    for p in parameters:
        p.requires_grad_(True)
    attention: list[torch.Tensor] = []
    hooks = [m.attention.register_forward_hook(lambda _m, _a, out: attention.append(out)) for m in modules.values()]
    gala_loss, harmonization = GALAAttentionLoss(weight).to(dev), HarmonizationLoss(weight)
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.module.train()
    for module in model.module.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    history = []
    try:
        for step in track(range(steps), f"train-attention ({loss} loss)", "step"):
            index = torch.randint(len(data), (batch_size,), generator=generator)
            images, labels, maps, has_map, ok = torch.utils.data.default_collate([data[int(i)] for i in index])
            if not ok.any():
                continue
            x = loaded.preprocessing.normalize(images[ok].to(dev))
            y, maps, has_map = labels[ok].to(dev), maps[ok].to(dev).float(), has_map[ok].to(dev)
            attention.clear()
            optimizer.zero_grad(set_to_none=True)
            if loss == "harmonization":
                extra, logits = harmonization(model.module, x, y, maps, has_map)
            else:
                logits = model.module(x)
                extra = gala_loss(attention, maps, has_map) if loss == "gala" else logits.new_zeros(())
            cross_entropy = F.cross_entropy(logits, y)
            (cross_entropy + extra).backward()
            optimizer.step()
            cross_entropy, extra = float(cross_entropy.detach()), float(extra.detach())
            history.append({"step": step + 1, "loss": cross_entropy + extra, "cross_entropy": cross_entropy,
                            "map_loss": extra, "accuracy": float((logits.argmax(1) == y).float().mean()),
                            "images": int(ok.sum()), "with_map": int(has_map.sum())})
    finally:
        for hook in hooks:
            hook.remove()
        for p in model.module.parameters():
            p.requires_grad_(True)
        model.module.eval()
    edits = dict(model.provenance.get("edits", {}))
    earlier = edits.get("gala", {}).get("layers", [])              # GALA of a checkpoint trained further
    edits["gala"] = {"layers": [*earlier, *layers], "reduction": reduction}
    model.provenance["edits"] = edits
    model.provenance["training"] = {"loss": loss, "weight": weight, "steps": steps, "batch_size": batch_size, "lr": lr,
                                    "trainable": trainable, "seed": seed}
    model.history = pd.DataFrame(history)
    log.info("trained %d steps (%s loss), final loss %.4f", steps, loss,
             model.history["loss"].tail(10).mean() if history else float("nan"))
    return model


def training_figure(history: pd.DataFrame, title: str = ""):
    """Loss terms and batch accuracy against the step (raw and a 20-step running mean)."""
    import matplotlib.pyplot as plt

    columns = [c for c in ("cross_entropy", "map_loss", "accuracy") if c in history and history[c].abs().sum() > 0]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.0), layout="constrained", squeeze=False)
    window = max(1, min(20, len(history) // 5))
    for ax, column in zip(axes[0], columns, strict=True):
        ax.plot(history["step"], history[column], color="0.75", lw=0.8, label="per batch")
        ax.plot(history["step"], history[column].rolling(window, min_periods=1).mean(), color="C0", lw=1.8,
                label=f"mean of {window}")
        ax.set_xlabel("step")
        ax.set_title({"cross_entropy": "cross-entropy", "map_loss": "map loss (weighted)",
                      "accuracy": "batch top-1"}[column], fontsize=10)
    axes[0, 0].legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def summarize_history(history: pd.DataFrame, last: int = 20) -> dict[str, float]:
    """Means of the first and last ``last`` steps of each term (what the CLI prints)."""
    head, tail = history.head(last), history.tail(last)
    return {f"{part}_{c}": float(np.mean(frame[c])) for c in ("cross_entropy", "map_loss", "accuracy")
            for part, frame in (("first", head), ("last", tail))}


def train_attention_run(model: str | LoadedModel, data: str | Path | Manifest, maps: str | Path, out: str | Path,
                        layers: Sequence[str], loss: str, *, weights: str | None = None,
                        label_column: str = "class_index", **options) -> LoadedModel:
    """``train-attention``: read images and maps (as ``align`` does), fine-tune, and write checkpoint.pt
    (``--weights`` for every command), metrics.csv (per step) and training.png in ``out``."""
    from ..data import read_manifest
    from ..models.checkpoint import save_checkpoint
    from ..models.loading import load_model
    from .align_report import map_paths

    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights)
    manifest = data if isinstance(data, Manifest) else read_manifest(data)
    if label_column not in manifest.table.columns:
        raise NeuroprobeError(f"the image table has no column '{label_column}'; pass --label-column")
    paths = map_paths(manifest, maps)
    with_map = sum(p is not None for p in paths)
    if loss != "none" and not with_map:
        raise NeuroprobeError(f"no map in {maps} matches an image path; --loss {loss} needs maps (or use --loss none)")
    log.info("%d images, %d with a map", len(paths), with_map)
    tuned = train_attention(loaded, layers, loss, MappedImages(manifest, paths, loaded.preprocessing, label_column),
                            **options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(tuned.module, out / "checkpoint.pt", tuned.name, tuned.provenance["edits"],
                    training=tuned.provenance["training"], data=str(data), maps=str(maps))
    tuned.history.to_csv(out / "metrics.csv", index=False)
    import matplotlib.pyplot as plt

    training = tuned.provenance["training"]
    training_figure(tuned.history, f"{tuned.name} + GALA before {', '.join(layers)}; loss {loss} "
                                   f"(weight {training['weight']:g}), {training['steps']} steps").savefig(
        out / "training.png", dpi=110)
    plt.close("all")
    return tuned
