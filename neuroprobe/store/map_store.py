"""Resumable Zarr stores of per-image maps (occlusion, saliency): one layout, one resume rule.

Every store holds its arrays with a leading ``image`` axis, ``done`` (image) marking finished rows,
and ``images/`` with the manifest's paths plus ``status``/``reason``. The settings that made it sit
in the group's attributes under ``kind``; reopening with other settings is refused unless
``overwrite``, so a resumed job never mixes two kinds of map, and a store of another kind (or a folder
that is not a store) is refused even then (:mod:`neuroprobe.store.kinds`).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ..data import Manifest
from ..errors import NeuroprobeError
from .integrity import CHUNK_CODECS
from .kinds import check_replaceable, described
from .location import Location


@dataclass(frozen=True)
class ArraySpec:
    """One per-image array: its shape after the image axis, dtype, fill value and axis names."""

    shape: tuple[int, ...]
    dims: tuple[str, ...]
    dtype: str = "float32"
    fill: object = np.nan


def as_json(value):
    """Attributes Zarr can hold: numpy values become lists, anything else its string."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def open_map_store(out: str | Path | Location, kind: str, settings: dict, manifest: Manifest,
                   arrays: dict[str, ArraySpec], overwrite: bool, rows_per_chunk: int = 1) -> zarr.Group:
    """Reopen ``out`` (a folder or an fsspec URL) when it was made with the same settings, else create it
    (``overwrite`` replaces)."""
    settings = as_json(settings)
    out = Location.of(out)
    found = check_replaceable(out, kind)  # another kind of store, or a folder that is no store: refused, kept
    if found and not overwrite:
        group = out.open_group(mode="r+")
        if group.attrs.get(kind) != settings:
            raise NeuroprobeError(f"{out} is {described(kind)} made with other settings; pass --overwrite to replace "
                                  "it or choose another --out")
        return group
    try:
        group = out.open_group(mode="w")
    except OSError as exc:
        raise NeuroprobeError(f"cannot write {out} ({exc.strerror}); choose a writable --out") from exc
    group.attrs[kind] = settings
    group.attrs["data_root"] = str(manifest.root)
    n = len(manifest)
    for name, spec in arrays.items():
        group.create_array(name, shape=(n, *spec.shape), chunks=(rows_per_chunk, *spec.shape), dtype=spec.dtype,
                           fill_value=spec.fill, dimension_names=("image", *spec.dims), compressors=CHUNK_CODECS)
    group.create_array("done", shape=(n,), chunks=(rows_per_chunk,), dtype="bool", fill_value=False,
                       dimension_names=("image",), compressors=CHUNK_CODECS)
    images = group.create_group("images")
    images.create_array("path", shape=(n,), dtype=str,
                        compressors=CHUNK_CODECS)[:] = manifest.table["path"].astype(str).to_numpy(dtype=object)
    images.create_array("status", shape=(n,), chunks=(rows_per_chunk,), dtype=str, fill_value="pending",
                        compressors=CHUNK_CODECS)
    images.create_array("reason", shape=(n,), chunks=(rows_per_chunk,), dtype=str, fill_value="",
                        compressors=CHUNK_CODECS)
    return group


def mark_done(group: zarr.Group, rows, ok, reasons) -> None:
    """Record status and reason of ``rows`` and mark them finished (after their maps are written)."""
    rows = np.asarray(rows, dtype=np.int64)
    ok = np.asarray(ok, dtype=bool)
    group["images/status"].oindex[rows] = np.where(ok, "ok", "error").astype(object)
    group["images/reason"].oindex[rows] = np.asarray(list(reasons), dtype=object)
    group["done"].oindex[rows] = True


def consolidate(out: str | Path | Location) -> None:
    """Consolidated metadata, so that xarray opens the store with one read (zarr warns that the v3
    spec does not define it yet; xarray reads it all the same)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(Location.of(out).store(read_only=False))
