"""The Zarr store (a public contract, see DESIGN.md): layout, resume journal, xarray/pandas/HDF5 views.

```
STORE.zarr/          attrs: provenance; `journal` (chunk,) uint8: 1 once a chunk is fully written
  images/            one 1-D array per manifest column + status ("ok", "error", "" = not yet) + reason
  <layer>/           min, mean, max, area: float32 (image, unit), NaN rows for unreadable images
                     [spatial]: float16 (image, unit, y, x)
```

The layout is built in a temporary folder and renamed into place (uploaded with its root metadata
last for an fsspec URL such as ``s3://bucket/run.zarr``), so a store either exists whole or not at all. Each image chunk is written by exactly one process and marked in the
journal (one Zarr chunk per entry, so processes never share a file) after its data.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import zarr

from ..data import Manifest
from ..errors import NeuroprobeError
from ..models.capture import LayerInfo
from ..progress import Progress
from .integrity import CHUNK_CODECS
from .location import Location

log = logging.getLogger(__name__)
STATS = ("min", "mean", "max", "area")  # pooled statistics, in this order in every store

IMAGES = "images"
JOURNAL = "journal"
SPATIAL = "spatial"
SPATIAL_CHUNK_BYTES = 64 << 20
DEFAULT_CHUNK = 1024


def default_chunk_size(layers: dict[str, LayerInfo], spatial: Iterable[str], budget_bytes: int = 512 << 20) -> int:
    """Images per chunk: 1024, fewer when one chunk of spatial maps would exceed ``budget_bytes``."""
    per_image = sum(4 * len(STATS) * info.units for info in layers.values())
    per_image += sum(2 * math.prod(layers[name].shape) for name in spatial)
    return int(max(1, min(DEFAULT_CHUNK, budget_bytes // max(per_image, 1))))


def _spatial_chunk(chunk: int, shape: tuple[int, ...]) -> int:
    """Largest divisor of ``chunk`` whose spatial block stays under SPATIAL_CHUNK_BYTES."""
    per_image = 2 * math.prod(shape)
    best = 1
    for d in range(1, chunk + 1):
        if chunk % d == 0 and d * per_image <= SPATIAL_CHUNK_BYTES:
            best = d
    return best


def _column_array(values: pd.Series) -> tuple[np.ndarray, Any]:
    """A manifest column as (values, zarr dtype): numbers and booleans as they are, the rest as text."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        array = values.to_numpy()
        return array, array.dtype
    return values.fillna("").astype(str).to_numpy(dtype=object), str


class Store:
    """Read/write access to one extraction store."""

    def __init__(self, path: str | Path | Location) -> None:
        self.location = Location.of(path)
        self.path = self.location.path or self.location.url  # a local Path, or the URL of a remote store
        self.root = self.location.open_group(mode="r+")
        self.attrs: dict[str, Any] = dict(self.root.attrs)
        self.chunk_size: int = int(self.attrs["chunk_size"])
        self.n_images: int = int(self.attrs["n_images"])
        self.layers: list[str] = list(self.attrs["layers"])
        self.spatial: list[str] = list(self.attrs.get("spatial_layers", []))
        self._arrays: dict[str, zarr.Array] = {}

    # -- creation -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path | Location, manifest: Manifest, layers: dict[str, LayerInfo],
               attrs: dict[str, Any], chunk_size: int, spatial: Iterable[str] = ()) -> "Store":
        """Build the full layout in a temporary folder, then move it into place in one step.

        Locally the folder sits beside ``path`` and is renamed; for a URL it is uploaded with the
        root ``zarr.json`` last (see :meth:`Location.publish`).
        """
        location = Location.of(path)
        spatial = list(spatial)
        n = len(manifest)
        n_chunks = math.ceil(n / chunk_size)
        if location.remote:
            tmp = Path(tempfile.mkdtemp(prefix="neuroprobe-store.", suffix=".partial"))
        else:
            path = location.path
            for stale in path.parent.glob(f".{path.name}.*.partial"):  # left by a creation that was killed
                shutil.rmtree(stale, ignore_errors=True)
            try:
                tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
            except OSError as exc:  # read-only file system, /proc, permissions that os.access does not show
                raise NeuroprobeError(f"cannot write {path}: cannot create files in {path.parent} ({_why(exc)}); "
                                      "choose another --out") from exc
        try:
            root = zarr.open_group(str(tmp), mode="w")
            root.attrs.update(attrs | {"chunk_size": chunk_size, "n_images": n, "layers": list(layers),
                                       "spatial_layers": spatial, "data_root": str(manifest.root),
                                       "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
            root.create_array(JOURNAL, shape=(n_chunks,), chunks=(1,), dtype="uint8", fill_value=0,
                              dimension_names=("chunk",), compressors=CHUNK_CODECS)
            images = root.create_group(IMAGES)
            for column in manifest.table.columns:
                values, dtype = _column_array(manifest.table[column])
                array = images.create_array(str(column), shape=(n,), chunks=(chunk_size,), dtype=dtype,
                                            dimension_names=("image",), compressors=CHUNK_CODECS)
                array[:] = values
            for column in ("status", "reason"):
                images.create_array(column, shape=(n,), chunks=(chunk_size,), dtype=str, fill_value="",
                                    dimension_names=("image",), compressors=CHUNK_CODECS)
            for name, info in layers.items():
                group = root.create_group(name)
                group.attrs.update({"feature_map_shape": list(info.shape), "units": info.units,
                                    "module_type": info.module_type, "captured": info.captured,
                                    "layout": info.layout.describe()})
                for stat in STATS:
                    group.create_array(stat, shape=(n, info.units), chunks=(chunk_size, info.units), dtype="float32",
                                       fill_value=np.nan, dimension_names=("image", "unit"), compressors=CHUNK_CODECS)
                if name in spatial:
                    dims = ("image", "unit") + ("y", "x", "z")[: len(info.shape) - 1]
                    block = _spatial_chunk(chunk_size, info.shape)
                    group.create_array(SPATIAL, shape=(n, *info.shape), chunks=(block, *info.shape),
                                       dtype="float16", fill_value=np.nan, dimension_names=dims,
                                       compressors=CHUNK_CODECS)
            with warnings.catch_warnings():  # "consolidated metadata is not in the v3 spec": xarray reads it
                warnings.simplefilter("ignore")
                for group_path in ["", IMAGES, *layers]:
                    zarr.consolidate_metadata(str(tmp), path=group_path)
            if location.exists():
                location.remove()
            if location.remote:
                location.publish(tmp)
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, location.path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and location.is_store():
                raise NeuroprobeError(f"{location} was created by another process at the same moment; run the "
                                      "command again once that one has finished (it resumes)") from exc
            fix = WRITE_FIXES.get(exc.errno, "choose another --out")
            raise NeuroprobeError(f"cannot create {location}: {_why(exc)}; {fix}") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(location)

    # -- journal --------------------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_images / self.chunk_size)

    def chunk_rows(self, chunk: int) -> range:
        return range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, self.n_images))

    def done_chunks(self) -> np.ndarray:
        return self._array(JOURNAL)[:].astype(bool)

    def pending_chunks(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(~self.done_chunks())]

    # -- writing --------------------------------------------------------------------------------
    def _array(self, key: str) -> zarr.Array:
        if key not in self._arrays:
            self._arrays[key] = self.root[key]
        return self._arrays[key]

    def write_chunk(self, chunk: int, stats: dict[str, np.ndarray], spatial: dict[str, np.ndarray],
                    ok: np.ndarray, reasons: list[str]) -> None:
        """Write one image chunk (stats (4, n, units) per layer, as views of the buffer), then mark it done in the journal.

        A failed write (disk full, quota, file-size limit, permission, the store removed) raises one line
        naming the chunk and the fix; the journal entry is written last, so it never claims lost data.
        """
        try:
            self._write_chunk(chunk, stats, spatial, ok, reasons)
        except OSError as exc:
            raise NeuroprobeError(write_error(self.location, chunk, self.chunk_rows(chunk), exc)) from exc

    def _write_chunk(self, chunk: int, stats: dict[str, np.ndarray], spatial: dict[str, np.ndarray],
                     ok: np.ndarray, reasons: list[str]) -> None:
        rows = self.chunk_rows(chunk)
        lo, hi = rows.start, rows.stop
        bad = ~ok
        for name, values in stats.items():
            if bad.any():
                values[:, bad] = np.nan
            for i, stat in enumerate(STATS):
                self._array(f"{name}/{stat}")[lo:hi] = values[i]
        for name, maps in spatial.items():
            if bad.any():
                maps[bad] = np.nan
            self._array(f"{name}/{SPATIAL}")[lo:hi] = maps
        self._array(f"{IMAGES}/status")[lo:hi] = np.where(ok, "ok", "error").astype(object)
        self._array(f"{IMAGES}/reason")[lo:hi] = np.asarray(reasons, dtype=object)
        if not self.location.is_store():  # zarr recreates missing folders: a removed store would lose its metadata
            raise FileNotFoundError(errno.ENOENT, "the store's folder (its zarr.json) is gone", str(self.location))
        self._array(JOURNAL)[chunk] = 1

    def repair(self, manifest: Manifest | None = None) -> list[int]:
        """Find chunk files of finished image chunks that do not decode and drop those image chunks from the
        journal (corrupted journal entries first); returns the image chunks to recompute."""
        from .integrity import bad_chunks

        redo = {bad.coords[0] for bad in bad_chunks(self, names=lambda name: name == JOURNAL)}
        self.redo(redo)
        done = self.done_chunks()
        if done.any():
            rows = {r for c in np.flatnonzero(done) for r in self.chunk_rows(int(c))}
            bad = bad_chunks(self, rows=rows, names=lambda name: name != JOURNAL)
            for item in bad:
                log.warning("%s: corrupted chunk %s: recomputing its images", self.location, item.describe())
            redo |= {r // self.chunk_size for item in bad for r in item.rows if r in rows}
        self.redo(redo, manifest)
        return sorted(redo)

    def redo(self, chunks: Iterable[int], manifest: Manifest | None = None) -> None:
        """Drop ``chunks`` from the journal so that extraction recomputes them; rewrite their manifest columns."""
        chunks = sorted(set(chunks))
        for chunk in chunks:
            self._array(JOURNAL)[chunk] = 0
            if manifest is not None:
                rows = self.chunk_rows(chunk)
                for column in manifest.table.columns:
                    values, _ = _column_array(manifest.table[column].iloc[rows.start:rows.stop])
                    self._array(f"{IMAGES}/{column}")[rows.start:rows.stop] = values


WRITE_FIXES = {
    errno.ENOSPC: "free space on that disk or choose another --out",
    errno.EDQUOT: "free space within your quota or choose another --out",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or choose another --out",
    errno.EACCES: "restore write permission on the store",
    errno.EPERM: "restore write permission on the store",
    errno.EROFS: "remount the file system read-write or choose another --out",
    errno.ENOENT: "the store's folder was removed or moved while writing; restore it, or delete what is left of it and run the same command again",
}


def write_error(location: Location, chunk: int, rows: range, exc: OSError) -> str:
    """One line for a failed chunk write: the store, the chunk, the OS error and the fix."""
    fix = WRITE_FIXES.get(exc.errno, "fix the cause")
    name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    return (f"cannot write chunk {chunk} (images {rows.start}-{rows.stop - 1}) of {location}: {_why(exc)}"
            f"{f' [{name}]' if name else ''}; {fix}, then run the same command again to resume "
            "(finished chunks are kept, this one was not journaled)")


def _why(exc: OSError) -> str:
    """The short system reason of an OSError (h5py's messages run over several clauses)."""
    return os.strerror(exc.errno) if exc.errno else str(exc).splitlines()[0]


# -- public views -----------------------------------------------------------------------------------
def _check_store(path: str | Path | Location) -> Location:
    location = Location.of(path)
    if not location.is_store():
        raise NeuroprobeError(f"{location} is not a neuroprobe store (no zarr.json); create one with: "
                              "python -m neuroprobe extract")
    return location


def open_layer(store: str | Path, layer: str):
    """The layer's statistics as an ``xarray.Dataset`` with dims ``image`` and ``unit`` (lazy)."""
    import xarray as xr

    location = _check_store(store)
    layers = location.open_group(mode="r").attrs.get("layers", [])
    if layer not in layers:
        from ..errors import closest
        raise NeuroprobeError(f"layer '{layer}' is not in {location}; stored layers: {closest(layer, layers)}")
    return xr.open_zarr(location.store(read_only=True), group=layer, consolidated=True)


def read_images(store: str | Path) -> pd.DataFrame:
    """The image table (manifest columns + status + reason), row i = image i."""
    import xarray as xr

    frame = xr.open_zarr(_check_store(store).store(read_only=True), group=IMAGES, consolidated=True).to_dataframe()
    frame.index.name = "image"
    return frame


def summary(store: str | Path) -> dict[str, Any]:
    """What a store holds and how complete it is (the ``info`` command)."""
    path = _check_store(store)
    root = path.open_group(mode="r")
    attrs = dict(root.attrs)
    done = root[JOURNAL][:].astype(bool)
    status = root[f"{IMAGES}/status"][:]
    chunk = int(attrs["chunk_size"])
    finished_rows = np.repeat(done, chunk)[: int(attrs["n_images"])]
    layers = []
    for name in attrs["layers"]:
        group = root[name]
        layers.append({"layer": name, "units": group.attrs["units"], "shape": tuple(group.attrs["feature_map_shape"]),
                       "captured": group.attrs["captured"], "spatial": SPATIAL in group,
                       "layout": group.attrs.get("layout", "channels-first")})
    return {
        "path": str(path), "model": attrs.get("provenance", {}).get("model"),
        "weights": attrs.get("provenance", {}).get("weights"),
        "weights_sha256": attrs.get("provenance", {}).get("weights_sha256"),
        "images": int(attrs["n_images"]), "done": int(np.sum(finished_rows & (status == "ok"))),
        "skipped": int(np.sum(finished_rows & (status == "error"))), "missing": int(np.sum(~finished_rows)),
        "chunks_done": int(done.sum()), "chunks": int(done.size), "layers": layers,
        "capture": attrs.get("capture"), "amp": attrs.get("amp"), "created": attrs.get("created"),
        "decode": attrs.get("decode", "cpu"), "memory_format": attrs.get("memory_format", "contiguous"),
        "command": attrs.get("command"),
    }


def _h5_attr(value: Any):
    if isinstance(value, (str, int, float, bool, np.integer, np.floating)):
        return value
    return json.dumps(value)


def export_hdf5(store: str | Path, target: str | Path) -> Path:
    """Copy the store into one HDF5 file with the same groups, arrays and attributes (chunk by chunk)."""
    import h5py

    source = _check_store(store).open_group(mode="r")
    target = Path(target)
    if not target.parent.exists():
        raise NeuroprobeError(f"cannot write {target}: folder {target.parent} does not exist")
    partial = target.with_name(target.name + ".partial")
    try:
        handle = h5py.File(partial, "w")
    except OSError as exc:
        raise NeuroprobeError(f"cannot write {target} ({_why(exc)}); choose another target") from exc
    try:
        with handle as out, Progress(_rows_below(source), "export (hdf5)", "row") as meter:
            _copy_group(source, out, meter)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    return target


def _rows_below(group: zarr.Group) -> int:
    """Rows of every array below ``group`` (what the HDF5 copy's progress counts)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(member.shape[0] for _, member in group.members(max_depth=None)
                   if not isinstance(member, zarr.Group) and member.ndim)


def _copy_group(group: zarr.Group, out, meter: Progress) -> None:
    for key, value in group.attrs.items():
        out.attrs[key] = _h5_attr(value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        members = sorted(group.members(), key=lambda kv: kv[0])
    for name, member in members:
        if isinstance(member, zarr.Group):
            _copy_group(member, out.create_group(name), meter)
            continue
        is_text = member.dtype.kind in "UOT"
        dtype = __import__("h5py").string_dtype() if is_text else member.dtype
        chunks = tuple(max(1, c) for c in member.chunks)
        dataset = out.create_dataset(name, shape=member.shape, dtype=dtype, chunks=chunks if member.ndim else None,
                                     compression="gzip" if not is_text else None)
        step = member.chunks[0] if member.ndim else 1
        for lo in range(0, member.shape[0] if member.ndim else 0, step):
            block = member[lo:lo + step]
            dataset[lo:lo + step] = block.astype(object) if is_text else block
            meter.update(len(block))
        dataset.attrs["dimension_names"] = json.dumps(list(member.metadata.dimension_names or []))
