"""Representational dissimilarity matrices of a layer, block by block, with rsatoolbox's definitions.

For patterns x_i (a row of ``stat`` over the layer's d units: one image, or the mean over a category):

- ``correlation``: 1 - Pearson r(x_i, x_j) across units (rsatoolbox ``calc_rdm(method="correlation")``);
- ``euclidean``: ||x_i - x_j||^2 / d, the squared Euclidean distance divided by the number of units
  (rsatoolbox ``calc_rdm(method="euclidean")``: the name says Euclidean, the value is squared and scaled).

Images whose status is not "ok" (unreadable: NaN rows) are left out; with ``by``, so are images with
an empty label. Each pair of row blocks is one float64 matrix product written as a tile, so memory
is bounded by ``memory`` (a cache of prepared blocks) plus one tile, not by the number of images. The
result (n x n) is returned in memory up to ``max_bytes``; beyond that, ``out`` writes it to a Zarr
array on disk (float32) and it is returned lazily.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd
import scipy.sparse
import zarr

from ..errors import NeuroprobeError
from ..progress import Progress
from ..store.layout import read_images
from ..store.location import open_group
from .categories import _is_missing
from .scan import layer_names, read_blocks

if TYPE_CHECKING:
    import xarray

log = logging.getLogger(__name__)

METHODS = ("correlation", "euclidean")
DEFINITIONS = {"correlation": "1 - Pearson correlation across units (rsatoolbox 'correlation')",
               "euclidean": "squared Euclidean distance / number of units (rsatoolbox 'euclidean')"}


def _prepare(block: np.ndarray, method: str, shift: np.ndarray | None) -> np.ndarray:
    """Rows ready for one matrix product: centred and unit-norm (correlation), or shifted (euclidean)."""
    x = block.astype(np.float64)
    if method == "correlation":
        x -= x.mean(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        return x
    return x - shift  # distances do not change; the Gram products lose less to rounding


def _tile(a: np.ndarray, b: np.ndarray, method: str, units: int) -> np.ndarray:
    product = a @ b.T
    if method == "correlation":
        return 1.0 - product
    sq_a, sq_b = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
    return np.maximum(sq_a[:, None] + sq_b[None, :] - 2.0 * product, 0.0) / units


def _conditions(store: str | Path, by: str | None) -> tuple[np.ndarray, pd.DataFrame, np.ndarray | None]:
    """(kept store rows mask, one row of labels per condition, category code per store row or None)."""
    images = read_images(store)
    keep = (images["status"] == "ok").to_numpy().copy()
    if by is None:
        table = images[keep].drop(columns=["status", "reason"]).reset_index()
        return keep, table, None
    if by not in images:
        raise NeuroprobeError(f"the image table has no column '{by}' (columns: {', '.join(images.columns)}); "
                              "choose one for by (report: --rdm-by)")
    labels = images[by]
    keep &= ~_is_missing(labels)
    codes, names = pd.factorize(labels.where(keep), sort=True)
    counts = np.bincount(codes[keep], minlength=len(names))
    return keep, pd.DataFrame({by: names, "n_images": counts}), codes


def _blocks(store, layer, stat, keep, start: tuple[int, int] = (0, 0)) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """(store row, lo, hi, float32 rows) of the kept images from ``start`` = (store row, RDM position);
    positions lo:hi in the RDM."""
    row, lo = start
    for rows, block, _valid in read_blocks(store, layer, [stat], start=row):
        mask = keep[rows]
        hi = lo + int(mask.sum())
        if hi > lo:
            yield int(rows[0]), lo, hi, block[stat][mask]
        lo = hi


def _category_means(store, layer, stat, keep, codes, k) -> np.ndarray:
    """Mean pattern per category in float64, from per-block sums (one pass)."""
    sums, counts = None, np.zeros(k)
    for rows, block, _valid in read_blocks(store, layer, [stat]):
        mask = keep[rows]
        values = block[stat][mask].astype(np.float64)
        onehot = scipy.sparse.csr_matrix((np.ones(mask.sum()), (codes[rows][mask], np.arange(mask.sum()))),
                                         shape=(k, int(mask.sum())))
        sums = onehot @ values if sums is None else sums + onehot @ values
        counts += np.bincount(codes[rows][mask], minlength=k)
    return sums / counts[:, None]


def rdm(store: str | Path, layer: str, stat: str = "mean", method: str = "correlation", by: str | None = None, *,
        out: str | Path | None = None, memory: int = 1 << 30, max_bytes: int = 2 << 30,
        allow_incomplete: bool = False) -> "xarray.DataArray":
    """The RDM of ``layer`` as an ``xarray.DataArray`` (dims ``condition_a`` x ``condition_b``).

    Conditions: the readable images in store order (coordinates: ``image`` = store row and the image
    table's columns), or with ``by`` the categories of that image-table column, sorted (coordinates:
    the label and ``n_images``), each the mean pattern of its images. ``out``: a Zarr store to write the
    float32 matrix into (returned lazily); without it the float64 matrix is returned in memory, up to
    ``max_bytes``. ``memory``: bytes of prepared blocks kept between tiles (more: fewer re-reads).
    An incomplete store is refused unless ``allow_incomplete`` (the RDM's ``completeness`` attribute then
    says how many images it covers).
    """
    import xarray as xr

    from ..store.completeness import require_complete
    from ..store.layout import STATS

    state = require_complete(store, allow_incomplete)

    if method not in METHODS:
        raise NeuroprobeError(f"unknown RDM method '{method}'; choose one of {', '.join(METHODS)}")
    if stat not in STATS:
        raise NeuroprobeError(f"unknown statistic '{stat}'; choose one of {', '.join(STATS)}")
    layer_names(store, [layer])
    keep, conditions, codes = _conditions(store, by)
    n = len(conditions)
    if n == 0:
        raise NeuroprobeError("no readable image to compare; run the extract command to fill the store")
    units = open_group(store)[f"{layer}/{stat}"].shape[1]
    if out is None and n * n * 8 > max_bytes:
        raise NeuroprobeError(f"the RDM of {n} conditions takes {n * n * 8 / 2**30:.1f} GiB in memory; write it to "
                              f"disk with out='rdm.zarr' (float32, {n * n * 4 / 2**30:.1f} GiB) or compare category "
                              "means with by=COLUMN")
    target = np.zeros((n, n)) if out is None else _zarr_target(out, n, conditions, store)
    if by is None:
        _fill(target, store, layer, stat, keep, method, units, memory)
    else:
        means = _category_means(store, layer, stat, keep, codes, n)
        prepared = _prepare(means, method, means.mean(axis=0))
        tile = _tile(prepared, prepared, method, units)
        np.fill_diagonal(tile, 0.0)
        _write(target, 0, 0, tile)
    attrs = {"layer": layer, "stat": stat, "method": method, "definition": DEFINITIONS[method], "by": by or "",
             "units": units, **({} if state.complete else {"completeness": state.label})}
    if out is not None:
        group = zarr.open_group(str(out), mode="r+")
        group["dissimilarity"].attrs.update(attrs)
        return xr.open_zarr(str(out), consolidated=False)["dissimilarity"]
    coords = {name: ("condition_a", conditions[name].to_numpy()) for name in conditions.columns}
    label = conditions.iloc[:, 0].to_numpy()  # the image (store row) or the category
    coords |= {"condition_a": label, "condition_b": label}
    return xr.DataArray(target, dims=("condition_a", "condition_b"), coords=coords, attrs=attrs,
                        name="dissimilarity")


def _fill(target, store, layer, stat, keep, method, units, memory) -> None:
    """Every tile (i <= j) of the image RDM: a panel of blocks i cached (``memory`` bytes), blocks j read."""
    spans: list[tuple[int, int, int]] = []  # (store row, lo, hi) of every block, from the first pass
    shift, per_panel, first = None, None, 0
    n = int(np.count_nonzero(keep))  # conditions: the kept images
    meter = Progress(n * (n + 1) // 2, f"rdm ({layer})", "pair")   # pairs of conditions, diagonal tiles counted whole
    while first == 0 or first < len(spans):
        panel: list[tuple[int, int, np.ndarray]] = []
        for j, (row, lo_j, hi_j, block) in enumerate(_blocks(store, layer, stat, keep, spans[first][:2] if first else (0, 0)),
                                                     start=first):
            if first == 0:
                spans.append((row, lo_j, hi_j))
            if shift is None:
                shift = block.astype(np.float64).mean(axis=0)
                per_panel = max(1, memory // max(1, (hi_j - lo_j) * units * 8))
            y = _prepare(block, method, shift)
            if j < first + per_panel:
                panel.append((lo_j, hi_j, y))
            for lo_i, hi_i, x in panel:
                meter.update((hi_i - lo_i) * (hi_j - lo_j))
                tile = _tile(x, y, method, units)
                if lo_i == lo_j:
                    np.fill_diagonal(tile, 0.0)
                else:
                    _write(target, lo_j, lo_i, tile.T)
                _write(target, lo_i, lo_j, tile)
        log.debug("rdm %s: conditions %d-%d against the rest", layer, panel[0][0], panel[-1][1])
        first += per_panel
    meter.close()


def _write(target, lo_i: int, lo_j: int, tile: np.ndarray) -> None:
    target[lo_i:lo_i + tile.shape[0], lo_j:lo_j + tile.shape[1]] = tile


def _zarr_target(out: str | Path, n: int, conditions: pd.DataFrame, store) -> zarr.Array:
    """A fresh Zarr group at ``out``: ``dissimilarity`` (n, n) float32 and the condition coordinates."""
    out = Path(out)
    if out.exists():
        if not (out / "dissimilarity" / "zarr.json").exists():
            raise NeuroprobeError(f"{out} exists and is not an RDM written by rdm(); choose another out")
        shutil.rmtree(out)  # an earlier RDM: replaced
    group = zarr.open_group(str(out), mode="w")
    chunk = int(open_group(store).attrs["chunk_size"])
    array = group.create_array("dissimilarity", shape=(n, n), chunks=(min(n, chunk), min(n, chunk)),
                               dtype="float32", compressors=None, fill_value=np.nan,
                               dimension_names=("condition_a", "condition_b"))
    label = conditions.iloc[:, 0]  # the image (store row) or the category: the index of both dims
    columns = [(str(name), conditions[name], "condition_a") for name in conditions.columns]
    for name, values, dim in columns + [("condition_a", label, "condition_a"), ("condition_b", label, "condition_b")]:
        text = not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values))
        data = values.astype(str).to_numpy(dtype=object) if text else values.to_numpy()
        coord = group.create_array(name, shape=(n,), dtype=str if text else data.dtype, dimension_names=(dim,))
        coord[:] = data
    array.attrs["coordinates"] = " ".join(map(str, conditions.columns))
    return array
