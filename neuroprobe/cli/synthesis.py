"""``visualize``: manufactured images that drive (or silence) units, beside their natural top images."""
from __future__ import annotations

from pathlib import Path

from . import common


def add_commands(sub) -> None:
    p = common.command(sub, "visualize", _visualize, "manufactured images that drive (or silence) units")
    common.add_model(p, from_store=True)
    common.add_layer(p)
    common.add_units(p, required=True)
    p.add_argument("--direction", choices=["max", "min", "both"], default="both",
                   help="drive the unit up, down, or both (default: %(default)s)")
    p.add_argument("--objective", choices=["mean", "center", "max"], default="mean",
                   help="spatial mean, centre position, or the extreme position of the map (default: %(default)s)")
    p.add_argument("--param", choices=["fft", "maco", "pixel"], default="fft",
                   help="image parameterization: Lucid's Fourier with decorrelated colour, MACO (phase only, "
                        "magnitude of natural images), or pixels (default: %(default)s)")
    p.add_argument("--steps", type=int, default=256, help="optimization steps (default: %(default)s)")
    p.add_argument("--size", type=int, default=None, help="image size in px (default: the model's input size)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: 0.05; 0.5 for maco)")
    p.add_argument("--no-transforms", action="store_true", help="optimize without Lucid's pad/jitter/scale/rotate")
    p.add_argument("--spectrum-images", default=None,
                   help="images whose mean spectrum MACO uses (default: the store's images, else the embedded sample)")
    common.add_seed(p, "the images (each image's seed is a function of it and its unit)")
    common.add_batch_size(p, 64, "images optimized together")
    p.add_argument("--k", type=int, default=6, help="natural images per row of the unit figures (default: %(default)s)")
    p.add_argument("--store", default=None, help="store of natural images of the same model and layer")
    common.add_incomplete(p, "--store")
    common.add_device(p)
    common.add_folder_out(p, "the images, table and figures")


def _visualize(args) -> int:
    """Optimize one image per unit to drive (max) or silence (min) its pre-activation, the same capture point as
    extract, all units in one batch. With --store, each image's activation is also given as a fraction of the
    unit's strongest natural image, and each unit gets a figure beside its top-K and bottom-K natural images.
    Writes visualize.csv, images/<unit>_<direction>.png, grid.png and units/*.png.
    """
    from ..synthesis.run import visualize_run

    common.at_least_one(steps=args.steps, batch_size=args.batch_size)
    vis = visualize_run(args.out, layer=args.layer, units=common.parse_units(args.units), model=args.model,
                        weights=args.weights, store=args.store, direction=args.direction, objective=args.objective,
                        param=args.param, steps=args.steps, size=args.size, lr=args.lr,
                        transforms=not args.no_transforms, spectrum_images=args.spectrum_images, seed=args.seed,
                        batch_size=args.batch_size, k=args.k, device=args.device,
                        allow_incomplete=args.allow_incomplete)
    table = vis.table
    seconds = table.attrs["seconds"]
    print(f"{len(table)} images of {args.layer} in {seconds:.1f} s ({seconds / len(table):.2f} s per image)")
    for direction, part in table.groupby("direction"):
        line = f"  {direction}: activation median {part.activation.median():.3f}"
        if "fraction" in part:
            line += f", {part.fraction.median():.2f}x the strongest natural image (median)"
        print(line)
    print(f"images, visualize.csv and figures in {Path(args.out).resolve()}")
    return 0
