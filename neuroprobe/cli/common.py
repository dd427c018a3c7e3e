"""The options several commands share, spelled once: same flag, same default, same help everywhere."""
from __future__ import annotations

import argparse
import inspect
import os
from typing import Callable

from ..errors import NeuroprobeError

MODEL_HELP = ("efficientnet_lite0 (offline pretrained ImageNet model), a torchvision classification model "
              "name (resnet18, alexnet, googlenet, vgg16, ...) or timm:<name>")
WEIGHTS_HELP = ("weights name of that library (e.g. IMAGENET1K_V1; fetched by it or found in its cache), "
                "a local state-dict file, a checkpoint.pt written by finetune or train-attention, or 'none' "
                "(seeded random init)")
DATA_HELP = ("folder of images (subfolders = labels) or CSV with a 'path' column relative to the CSV's folder; "
             "other columns are kept")


def command(sub, name: str, run: Callable, help: str, *, long: bool = True) -> argparse.ArgumentParser:
    """A subcommand that runs ``run(args)``, described by ``run``'s docstring (or ``help``); ``long`` jobs get
    ``--quiet`` and ``--no-progress``."""
    description = inspect.cleandoc(run.__doc__) if run.__doc__ else help[:1].upper() + help[1:] + "."
    parser = sub.add_parser(name, help=help, description=description)
    parser.set_defaults(run=run, long_job=long)
    return parser


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` and ``--no-progress``, last in a long job's help (``neuroprobe.cli`` adds them)."""
    group = parser.add_argument_group("progress")
    group.add_argument("--quiet", action="store_true",
                       help="no progress output (errors and the final summary are still printed)")
    group.add_argument("--no-progress", action="store_true",
                       help="a log line every 30 s instead of a progress bar (the default when stderr is not a "
                            "terminal)")


def first_process() -> bool:
    """Whether this is the only process, or rank 0 of a torchrun job (the one that prints the summary)."""
    return int(os.environ.get("RANK", "0")) == 0


def progress_mode(args: argparse.Namespace) -> str:
    """What ``--quiet`` and ``--no-progress`` ask for: ``off``, ``log`` or ``auto``."""
    if getattr(args, "quiet", False):
        return "off"
    return "log" if getattr(args, "no_progress", False) else "auto"


def add_model(parser: argparse.ArgumentParser, *, from_store: bool = False) -> None:
    """``--model`` and ``--weights``; ``from_store``: both default to what the ``--store`` was made with."""
    if from_store:
        parser.add_argument("--model", default=None, help=MODEL_HELP + " (default: the --store's model; "
                                                                       "efficientnet_lite0 without a store)")
        parser.add_argument("--weights", default=None, help=WEIGHTS_HELP + " (default: the --store's weights, else "
                                                                           "the library's default pretrained ones)")
        return
    parser.add_argument("--model", default="efficientnet_lite0", help=MODEL_HELP + " (default: %(default)s)")
    parser.add_argument("--weights", default=None,
                        help=WEIGHTS_HELP + " (default: the library's default pretrained weights)")


def add_data(parser: argparse.ArgumentParser, needs: str | None = None) -> None:
    """``--data``; ``needs``: the column the command needs beyond 'path', named in the help."""
    parser.add_argument("--data", required=True, help=DATA_HELP + (f"; needs {needs}" if needs else ""))


def add_label_column(parser: argparse.ArgumentParser, default: str | None = "class_index", *,
                     what: str = "class indices", required: bool = False, default_help: str | None = None) -> None:
    """``--label-column``: required, with a default, or optional with a default the command works out."""
    if required:
        parser.add_argument("--label-column", required=True, help=f"image-table column of {what}")
        return
    parser.add_argument("--label-column", default=default,
                        help=f"image-table column of {what} (default: {default_help or '%(default)s'})")


def add_device(parser: argparse.ArgumentParser, *, amp: bool = False) -> None:
    """``--device`` (and ``--amp`` for commands whose forward pass may autocast)."""
    parser.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when present)")
    if amp:
        parser.add_argument("--amp", choices=["bf16", "fp16", "none"], default="none",
                            help="autocast the forward pass (statistics and probabilities are still computed in "
                                 "float32) (default: %(default)s)")


def add_batch_size(parser: argparse.ArgumentParser, default: int | None, what: str = "images per forward pass") -> None:
    parser.add_argument("--batch-size", type=int, default=default,
                        help=f"{what} (default: {default if default is not None else 'from the memory budget'})")


def add_seed(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--seed", type=int, default=0, help=f"seed of {what} (default: %(default)s)")


def add_store_out(parser: argparse.ArgumentParser, example: str, kind: str) -> None:
    """``--out`` for a store the command writes and resumes, and ``--overwrite`` for a store of the same ``kind``."""
    parser.add_argument("--out", required=True,
                        help=f"store to write (a folder or an fsspec URL), e.g. {example}; run the same command "
                             "again to resume a killed job")
    add_overwrite(parser, kind)


def add_overwrite(parser: argparse.ArgumentParser, kind: str) -> None:
    """``--overwrite``: replace a store of the same kind only (another kind is refused, never deleted)."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace an {kind} store made with other settings (a store of another kind is never "
                             "replaced: choose another --out)")


def add_folder_out(parser: argparse.ArgumentParser, contents: str) -> None:
    parser.add_argument("--out", required=True, help=f"folder for {contents}")


def add_incomplete(parser: argparse.ArgumentParser, what: str = "store") -> None:
    parser.add_argument("--allow-incomplete", action="store_true",
                        help=f"use a {what} whose job did not finish: only its finished images, with the "
                             "completeness in every table (a 'completeness' column) and figure title (default: "
                             "refuse it, naming the command that finishes it)")


def add_layers(parser: argparse.ArgumentParser, *, required: bool = True, stored: bool = False) -> None:
    where = "stored layers (default: every stored layer)" if stored else \
        "layer names as listed by 'python -m neuroprobe layers'"
    parser.add_argument("--layers", nargs="+", required=required, default=None, metavar="LAYER", help=where)


def add_selectivity(parser: argparse.ArgumentParser, *, categories: bool = False, stat_help: str = "",
                    n_help: str = "", top_k_alias: bool = False) -> None:
    """The options of report's analyses (categories, layers, statistic, normalization, threshold, permutations,
    seed, K and N), with report's defaults; ``categories``: ``--category`` takes one or more."""
    dog = "'dog' = ImageNet classes 151-268 of the class_index column"
    if categories:
        parser.add_argument("--category", nargs="+", default=["dog"], metavar="CATEGORY",
                            help=f"categories to analyse, as report's --category (one or more); {dog} (default: dog)")
    else:
        parser.add_argument("--category", default="dog", help=f"category to analyse; {dog} (default: %(default)s)")
    parser.add_argument("--category-column", default=None, help="image-table column holding the category (or the "
                                                                "labels that --category-map maps)")
    parser.add_argument("--category-map", default=None, help="CSV with columns label,category")
    add_layers(parser, required=False, stored=True)
    parser.add_argument("--stat", default="mean", choices=["mean", "max", "min", "area"],
                        help=f"statistic the selectivity indices{stat_help} use (default: %(default)s)")
    parser.add_argument("--normalization", default="minmax", choices=["minmax", "rectify"],
                        help="per-unit normalization before the indices (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=0.65,
                        help="selective above this index (default: %(default)s)")
    parser.add_argument("--permutations", type=int, default=1000,
                        help="label permutations for p-values, 0: none (default: %(default)s)")
    add_seed(parser, "the permutations")
    parser.add_argument("--k", *(["--top-k"] if top_k_alias else []), dest="k", type=int, default=9,
                        help="top-K and bottom-K images per unit (default: %(default)s)")
    parser.add_argument("--n", type=int, default=50, help=f"strongest responses per side for the opponent counts"
                                                          f"{n_help} (default: %(default)s)")


def add_layer(parser: argparse.ArgumentParser, *, required: bool = True, default_help: str = "") -> None:
    parser.add_argument("--layer", required=required, default=None,
                        help="layer name as listed by 'python -m neuroprobe layers'" +
                             (f" (default: {default_help})" if default_help else ""))


def add_units(parser: argparse.ArgumentParser, *, required: bool = False, default_help: str = "every unit") -> None:
    parser.add_argument("--units", nargs="+", required=required, default=None, metavar="UNIT",
                        help=f"unit (channel) indices or inclusive ranges: 0 1 2, 0-63 (default: {default_help})"
                        if not required else "unit (channel) indices or inclusive ranges: 0 1 2, 0-63")


def parse_units(tokens: list[str] | None) -> list[int] | None:
    """``0 1 2``, ranges ``0-63`` (inclusive) or a mix; None stays None; one-line error otherwise."""
    if tokens is None:
        return None
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


def at_least_one(**values: int | None) -> None:
    """One line naming the options that must be positive."""
    bad = [name for name, value in values.items() if value is not None and value < 1]
    if bad:
        raise NeuroprobeError(" and ".join("--" + name.replace("_", "-") for name in bad) + " must be at least 1")
