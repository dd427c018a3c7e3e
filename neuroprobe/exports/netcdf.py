"""The store's pooled statistics as NetCDF-4 (one group per layer), written block by block with h5netcdf.

``xarray.open_dataset(OUT, group="layer4.1")`` gives a Dataset with dims ``image`` x ``unit``, a data
variable per statistic and the image table as coordinates on ``image`` (the store row index), the
same view as ``xarray.open_zarr(STORE, group="layer4.1")`` without the unreadable images.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pandas as pd

from ..store.blocks import layer_names
from ..store.layout import STATS
from ..store.location import open_group
from .common import atomic_target, attr_value, check_stat, lockstep, presentation_table

log = logging.getLogger(__name__)


def put_table(group, dim: str, table: pd.DataFrame) -> list[str]:
    """Write each column of ``table`` as a 1-D variable along ``dim``; return the names written.

    Text becomes variable-length strings, booleans int8 with xarray's ``dtype: bool`` marker.
    """
    names = []
    for column in table.columns:
        values = table[column]
        if pd.api.types.is_bool_dtype(values):
            var = group.create_variable(str(column), (dim,), dtype="i1", data=values.to_numpy().astype("i1"))
            var.attrs["dtype"] = "bool"
        elif pd.api.types.is_numeric_dtype(values):
            group.create_variable(str(column), (dim,), data=values.to_numpy())
        else:
            var = group.create_variable(str(column), (dim,), dtype=h5py.string_dtype())
            var[:] = values.fillna("").astype(str).to_numpy(dtype=object)
        names.append(str(column))
    return names


def put_attrs(target, attrs: dict) -> None:
    for key, value in attrs.items():
        target.attrs[key] = attr_value(value)


def data_chunks(rows: int, columns: int) -> tuple[int, int]:
    """HDF5 chunks of about 4 MiB of float32: whole rows when they fit."""
    columns_per_chunk = min(columns, 1 << 20)
    return max(1, min(rows, (1 << 20) // columns_per_chunk)), columns_per_chunk


def export_netcdf(store: str | Path, target: str | Path, *, layers: Sequence[str] | None = None,
                  stat: str | None = None, id_column: str | None = None) -> Path:
    """Write ``stat`` (default: all of min, mean, max, area) of ``layers`` (default: all) to NetCDF ``target``.

    Unreadable images are left out (see :func:`neuroprobe.exports.common.readable`); the ``image``
    coordinate is each kept row's index in the store, ``stimulus_id`` its id (path stem or ``id_column``).
    """
    import h5netcdf

    stats = [check_stat(stat)] if stat else list(STATS)
    keep, table = presentation_table(store, id_column)
    root = open_group(store)
    target = Path(target)
    with atomic_target(target) as partial, h5netcdf.File(partial, "w") as out:
        put_attrs(out, dict(root.attrs) | {"statistics": " ".join(stats), "source_store": str(Path(store).resolve())})
        for layer in layer_names(store, layers):
            group = out.create_group(layer)
            units = root[f"{layer}/{stats[0]}"].shape[1]
            group.dimensions = {"image": len(table), "unit": units}
            put_attrs(group, dict(root[layer].attrs))
            coords = [c for c in put_table(group, "image", table) if c != "image"]
            group.create_variable("unit", ("unit",), data=np.arange(units))
            variables = {}
            for s in stats:
                variables[s] = group.create_variable(s, ("image", "unit"), dtype="f4",
                                                     chunks=data_chunks(len(table), units))
                variables[s].attrs["coordinates"] = " ".join(coords)
                variables[s].attrs["long_name"] = f"{s} of each unit's pre-activation map"
            for lo, hi, blocks in lockstep(store, [(layer, s) for s in stats], keep):
                for s, block in zip(stats, blocks):
                    variables[s][lo:hi] = block
            log.info("%s: %d images x %d units", layer, len(table), units)
    return target
