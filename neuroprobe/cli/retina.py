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
                       "dorsal maps (saliency, conv, linear; k-fold) and the active-vision test on likelihood stores")
    p.add_argument("--likelihood", required=True, nargs="+", metavar="STORE",
                   help="one or more likelihood stores made by 'search' with the same options (DIR/likelihood.zarr, "
                        "or DIR); their images are pooled into one cross-validation")
    p.add_argument("--data", required=True, nargs="+", metavar="TABLE",
                   help="the image table each store was made from, in the same order")
    common.add_incomplete(p, "likelihood store")
    p.add_argument("--dorsal", nargs="+", choices=["saliency", "conv", "linear"], default=["saliency", "conv", "linear"],
                   help="dorsal maps to score: saliency (the model's own Grad-CAM of a coarse full view, untrained), "
                        "conv (a small convolutional head on the glimpse's feature map: the model's class evidence "
                        "at every cell), linear (a linear head on its pooled features) (default: all three)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: %(default)s)")
    p.add_argument("--saccades", type=int, default=3,
                   help="at most this many saccades for the evidence-accumulating policies (default: %(default)s)")
    p.add_argument("--candidates", type=int, default=5,
                   help="IGUB refinement: choose among the dorsal map's best N fixations (default: %(default)s)")
    p.add_argument("--saliency-method", choices=["gradcam", "dff", "gradient", "smoothgrad", "guided"],
                   default="gradcam", help="attribution method of the saliency map (default: %(default)s)")
    p.add_argument("--saliency-size", type=int, default=112,
                   help="side in px of the coarse colour full view the saliency map is computed on (default: %(default)s)")
    p.add_argument("--glimpse", type=int, default=112, help="the trained heads' glimpse side in px (default: %(default)s)")
    p.add_argument("--glimpse-view", choices=["logpolar", "crop"], default="crop",
                   help="the trained heads' glimpse: crop (a coarse Cartesian view of the whole image) or logpolar "
                        "(the seed's retinotopic glimpse) (default: %(default)s)")
    p.add_argument("--gray", action="store_true", help="grayscale glimpses for the trained heads (the seed's)")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="do not double the training images with their left-right flips (mirrored target maps)")
    p.add_argument("--shift", type=float, default=0.08,
                   help="conv head: glimpses also centred this far off-centre, in x and y (normalized units; 0 = "
                        "none) (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=300, help="linear head training epochs, full batch (default: %(default)s)")
    p.add_argument("--target", choices=["correct", "probability"], default="correct",
                   help="what the trained heads predict per fixation: ventral top-1 right (0/1) or p(label | view)")
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
    """A dorsal map says, from a coarse view of the whole image, where the ventral network will be right; the eye
    looks at the centre, saccades to the map's best fixation(s) and classifies. Dorsal maps: saliency (the ventral
    model's Grad-CAM of a coarse full view, no training), conv (a small convolutional head on the class evidence at
    every cell of the glimpse's feature map, trained with flips and shifts) and linear (a linear head on its pooled
    features). Each is scored on every image by a model trained on the other folds, against the image-blind prior,
    a random map and the perfect map, each driving the same loops: one saccade (the seed's Figure 7), up to 3 with
    evidence multiplied, and the same with IGUB. Writes dorsal_<map>_fold<k>.pt, dorsal_scores.csv, active_vision.csv
    (per image and policy), summary.csv (accuracy with 95% intervals; paired differences from the centre view and from
    the prior with the same loop; share of the centre -> perfect-map gap closed), accuracy.png, active_vision.png and
    dorsal_maps.png.
    """
    from ..retina.active_report import saccade_report
    from ..retina.dorsal import DorsalTraining

    common.at_least_one(folds=args.folds, saccades=args.saccades, candidates=args.candidates,
                        glimpse=args.glimpse, saliency_size=args.saliency_size)
    stores = [Path(s) / "likelihood.zarr" if (Path(s) / "likelihood.zarr").is_dir() else Path(s) for s in args.likelihood]
    summary = saccade_report(stores, args.data, args.out, dorsal=args.dorsal, folds=args.folds, seed=args.seed,
                             count=args.saccades, candidates=args.candidates, glimpse=args.glimpse,
                             glimpse_view=args.glimpse_view, glimpse_color=not args.gray, flip=args.flip,
                             shift=args.shift, saliency_method=args.saliency_method, saliency_size=args.saliency_size,
                             device=args.device, allow_incomplete=args.allow_incomplete,
                             training=DorsalTraining(epochs=args.epochs, target=args.target, seed=args.seed))
    per_fold = summary["training_images_per_fold"].iat[0]
    copies = " (x2 with flips)" if args.flip else ""
    if "conv" in args.dorsal and args.shift > 0:
        copies = f" (x{10 if args.flip else 5} for the conv head: {'flips and ' if args.flip else ''}4 shifted glimpses)"
    print(f"active vision, {args.folds}-fold cross-validated, {summary.n.max()} images, {per_fold:.0f} training images "
          f"per fold{copies}")
    print("accuracy [95% interval]; paired difference from the centre view, and from the prior map with the same loop; "
          "share of the centre -> perfect-map gap closed:")
    for row in summary.itertuples():
        versus = "" if row.map == "" or row.map != row.map else \
            f"  vs prior {row.vs_prior:+.3f} [{row.vs_prior_low:+.3f}, {row.vs_prior_high:+.3f}]"
        print(f"  {row.policy:<18} {row.accuracy:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]  "
              f"vs centre {row.vs_centre:+.3f} [{row.vs_centre_low:+.3f}, {row.vs_centre_high:+.3f}]{versus}  "
              f"gap closed {row.gap_closed:+.0%}")
    print(f"networks, tables and figures in {Path(args.out).resolve()}")
    return 0
