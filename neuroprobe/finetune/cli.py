"""``python -m neuroprobe finetune`` (registered by :mod:`neuroprobe.cli`)."""
from __future__ import annotations

from pathlib import Path


def add_commands(sub, model_args) -> None:
    p = sub.add_parser("finetune", help="train a new classifier head for your classes, with a confusion matrix",
                       description="Replace the model's classifier by one for the classes of --label-column and train "
                                   "it (and --train-layers, if given) on a stratified, seeded split of the images. "
                                   "Writes checkpoint.pt (load it with --weights in every command, with the same "
                                   "--model), history.csv/png, predictions.csv, confusion.csv/png (counts and "
                                   "row-normalized) and per_class.csv (precision, recall, F1).")
    model_args(p)
    p.add_argument("--data", required=True, help="folder of images or CSV with a 'path' column and the label column")
    p.add_argument("--label-column", required=True, help="column holding each image's class (names or numbers)")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training images (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of each class held out for validation (default: %(default)s; 0: none)")
    p.add_argument("--balance", choices=["loss", "sampling"], default=None,
                   help="class balancing: inverse-frequency loss weights, or inverse-frequency sampling")
    p.add_argument("--train-layers", nargs="+", default=[], metavar="LAYER",
                   help="layers to train with the head (e.g. the last block: blocks.6 conv_head bn2); default: "
                        "the head only, on features computed once")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the head and the batch order (default: 0)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when present)")
    p.add_argument("--out", required=True, help="folder for the checkpoint, tables and figures")


def _finetune(args) -> int:
    from ..errors import NeuroprobeError
    from .report import finetune_run

    if args.epochs < 1 or args.batch_size < 1:
        raise NeuroprobeError("--epochs and --batch-size must be at least 1")
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


COMMANDS = {"finetune": _finetune}
