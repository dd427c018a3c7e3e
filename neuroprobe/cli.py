"""``python -m neuroprobe``: subcommands only; each one delegates to a library function."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import NeuroprobeError

EXAMPLES = """examples:
  python -m neuroprobe layers  --model efficientnet_lite0
  python -m neuroprobe extract --model efficientnet_lite0 --data data/sample/labels.csv \\
         --layers blocks.3 blocks.5.0.bn2 bn2 --out runs/sample.zarr
  python -m neuroprobe report  runs/sample.zarr --category dog --n 10 --out runs/sample-report
  python -m neuroprobe info    runs/sample.zarr
  python -m neuroprobe export  runs/sample.zarr runs/sample.h5
  python -m neuroprobe export  runs/sample.zarr runs/sample-rsa.h5 --to rsatoolbox --layers bn2 --stat mean
  python -m neuroprobe occlude --layer blocks.3 --units 0 1 2 --data data/sample/labels.csv \
         --stride 8 --out runs/occlusion.zarr
  python -m neuroprobe rf      runs/sample.zarr --layers blocks.3 bn2 --units 0 1 2 --k 5 --stride 8 \
         --out runs/rf
  python -m neuroprobe saliency --method gradcam --data data/sample/labels.csv --out runs/gradcam.zarr
  python -m neuroprobe localize --data data/sample/labels.csv --methods gradient,guided,gradcam,dff \
         --grid 2 --n 20 --out runs/localize
  python -m neuroprobe search  --data data/sample/labels.csv --layout grid --grid 7 --view crop --out runs/search
  python -m neuroprobe saccade --likelihood runs/search --data data/sample/labels.csv --folds 5 --out runs/saccade
"""

MODEL_HELP = ("efficientnet_lite0 (offline pretrained ImageNet model), a torchvision classification model "
              "name (resnet18, alexnet, googlenet, vgg16, ...) or timm:<name>")
WEIGHTS_HELP = ("weights name of that library (e.g. IMAGENET1K_V1; fetched by it or found in its cache), "
                "a local state-dict file, or 'none' (seeded random init); default: the library's default "
                "pretrained weights")


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="efficientnet_lite0", help=MODEL_HELP + " (default: %(default)s)")
    parser.add_argument("--weights", default=None, help=WEIGHTS_HELP)


def _occluder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--units", nargs="+", type=int, default=None, metavar="UNIT",
                        help="unit (channel) indices (default: all units of the layer; each image costs one "
                             "sweep whatever the number of units)")
    parser.add_argument("--window", type=int, default=11, help="occluder size in pixels (default: %(default)s)")
    parser.add_argument("--stride", type=int, default=3, help="occluder step in pixels; the sweep costs "
                        "((size - window) / stride + 1)^2 forward passes per image (default: %(default)s)")
    parser.add_argument("--fill", choices=["noise", "mean", "zero", "blur"], default="noise",
                        help="what the patch shows: seeded uniform noise, the image mean, black, or a blurred "
                             "copy (default: %(default)s)")
    parser.add_argument("--rf-only", action="store_true",
                        help="only run occluders that overlap the units' theoretical receptive fields")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="occluded copies per forward pass (default: from the memory budget)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when present)")


def _incomplete_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="analyse a store whose extraction did not finish: only its finished images, with "
                             "the completeness in every table (a 'completeness' column) and figure title "
                             "(default: refuse it, naming the command that finishes it)")


def _method_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layer", default=None,
                        help="layer for gradcam and dff, as listed by 'python -m neuroprobe layers' (default: the "
                             "last layer with a spatial map)")
    parser.add_argument("--samples", type=int, default=None, help="smoothgrad: noisy copies per image (default: 50)")
    parser.add_argument("--noise", type=float, default=None,
                        help="smoothgrad: noise sd as a fraction of each image's value range (default: 0.15)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="feedback and global: gate optimisation steps (default: 10)")
    parser.add_argument("--concepts", type=int, default=None, help="dff: NMF concepts (default: 5)")
    parser.add_argument("--no-relu", action="store_true", help="gradcam: keep the negative part (no final ReLU)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when present)")


def _method_options(args, method: str) -> dict:
    """The options of ``method`` that were given on the command line."""
    given = {"smoothgrad": {"samples": args.samples, "noise": args.noise}, "feedback": {"iterations": args.iterations},
             "global": {"iterations": args.iterations}, "dff": {"concepts": args.concepts},
             "gradcam": {"relu": False if args.no_relu else None}}.get(method, {})
    return {k: v for k, v in given.items() if v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m neuroprobe", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="What the units of a CNN respond to: pre-activation statistics in Zarr stores.",
        epilog=EXAMPLES)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug log lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("layers", help="list a model's layers, feature-map shapes and what is captured",
                       description="List every layer name you can pass to --layers, with the shape of its "
                                   "feature map (units, height, width) for one image, the layout its units were "
                                   "found in (channels-first; channels-last, as in ConvNeXt's and Swin's Linear "
                                   "layers; tokens, mapped to the patch grid, with a class token left out of "
                                   "statistics and maps; vector) and what is captured.")
    _model_args(p)
    p.add_argument("--filter", default="", help="only names containing this text")
    p.add_argument("--post-activation", action="store_true", help="describe the outputs instead")

    p = sub.add_parser("extract", help="pool layer activations of many images into a Zarr store",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run images through a model, capture the pre-activation (the input of each "
                                   "layer's final nonlinearity) of the requested layers, pool every unit's map "
                                   "to min/mean/max/area on the device, and write a chunked, resumable store.\n"
                                   "Run the same command again to resume a killed job.")
    _model_args(p)
    p.add_argument("--data", required=True, help="folder of images (subfolders = labels) or CSV with a 'path' "
                                                 "column relative to the CSV's folder; other columns are kept")
    p.add_argument("--layers", nargs="+", required=True, metavar="LAYER",
                   help="layer names as listed by 'python -m neuroprobe layers'")
    p.add_argument("--out", required=True, help="store to write, e.g. run.zarr")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when present)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-decoding processes (default: on a GPU, the machine's cores shared among its "
                        "processes; on the CPU none: a background thread decodes while the model runs)")
    p.add_argument("--decode", choices=["cpu", "gpu"], default="cpu",
                   help="where JPEGs are decoded: cpu (PIL, default) or gpu (in batches on the --device, "
                        "nvjpeg; other formats and what it refuses go to PIL per image)")
    p.add_argument("--post-activation", action="store_true", help="capture the layers' outputs instead")
    p.add_argument("--spatial", nargs="+", default=[], metavar="LAYER",
                   help="also store the full float16 maps (image, unit, y, x) of these layers")
    p.add_argument("--amp", choices=["bf16", "fp16", "none"], default="none",
                   help="autocast the forward pass (statistics are still pooled in float32)")
    p.add_argument("--memory-format", choices=["auto", "channels_last", "contiguous"], default="auto",
                   help="layout of the model's tensors (default auto: channels_last for convolutional models, "
                        "measured 1.1-1.35x faster on the CPU and cuDNN's tensor-core layout; contiguous otherwise)")
    p.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)  # older spelling
    p.add_argument("--chunk-size", type=int, default=None,
                   help="images per store chunk and per resume step (default: 1024, less with --spatial)")
    p.add_argument("--overwrite", action="store_true", help="replace a store made with other settings")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (decompression bombs; "
                                                                 "default: PIL's 89.5 Mpx)")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")

    p = sub.add_parser("report", help="selectivity, top/bottom-K images and opponent responses: CSV + PNG",
                       description="Read a store (a folder or an fsspec URL such as s3://bucket/run.zarr; no model "
                                   "needed) and write selectivity.csv, topk.csv, "
                                   "opponent.csv, summary.csv and PNG figures into --out.")
    p.add_argument("store")
    p.add_argument("--category", default="dog", help="category to analyse; 'dog' = ImageNet classes 151-268 "
                                                     "of the class_index column (default: %(default)s)")
    p.add_argument("--category-column", default=None, help="image-table column holding the category (or the "
                                                           "labels that --category-map maps)")
    p.add_argument("--category-map", default=None, help="CSV with columns label,category")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER", help="default: every stored layer")
    p.add_argument("--stat", default="mean", choices=["mean", "max", "min", "area"],
                   help="statistic the selectivity indices use (default: %(default)s)")
    p.add_argument("--normalization", default="minmax", choices=["minmax", "rectify"],
                   help="per-unit normalization before the indices (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.65, help="selective above this index (default: %(default)s)")
    p.add_argument("--permutations", type=int, default=1000, help="label permutations for p-values (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=9, help="top-K and bottom-K images per unit (default: %(default)s)")
    p.add_argument("--n", type=int, default=50, help="strongest responses per side for the opponent counts "
                                                     "(default: %(default)s)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="dask.distributed scheduler (e.g. tcp://10.0.0.5:8786): read and reduce the store's chunks "
                        "on its workers; the tables equal the single-process ones (needs neuroprobe[dask])")
    p.add_argument("--rdm-by", default=None, metavar="COLUMN",
                   help="also rdm_<layer>.csv/.png: the RDM of the category means of this image-table column")
    p.add_argument("--rdm-method", default="correlation", choices=["correlation", "euclidean"],
                   help="RDM dissimilarity, as rsatoolbox defines it (default: %(default)s)")
    _incomplete_arg(p)
    p.add_argument("--out", required=True, help="folder for the CSV tables and PNG figures")

    p = sub.add_parser("occlude", help="occlusion discrepancy maps of a layer's units for every image",
                       description="Slide a patch over each image and record, for every requested unit of the "
                                   "layer at once, original minus occluded pre-activation (at the position where "
                                   "the unit peaks on the original image, or pooled). Writes a Zarr store with "
                                   "'discrepancy' (image, unit, y, x) over occluder positions; the geometry is in "
                                   "its attributes. Run the same command again to resume.")
    _model_args(p)
    p.add_argument("--layer", required=True, help="layer name as listed by 'python -m neuroprobe layers'")
    p.add_argument("--data", required=True, help="folder of images or CSV with a 'path' column (as for extract)")
    _occluder_args(p)
    p.add_argument("--response", choices=["peak", "max", "mean"], default="peak",
                   help="unit response: at its peak position on the original image (Zhou et al.), or pooled "
                        "(default: %(default)s)")
    p.add_argument("--absolute", action="store_true", help="store |original - occluded|")
    p.add_argument("--out", required=True, help="store to write, e.g. occlusion.zarr")
    p.add_argument("--overwrite", action="store_true", help="replace a store made with other settings")

    p = sub.add_parser("rf", help="empirical vs theoretical receptive fields from a store's top images",
                       description="For each unit: occlusion discrepancy maps of its top-K images (by spatial "
                                   "max, from the store), re-centred on the unit's position and averaged; the "
                                   "empirical RF is the connected region >= THRESHOLD x the maximum (size = "
                                   "sqrt of its area). Writes rf.csv, top_images.csv and PNG figures.")
    p.add_argument("store", help="a store made by 'extract' (the model is reloaded from its provenance)")
    p.add_argument("--layers", "--layer", nargs="+", required=True, metavar="LAYER", help="stored layer(s)")
    p.add_argument("--k", type=int, default=10, help="top images per unit (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="RF = connected region >= this fraction of the averaged map's maximum (default: %(default)s)")
    _occluder_args(p)
    _incomplete_arg(p)
    p.add_argument("--out", required=True, help="folder for rf.csv and the figures")

    methods = "gradient, guided, smoothgrad, gradcam, dff, feedback, global"
    p = sub.add_parser("saliency", help="attribution maps of every image into a Zarr store",
                       description="One map per image for its target class (a column of class indices or the "
                                   "model's prediction) by one method: " + methods + ". Writes 'map' (image, y, x) "
                                   "at the input's resolution with target, predicted, score and probability; run "
                                   "the same command again to resume.")
    _model_args(p)
    p.add_argument("--method", required=True, choices=methods.split(", "), metavar="METHOD",
                   help=f"one of: {methods}")
    p.add_argument("--data", required=True, help="folder of images or CSV with a 'path' column (as for extract)")
    p.add_argument("--target", default=None,
                   help="column of class indices to explain, or 'prediction' (default: class_index when the table "
                        "has it, else the prediction)")
    _method_args(p)
    p.add_argument("--batch-size", type=int, default=16, help="images per pass and per store chunk (default: %(default)s)")
    p.add_argument("--raw", action="store_true", help="also store the signed raw tensor (input gradient, CAM)")
    p.add_argument("--out", required=True, help="store to write, e.g. gradcam.zarr")
    p.add_argument("--overwrite", action="store_true", help="replace a store made with other settings")

    p = sub.add_parser("localize", help="grid pointing game: which method puts attribution on the right object",
                       description="Builds seeded grid x grid mosaics of correctly classified images of different "
                                   "classes (Böhle et al. 2022) and scores each method's map for every cell's class: "
                                   "'grid' = share of positive attribution in that cell (uniform map: 1/grid^2), "
                                   "'pointing' = maximum within 15 px of the cell. Writes scores.csv, summary.csv "
                                   "(mean and 95% t-interval per method), mosaics.csv, predictions.csv and "
                                   "examples.png. Cost per mosaic and method: one pass per batch for gradient, "
                                   "guided, gradcam and dff; --samples passes for smoothgrad; (--iterations + 1) "
                                   "passes per cell for feedback and global.")
    _model_args(p)
    p.add_argument("--data", required=True, help="folder of images or CSV with a 'path' column and class indices")
    p.add_argument("--methods", default="gradient,guided,smoothgrad,gradcam,dff,feedback,global",
                   help="comma-separated methods (default: %(default)s)")
    p.add_argument("--label-column", default="class_index", help="column of class indices (default: %(default)s)")
    p.add_argument("--grid", type=int, default=2, help="mosaic side in images (default: %(default)s)")
    p.add_argument("--n", type=int, default=200, help="mosaics (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mosaic draw (default: %(default)s)")
    p.add_argument("--cell-size", type=int, default=None,
                   help="resize each image to this many px in the mosaic (default: the model's input size, so a "
                        "2x2 mosaic is twice the input; half of it makes mosaics the input's size, 4x cheaper)")
    _method_args(p)
    p.add_argument("--batch-size", type=int, default=4, help="mosaics per pass (default: %(default)s)")
    p.add_argument("--out", required=True, help="folder for the CSV tables and the figure")

    for tool in _tools():
        tool.add_commands(sub, _model_args)

    p = sub.add_parser("info", help="what a store holds and how complete it is")
    p.add_argument("store")
    p.add_argument("--check", action="store_true",
                   help="read every chunk and list those that do not decode (checksum mismatch, truncated file); "
                        "exit status 1 when there are any; the same extract command recomputes them")

    p = sub.add_parser("export", help="a store as HDF5 (same layout), NetCDF, an rsatoolbox Dataset or a "
                                      "Brain-Score assembly",
                       description="hdf5: the store's groups, arrays and attributes in one HDF5 file (NaN rows "
                                   "kept). netcdf: pooled statistics, one NetCDF group per layer (image x unit). "
                                   "rsatoolbox: a Dataset (images x units, image table as obs_descriptors) in "
                                   "rsatoolbox's HDF5 format (needs pip install rsatoolbox). brainscore: a "
                                   "presentation x neuroid assembly as NetCDF (one neuroid per channel, or per "
                                   "channel and position for layers with stored spatial maps). All but hdf5 "
                                   "leave out unreadable images.")
    p.add_argument("store")
    p.add_argument("target", help="e.g. run.h5, run.nc")
    p.add_argument("--to", default="hdf5", choices=["hdf5", "netcdf", "rsatoolbox", "brainscore"],
                   help="format (default: %(default)s)")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER", help="default: every stored layer")
    p.add_argument("--stat", default=None, metavar="STAT",
                   help="pooled statistic: min, mean, max or area (default: mean; netcdf: all four)")
    _incomplete_arg(p)
    p.add_argument("--id-column", default=None,
                   help="image-table column of unique stimulus ids (default: a stimulus_id column, else the "
                        "path's stem)")
    p.add_argument("--pooled", action="store_true",
                   help="brainscore: the pooled --stat also for layers whose spatial maps are stored")
    return parser


TOOLS = ("retina", "attention", "synthesis", "finetune")


def _tools() -> list:
    """The ``cli`` modules of the tools whose subcommands live beside them (``add_commands``, ``COMMANDS``)."""
    import importlib

    return [importlib.import_module(f".{tool}.cli", __package__) for tool in TOOLS]


def _tool_commands() -> dict:
    return {name: run for tool in _tools() for name, run in tool.COMMANDS.items()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("PIL", "matplotlib", "urllib3", "fsspec", "asyncio", "botocore", "aiobotocore", "s3fs", "distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .malloc import keep_freed_memory

    keep_freed_memory()
    from .stopping import Stopped

    try:
        return _guarded({**COMMANDS, **_tool_commands()}[args.command], args)
    except Stopped as exc:
        print(f"neuroprobe: {_stopped_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except NeuroprobeError as exc:
        print(f"neuroprobe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neuroprobe: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head or less, which closed early: no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own recipe (signal docs)
        return 1


def _guarded(command, args) -> int:
    """Run a command; a read that fails on a corrupted chunk of its store becomes one line naming the chunk."""
    store = getattr(args, "store", None) or getattr(args, "likelihood", None)
    if not store or args.command == "extract":
        return command(args)
    from .integrity import readable

    with readable(store):
        return command(args)


def _stopped_line(exc) -> str:
    """What a stopped extract finished and how to resume it."""
    from .completeness import completeness

    try:
        state = completeness(exc.store)
    except Exception:  # noqa: BLE001 - a store removed meanwhile: still say how to resume
        return f"stopped by {exc.name}; run the same command again to resume"
    return (f"stopped by {exc.name}: {state.done} of {state.total} images done ({state.chunks_done} of "
            f"{state.chunks} chunks journaled) in {state.store}; resume with: {state.command}")


def _layers(args) -> int:
    from .models import load_model

    loaded = load_model(args.model, args.weights)
    table = loaded.layer_table(post_activation=args.post_activation)
    if args.filter:
        table = table[table["layer"].str.contains(args.filter, regex=False)]
    import pandas as pd

    with pd.option_context("display.max_rows", None, "display.max_colwidth", 80, "display.width", 200):
        print(table.to_string(index=False))
    print(f"\n{len(table)} layers; input {loaded.preprocessing.crop}x{loaded.preprocessing.crop}")
    return 0


def _extract(args) -> int:
    from .data import MAX_PIXELS
    from .extract import extract

    out = extract(args.model, args.data, args.layers, args.out, weights=args.weights, batch_size=args.batch_size,
                  device=args.device, workers=args.workers, post_activation=args.post_activation,
                  spatial=args.spatial, amp=args.amp, decode=args.decode,
                  memory_format="channels_last" if args.channels_last else args.memory_format, chunk_size=args.chunk_size,
                  overwrite=args.overwrite, progress=False if args.no_progress else None,
                  max_pixels=args.max_pixels or MAX_PIXELS,
                  extra_attrs={"command": " ".join(["python -m neuroprobe", *sys.argv[1:]])})
    import os
    if int(os.environ.get("RANK", "0")) == 0:
        _print_info(out)
    return 0


def _print_info(path) -> None:
    from .location import display
    from .store import summary

    s = summary(path)
    print(f"store    {display(s['path'])}")
    print(f"model    {s['model']}  weights {s['weights']}" + (f"  sha256 {s['weights_sha256'][:12]}" if s['weights_sha256'] else ""))
    print(f"capture  {s['capture']}  amp {s['amp']}  decode {s['decode']}  {s['memory_format']}  created {s['created']}")
    print(f"images   {s['images']}: {s['done']} done, {s['skipped']} skipped (unreadable), {s['missing']} missing "
          f"({s['chunks_done']}/{s['chunks']} chunks written)")
    for layer in s["layers"]:
        extra = ", spatial maps" if layer["spatial"] else ""
        print(f"  {layer['layer']:<24} {layer['units']:>5} units  map {'x'.join(map(str, layer['shape']))}  "
              f"{layer['captured']}{extra}" + (f"  ({layer['layout']})" if layer["layout"] != "channels-first" else ""))
    if s["missing"]:
        print(f"incomplete: finish it with: {s['command'] or 'the same extract command'} (report, rf and other "
              "readers refuse it unless --allow-incomplete)")


def _report(args) -> int:
    from .report import report

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


def _occlude(args) -> int:
    from .maps.occlusion_store import occlude

    out = occlude(args.model, args.data, args.layer, args.out, weights=args.weights, units=args.units,
                  window=args.window, stride=args.stride, fill=args.fill, response=args.response,
                  absolute=args.absolute, rf_only=args.rf_only, device=args.device, overwrite=args.overwrite,
                  batch_size=args.batch_size)
    from .location import display, open_group

    group = open_group(out)
    print(f"store    {display(out)}")
    print(f"maps     discrepancy {'x'.join(map(str, group['discrepancy'].shape))} (image, unit, y, x); "
          f"{int(group['done'][:].sum())} images done")
    return 0


def _rf(args) -> int:
    from .maps.receptive_fields_report import rf_report

    table = rf_report(args.store, args.layers, args.out, k=args.k, units=args.units, threshold=args.threshold,
                      window=args.window, stride=args.stride, fill=args.fill, rf_only=args.rf_only,
                      device=args.device, batch_size=args.batch_size, allow_incomplete=args.allow_incomplete)
    summary = table.groupby("layer", sort=False).agg(units=("unit", "size"), theoretical=("theoretical_rf_px", "first"),
                                                     empirical=("empirical_rf_px", "median"), ratio=("ratio", "median"))
    print("receptive fields (px; empirical = median over units):")
    for row in summary.reset_index().itertuples():
        print(f"  {row.layer:<24} {row.units:>4} units  theoretical {row.theoretical:6.0f}  empirical {row.empirical:6.1f}"
              f"  ratio {row.ratio:.2f}")
    print(f"table and figures in {Path(args.out).resolve()}")
    return 0


def _saliency(args) -> int:
    from .maps.saliency_store import saliency

    out = saliency(args.model, args.data, args.out, args.method, weights=args.weights, layer=args.layer,
                   target=args.target, batch_size=args.batch_size, device=args.device, raw=args.raw,
                   overwrite=args.overwrite, **_method_options(args, args.method))
    from .location import display, open_group

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
    from .maps.localize_report import localize

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    game = localize(args.model, args.data, args.out, methods, weights=args.weights, label_column=args.label_column,
                    grid=args.grid, n=args.n, seed=args.seed, layer=args.layer, batch_size=args.batch_size,
                    cell_size=args.cell_size,
                    device=args.device, method_options={m: _method_options(args, m) for m in methods})
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


def _info(args) -> int:
    if not args.check:
        _print_info(args.store)
        return 0
    from .integrity import bad_chunks
    from .location import display

    bad = bad_chunks(args.store)
    for item in bad:
        print(f"bad chunk  {item.describe()}")
    try:
        _print_info(args.store)
    except Exception:  # noqa: BLE001 - a corrupted journal or image table: the list above says which
        pass
    if bad:
        print(f"{len(bad)} corrupted chunk(s) in {display(args.store)}; run the same extract command again to "
              "recompute exactly those images")
        return 1
    print("check    every chunk decodes (checksums match)")
    return 0


def _export(args) -> int:
    from .exports import export

    print(export(args.store, args.target, args.to, layers=args.layers, stat=args.stat, spatial=not args.pooled,
                 id_column=args.id_column, allow_incomplete=args.allow_incomplete))
    return 0


COMMANDS = {"layers": _layers, "extract": _extract, "report": _report, "occlude": _occlude, "rf": _rf,
            "saliency": _saliency, "localize": _localize,
            "info": _info, "export": _export}
