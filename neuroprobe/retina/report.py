"""The two jobs of the retina tools, as the CLI runs them: visual search (here) and active vision
(:mod:`.active_report`), to CSV + PNG."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..data import ImageDataset, Manifest, load_image, read_manifest
from ..engine.device import resolve_device
from ..engine.distributed import Distributed
from ..errors import NeuroprobeError
from ..maps.methods import attribute
from ..models.loading import LoadedModel, load_model
from ..store.kinds import described, store_kind
from .active_report import paired_difference, saccade_report  # noqa: F401  (the two jobs of the CLI, one import)
from .figures import accuracy_figure, likelihood_figure, save_figure, views_on_image
from .likelihood import LikelihoodStore, ViewSettings, likelihood_maps
from .search import visual_search

log = logging.getLogger(__name__)
METHOD_NAMES = {"gradcam": "Grad-CAM", "dff": "DFF"}


def search_report(model: str | LoadedModel, data: str | Path | Manifest, out: str | Path, *, examples: int = 4,
                  attribution: Sequence[str] = ("gradcam", "dff"), **options) -> pd.DataFrame | None:
    """Likelihood store, per-image search table, accuracy summary and figures in ``out``; returns the summary
    (None on the ranks other than 0 of a torchrun job, which only compute their share of the store).

    ``options`` go to :func:`likelihood_maps` (layout, n, radius, view, padding, batch_size, device, ...).
    """
    out = Path(out)
    kind = store_kind(out)
    if kind:  # the folder holds the likelihood store, tables and figures: never inside another store
        raise NeuroprobeError(f"{out} is {described(kind)}; search --out takes a folder for likelihood.zarr, tables "
                              "and figures: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, options.pop("weights", None))
    manifest = data if isinstance(data, Manifest) else read_manifest(data)
    path = likelihood_maps(loaded, manifest, out / "likelihood.zarr", **options)
    if Distributed.from_environment().rank != 0:  # under torchrun, rank 0 scores the finished store alone
        return None
    store = LikelihoodStore.open(path)
    result = visual_search(store)
    result.table.to_csv(out / "search.csv", index=False)
    result.summary.to_csv(out / "summary.csv", index=False)
    settings = store.settings["view"]
    save_figure(accuracy_figure(result.summary, title=f"{loaded.name}: {store.fixations.layout} layout, "
                          f"{len(store.fixations)} {settings['kind']} views, {result.summary.n.max()} images"),
          out / "accuracy.png")
    shown = _example_rows(result.table, examples)
    if len(shown):
        _example_figures(loaded, manifest, store, result.table, shown, out, attribution, options.get("device"))
    return result.summary


def _example_rows(table: pd.DataFrame, examples: int) -> np.ndarray:
    """Labelled images for the figures: the first ones whose centre view is wrong but some view is right
    (where search matters), then the first others."""
    centre = table[table.policy == "centre"].set_index("image")
    oracle = table[table.policy == "oracle"].set_index("image")
    labelled = centre.index[centre.target >= 0]
    helped = [i for i in labelled if centre.at[i, "correct"] == 0 and oracle.at[i, "correct"] == 1]
    rest = [i for i in labelled if i not in set(helped)]
    return np.array((helped[: (examples + 1) // 2] + rest)[:examples], dtype=np.int64)


def _example_figures(loaded: LoadedModel, manifest: Manifest, store: LikelihoodStore, table: pd.DataFrame,
                     rows: np.ndarray, out: Path, attribution: Sequence[str], device: str | None) -> None:
    dev = resolve_device(device)
    module = loaded.module.to(dev).eval()
    dataset = ImageDataset(manifest, loaded.preprocessing)
    images = torch.stack([dataset[int(r)][1] for r in rows])
    labels = store.group["target"].oindex[rows]
    lp = store.group["log_probability"].oindex[rows].astype(np.float32)
    likelihood = np.exp(lp[np.arange(len(rows)), :, :, labels])
    x = loaded.preprocessing.normalize(images.to(dev))
    maps = {name: attribute(module, x, torch.as_tensor(labels, device=dev), name).map[:, 0].detach().cpu().numpy()
            for name in attribution}
    pictures = [img.permute(1, 2, 0).numpy() for img in images]
    label_rows = table[table.policy == "label"].set_index("image")
    names = manifest.table["class_name"].iloc[rows] if "class_name" in manifest.table.columns else labels
    titles = [f"{Path(p).name}\n{t}, centre view {'right' if c else 'wrong'}"
              for p, t, c in zip(manifest.table["path"].iloc[rows], names,
                                 table[table.policy == "centre"].set_index("image").loc[rows, "correct"], strict=True)]
    save_figure(likelihood_figure(pictures, likelihood, store.fixations,
                            {METHOD_NAMES.get(m, m): v for m, v in maps.items()}, titles),
          out / "likelihood_maps.png")
    settings = ViewSettings(**{k: v for k, v in store.settings["view"].items()})
    source = settings.source(loaded.preprocessing)
    first = int(rows[0])
    picture = source.to_uint8(_load(manifest, first))
    best = int(label_rows.at[first, "fixation"])
    centre = store.fixations.center_index
    centers, radii = store.fixations.flat()
    pick = [centre, best]
    views = settings.views(picture[None].float() / 255, (centers[pick], radii[pick]))[0]
    save_figure(views_on_image(picture.permute(1, 2, 0).numpy(), store.fixations, likelihood[0],
                         [v.permute(1, 2, 0).clamp(0, 1).numpy() for v in views],
                         ["centre view", "label-driven best view"],
                         f"{Path(manifest.table['path'].iat[first]).name}: fields coloured by p(label)", pick,
                         kind=settings.kind),
          out / "views.png")


def _load(manifest: Manifest, row: int):
    return load_image(manifest.absolute(row))
