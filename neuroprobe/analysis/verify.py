"""Re-run stored top images through the model and compare (catches stale or corrupted stores)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from ..data import Manifest
from ..errors import NeuroprobeError
from ..location import open_group
from ..models import LoadedModel, Preprocessing, load_model
from ..reduce import STATS
from ..store import read_images


def model_of(store: str | Path) -> LoadedModel:
    """The model a store was made with, from its provenance, with the store's own preprocessing.

    Extraction stores keep provenance and preprocessing at the top of their attributes; map stores
    (occlusion, saliency, likelihood) inside their settings, where they are read from as well.
    """
    attrs = dict(open_group(store).attrs)
    if "provenance" not in attrs:
        settings = [v for v in attrs.values() if isinstance(v, dict) and "provenance" in v]
        if not settings:
            raise NeuroprobeError(f"{store} does not record the model it was made with; pass model=load_model(...)")
        attrs = {**settings[0], **attrs}
    provenance = attrs["provenance"]
    weights = provenance.get("weights")
    if provenance.get("weights_package"):  # the offline model's shipped file
        weights = None
    elif weights and weights != "none" and provenance.get("weights_sha256") and not Path(weights).exists():
        raise NeuroprobeError(f"the weights file {weights} of this store is gone; pass model=load_model(...)")
    loaded = load_model(provenance["model"], weights)
    if provenance.get("weights_sha256") and loaded.provenance.get("weights_sha256") != provenance["weights_sha256"]:
        raise NeuroprobeError("the weights file changed since the store was made (sha256 differs); "
                              "pass model=load_model(...) with the original weights")
    prep = attrs.get("preprocessing")
    if prep:
        loaded.preprocessing = Preprocessing(**{**prep, "mean": tuple(prep["mean"]), "std": tuple(prep["std"])})
    return loaded


def verify(store: str | Path, topk: pd.DataFrame, *, model: LoadedModel | None = None, rtol: float = 1e-3,
           atol: float = 1e-4, batch_size: int = 32, device: str | None = None,
           allow_incomplete: bool = False) -> pd.DataFrame:
    """For each row of a top-K table: stored value, recomputed value, and whether they agree.

    Tolerances default to what float32 runs on different batch sizes or devices leave; a store made
    under ``--amp`` is recomputed under the same autocast. An incomplete store is refused unless ``allow_incomplete``.
    """
    from ..completeness import mark_table, require_complete

    state = require_complete(store, allow_incomplete)
    attrs = dict(open_group(store).attrs)
    model = model or model_of(store)
    images = read_images(store)
    wanted = np.unique(topk["image"].to_numpy())
    manifest = Manifest(images.iloc[wanted][["path"]].reset_index(drop=True), Path(attrs["data_root"]))
    from ..extract import pool_images

    layers: Sequence[str] = list(dict.fromkeys(topk["layer"]))
    pooled = pool_images(model, manifest, layers, post_activation=attrs["capture"] == "post-activation",
                         amp=attrs.get("amp"), batch_size=batch_size, device=device)
    position = {row: i for i, row in enumerate(wanted)}
    out = topk.copy()
    recomputed = np.empty(len(out))
    for i, (layer, unit, stat, image) in enumerate(zip(out["layer"], out["unit"], out["criterion"], out["image"], strict=False)):
        recomputed[i] = pooled[layer][position[image], STATS.index(stat), unit]
    out["recomputed"] = recomputed
    out["abs_diff"] = np.abs(out["value"] - recomputed)
    out["agrees"] = np.isclose(out["value"], recomputed, rtol=rtol, atol=atol)
    return mark_table(out, state)
