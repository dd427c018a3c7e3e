"""``python -m neuroprobe align``: the attention tools' subcommands (registered by :mod:`neuroprobe.cli`)."""
from __future__ import annotations

from pathlib import Path


def add_commands(sub, model_args) -> None:
    p = sub.add_parser("align", help="Spearman alignment of a model's saliency with human importance maps",
                       description="For every image with a map (MAPS mirrors the image paths: MAPS/<path without "
                                   "suffix>.png|.jpg|.npy), the Spearman correlation between the saliency map of the "
                                   "label and the human map (the authors' ClickMe preprocessing: resize to 64, blur, "
                                   "back), divided by the inter-rater ceiling. Writes alignment.csv, summary.csv "
                                   "(mean alignment, 95%% t-interval, top-1) and alignment.png (best and worst).")
    model_args(p)
    p.add_argument("--data", required=True, help="folder of images or CSV with a 'path' column and class indices")
    p.add_argument("--maps", required=True,
                   help="folder of human maps mirroring the image paths, or the image table's column of map paths")
    p.add_argument("--method", default="gradient",
                   help="attribution method (default: %(default)s, |input gradient| max over channels, as the authors)")
    p.add_argument("--label-column", default="class_index", help="column of class indices (default: %(default)s)")
    p.add_argument("--ceiling", type=float, default=None,
                   help="human inter-rater ceiling to divide by (default: ClickMe's 0.65753)")
    p.add_argument("--batch-size", type=int, default=16, help="images per pass (default: %(default)s)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when present)")
    p.add_argument("--out", required=True, help="folder for the tables and the figure")


def _align(args) -> int:
    from .align_report import align
    from .alignment import CLICKME_CEILING

    summary = align(args.model, args.data, str(args.maps), args.out, weights=args.weights, method=args.method,
                    label_column=args.label_column, ceiling=args.ceiling or CLICKME_CEILING,
                    batch_size=args.batch_size, device=args.device)
    row = summary.iloc[0]
    print(f"alignment of {row.method} maps with human maps, {row.images} images: {row.alignment:.3f} "
          f"[{row.ci_low:.3f}, {row.ci_high:.3f}] (Spearman {row.spearman:.3f} / ceiling {row.ceiling:.4f}); "
          f"top-1 {row.top1:.3f}")
    print(f"tables and figure in {Path(args.out).resolve()}")
    return 0


COMMANDS = {"align": _align}
