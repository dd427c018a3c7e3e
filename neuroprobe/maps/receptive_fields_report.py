"""Empirical vs theoretical receptive fields of a store's layers: rf.csv, top_images.csv and PNG figures."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from ..errors import NeuroprobeError
from .empirical_rf import receptive_fields_from_store
from .figures import receptive_field_figure, rf_size_by_depth

log = logging.getLogger(__name__)


def rf_report(store: str | Path, layers: Sequence[str], out: str | Path, *, k: int = 10,
              units: Sequence[int] | None = None, **options) -> pd.DataFrame:
    """Measure every layer's units (see :func:`receptive_fields_from_store`), save tables and figures."""
    from ..analysis.verify import model_of

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NeuroprobeError(f"cannot create {out} ({exc.strerror}); choose a writable --out") from exc
    model = model_of(store)
    tables, tops = [], []
    for layer in layers:
        log.info("layer %s: empirical receptive fields from the top-%d images", layer, k)
        fields = receptive_fields_from_store(store, layer, k=k, units=units, model=model, **options)
        tables.append(fields.table)
        tops.append(fields.top)
        figure = receptive_field_figure(fields)
        figure.savefig(out / f"rf_{layer}.png", dpi=120)
        plt.close(figure)
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "rf.csv", index=False)
    pd.concat(tops, ignore_index=True).to_csv(out / "top_images.csv", index=False)
    figure = rf_size_by_depth(table)
    figure.savefig(out / "rf_size_by_depth.png", dpi=120)
    plt.close(figure)
    return table
