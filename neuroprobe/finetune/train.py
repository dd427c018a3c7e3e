"""Fine-tune a new classifier head (optionally named layers too) with a stratified, seeded validation split.

Only the head: the backbone runs once over the images and the head trains on the cached features
(seconds on a CPU), with :func:`neuroprobe.training.train`. With ``train_layers`` the named modules train
too, end to end on the decoded images, BatchNorm statistics frozen. Images are preprocessed as for
evaluation (no augmentation). The result carries per-epoch loss and accuracy, the validation predictions,
the confusion matrix and per-class precision and recall.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageDataset, Manifest, read_manifest
from ..engine.device import resolve_device
from ..errors import NeuroprobeError, closest
from ..models.heads import find_head, replace_head
from ..models.loading import LoadedModel, load_model
from ..progress import track
from ..training import train

log = logging.getLogger(__name__)
BALANCE = (None, "loss", "sampling")


@dataclass
class FineTuned:
    """The fine-tuned model (eval mode, new head), its classes, and what training and validation gave."""

    model: LoadedModel
    classes: list[str]
    head: str
    history: pd.DataFrame
    predictions: pd.DataFrame
    confusion: pd.DataFrame
    per_class: pd.DataFrame


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Counts, rows = true class, columns = predicted class."""
    n = len(classes)
    counts = np.bincount(np.asarray(labels) * n + np.asarray(predicted), minlength=n * n).reshape(n, n)
    index = pd.Index(list(classes), name="true")
    return pd.DataFrame(counts, index=index, columns=pd.Index(list(classes), name="predicted"))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation), each class split in the same proportion, seeded."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    if (counts[counts > 0] < 2).any():
        raise NeuroprobeError("every class needs at least 2 images for a stratified validation split "
                              f"(class index {int(np.flatnonzero((counts > 0) & (counts < 2))[0])} has 1); "
                              "merge rare classes or pass --val-fraction 0")
    rows = np.arange(len(labels))
    if fraction <= 0:
        return rows, rows[:0]
    train_rows, val_rows = train_test_split(rows, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(train_rows), np.sort(val_rows)


class _FrozenStatistics(nn.Module):
    """uint8 images -> logits of the model; ``train()`` leaves BatchNorm in eval mode (statistics frozen)."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.loaded = loaded
        self.module = loaded.module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(self.loaded.preprocessing.normalize(images))

    def train(self, mode: bool = True) -> "_FrozenStatistics":
        super().train(mode)
        for m in self.module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


def _decode(manifest: Manifest, loaded: LoadedModel) -> tuple[torch.Tensor, np.ndarray]:
    dataset = ImageDataset(manifest, loaded.preprocessing)
    items = [dataset[i] for i in track(range(len(manifest)), "finetune (decoding)", "img")]
    ok = np.array([item[2] for item in items])
    for item in items:
        if not item[2]:
            log.warning("skipping %s: %s", manifest.table["path"].iat[item[0]], item[3])
    return torch.stack([items[i][1] for i in np.flatnonzero(ok)]), np.flatnonzero(ok)


def _head_input(loaded: LoadedModel, head: str, images: torch.Tensor, dev: torch.device, batch_size: int) -> torch.Tensor:
    """The head's input for every image (the backbone runs once)."""
    held = []
    module = loaded.module.get_submodule(head)
    hook = module.register_forward_hook(lambda m, args, out: held.append(args[0].detach().cpu()))
    try:
        with torch.no_grad():
            for start in track(range(0, len(images), batch_size), "finetune (features)", "batch"):
                loaded.module(loaded.preprocessing.normalize(images[start:start + batch_size].to(dev)))
    finally:
        hook.remove()
    return torch.cat(held)


def finetune(model: str | LoadedModel, data: str | Path | Manifest, label_column: str, *, weights: str | None = None,
             train_layers: Sequence[str] = (), epochs: int = 30, batch_size: int = 32, lr: float = 1e-3,
             weight_decay: float = 1e-4, val_fraction: float = 0.2, balance: str | None = None, seed: int = 0,
             device: str | None = None) -> FineTuned:
    """Replace ``model``'s classifier by one for the classes of ``label_column`` and train it (module doc).

    ``balance``: None, ``loss`` (cross-entropy weighted by inverse class frequency) or ``sampling``
    (batches drawn with replacement in inverse proportion to class frequency).
    """
    if balance not in BALANCE:
        raise NeuroprobeError(f"--balance must be loss or sampling, not '{balance}'")
    if not 0 <= val_fraction < 1:
        raise NeuroprobeError("--val-fraction must be in [0, 1)")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights)
    manifest = data if isinstance(data, Manifest) else read_manifest(data)
    if label_column not in manifest.table.columns:
        raise NeuroprobeError(f"the image table has no column '{label_column}'; columns: "
                              f"{closest(label_column, list(manifest.table.columns))}")
    dev = resolve_device(device)
    tuned = LoadedModel(copy.deepcopy(loaded.module).to(dev).eval(), loaded.preprocessing, dict(loaded.provenance))
    crop = loaded.preprocessing.crop
    head = find_head(tuned.module, torch.zeros(1, 3, crop, crop, device=dev))
    names = dict(tuned.module.named_modules())
    for layer in train_layers:
        if layer not in names:
            raise NeuroprobeError(f"no layer '{layer}' to train; closest: {closest(layer, list(names))}")
    values = manifest.table[label_column]
    if values.isna().any():
        raise NeuroprobeError(f"column '{label_column}' has {int(values.isna().sum())} empty labels; fill or drop them")
    classes = sorted(values.astype(str).unique())
    if len(classes) < 2:
        raise NeuroprobeError(f"column '{label_column}' has one class ({classes[0]}); fine-tuning needs at least 2")
    images, rows = _decode(manifest, tuned)
    labels = np.searchsorted(classes, values.astype(str).to_numpy()[rows])
    train_rows, val_rows = stratified_split(labels, val_fraction, seed)
    replace_head(tuned.module, head, len(classes), seed)
    y = torch.as_tensor(labels)
    counts = torch.bincount(y[train_rows], minlength=len(classes)).double().clamp(min=1)
    class_weights = (len(train_rows) / (len(classes) * counts)).float().to(dev) if balance == "loss" else None
    sample_weights = (1.0 / counts)[y[train_rows]] if balance == "sampling" else None

    head_only = not train_layers and _head_makes_logits(tuned, head, dev)
    if head_only:
        features = _head_input(tuned, head, images, dev, batch_size).to(dev)
        trainable: nn.Module = tuned.module.get_submodule(head)
        inputs = features
    else:
        for p in tuned.module.parameters():
            p.requires_grad_(False)
        for layer in [head, *train_layers]:
            for p in tuned.module.get_submodule(layer).parameters():
                p.requires_grad_(True)
        trainable = _FrozenStatistics(tuned)
        inputs = images.to(dev)
    targets = y.to(dev)

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=class_weights)

    def validation(epoch: int) -> dict:
        out = {}
        for part, index in (("train", train_rows), ("val", val_rows)):
            if len(index):
                logits = torch.cat([trainable(inputs[index[s:s + 256]]) for s in range(0, len(index), 256)])
                out[f"{part}_loss"] = float(loss_fn(logits, targets[index]))
                out[f"{part}_accuracy"] = float((logits.argmax(1) == targets[index]).float().mean())
        return out

    history = train(trainable, loss_fn, inputs[train_rows], targets[train_rows], epochs=epochs, lr=lr,
                    weight_decay=weight_decay, batch_size=batch_size, seed=seed, sample_weights=sample_weights,
                    on_epoch=validation, desc="finetune (training)")
    for p in tuned.module.parameters():
        p.requires_grad_(True)
    tuned.module.eval()
    evaluated = val_rows if len(val_rows) else train_rows
    with torch.no_grad():
        logits = torch.cat([tuned.module(tuned.preprocessing.normalize(images[evaluated[s:s + batch_size]].to(dev)))
                            for s in range(0, len(evaluated), batch_size)]).cpu()
    probabilities = logits.softmax(1)
    predicted = probabilities.argmax(1).numpy()
    truth = labels[evaluated]
    predictions = pd.DataFrame({"image": rows[evaluated], "path": manifest.table["path"].to_numpy()[rows[evaluated]],
                                "label": [classes[i] for i in truth], "predicted": [classes[i] for i in predicted],
                                "correct": truth == predicted, "probability": probabilities.max(1).values.numpy(),
                                "split": "validation" if len(val_rows) else "train"})
    edits = dict(tuned.provenance.get("edits", {}))
    edits["head"] = {"layer": head, "classes": classes}
    tuned.provenance["edits"] = edits
    tuned.provenance["finetune"] = {"label_column": label_column, "epochs": epochs, "lr": lr, "batch_size": batch_size,
                                    "train_layers": list(train_layers), "balance": balance, "seed": seed,
                                    "val_fraction": val_fraction, "head_only_features": head_only}
    return FineTuned(tuned, classes, head, history, predictions, confusion_matrix(truth, predicted, classes),
                     _per_class(truth, predicted, classes))


def _head_makes_logits(loaded: LoadedModel, head: str, dev: torch.device) -> bool:
    """Whether the head's output is the model's output (then its input features can be cached)."""
    held = []
    crop = loaded.preprocessing.crop
    hook = loaded.module.get_submodule(head).register_forward_hook(lambda m, a, out: held.append(out))
    try:
        with torch.no_grad():
            logits = loaded.module(torch.zeros(2, 3, crop, crop, device=dev))
    finally:
        hook.remove()
    return len(held) == 1 and held[0].shape == logits.shape and torch.equal(held[0], logits)


def _per_class(truth: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=range(len(classes)),
                                                                     zero_division=0)
    return pd.DataFrame({"class": list(classes), "precision": precision, "recall": recall, "f1": f1, "support": support})
