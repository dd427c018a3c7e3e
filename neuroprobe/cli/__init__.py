"""``python -m neuroprobe COMMAND``: one module per capability, each delegating to a library call.

Lives here: ``common`` (the options every command spells the same way: model and weights, data, device
and amp, out and overwrite, allow-incomplete, progress) and one module per capability, each with
``add_commands(sub)``. This module builds the parser, runs the command under its progress mode and
turns the errors a user can cause into one line and an exit status.

May import: everything below it (the capabilities, the engine, the store, the models); nothing imports it
but ``neuroprobe.__main__``. Library code is imported inside each command, so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import NeuroprobeError
from . import analyses, atlas, attention, attribution, exports, extraction, finetune, maps, retina, synthesis
from .common import add_progress, progress_mode

CAPABILITIES = (extraction, analyses, exports, maps, attribution, retina, attention, synthesis, finetune, atlas)
QUIET_LOGGERS = ("PIL", "matplotlib", "urllib3", "fsspec", "asyncio", "botocore", "aiobotocore", "s3fs", "distributed")

EXAMPLES = """examples:
  python -m neuroprobe layers  --model efficientnet_lite0
  python -m neuroprobe extract --model efficientnet_lite0 --data data/sample/labels.csv \\
         --layers blocks.3 blocks.5.0.bn2 bn2 --out runs/sample.zarr
  python -m neuroprobe report  runs/sample.zarr --category dog --n 10 --out runs/sample-report
  python -m neuroprobe info    runs/sample.zarr
  python -m neuroprobe export  runs/sample.zarr runs/sample.h5
  python -m neuroprobe occlude --layer blocks.3 --units 0-2 --data data/sample/labels.csv --stride 8 \\
         --out runs/occlusion.zarr
  python -m neuroprobe rf      runs/sample.zarr --layers blocks.3 bn2 --units 0-2 --k 5 --stride 8 --out runs/rf
  python -m neuroprobe saliency --method gradcam --data data/sample/labels.csv --out runs/gradcam.zarr
  python -m neuroprobe localize --data data/sample/labels.csv --methods gradient,gradcam --grid 2 --n 20 \\
         --out runs/localize
  python -m neuroprobe search  --data data/sample/labels.csv --layout grid --grid 7 --view crop --out runs/search
  python -m neuroprobe saccade --likelihood runs/search --data data/sample/labels.csv --folds 5 --out runs/saccade
  python -m neuroprobe visualize --store runs/sample.zarr --layer blocks.5.0.bn2 --units 0-15 --out runs/vis

Long commands show a progress bar on a terminal and a log line every 30 s otherwise (--quiet: none).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m neuroprobe", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="What the units of a CNN respond to, where they look, and how selective they are.",
        epilog=EXAMPLES)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug log lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for capability in CAPABILITIES:
        capability.add_commands(sub)
    for command in sub.choices.values():
        if command.get_default("long_job"):
            add_progress(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from ..engine.malloc import keep_freed_memory
    from ..engine.stopping import Stopped
    from ..progress import progress_mode as showing

    keep_freed_memory()
    try:
        with showing(progress_mode(args)):
            return _guarded(args)
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


def _guarded(args) -> int:
    """Run a command; a read that fails on a corrupted chunk of its store becomes one line naming the chunk."""
    store = getattr(args, "store", None) or getattr(args, "likelihood", None)
    if not store or args.command == "extract":
        return args.run(args)
    from ..store.integrity import readable

    with readable(store):
        return args.run(args)


def _stopped_line(exc) -> str:
    """What a stopped job finished and how to resume it."""
    from ..store.completeness import completeness

    try:
        state = completeness(exc.store)
    except Exception:  # noqa: BLE001 - a store removed meanwhile: still say how to resume
        return f"stopped by {exc.name}; run the same command again to resume"
    return (f"stopped by {exc.name}: {state.done} of {state.total} images done ({state.chunks_done} of "
            f"{state.chunks} chunks journaled) in {state.store}; resume with: {state.command}")
