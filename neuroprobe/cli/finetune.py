"""``finetune``: a new classifier head for the user's classes, with a confusion matrix and a checkpoint."""
from __future__ import annotations

from pathlib import Path

from . import common


def add_commands(sub) -> None:
    p = common.command(sub, "finetune", _finetune,
                       "train a new classifier head for your classes, with a confusion matrix")
    common.add_model(p)
    common.add_data(p, needs="the --label-column")
    common.add_label_column(p, required=True, what="each image's class (names or numbers)")
    common.add_seed(p, "the split, the head and the batch order")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training images (default: %(default)s)")
    common.add_batch_size(p, 32, "images per step")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of each class held out for validation (default: %(default)s; 0: none)")
    p.add_argument("--balance", choices=["loss", "sampling"], default=None,
                   help="class balancing: inverse-frequency loss weights, or inverse-frequency sampling")
    p.add_argument("--train-layers", nargs="+", default=[], metavar="LAYER",
                   help="layers to train with the head (e.g. the last block: blocks.6 conv_head bn2); default: "
                        "the head only, on features computed once")
    common.add_device(p)
    common.add_folder_out(p, "the checkpoint, tables and figures")


def _finetune(args) -> int:
    """Replace the model's classifier by one for the classes of --label-column and train it (and --train-layers, if
    given) on a stratified, seeded split of the images. Writes checkpoint.pt (load it with --weights in every
    command, with the same --model), history.csv/png, predictions.csv, confusion.csv/png (counts and row-
    normalized) and per_class.csv (precision, recall, F1).
    """
    from ..finetune.report import finetune_run

    common.at_least_one(epochs=args.epochs, batch_size=args.batch_size)
    result = finetune_run(args.out, args.model, args.data, args.label_column, weights=args.weights,
                          train_layers=args.train_layers, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          weight_decay=args.weight_decay, val_fraction=args.val_fraction, balance=args.balance,
                          seed=args.seed, device=args.device)
    accuracy = result.predictions["correct"].mean()
    print(f"new head '{result.head}' for {len(result.classes)} classes; {result.predictions['split'].iat[0]} accuracy "
          f"{accuracy:.3f} on {len(result.predictions)} images")
    print(result.per_class.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    checkpoint = Path(args.out).resolve() / "checkpoint.pt"
    print(f"use it with: --model {args.model} --weights {checkpoint}")
    return 0
