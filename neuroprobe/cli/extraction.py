"""``layers``, ``extract`` and ``info``: what a model offers, pooled activations into a store, what a store holds."""
from __future__ import annotations

import argparse
import sys

from . import common


def add_commands(sub) -> None:
    p = common.command(sub, "layers", _layers, "list a model's layers, feature-map shapes and what is captured", long=False)
    common.add_model(p)
    p.add_argument("--filter", default="", help="only names containing this text")
    p.add_argument("--post-activation", action="store_true", help="describe the outputs instead")

    p = common.command(sub, "extract", _extract, "pool layer activations of many images into a Zarr store")
    common.add_model(p)
    common.add_data(p)
    common.add_layers(p)
    common.add_store_out(p, "run.zarr", "extraction")
    common.add_batch_size(p, 64)
    common.add_device(p, amp=True)
    p.add_argument("--workers", type=int, default=None,
                   help="image-decoding processes (default: on a GPU, the machine's cores shared among its "
                        "processes; on the CPU none: a background thread decodes while the model runs)")
    p.add_argument("--decode", choices=["cpu", "gpu"], default="cpu",
                   help="where JPEGs are decoded: cpu (PIL, default) or gpu (in batches on the --device, "
                        "nvjpeg; other formats and what it refuses go to PIL per image)")
    p.add_argument("--post-activation", action="store_true", help="capture the layers' outputs instead")
    p.add_argument("--spatial", nargs="+", default=[], metavar="LAYER",
                   help="also store the full float16 maps (image, unit, y, x) of these layers")
    p.add_argument("--memory-format", choices=["auto", "channels_last", "contiguous"], default="auto",
                   help="layout of the model's tensors (default auto: channels_last for convolutional models, "
                        "measured 1.1-1.35x faster on the CPU and cuDNN's tensor-core layout; contiguous otherwise)")
    p.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)  # older spelling
    p.add_argument("--chunk-size", type=int, default=None,
                   help="images per store chunk and per resume step (default: 1024, less with --spatial)")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (decompression bombs; "
                                                                 "default: PIL's 89.5 Mpx)")

    p = common.command(sub, "info", _info, "what a store holds and how complete it is", long=False)
    p.add_argument("store")
    p.add_argument("--check", action="store_true",
                   help="read every chunk and list those that do not decode (checksum mismatch, truncated file); "
                        "exit status 1 when there are any; the same extract command recomputes them")


def _layers(args) -> int:
    """List every layer name you can pass to --layers, with the shape of its feature map (units, height, width) for one
    image, the layout its units were found in (channels-first; channels-last, as in ConvNeXt's and Swin's Linear
    layers; tokens, mapped to the patch grid, with a class token left out of statistics and maps; vector) and
    what is captured.
    """
    import pandas as pd

    from ..models import load_model

    loaded = load_model(args.model, args.weights)
    table = loaded.layer_table(post_activation=args.post_activation)
    if args.filter:
        table = table[table["layer"].str.contains(args.filter, regex=False)]
    with pd.option_context("display.max_rows", None, "display.max_colwidth", 80, "display.width", 200):
        print(table.to_string(index=False))
    print(f"\n{len(table)} layers; input {loaded.preprocessing.crop}x{loaded.preprocessing.crop}")
    return 0


def _extract(args) -> int:
    """Run images through a model, capture the pre-activation (the input of each layer's final nonlinearity) of the
    requested layers, pool every unit's map to min/mean/max/area on the device, and write a chunked, resumable
    store. Run the same command again to resume a killed job; under torchrun, every process takes its share of
    the chunks.
    """
    from ..data import MAX_PIXELS
    from ..engine import extract

    out = extract(args.model, args.data, args.layers, args.out, weights=args.weights, batch_size=args.batch_size,
                  device=args.device, workers=args.workers, post_activation=args.post_activation,
                  spatial=args.spatial, amp=args.amp, decode=args.decode,
                  memory_format="channels_last" if args.channels_last else args.memory_format,
                  chunk_size=args.chunk_size, overwrite=args.overwrite, max_pixels=args.max_pixels or MAX_PIXELS,
                  extra_attrs={"command": " ".join(["python -m neuroprobe", *sys.argv[1:]])})
    if common.first_process():
        print_info(out)
    return 0


def print_info(path) -> None:
    """What ``info`` prints: provenance, counts, layers, and the command that finishes an incomplete store."""
    from ..store.layout import summary
    from ..store.location import display

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


def _info(args) -> int:
    if not args.check:
        print_info(args.store)
        return 0
    from ..store.integrity import bad_chunks
    from ..store.location import display

    bad = bad_chunks(args.store)
    for item in bad:
        print(f"bad chunk  {item.describe()}")
    try:
        print_info(args.store)
    except Exception:  # noqa: BLE001 - a corrupted journal or image table: the list above says which
        pass
    if bad:
        print(f"{len(bad)} corrupted chunk(s) in {display(args.store)}; run the same extract command again to "
              "recompute exactly those images")
        return 1
    print("check    every chunk decodes (checksums match)")
    return 0
