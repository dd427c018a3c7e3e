"""Visual search and active vision on the 800 ImageNet-sample photos: the numbers of RESULTS.md and notebook 04.

For each condition (fixation layout x view kind: the 7 x 7 grid of radius 0.5 or the authors' 11 x 11
rings; crop or log-polar views) it runs ``search_report`` (likelihood store under --stores, resumed
when it exists) and ``saccade_report`` with every dorsal choice (saliency, conv, linear; 5 folds), once
with the default glimpse (112 px colour crop) and once with the seed's (64 px grayscale log-polar) for
the trained heads, then writes ``search_summary.csv`` and ``saccade_summary.csv`` into --out (default
benchmarks/retina_800) and prints them as Markdown. On 2 CPU cores a crop store takes 7 min (grid,
800 x 49 views) or 17 min (rings, 800 x 121 views); each saccade report 2-4 min.

    .venv/bin/python benchmarks/retina_800.py --stores runs/retina
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

from neuroprobe.engine.malloc import keep_freed_memory
from neuroprobe.models.loading import load_model
from neuroprobe.retina.active_report import saccade_report
from neuroprobe.retina.report import search_report

CONDITIONS = ("grid-crop", "rings-crop", "grid-logpolar", "rings-logpolar")
GLIMPSES = {"crop 112 px colour": dict(glimpse=112, glimpse_view="crop", glimpse_color=True),
            "log-polar 64 px gray (seed)": dict(glimpse=64, glimpse_view="logpolar", glimpse_color=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/imagenet-sample/labels.csv")
    parser.add_argument("--stores", default="runs/retina", help="folder of the likelihood stores and reports")
    parser.add_argument("--out", default="benchmarks/retina_800")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=["grid-crop", "rings-crop"])
    parser.add_argument("--ablation", action="store_true",
                        help="only the conv head on grid-crop with four more glimpses (size x colour x view kind), "
                             "into glimpse_ablation.csv: which property of the seed's glimpse loses the signal")
    parser.add_argument("--saliency-methods", action="store_true",
                        help="only the saliency map on the crop stores with Grad-CAM, DFF and the gradient, into "
                             "saliency_methods.csv")
    args = parser.parse_args()
    if args.saliency_methods:
        return saliency_methods(Path(args.stores), Path(args.out), args.data, args.folds)
    if args.ablation:
        return glimpse_ablation(Path(args.stores), Path(args.out), args.data, args.folds)
    logging.basicConfig(level=logging.WARNING)
    keep_freed_memory()
    model = load_model("efficientnet_lite0")
    stores, out = Path(args.stores), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    searches, saccades = [], []
    for name in args.conditions:
        layout, view = name.split("-")
        report = stores / f"search-{name}"
        report.mkdir(parents=True, exist_ok=True)
        store = stores / f"{name}.zarr"
        if store.exists() and not (report / "likelihood.zarr").exists():
            (report / "likelihood.zarr").symlink_to(store.resolve())      # a store made before, resumed
        searches.append(search_report(model, args.data, report, layout=layout, view=view, batch_size=4))
        for glimpse, options in GLIMPSES.items():
            dorsal = ["saliency", "conv", "linear"] if glimpse.startswith("crop") else ["conv", "linear"]
            start = time.perf_counter()
            summary = saccade_report(report / "likelihood.zarr", args.data,
                                     stores / f"saccade-{name}-{options['glimpse_view']}", dorsal=dorsal,
                                     folds=args.folds, **options)
            seconds = time.perf_counter() - start
            summary = summary.assign(store=name, glimpse=glimpse, seconds=round(seconds))
            saccades.append(summary[["store", "glimpse", *summary.columns[:-3], "seconds"]])
            print(f"{name}, {glimpse}: {seconds:.0f} s", flush=True)
    search = pd.concat(searches, ignore_index=True)
    if (out / "search_summary.csv").exists():    # conditions not run this time keep their earlier rows
        earlier = pd.read_csv(out / "search_summary.csv")
        kept = ~(earlier["layout"] + "-" + earlier["view"]).isin(args.conditions)
        search = pd.concat([earlier[kept], search], ignore_index=True)
        order = {name: k for k, name in enumerate(CONDITIONS)}
        search = search.iloc[(search["layout"] + "-" + search["view"]).map(order).argsort(kind="stable")]
    saccade = pd.concat(saccades, ignore_index=True)
    if (out / "saccade_summary.csv").exists():
        earlier = pd.read_csv(out / "saccade_summary.csv", keep_default_na=False, na_values=[""])
        earlier = earlier[~earlier["store"].isin(args.conditions)]
        saccade = pd.concat([earlier, saccade], ignore_index=True)[list(saccade.columns)]
        saccade = saccade.iloc[saccade["store"].map({n: k for k, n in enumerate(CONDITIONS)}).argsort(kind="stable")]
    search.to_csv(out / "search_summary.csv", index=False)
    saccade.to_csv(out / "saccade_summary.csv", index=False)
    print(markdown(search))
    print()
    columns = ["store", "glimpse", "policy", "accuracy", "vs_centre", "vs_centre_low", "vs_centre_high", "vs_prior",
               "vs_prior_low", "vs_prior_high", "gap_closed"]
    print(markdown(saccade[columns]))


ABLATION = [(64, "crop", True), (112, "crop", False), (112, "logpolar", True), (64, "logpolar", True)]


def glimpse_ablation(stores: Path, out: Path, data: str, folds: int) -> None:
    """The conv head on the grid-crop store with each glimpse of :data:`ABLATION` (the two of the main run are
    the default 112 px colour crop and the seed's 64 px gray log-polar one)."""
    keep_freed_memory()
    rows = []
    for size, view, color in ABLATION:
        start = time.perf_counter()
        summary = saccade_report(stores / "search-grid-crop" / "likelihood.zarr", data,
                                 stores / f"ablation-{size}-{view}-{int(color)}", dorsal=["conv"], folds=folds,
                                 glimpse=size, glimpse_view=view, glimpse_color=color, examples=0).set_index("policy")
        rows.append({"glimpse": f"{size} px {'colour' if color else 'gray'} {view}",
                     "seconds": round(time.perf_counter() - start),
                     **{f"{policy} {column}": round(float(summary.at[policy, column]), 3)
                        for policy in ("conv", "conv+evidence")
                        for column in ("accuracy", "vs_centre", "vs_centre_low", "vs_centre_high", "vs_prior",
                                       "vs_prior_low", "vs_prior_high")}})
    table = pd.DataFrame(rows)
    table.to_csv(out / "glimpse_ablation.csv", index=False)
    print(markdown(table))


def saliency_methods(stores: Path, out: Path, data: str, folds: int) -> None:
    """The untrained saliency map with each attribution method, on the grid-crop and rings-crop stores."""
    keep_freed_memory()
    rows = []
    for name in ("grid-crop", "rings-crop"):
        for method in ("gradcam", "dff", "gradient"):
            start = time.perf_counter()
            summary = saccade_report(stores / f"search-{name}" / "likelihood.zarr", data,
                                     stores / f"saliency-{name}-{method}", dorsal=["saliency"], folds=folds,
                                     saliency_method=method, examples=0).set_index("policy")
            for policy in ("saliency", "saliency+evidence", "saliency+igub"):
                row = summary.loc[policy]
                rows.append({"store": name, "method": method, "policy": policy, "accuracy": row.accuracy,
                             **{c: row[c] for c in ("vs_centre", "vs_centre_low", "vs_centre_high", "vs_prior",
                                                    "vs_prior_low", "vs_prior_high", "gap_closed")},
                             "seconds": round(time.perf_counter() - start)})
    table = pd.DataFrame(rows)
    table.to_csv(out / "saliency_methods.csv", index=False)
    print(markdown(table))


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table (pandas' own needs the optional tabulate package)."""
    cells = table.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
