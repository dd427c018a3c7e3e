"""``report``: selectivity, top/bottom-K images, opponent responses and RDMs from a store (no model needed)."""
from __future__ import annotations

from pathlib import Path

from . import common


def add_commands(sub) -> None:
    p = common.command(sub, "report", _report, "selectivity, top/bottom-K images and opponent responses: CSV + PNG")
    p.add_argument("store")
    common.add_selectivity(p)
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="dask.distributed scheduler (e.g. tcp://10.0.0.5:8786): read and reduce the store's chunks "
                        "on its workers; the tables equal the single-process ones (needs neuroprobe[dask])")
    p.add_argument("--rdm-by", default=None, metavar="COLUMN",
                   help="also rdm_<layer>.csv/.png: the RDM of the category means of this image-table column")
    p.add_argument("--rdm-method", default="correlation", choices=["correlation", "euclidean"],
                   help="RDM dissimilarity, as rsatoolbox defines it (default: %(default)s)")
    common.add_incomplete(p)
    common.add_folder_out(p, "the CSV tables and PNG figures")


def _report(args) -> int:
    """Read a store (a folder or an fsspec URL such as s3://bucket/run.zarr; no model needed) and write
    selectivity.csv, topk.csv, opponent.csv, summary.csv and PNG figures into --out.
    """
    from ..analysis.report import report

    summary = report(args.store, args.out, args.category, layers=args.layers, stat=args.stat, k=args.k, n=args.n,
                     threshold=args.threshold, permutations=args.permutations, seed=args.seed,
                     column=args.category_column, mapping=args.category_map, normalization=args.normalization,
                     scheduler=args.scheduler, rdm_by=args.rdm_by, rdm_method=args.rdm_method,
                     allow_incomplete=args.allow_incomplete)
    print(f"{args.category}-selective units (Malakhova index on {args.stat}, {args.normalization} normalized, "
          f">= {args.threshold:g}):")
    for row in summary.itertuples():
        print(f"  {row.layer:<24} {row.selective:>5} of {row.units:<5} median {row.median_index:.3f}  "
              f"max {row.max_index:.3f}  p<0.05: {row.significant_p05:<5} r(pos, neg) {row.r_positive_negative:+.2f}")
    print(f"tables and figures in {Path(args.out).resolve()}")
    return 0
