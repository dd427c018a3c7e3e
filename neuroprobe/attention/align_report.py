"""``align``: how well a model's saliency agrees with human importance maps, image by image.

Maps are read from a folder that mirrors the image paths (``MAPS/<image path without suffix>`` + .png, .jpg
or .npy) and put through the image's own resize and centre crop, then the authors' ClickMe preprocessing
(resize to 64, blur, back to the input size). The saliency is any ``attribute()`` method's map for the
label (default: the gradient, |input gradient| max over channels, as the authors evaluate).
"""
from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..data import ImageDataset, Manifest, read_manifest
from ..engine.device import resolve_device
from ..errors import NeuroprobeError
from ..maps.methods import attribute, check_methods
from ..models.loading import LoadedModel, Preprocessing, load_model
from ..progress import Progress
from .alignment import CLICKME_CEILING, alignment_scores, alignment_summary
from .maps import preprocess_human_maps

log = logging.getLogger(__name__)
MAP_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")


def map_paths(manifest: Manifest, maps: str | Path) -> list[Path | None]:
    """The map file of each image (None where there is none): either a column of the image table holding
    each map's path (relative to the table's folder; empty for none), or a folder mirroring the image
    paths, ``maps/<relative path without suffix>.<suffix>`` (an absolute path without its leading ``/``)."""
    if isinstance(maps, str) and maps in manifest.table.columns:
        return [None if (not isinstance(p, str) or not p) else manifest.root / p for p in manifest.table[maps]]
    root = Path(maps)
    if not root.is_dir():
        raise NeuroprobeError(f"--maps {maps} is neither a folder nor a column of the image table; give the folder "
                              "whose files mirror the image paths, or the column of map paths")
    found = []
    for path in manifest.table["path"]:
        relative = Path(path).relative_to(Path(path).anchor) if Path(path).is_absolute() else Path(path)
        stem = root / relative.with_suffix("")
        found.append(next((stem.with_suffix(s) for s in MAP_SUFFIXES if stem.with_suffix(s).is_file()), None))
    return found


def load_map(path: Path, preprocessing: Preprocessing) -> torch.Tensor:
    """A map file -> (crop, crop) float32 with the image's resize and centre crop (so pixels stay aligned)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    values = np.load(path) if path.suffix == ".npy" else np.asarray(Image.open(path).convert("F"))
    tensor = torch.from_numpy(np.array(values, dtype=np.float32)).reshape(1, *np.shape(values)[:2])
    tensor = TF.resize(tensor, [preprocessing.resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(tensor, [preprocessing.crop, preprocessing.crop])[0]


def align(model: str | LoadedModel, data: str | Path | Manifest, maps: str | Path, out: str | Path, *,
          weights: str | None = None, method: str = "gradient", label_column: str = "class_index",
          ceiling: float = CLICKME_CEILING, batch_size: int = 16, device: str | None = None,
          examples: int = 3, **options) -> pd.DataFrame:
    """Per-image Spearman alignment of ``method``'s map with human maps; alignment.csv, summary.csv and
    alignment.png (best and worst aligned images) in ``out``; returns the one-row summary."""
    (method,) = check_methods([method])
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights)
    manifest = data if isinstance(data, Manifest) else read_manifest(data)
    if label_column not in manifest.table.columns:
        raise NeuroprobeError(f"the image table has no column '{label_column}'; pass --label-column")
    paths = map_paths(manifest, maps)
    rows = [i for i, p in enumerate(paths) if p is not None]
    if not rows:
        raise NeuroprobeError(f"no map in {maps} matches an image path (expected e.g. "
                              f"{Path(maps) / Path(manifest.table['path'].iat[0]).with_suffix('.png')})")
    dev = resolve_device(device)
    module = loaded.module.to(dev).eval()
    dataset = ImageDataset(manifest, loaded.preprocessing)
    parts = []
    meter = Progress(len(rows), f"align ({method})", "img")
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        meter.update(len(batch))
        items = [dataset[i] for i in batch]
        keep = [k for k, item in enumerate(items) if item[2]]
        if not keep:
            continue
        images = torch.stack([items[k][1] for k in keep])
        labels = torch.as_tensor(manifest.table[label_column].to_numpy()[[batch[k] for k in keep]], device=dev)
        x = loaded.preprocessing.normalize(images.to(dev))
        with torch.no_grad():
            predicted = module(x).argmax(1)
        saliency = attribute(module, x, labels, method, **options).map[:, 0].detach()
        human = preprocess_human_maps(torch.stack([load_map(paths[batch[k]], loaded.preprocessing) for k in keep]),
                                      loaded.preprocessing.crop).to(dev)
        scores = alignment_scores(saliency, human, ceiling)
        scores.insert(0, "image", [batch[k] for k in keep])
        scores.insert(1, "path", manifest.table["path"].to_numpy()[scores["image"]])
        scores.insert(2, "label", labels.cpu().numpy())
        scores.insert(3, "predicted", predicted.cpu().numpy())
        parts.append(scores)
    meter.close()
    table = pd.concat(parts, ignore_index=True)
    table["correct"] = table["label"] == table["predicted"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "alignment.csv", index=False)
    stats = alignment_summary(table)
    summary = pd.DataFrame([{"model": loaded.name, "method": method, "images": len(table),
                             "alignment": stats["mean"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"],
                             "spearman": table["spearman"].mean(), "ceiling": ceiling,
                             "top1": table["correct"].mean(), "without_map": len(manifest) - len(rows),
                             "constant_maps": stats["excluded"]}])
    summary.to_csv(out / "summary.csv", index=False)
    _figure(loaded, manifest, table, paths, method, examples, dev, options).savefig(out / "alignment.png", dpi=110)
    plt.close("all")
    return summary


def _figure(loaded: LoadedModel, manifest: Manifest, table: pd.DataFrame, paths, method: str, examples: int,
            dev: torch.device, options: dict) -> plt.Figure:
    """Best and worst aligned images: photo, human map, saliency map."""
    ranked = table.dropna(subset=["alignment"]).sort_values("alignment", ascending=False)
    picked = pd.concat([ranked.head(examples), ranked.tail(examples)]).drop_duplicates("image")
    dataset = ImageDataset(manifest, loaded.preprocessing)
    images = torch.stack([dataset[int(i)][1] for i in picked["image"]])
    x = loaded.preprocessing.normalize(images.to(dev))
    saliency = attribute(loaded.module, x, torch.tensor(picked["label"].to_numpy(), device=dev), method,
                         **options).map[:, 0].detach().cpu().numpy()
    human = preprocess_human_maps(torch.stack([load_map(paths[int(i)], loaded.preprocessing) for i in picked["image"]]),
                                  loaded.preprocessing.crop).numpy()
    fig, axes = plt.subplots(len(picked), 3, figsize=(7.5, 2.5 * len(picked)), layout="constrained", squeeze=False)
    for row, (k, record) in enumerate(zip(range(len(picked)), picked.itertuples(), strict=True)):
        axes[row, 0].imshow(images[k].permute(1, 2, 0).numpy())
        axes[row, 0].set_title(f"{Path(record.path).name}\nalignment {record.alignment:.2f}", fontsize=8)
        axes[row, 1].imshow(human[k], cmap="magma")
        axes[row, 1].set_title("human map (preprocessed)", fontsize=8)
        axes[row, 2].imshow(saliency[k], cmap="magma")
        axes[row, 2].set_title(f"{method} map", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    return fig
