"""Re-run stored top images through the model and compare (catches stale or corrupted stores)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..data import Manifest
from ..engine.provenance import model_of
from ..models.loading import LoadedModel
from ..store.layout import STATS, read_images
from ..store.location import open_group


def verify(store: str | Path, topk: pd.DataFrame, *, model: LoadedModel | None = None, rtol: float = 1e-3,
           atol: float = 1e-4, batch_size: int = 32, device: str | None = None,
           allow_incomplete: bool = False) -> pd.DataFrame:
    """For each row of a top-K table: stored value, recomputed value, and whether they agree.

    Tolerances default to what float32 runs on different batch sizes or devices leave; a store made
    under ``--amp`` is recomputed under the same autocast. An incomplete store is refused unless ``allow_incomplete``.
    """
    from ..store.completeness import mark_table, require_complete

    state = require_complete(store, allow_incomplete)
    attrs = dict(open_group(store).attrs)
    model = model or model_of(store)
    images = read_images(store)
    wanted = np.unique(topk["image"].to_numpy())
    manifest = Manifest(images.iloc[wanted][["path"]].reset_index(drop=True), Path(attrs["data_root"]))
    from ..engine.extract import pool_images

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
