"""``saliency`` and ``localize``: attribution maps into a store, and the grid pointing game."""
from __future__ import annotations

from pathlib import Path

from . import common

METHODS = "gradient, guided, smoothgrad, gradcam, dff, feedback, global"


def _method_options(parser) -> None:
    """Options of the attribution methods, shared by saliency and localize."""
    common.add_layer(parser, required=False, default_help="gradcam and dff: the last layer with a spatial map")
    parser.add_argument("--samples", type=int, default=None, help="smoothgrad: noisy copies per image (default: 50)")
    parser.add_argument("--noise", type=float, default=None,
                        help="smoothgrad: noise sd as a fraction of each image's value range (default: 0.15)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="feedback and global: gate optimisation steps (default: 10)")
    parser.add_argument("--concepts", type=int, default=None, help="dff: NMF concepts (default: 5)")
    parser.add_argument("--no-relu", action="store_true", help="gradcam: keep the negative part (no final ReLU)")
    common.add_device(parser)


def method_options(args, method: str) -> dict:
    """The options of ``method`` that were given on the command line."""
    given = {"smoothgrad": {"samples": args.samples, "noise": args.noise}, "feedback": {"iterations": args.iterations},
             "global": {"iterations": args.iterations}, "dff": {"concepts": args.concepts},
             "gradcam": {"relu": False if args.no_relu else None}}.get(method, {})
    return {k: v for k, v in given.items() if v is not None}


def add_commands(sub) -> None:
    p = common.command(sub, "saliency", _saliency, "attribution maps of every image into a Zarr store")
    common.add_model(p)
    p.add_argument("--method", required=True, choices=METHODS.split(", "), metavar="METHOD", help=f"one of: {METHODS}")
    common.add_data(p)
    p.add_argument("--target", default=None,
                   help="column of class indices to explain, or 'prediction' (default: class_index when the table "
                        "has it, else the prediction)")
    _method_options(p)
    common.add_batch_size(p, 16, "images per pass and per store chunk")
    p.add_argument("--raw", action="store_true", help="also store the signed raw tensor (input gradient, CAM)")
    common.add_store_out(p, "gradcam.zarr", "saliency")

    p = common.command(sub, "localize", _localize,
                       "grid pointing game: which method puts attribution on the right object")
    common.add_model(p)
    common.add_data(p, needs="a column of class indices")
    p.add_argument("--methods", default=METHODS.replace(", ", ","),
                   help="comma-separated methods (default: %(default)s)")
    common.add_label_column(p)
    p.add_argument("--grid", type=int, default=2, help="mosaic side in images (default: %(default)s)")
    p.add_argument("--n", type=int, default=200, help="mosaics (default: %(default)s)")
    common.add_seed(p, "the mosaic draw")
    p.add_argument("--cell-size", type=int, default=None,
                   help="resize each image to this many px in the mosaic (default: the model's input size, so a "
                        "2x2 mosaic is twice the input; half of it makes mosaics the input's size, 4x cheaper)")
    _method_options(p)
    common.add_batch_size(p, 4, "mosaics per pass")
    common.add_folder_out(p, "the CSV tables and the figure")


def _saliency(args) -> int:
    """One map per image for its target class (a column of class indices or the model's prediction) by one method:
    gradient, guided, smoothgrad, gradcam, dff, feedback or global. Writes 'map' (image, y, x) at the input's
    resolution with target, predicted, score and probability; run the same command again to resume; under torchrun,
    every process takes its share of the images.
    """
    from ..maps.saliency_store import saliency
    from ..store.location import display, open_group

    out = saliency(args.model, args.data, args.out, args.method, weights=args.weights, layer=args.layer,
                   target=args.target, batch_size=args.batch_size, device=args.device, raw=args.raw,
                   overwrite=args.overwrite, **method_options(args, args.method))
    if not common.first_process():
        return 0
    group = open_group(out)
    done = group["done"][:]
    ok = group["images/status"][:] == "ok"
    correct = (group["target"][:] == group["predicted"][:])[ok]
    print(f"store    {display(out)}")
    print(f"maps     {args.method} {'x'.join(map(str, group['map'].shape))} (image, y, x): {int(done.sum())} done, "
          f"{int((done & ~ok).sum())} skipped (unreadable); target = prediction for "
          f"{correct.mean():.0%} of them" if ok.any() else "no readable image")
    return 0


def _localize(args) -> int:
    """Builds seeded grid x grid mosaics of correctly classified images of different classes (Böhle et al. 2022) and
    scores each method's map for every cell's class: 'grid' = share of positive attribution in that cell
    (uniform map: 1/grid^2), 'pointing' = maximum within 15 px of the cell. Writes scores.csv, summary.csv (mean
    and 95% t-interval per method), mosaics.csv, predictions.csv and examples.png. Cost per mosaic and method:
    one pass per batch for gradient, guided, gradcam and dff; --samples passes for smoothgrad; (--iterations +
    1) passes per cell for feedback and global.
    """
    from ..maps.localize_report import localize

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    game = localize(args.model, args.data, args.out, methods, weights=args.weights, label_column=args.label_column,
                    grid=args.grid, n=args.n, seed=args.seed, layer=args.layer, batch_size=args.batch_size,
                    cell_size=args.cell_size, device=args.device,
                    method_options={m: method_options(args, m) for m in methods})
    uniform = 1 / args.grid ** 2
    print(f"grid pointing game, {game.mosaics.mosaic.nunique()} mosaics of {args.grid}x{args.grid} "
          f"(uniform map: {uniform:.2f}); mean and 95% interval:")
    grid = game.table("grid").set_index("method")
    pointing = game.table("pointing").set_index("method")
    for method, row in grid.iterrows():
        print(f"  {method:<11} grid {row['mean']:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]   pointing "
              f"{pointing.loc[method, 'mean']:.3f}   n {row.n}" + (f" ({row.excluded} excluded)" if row.excluded else ""))
    print(f"tables and figure in {Path(args.out).resolve()}")
    return 0
