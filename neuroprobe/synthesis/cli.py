"""``python -m neuroprobe visualize`` and ``finetune`` (registered by :mod:`neuroprobe.cli`)."""
from __future__ import annotations

from pathlib import Path

from ..errors import NeuroprobeError


def parse_units(tokens: list[str]) -> list[int]:
    """``0 1 2``, ranges ``0-63`` (inclusive) or a mix; one-line error otherwise."""
    units: list[int] = []
    for token in tokens:
        try:
            if "-" in token.strip("-"):
                first, last = (int(t) for t in token.split("-", 1))
                units.extend(range(first, last + 1))
            else:
                units.append(int(token))
        except ValueError:
            raise NeuroprobeError(f"--units takes unit indices or ranges (0 1 2, 0-63), not '{token}'") from None
    return list(dict.fromkeys(units))


def add_commands(sub, model_args) -> None:
    p = sub.add_parser("visualize", help="manufactured images that drive (or silence) units",
                       description="Optimize one image per unit to drive (max) or silence (min) its pre-activation, "
                                   "the same capture point as extract, all units in one batch. With --store, each "
                                   "image's activation is also given as a fraction of the unit's strongest natural "
                                   "image, and each unit gets a figure beside its top-K and bottom-K natural images. "
                                   "Writes visualize.csv, images/<unit>_<direction>.png, grid.png and units/*.png.")
    p.add_argument("--model", default=None,
                   help="model name (default: the store's model; efficientnet_lite0 without a store)")
    p.add_argument("--weights", default=None, help="weights (default: the store's, or the library default)")
    p.add_argument("--layer", required=True, help="layer name (see 'layers')")
    p.add_argument("--units", nargs="+", required=True, metavar="UNIT", help="unit indices or ranges (0 1 2, 0-63)")
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
    p.add_argument("--seed", type=int, default=0, help="seed (each image's seed is a function of it and its unit)")
    p.add_argument("--batch-size", type=int, default=64, help="images optimized together (default: %(default)s)")
    p.add_argument("--k", type=int, default=6, help="natural images per row of the unit figures (default: %(default)s)")
    p.add_argument("--store", default=None, help="store of natural images of the same model and layer")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="accept a --store whose extraction did not finish (its finished images only; tables and "
                        "figure titles say so)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when present)")
    p.add_argument("--out", required=True, help="folder for the images, table and figures")


def _visualize(args) -> int:
    from .run import visualize_run

    if args.steps < 1 or args.batch_size < 1:
        raise NeuroprobeError("--steps and --batch-size must be at least 1")
    vis = visualize_run(args.out, layer=args.layer, units=parse_units(args.units), model=args.model,
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


COMMANDS = {"visualize": _visualize}
