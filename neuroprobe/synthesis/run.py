"""``visualize`` as a job: choose the model (the store's by default), the MACO spectrum, and write everything."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import torch
from PIL import Image

from ..data import ImageDataset, Manifest, read_manifest
from ..errors import NeuroprobeError
from ..models.loading import LoadedModel, load_model
from .params import natural_spectrum
from .transforms import Transforms
from .visualize import Visualization, visualize

log = logging.getLogger(__name__)
EMBEDDED_SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "labels.csv"
SPECTRUM_IMAGES = 256


def spectrum_manifest(spectrum_images: str | Path | None, store: str | Path | None) -> Manifest:
    """Natural images for MACO's spectrum: the given ones, else the store's, else the embedded sample."""
    if spectrum_images is not None:
        return read_manifest(spectrum_images)
    if store is not None:
        from ..store.layout import read_images
        from ..store.location import open_group

        table = read_images(store)
        return Manifest(table[["path"]].reset_index(drop=True), Path(open_group(store).attrs["data_root"]))
    if EMBEDDED_SAMPLE.exists():
        return read_manifest(EMBEDDED_SAMPLE)
    raise NeuroprobeError("MACO needs natural images for its spectrum: pass --spectrum-images DATA (or --store)")


def model_for(model: str | LoadedModel | None, weights: str | None, store: str | Path | None) -> LoadedModel:
    """The model to visualize: the given one, else the store's (with its preprocessing), else the offline one."""
    if isinstance(model, LoadedModel):
        return model
    if model is not None:
        return load_model(model, weights)
    if store is not None:
        from ..engine.provenance import model_of

        return model_of(store)
    return load_model("efficientnet_lite0", weights)


def visualize_run(out: str | Path, *, layer: str, units: Sequence[int], model: str | LoadedModel | None = None,
                  weights: str | None = None, store: str | Path | None = None, param: str = "fft",
                  transforms: bool = True, spectrum_images: str | Path | None = None, size: int | None = None,
                  k: int = 6, **options) -> Visualization:
    """:func:`visualize` plus files: images/unitUUUU_<direction>.png, visualize.csv, grid.png and, with a
    store, units/unitUUUU.png (manufactured beside natural images)."""
    from .figures import layer_grid, unit_figures

    loaded = model_for(model, weights, store)
    if store is not None:
        from ..store.layout import open_layer

        open_layer(store, layer)            # one-line error when the store lacks the layer
    spectrum = None
    size = size or loaded.preprocessing.crop
    if param == "maco":
        manifest = spectrum_manifest(spectrum_images, store)
        dataset = ImageDataset(manifest, loaded.preprocessing)
        items = [dataset[i] for i in range(min(len(manifest), SPECTRUM_IMAGES))]
        images = [item[1] for item in items if item[2]]
        if not images:
            raise NeuroprobeError("none of the spectrum images could be read; pass --spectrum-images DATA")
        spectrum = natural_spectrum(torch.stack(images), size)
        log.info("MACO spectrum from %d images", len(images))
    vis = visualize(loaded, layer, units, param=param, size=size, spectrum=spectrum, store=store,
                    transforms=Transforms() if transforms else Transforms.none(), **options)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    files = []
    for i, entry in enumerate(vis.table.itertuples()):
        files.append(f"images/unit{entry.unit:04d}_{entry.direction}.png")
        Image.fromarray(vis.images[i].permute(1, 2, 0).numpy()).save(out / files[-1])
    vis.table.assign(file=files).to_csv(out / "visualize.csv", index=False)
    if store is not None:
        from ..store.completeness import completeness, mark_figure

        mark_figure(layer_grid(vis), completeness(store)).savefig(out / "grid.png", dpi=100)
    else:
        layer_grid(vis).savefig(out / "grid.png", dpi=100)
    plt.close("all")
    if store is not None:
        unit_figures(vis, store, out / "units", k=k)
    return vis
