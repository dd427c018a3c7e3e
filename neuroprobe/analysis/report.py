"""The ``report`` command: selectivity, top/bottom-K and opponent tables as CSV, figures as PNG."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..errors import NeuroprobeError
from ..store.completeness import mark_figure, mark_table, require_complete
from . import analyze
from .opponent import correlation

log = logging.getLogger(__name__)


def summarize(tables: dict[str, pd.DataFrame], threshold: float) -> pd.DataFrame:
    """Per layer: units, selective units (Malakhova index >= threshold), median index, and the correlation
    between category images among the top-N positive and top-N negative responses."""
    sel = tables["selectivity"]
    sel = sel[sel["index"] == "malakhova"]
    rows = []
    for layer, group in sel.groupby("layer", sort=False):
        opp = tables["opponent"][tables["opponent"]["layer"] == layer]
        r = correlation(opp["positive_in_category"], opp["negative_in_category"])
        rows.append({"layer": layer, "units": len(group), "selective": int((group["value"] >= threshold).sum()),
                     "median_index": float(group["value"].median()), "max_index": float(group["value"].max()),
                     "significant_p05": int((group["p"] < 0.05).sum()), "r_positive_negative": float(r)})
    return pd.DataFrame(rows)


def report(store: str | Path, out: str | Path, category: str = "dog", *, layers: Sequence[str] | None = None,
           stat: str = "mean", k: int = 9, n: int = 50, threshold: float = 0.65, permutations: int = 1000,
           seed: int = 0, column: str | None = None, mapping=None, normalization: str = "minmax",
           units_per_layer: int = 3, scheduler=None, rdm_by: str | None = None,
           rdm_method: str = "correlation", allow_incomplete: bool = False) -> pd.DataFrame:
    """Write selectivity.csv, topk.csv, opponent.csv, summary.csv and the figures into ``out``; return the summary.

    ``store`` is a folder or an fsspec URL; ``scheduler`` (a dask client or address) runs the analyses on a cluster.
    ``rdm_by``: also rdm_<layer>.csv and .png, the RDM of the category means of that image-table column.
    An incomplete store is refused unless ``allow_incomplete``; then every CSV has a ``completeness``
    column and every figure title says how many images it covers.
    """
    import matplotlib.pyplot as plt

    from . import plots

    state = require_complete(store, allow_incomplete)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NeuroprobeError(f"cannot write into {out} ({exc.strerror}); choose another --out") from exc
    tables = analyze(store, category, layers=layers, stat=stat, k=k, n=n, column=column, mapping=mapping,
                     normalization=normalization, threshold=threshold, permutations=permutations, seed=seed,
                     image_columns=True, scheduler=scheduler, allow_incomplete=allow_incomplete)
    for name, frame in tables.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    summary = mark_table(summarize(tables, threshold), state)
    summary.to_csv(out / "summary.csv", index=False)

    def save(fig, name: str) -> None:
        mark_figure(fig, state)
        fig.savefig(out / name, dpi=130)
        plt.close(fig)

    share = float(tables["opponent"]["category_share"].iloc[0])
    save(plots.selectivity_distribution(tables["selectivity"], threshold=threshold, category_share=share),
         "selectivity.png")
    sel = tables["selectivity"][tables["selectivity"]["index"] == "malakhova"]
    for layer in summary["layer"]:
        save(plots.opponent_figure(tables["opponent"], tables["selectivity"], layer, threshold=threshold),
             f"opponent_{layer}.png")
        best = sel[sel["layer"] == layer].nlargest(units_per_layer, "value")["unit"]
        for unit in best:
            save(plots.unit_images(store, tables["topk"], layer, int(unit)), f"unit_{layer}_{int(unit)}.png")
    if rdm_by:
        from . import rdm

        for layer in summary["layer"]:
            matrix = rdm(store, layer, stat, rdm_method, by=rdm_by, allow_incomplete=allow_incomplete)
            matrix.to_pandas().rename_axis(index=rdm_by, columns=None).to_csv(out / f"rdm_{layer}.csv")
            save(plots.rdm_figure(matrix), f"rdm_{layer}.png")
    log.info("report written to %s", out)
    return summary
