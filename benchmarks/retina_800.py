"""Visual search and active vision on the 800 ImageNet-sample photos: the numbers of RESULTS.md and notebook 04.

For each fixation layout (the 7 x 7 grid of radius 0.5, the authors' 11 x 11 rings) and view kind
(log-polar, crop) it runs ``search_report`` (likelihood store under --stores, resumed when it exists)
and ``saccade_report`` (5-fold dorsal networks), then writes ``search_summary.csv`` and
``saccade_summary.csv`` into --out (default benchmarks/retina_800) and prints them as Markdown.
On 2 CPU cores the four likelihood stores take ~2.5 h at one thread each (800 x 340 views);
tables and figures are minutes once they exist.

    .venv/bin/python benchmarks/retina_800.py --stores runs/retina
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from neuroprobe.engine.malloc import keep_freed_memory
from neuroprobe.models.loading import load_model
from neuroprobe.retina.report import saccade_report, search_report

CONDITIONS = [("grid", "logpolar"), ("grid", "crop"), ("rings", "logpolar"), ("rings", "crop")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/imagenet-sample/labels.csv")
    parser.add_argument("--stores", default="runs/retina", help="folder of the likelihood stores and reports")
    parser.add_argument("--out", default="benchmarks/retina_800")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    keep_freed_memory()
    model = load_model("efficientnet_lite0")
    stores, out = Path(args.stores), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    searches, saccades = [], []
    for layout, view in CONDITIONS:
        name = f"{layout}-{view}"
        report = stores / f"search-{name}"
        report.mkdir(parents=True, exist_ok=True)
        store = stores / f"{name}.zarr"
        if store.exists() and not (report / "likelihood.zarr").exists():
            (report / "likelihood.zarr").symlink_to(store.resolve())      # a store made before, resumed
        searches.append(search_report(model, args.data, report, layout=layout, view=view, batch_size=4))
        summary = saccade_report(report / "likelihood.zarr", args.data, stores / f"saccade-{name}", folds=args.folds)
        saccades.append(summary.assign(store=name)[["store", *summary.columns]])
    search = pd.concat(searches, ignore_index=True)
    saccade = pd.concat(saccades, ignore_index=True)
    search.to_csv(out / "search_summary.csv", index=False)
    saccade.to_csv(out / "saccade_summary.csv", index=False)
    print(markdown(search))
    print()
    print(markdown(saccade))


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table (pandas' own needs the optional tabulate package)."""
    cells = table.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
