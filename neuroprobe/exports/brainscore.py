"""A Brain-Score-style NeuroidAssembly (``presentation`` x ``neuroid``) as NetCDF, written block by block.

Read it with plain xarray, no neuroprobe or Brain-Score needed::

    assembly = xarray.open_dataarray("run.nc")          # dims presentation x neuroid
    assembly = assembly.set_index(presentation=PRESENTATION_INDEX, neuroid=NEUROID_INDEX)

NetCDF cannot hold xarray's multi-indexes, so the coordinates are stored plain and the second line
rebuilds Brain-Score's indexes (``brainio.assemblies.NeuroidAssembly(assembly)`` then wraps it).

Neuroids, per layer in the order given: a layer with spatial maps in the store gives one neuroid per
(channel, y, x) in C order, with ``channel_y`` the row and ``channel_x`` the column of the feature map
(Brain-Score's model-tools name the row ``channel_x``: swap the two names to match its ids); a layer
without them gives one neuroid per channel holding the pooled ``stat``, ``channel_x``/``channel_y`` NaN.
Presentations: the readable images (unreadable ones are left out), with ``stimulus_id``, ``image``
(the store row) and the image table's columns.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..store.layout import SPATIAL
from ..store.location import open_group
from .common import atomic_target, check_stat, lockstep, presentation_table, sources
from .netcdf import data_chunks, put_attrs, put_table

log = logging.getLogger(__name__)

PRESENTATION_INDEX = ["stimulus_id", "image"]
NEUROID_INDEX = ["neuroid_id", "layer", "channel", "channel_x", "channel_y"]


def neuroid_table(store: str | Path, parts: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """One row per neuroid: neuroid_id, layer, channel, channel_x, channel_y, neuroid_num, model."""
    root = open_group(store)
    model = str(root.attrs.get("provenance", {}).get("model", ""))
    frames = []
    for layer, name in parts:
        shape = root[f"{layer}/{name}"].shape[1:]
        if name == SPATIAL:
            channel, y, x = (a.ravel() for a in np.indices(shape))
            x, y = x.astype(float), y.astype(float)
        else:
            channel = np.arange(shape[0])
            x = y = np.full(shape[0], np.nan)
        num = np.arange(channel.size)
        frames.append(pd.DataFrame({"neuroid_id": [f"{layer}.{n}" for n in num], "layer": layer, "channel": channel,
                                    "channel_x": x, "channel_y": y, "neuroid_num": num, "model": model}))
    return pd.concat(frames, ignore_index=True)


def export_brainscore(store: str | Path, target: str | Path, *, layers: Sequence[str] | None = None,
                      stat: str = "mean", spatial: bool = True, id_column: str | None = None) -> Path:
    """Write a ``presentation`` x ``neuroid`` assembly of ``layers`` to NetCDF ``target`` (see module doc).

    ``spatial=False`` uses the pooled ``stat`` even for layers whose spatial maps are stored.
    """
    import h5netcdf

    check_stat(stat)
    keep, table = presentation_table(store, id_column)
    parts = sources(store, layers, stat, spatial)
    neuroids = neuroid_table(store, parts)
    root = open_group(store)
    target = Path(target)
    with atomic_target(target) as partial, h5netcdf.File(partial, "w") as out:
        out.dimensions = {"presentation": len(table), "neuroid": len(neuroids)}
        coords = put_table(out, "presentation", table) + put_table(out, "neuroid", neuroids)
        data = out.create_variable("activations", ("presentation", "neuroid"), dtype="f4",
                                   chunks=data_chunks(len(table), len(neuroids)))
        data.attrs["coordinates"] = " ".join(coords)
        values = {layer: ("spatial map" if name == SPATIAL else stat) for layer, name in parts}
        put_attrs(data, {"long_name": "pre-activation per stimulus and neuroid",
                         "values": json.dumps(values), "model": neuroids["model"].iat[0],
                         "presentation_index": " ".join(PRESENTATION_INDEX),
                         "neuroid_index": " ".join(NEUROID_INDEX),
                         "provenance": root.attrs.get("provenance", {}),
                         "source_store": str(Path(store).resolve())})
        for lo, hi, blocks in lockstep(store, parts, keep):
            data[lo:hi] = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
        log.info("assembly: %d presentations x %d neuroids (%s)", len(table), len(neuroids), values)
    return target
