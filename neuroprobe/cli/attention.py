"""``align`` and ``train-attention``: human alignment of saliency maps, and GALA modules trained with maps."""
from __future__ import annotations

from pathlib import Path

from . import common

MAPS_HELP = ("folder of human importance maps mirroring the image paths (MAPS/<path without suffix>.png|.jpg|.npy), "
             "or the image table's column of map paths")


def add_commands(sub) -> None:
    p = common.command(sub, "align", _align, "Spearman alignment of a model's saliency with human importance maps")
    common.add_model(p)
    common.add_data(p, needs="a column of class indices")
    p.add_argument("--maps", required=True, help=MAPS_HELP)
    p.add_argument("--method", default="gradient",
                   help="attribution method (default: %(default)s, |input gradient| max over channels, as the authors)")
    common.add_label_column(p)
    p.add_argument("--ceiling", type=float, default=None,
                   help="human inter-rater ceiling to divide by (default: ClickMe's 0.65753)")
    common.add_batch_size(p, 16, "images per pass")
    common.add_device(p)
    common.add_folder_out(p, "the tables and the figure")

    p = common.command(sub, "train-attention", _train_attention, "fine-tune a model with GALA modules and a map loss")
    common.add_model(p)
    p.add_argument("--gala", nargs="+", required=True, metavar="LAYER",
                   help="blocks to put a GALA module before (see 'layers'; e.g. blocks.4.0 blocks.5.0 for "
                        "efficientnet_lite0, layer3.0 ... layer3.5 for resnet50 as in the paper)")
    p.add_argument("--loss", choices=["gala", "harmonization", "none"], required=True,
                   help="map loss added to the cross-entropy")
    common.add_data(p, needs="a column of class indices")
    p.add_argument("--maps", required=True, help=MAPS_HELP)
    common.add_label_column(p)
    p.add_argument("--steps", type=int, default=200, help="training batches (default: %(default)s)")
    common.add_batch_size(p, 8, "images per batch")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--weight", type=float, default=None,
                   help="weight of the map loss (default: 1 for gala, 0.05 for harmonization)")
    p.add_argument("--trainable", choices=["gala", "after", "all"], default="gala",
                   help="parameters that train: only GALA's (the pretrained features stay), those from the first "
                        "GALA block on, or all (default: %(default)s)")
    common.add_seed(p, "the initialisation and the batch order")
    common.add_device(p)
    common.add_folder_out(p, "checkpoint.pt, metrics.csv and training.png")


def _align(args) -> int:
    """For every image with a map, the Spearman correlation between the saliency map of the label and the human map
    (the authors' ClickMe preprocessing: resize to 64, blur, back), divided by the inter-rater ceiling. Writes
    alignment.csv, summary.csv (mean alignment, 95% t-interval, top-1) and alignment.png (best and worst).
    """
    from ..attention.align_report import align
    from ..attention.alignment import CLICKME_CEILING

    summary = align(args.model, args.data, str(args.maps), args.out, weights=args.weights, method=args.method,
                    label_column=args.label_column, ceiling=args.ceiling or CLICKME_CEILING,
                    batch_size=args.batch_size, device=args.device)
    row = summary.iloc[0]
    print(f"alignment of {row.method} maps with human maps, {row.images} images: {row.alignment:.3f} "
          f"[{row.ci_low:.3f}, {row.ci_high:.3f}] (Spearman {row.spearman:.3f} / ceiling {row.ceiling:.4f}); "
          f"top-1 {row.top1:.3f}")
    print(f"tables and figure in {Path(args.out).resolve()}")
    return 0


def _train_attention(args) -> int:
    """Insert GALA (global-and-local attention) modules before the --gala blocks and fine-tune on images with
    importance maps (the same --data/--maps as align): cross-entropy plus the --loss: none, gala (attention
    supervision, Linsley et al.) or harmonization (pyramidal saliency loss with double backpropagation, Fel et
    al.). Writes checkpoint.pt (load it with --weights in every command, with the same --model), metrics.csv
    (per step) and training.png.
    """
    from ..attention.train import summarize_history, train_attention_run

    common.at_least_one(steps=args.steps, batch_size=args.batch_size)
    tuned = train_attention_run(args.model, args.data, str(args.maps), args.out, args.gala, args.loss,
                                weights=args.weights, label_column=args.label_column, steps=args.steps,
                                batch_size=args.batch_size, lr=args.lr, weight=args.weight, trainable=args.trainable,
                                seed=args.seed, device=args.device)
    s = summarize_history(tuned.history)
    print(f"trained {args.steps} steps: cross-entropy {s['first_cross_entropy']:.3f} -> {s['last_cross_entropy']:.3f}, "
          f"map loss {s['first_map_loss']:.3f} -> {s['last_map_loss']:.3f}, "
          f"batch top-1 {s['first_accuracy']:.2f} -> {s['last_accuracy']:.2f} (means of the first and last 20 steps)")
    checkpoint = Path(args.out).resolve() / "checkpoint.pt"
    print(f"checkpoint, metrics.csv and training.png in {checkpoint.parent}")
    print(f"use it with: --model {args.model} --weights {checkpoint}")
    return 0
