"""``atlas``: every unit of a store on a static site that opens from disk (no server, no network)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from . import common

QUIET = ("--quiet", "--no-progress")  # how the build shows progress is no part of the command that reproduces it


def add_commands(sub) -> None:
    p = common.command(sub, "atlas", _atlas, "a static site with one page per unit: top images, selectivity, "
                                              "receptive fields (opens from disk)")
    p.add_argument("store")
    common.add_selectivity(p, categories=True, stat_help=" and the top and bottom images",
                           n_help=" and the top classes", top_k_alias=True)
    common.add_units(p)
    p.add_argument("--thumb-size", type=int, default=None,
                   help="thumbnail side in pixels (default: 64, 48 with --profile lite)")
    p.add_argument("--profile", choices=["full", "lite"], default="full",
                   help="lite: no bottom-K crops (values only), no overlays, coarser histograms (default: %(default)s)")
    p.add_argument("--visualize", nargs="+", default=None, metavar="LAYER=DIR",
                   help="folders written by 'visualize' (their max and min images on the unit pages); DIR alone "
                        "when the atlas has one layer")
    p.add_argument("--synthesize", action="store_true",
                   help="run 'visualize' for every unit shown of layers without --visualize (slow on a CPU)")
    p.add_argument("--synthesize-steps", type=int, default=256,
                   help="optimization steps per manufactured image with --synthesize (default: %(default)s)")
    p.add_argument("--occlusion", default=None, metavar="STORE",
                   help="an occlusion store (python -m neuroprobe occlude): maps of each unit's top images")
    p.add_argument("--rf", default=None, metavar="DIR", help="a folder written by 'rf': empirical receptive fields")
    common.add_device(p)
    common.add_incomplete(p)
    common.add_folder_out(p, "the site (index.html, layer.html, unit.html, data/, sprites/, units.csv)")


def _atlas(args) -> int:
    """Read a store and write a static site into --out: index.html, layer.html (a sortable, filterable grid of
    every unit) and unit.html#LAYER/UNIT (one permalink per unit), with units.csv and units.json beside it. It
    opens from file:// with no server and no network. The numbers are report's (same options, same defaults).
    A rebuild redoes only what changed.
    """
    from ..atlas import build

    common.at_least_one(k=args.k, n=args.n)
    summary = build(args.store, args.out, categories=args.category, layers=args.layers,
                    units=common.parse_units(args.units), stat=args.stat, k=args.k, n=args.n,
                    column=args.category_column, mapping=args.category_map, normalization=args.normalization,
                    threshold=args.threshold, permutations=args.permutations, seed=args.seed,
                    thumb_size=args.thumb_size, profile=args.profile, visualize=args.visualize,
                    synthesize=args.synthesize, synthesize_steps=args.synthesize_steps, occlusion=args.occlusion,
                    rf=args.rf, device=args.device, allow_incomplete=args.allow_incomplete,
                    command=shlex.join(["python", "-m", "neuroprobe", *[a for a in sys.argv[1:] if a not in QUIET]]))
    print(f"atlas of {len(summary['layers'])} layer(s): {len(summary['built'])} built, {len(summary['skipped'])} "
          f"unchanged; {summary['written']} file(s) written, {summary['unchanged']} unchanged; "
          f"{summary['bytes'] / 1e6:.1f} MB")
    print(f"open {(Path(args.out) / 'index.html').resolve().as_uri()}")
    return 0
