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
              units: Sequence[int] | None = None, allow_incomplete: bool = False, **options) -> pd.DataFrame:
    """Measure every layer's units (see :func:`receptive_fields_from_store`), save tables and figures.

    An incomplete store is refused unless ``allow_incomplete`` (then tables and titles say so)."""
    from ..engine.provenance import model_of
    from ..store.completeness import mark_figure, mark_table, require_complete

    state = require_complete(store, allow_incomplete)

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NeuroprobeError(f"cannot create {out} ({exc.strerror}); choose a writable --out") from exc
    model = model_of(store)
    tables, tops = [], []
    for layer in layers:
        log.info("layer %s: empirical receptive fields from the top-%d images", layer, k)
        fields = receptive_fields_from_store(store, layer, k=k, units=units, model=model,
                                             allow_incomplete=allow_incomplete, **options)
        tables.append(fields.table)
        tops.append(fields.top)
        figure = mark_figure(receptive_field_figure(fields), state)
        figure.savefig(out / f"rf_{layer}.png", dpi=120)
        plt.close(figure)
    table = mark_table(pd.concat(tables, ignore_index=True), state)
    table.to_csv(out / "rf.csv", index=False)
    mark_table(pd.concat(tops, ignore_index=True), state).to_csv(out / "top_images.csv", index=False)
    figure = mark_figure(rf_size_by_depth(table), state)
    figure.savefig(out / "rf_size_by_depth.png", dpi=120)
    plt.close(figure)
    return table
