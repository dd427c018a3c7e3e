"""``occlude`` and ``rf``: occlusion discrepancy maps, and empirical vs theoretical receptive fields."""
from __future__ import annotations

from pathlib import Path

from . import common


def _occluder(parser) -> None:
    """The sweep's options, shared by occlude and rf."""
    common.add_units(parser, default_help="every unit of the layer; each image costs one sweep whatever the "
                                          "number of units")
    parser.add_argument("--window", type=int, default=11, help="occluder size in pixels (default: %(default)s)")
    parser.add_argument("--stride", type=int, default=3, help="occluder step in pixels; the sweep costs "
                        "((size - window) / stride + 1)^2 forward passes per image (default: %(default)s)")
    parser.add_argument("--fill", choices=["noise", "mean", "zero", "blur"], default="noise",
                        help="what the patch shows: seeded uniform noise, the image mean, black, or a blurred "
                             "copy (default: %(default)s)")
    parser.add_argument("--rf-only", action="store_true",
                        help="only run occluders that overlap the units' theoretical receptive fields")
    parser.add_argument("--method", choices=["incremental", "dense"], default="incremental",
                        help="incremental: recompute per op only the region each patch can change; dense: one "
                             "truncated forward pass per copy (same maps; default: %(default)s)")
    common.add_batch_size(parser, None, "occluded copies per forward pass")
    common.add_device(parser)


def add_commands(sub) -> None:
    p = common.command(sub, "occlude", _occlude, "occlusion discrepancy maps of a layer's units for every image")
    common.add_model(p)
    common.add_layer(p)
    common.add_data(p)
    _occluder(p)
    p.add_argument("--response", choices=["peak", "max", "mean"], default="peak",
                   help="unit response: at its peak position on the original image (Zhou et al.), or pooled "
                        "(default: %(default)s)")
    p.add_argument("--absolute", action="store_true", help="store |original - occluded|")
    common.add_store_out(p, "occlusion.zarr", "occlusion")

    p = common.command(sub, "rf", _rf, "empirical vs theoretical receptive fields from a store's top images")
    p.add_argument("store", help="a store made by 'extract' (the model is reloaded from its provenance)")
    p.add_argument("--layers", "--layer", nargs="+", required=True, metavar="LAYER", help="stored layer(s)")
    p.add_argument("--k", type=int, default=10, help="top images per unit (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="RF = connected region >= this fraction of the averaged map's maximum (default: %(default)s)")
    _occluder(p)
    common.add_incomplete(p)
    common.add_folder_out(p, "rf.csv, top_images.csv and the figures")


def _occlude(args) -> int:
    """Slide a patch over each image and record, for every requested unit of the layer at once, original minus occluded
    pre-activation (at the position where the unit peaks on the original image, or pooled). Writes a Zarr store
    with 'discrepancy' (image, unit, y, x) over occluder positions; the geometry is in its attributes. Run the
    same command again to resume; under torchrun, every process takes its share of the images.
    """
    from ..maps.occlusion_store import occlude
    from ..store.location import display, open_group

    out = occlude(args.model, args.data, args.layer, args.out, weights=args.weights, units=common.parse_units(args.units),
                  window=args.window, stride=args.stride, fill=args.fill, response=args.response,
                  absolute=args.absolute, rf_only=args.rf_only, device=args.device, overwrite=args.overwrite,
                  batch_size=args.batch_size, method=args.method)
    if not common.first_process():
        return 0
    group = open_group(out)
    print(f"store    {display(out)}")
    print(f"maps     discrepancy {'x'.join(map(str, group['discrepancy'].shape))} (image, unit, y, x); "
          f"{int(group['done'][:].sum())} images done")
    return 0


def _rf(args) -> int:
    """For each unit: occlusion discrepancy maps of its top-K images (by spatial max, from the store), re-centred on
    the unit's position and averaged; the empirical RF is the connected region >= THRESHOLD x the maximum (size
    = sqrt of its area). Writes rf.csv, top_images.csv and PNG figures.
    """
    from ..maps.receptive_fields_report import rf_report

    table = rf_report(args.store, args.layers, args.out, k=args.k, units=common.parse_units(args.units),
                      threshold=args.threshold, window=args.window, stride=args.stride, fill=args.fill,
                      rf_only=args.rf_only, device=args.device, batch_size=args.batch_size,
                      allow_incomplete=args.allow_incomplete, method=args.method)
    summary = table.groupby("layer", sort=False).agg(units=("unit", "size"), theoretical=("theoretical_rf_px", "first"),
                                                     empirical=("empirical_rf_px", "median"), ratio=("ratio", "median"))
    print("receptive fields (px; empirical = median over units):")
    for row in summary.reset_index().itertuples():
        print(f"  {row.layer:<24} {row.units:>4} units  theoretical {row.theoretical:6.0f}  empirical {row.empirical:6.1f}"
              f"  ratio {row.ratio:.2f}")
    print(f"table and figures in {Path(args.out).resolve()}")
    return 0
