"""What every export shares: which images it keeps and how they are named, reading several layers in
lockstep block by block, and writing the target file atomically."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from ..errors import NeuroprobeError
from ..progress import Progress
from ..store.blocks import layer_names, read_blocks
from ..store.layout import SPATIAL, STATS, _check_store, _why, read_images
from ..store.location import open_group

log = logging.getLogger(__name__)

BLOCK_BYTES = 64 << 20  # one block of rows of every exported layer together


def check_stat(stat: str) -> str:
    """``stat`` if it is one of the stored pooled statistics, else a one-line error naming them."""
    if stat not in STATS:
        raise NeuroprobeError(f"unknown statistic '{stat}'; choose one of {', '.join(STATS)} (--stat)")
    return stat


def readable(images: pd.DataFrame) -> np.ndarray:
    """Rows kept by the exports and the RDM: images read and written (status "ok").

    Unreadable images (status "error": NaN rows in the store) and rows not extracted yet (status "")
    are dropped, and the count is logged; every kept row carries its store row index as ``image``.
    """
    keep = (images["status"] == "ok").to_numpy()
    if not keep.all():
        status = images["status"]
        log.warning("leaving out %d unreadable and %d not yet extracted images (of %d)",
                    int((status == "error").sum()), int((status == "").sum()), len(images))
    if not keep.any():
        raise NeuroprobeError("the store holds no readable image yet; run the extract command to fill it")
    return keep


def stimulus_ids(images: pd.DataFrame, id_column: str | None = None) -> np.ndarray:
    """One unique id per image: ``id_column``, else a ``stimulus_id`` column, else the path's stem
    (the path without its suffix when stems repeat across folders)."""
    if id_column is not None and id_column not in images:
        raise NeuroprobeError(f"the image table has no column '{id_column}' (columns: "
                              f"{', '.join(images.columns)}); name one with --id-column")
    column = id_column or ("stimulus_id" if "stimulus_id" in images else None)
    if column is not None:
        ids = images[column].astype(str).to_numpy()
    else:
        paths = images["path"].astype(str)
        ids = np.array([Path(p).stem for p in paths])
        if len(set(ids)) < len(ids):
            ids = np.array([str(Path(p).with_suffix("")) for p in paths])
    if len(set(ids)) < len(ids):
        repeated = pd.Series(ids).value_counts().index[0]
        raise NeuroprobeError(f"stimulus id '{repeated}' names several images; give a column of unique ids with "
                              "--id-column")
    return ids


def presentation_table(store: str | Path, id_column: str | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """(keep mask over store rows, image table of the kept rows with ``image`` and ``stimulus_id`` first)."""
    images = read_images(store)
    keep = readable(images)
    table = images[keep].drop(columns=["status", "reason"])
    ids = stimulus_ids(table, id_column)
    table = table.drop(columns=[c for c in ("image", "stimulus_id") if c in table])
    table.insert(0, "stimulus_id", ids)
    table.insert(0, "image", np.flatnonzero(keep))
    return keep, table.reset_index(drop=True)


def sources(store: str | Path, layers: Sequence[str] | None, stat: str, spatial: bool) -> list[tuple[str, str]]:
    """(layer, array) to read per layer: its ``spatial`` maps when asked for and stored, else ``stat``."""
    stored_spatial = set(open_group(_check_store(store)).attrs.get("spatial_layers", []))
    return [(layer, SPATIAL if spatial and layer in stored_spatial else stat) for layer in layer_names(store, layers)]


def lockstep(store: str | Path, parts: Sequence[tuple[str, str]], keep: np.ndarray,
             budget: int = BLOCK_BYTES) -> Iterator[tuple[int, int, list[np.ndarray]]]:
    """(lo, hi, [float32 (hi - lo, values) per part]) over the kept rows, all parts block by block together."""
    root = open_group(store)
    widths = [math.prod(root[f"{layer}/{name}"].shape[1:]) for layer, name in parts]
    chunk = int(root.attrs["chunk_size"])
    step = chunk * max(1, budget // max(chunk * 4 * sum(widths), 1))
    readers = [read_blocks(store, layer, [name], step) for layer, name in parts]
    lo = 0
    layers = ", ".join(dict.fromkeys(layer for layer, _ in parts))
    with Progress(int(np.count_nonzero(keep)), f"export ({layers})", "img") as meter:
        for blocks in zip(*readers):
            rows = blocks[0][0]
            mask = keep[rows]
            hi = lo + int(mask.sum())
            yield lo, hi, [next(iter(b.values()))[mask].reshape(hi - lo, -1).astype(np.float32, copy=False)
                           for _, b, _ in blocks]
            meter.update(hi - lo)
            lo = hi


def attr_value(value: Any):
    """An attribute as HDF5/NetCDF can hold it: numbers and text as they are, the rest as JSON."""
    if isinstance(value, (str, int, float, bool, np.integer, np.floating)):
        return value
    return json.dumps(value)


@contextlib.contextmanager
def atomic_target(target: str | Path) -> Iterator[Path]:
    """A ``.partial`` path beside ``target`` to write into, renamed onto ``target`` only once complete."""
    target = Path(target)
    if not target.parent.exists():
        raise NeuroprobeError(f"cannot write {target}: folder {target.parent} does not exist")
    partial = target.with_name(target.name + ".partial")
    try:
        partial.unlink(missing_ok=True)
        partial.touch()
        partial.unlink()
    except OSError as exc:
        raise NeuroprobeError(f"cannot write {target} ({_why(exc)}); choose another target") from exc
    try:
        yield partial
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
