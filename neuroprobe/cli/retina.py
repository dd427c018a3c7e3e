"""``search`` and ``saccade``: likelihood maps over retinotopic views, visual search, and active vision."""
from __future__ import annotations

from pathlib import Path

from . import common


def add_commands(sub) -> None:
    p = common.command(sub, "search", _search, "likelihood maps over retinotopic views, and visual search policies")
    common.add_model(p)
    common.add_data(p)
    p.add_argument("--layout", choices=["grid", "rings"], default="grid",
                   help="grid: n x n views of one radius; rings: the authors' 11 x 11 concentric layout, radius 1 "
                        "at the centre down to --radius at the edge (default: %(default)s)")
    p.add_argument("--grid", type=int, default=None, metavar="N",
                   help="fixations per side (default: 7 for grid, 11 for rings; rings need an odd N)")
    p.add_argument("--radius", type=float, default=None,
                   help="view radius in units of the image's inscribed circle (default: 0.5 for grid; for rings the "
                        "outer ring's, 0.1)")
    p.add_argument("--padding", choices=["zeros", "border", "reflection"], default="zeros",
                   help="what views see outside the image; zeros = the normalization's mean colour (default: %(default)s)")
    p.add_argument("--view", choices=["logpolar", "crop"], default="logpolar",
                   help="logpolar (the retinotopic view) or crop (the Cartesian control: the square around the same "
                        "circle, resized) (default: %(default)s)")
    p.add_argument("--view-size", type=int, default=None, help="view side in px (default: the model's input size)")
    p.add_argument("--source-scale", type=float, default=2.0,
                   help="images are decoded at this multiple of the model's resolution before views are sampled "
                        "(default: %(default)s)")
    common.add_label_column(p, None, default_help="class_index when the table has it")
    common.add_batch_size(p, 4, "images per step and per store chunk")
    p.add_argument("--views-per-pass", type=int, default=64, help="views per forward pass (default: %(default)s)")
    p.add_argument("--examples", type=int, default=4, help="images in the figures (default: %(default)s)")
    common.add_device(p, amp=True)
    common.add_folder_out(p, "the likelihood store (likelihood.zarr), tables and figures")
    common.add_overwrite(p, "likelihood")

    p = common.command(sub, "saccade", _saccade,
                       "train dorsal networks (k-fold) and evaluate active vision on a likelihood store")
    p.add_argument("--likelihood", required=True, help="a likelihood store made by 'search' (DIR/likelihood.zarr, or DIR)")
    p.add_argument("--data", required=True, help="the image table the store was made from")
    common.add_incomplete(p, "likelihood store")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: %(default)s)")
    p.add_argument("--saccades", type=int, default=3,
                   help="at most this many saccades for the evidence-accumulating policies (default: %(default)s)")
    p.add_argument("--candidates", type=int, default=5,
                   help="IGUB refinement: choose among the dorsal map's best N fixations (default: %(default)s)")
    p.add_argument("--glimpse", type=int, default=64, help="glimpse side in px (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=300, help="head training epochs, full batch (default: %(default)s)")
    p.add_argument("--target", choices=["correct", "probability"], default="correct",
                   help="what the head predicts per fixation: ventral top-1 right (0/1) or p(label | view)")
    common.add_seed(p, "the folds, the initialisation and the random baseline")
    common.add_device(p)
    common.add_folder_out(p, "the networks, tables and figures")


def _search(args) -> int:
    """Classify every retinotopic view of every image (one per fixation of a layout) and score visual search policies
    on the resulting likelihood maps: centre view, label-driven, uncued (max logit), IGUB, majority vote, summed
    logits, oracle. Writes likelihood.zarr (resumable: run the same command again), search.csv (per image and
    policy), summary.csv (accuracy, 95% Wilson interval) and accuracy.png, likelihood_maps.png, views.png into
    --out. Under torchrun, every process computes its share of the likelihood maps and rank 0 scores them.
    """
    from ..retina.report import search_report

    common.at_least_one(grid=args.grid)
    summary = search_report(args.model, args.data, args.out, weights=args.weights, layout=args.layout, n=args.grid,
                            radius=args.radius, view=args.view, padding=args.padding, view_size=args.view_size,
                            source_scale=args.source_scale, label_column=args.label_column,
                            batch_size=args.batch_size, views_per_pass=args.views_per_pass, device=args.device,
                            amp=args.amp, overwrite=args.overwrite, examples=args.examples)
    if summary is None:  # a torchrun rank other than 0: rank 0 scores the store and prints
        return 0
    first = summary.iloc[0]
    print(f"visual search, {first.layout} layout, {first.fixations} {first.view} views, {summary.n.max()} labelled images "
          "(accuracy, 95% interval):")
    for row in summary.itertuples():
        print(f"  {row.policy:<11} {row.accuracy:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]")
    print(f"store, tables and figures in {Path(args.out).resolve()}")
    return 0


def _saccade(args) -> int:
    """From one coarse grayscale log-polar glimpse of each image, a dorsal network (frozen backbone of the store's
    model + linear head) predicts where the ventral network is right; a saccade goes there and the ventral view
    classifies. Every image is scored by a head trained on the other folds. Writes dorsal_fold<k>.pt,
    active_vision.csv, summary.csv (accuracy with 95% intervals, difference from the centre view, share of the
    centre -> oracle gap closed), accuracy.png and dorsal_maps.png.
    """
    from ..retina.dorsal import DorsalTraining
    from ..retina.report import saccade_report

    store = Path(args.likelihood)
    if (store / "likelihood.zarr").is_dir():
        store = store / "likelihood.zarr"
    summary = saccade_report(store, args.data, args.out, folds=args.folds, seed=args.seed, count=args.saccades,
                             candidates=args.candidates, glimpse=args.glimpse, device=args.device,
                             training=DorsalTraining(epochs=args.epochs, target=args.target, seed=args.seed),
                             allow_incomplete=args.allow_incomplete)
    print(f"active vision, {args.folds}-fold cross-validated, {summary.n.max()} images (accuracy, 95% interval; "
          "difference from the centre view):")
    for row in summary.itertuples():
        print(f"  {row.policy:<24} {row.accuracy:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]  "
              f"{row.vs_centre:+.3f} [{row.vs_centre_low:+.3f}, {row.vs_centre_high:+.3f}]  "
              f"gap closed {row.gap_closed:+.0%}")
    print(f"networks, tables and figures in {Path(args.out).resolve()}")
    return 0
