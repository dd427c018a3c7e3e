"""``python -m neuroprobe localize``: the grid pointing game over a labelled image set, as CSV + PNG.

Predictions stream over the whole set (unreadable images are recorded and left out); only the
images the mosaics use are decoded again, so a large set costs one forward pass per image.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..data import ImageDataset, Manifest, read_manifest
from ..engine.device import resolve_device
from ..errors import NeuroprobeError
from ..models.loading import LoadedModel, load_model
from ..progress import track
from .figures import grid_pointing_figure
from .localize import GridPointingGame, score_mosaics
from .methods import check_methods
from .pointing import make_mosaics
from .saliency_store import output_classes, target_column

log = logging.getLogger(__name__)


def predict_manifest(loaded: LoadedModel, manifest: Manifest, batch_size: int = 64, device=None) -> pd.DataFrame:
    """Per image: status, reason and predicted class (-1 when unreadable), one streaming pass."""
    dev = resolve_device(device)
    module = loaded.module.to(dev).eval()
    predicted = np.full(len(manifest), -1, dtype=np.int64)
    ok_all = np.zeros(len(manifest), dtype=bool)
    reasons = [""] * len(manifest)
    loader = torch.utils.data.DataLoader(ImageDataset(manifest, loaded.preprocessing), batch_size=batch_size)
    with torch.no_grad():
        for rows, images, ok, why in track(loader, "localize (classifying)", "batch"):
            rows, ok = rows.numpy(), ok.numpy()
            if ok.any():
                x = loaded.preprocessing.normalize(images[torch.from_numpy(ok)].to(dev))
                predicted[rows[ok]] = module(x).argmax(1).cpu().numpy()
            ok_all[rows] = ok
            for row, reason in zip(rows, why):
                reasons[row] = reason
    return pd.DataFrame({"path": manifest.table["path"], "status": np.where(ok_all, "ok", "error"),
                         "reason": reasons, "predicted": predicted})


def localize(model: str | LoadedModel, data: str | Path | Manifest, out: str | Path,
             methods: Sequence[str] | str = ("gradient", "guided", "smoothgrad", "gradcam", "dff", "feedback", "global"),
             *, weights: str | None = None, label_column: str = "class_index", grid: int = 2, n: int = 200,
             seed: int = 0, layer: str | None = None, batch_size: int = 4, device=None, cell_size: int | None = None,
             method_options: Mapping[str, dict] | None = None) -> GridPointingGame:
    """Grid pointing game of ``methods`` on ``n`` mosaics of ``data``: writes scores.csv, summary.csv,
    mosaics.csv, predictions.csv and examples.png into ``out``; returns the game."""
    methods = check_methods(methods)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights)
    manifest = data if isinstance(data, Manifest) else read_manifest(data)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NeuroprobeError(f"cannot write {out} ({exc.strerror}); choose a writable --out") from exc
    if label_column == "prediction":
        raise NeuroprobeError("the grid pointing game needs true labels; pass --label-column naming a column of "
                              "class indices")
    dev = resolve_device(device)
    classes = output_classes(loaded.module.to(dev).eval(), loaded.preprocessing.crop, dev)
    labels = target_column(manifest, label_column, classes)
    predictions = predict_manifest(loaded, manifest, device=device)
    predictions["label"] = labels
    predictions["correct"] = (predictions.status == "ok") & (predictions.predicted == labels)
    predictions.to_csv(out / "predictions.csv", index_label="image")
    log.info("%d of %d images readable and classified correctly; mosaics use those",
             int(predictions.correct.sum()), len(manifest))
    mosaics = make_mosaics(labels, n, grid, seed, predictions.correct.to_numpy())
    mosaics["path"] = manifest.table["path"].to_numpy()[mosaics["image"].to_numpy()]
    mosaics.to_csv(out / "mosaics.csv", index=False)
    dataset = ImageDataset(manifest, loaded.preprocessing)
    needed = {int(i): dataset[int(i)][1] for i in track(mosaics["image"].unique(), "localize (decoding)", "img")}
    game = score_mosaics(loaded, mosaics, needed.__getitem__, methods, grid=grid, layer=layer,
                         batch_size=batch_size, device=device, cell_size=cell_size, method_options=method_options)
    game.scores.to_csv(out / "scores.csv", index=False)
    game.summary.to_csv(out / "summary.csv", index=False)
    names = manifest.table["class_name"] if "class_name" in manifest.table.columns else None
    figure = grid_pointing_figure(game, names)
    figure.savefig(out / "examples.png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return game
