"""An rsatoolbox ``Dataset`` of a store (images x units), saved in rsatoolbox's own HDF5 format.

``rsatoolbox.data.load_dataset(OUT, file_type="hdf5")`` reads it back without neuroprobe. The whole
dataset is built in memory (rsatoolbox's datasets are in-memory NumPy arrays): kept images x units x 8
bytes, float64 (the float32 values exactly) so that rsatoolbox's RDMs are computed in double precision.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import NeuroprobeError
from ..store.location import open_group
from ..version import __version__
from .common import atomic_target, check_stat, lockstep, presentation_table, sources

log = logging.getLogger(__name__)


def _rsatoolbox():
    try:
        import rsatoolbox.data
    except ImportError as exc:
        raise NeuroprobeError("the rsatoolbox export needs rsatoolbox: pip install rsatoolbox") from exc
    return rsatoolbox


def _descriptor(values: pd.Series) -> np.ndarray:
    """A column as rsatoolbox's HDF5 writer can store it: numbers as they are, text as fixed-width str."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values.to_numpy()
    return values.fillna("").astype(str).to_numpy(dtype=str)


def rsa_dataset(store: str | Path, *, layers: Sequence[str] | None = None, stat: str = "mean",
                id_column: str | None = None):
    """``rsatoolbox.data.Dataset``: measurements = readable images x units of ``layers`` (pooled ``stat``).

    obs_descriptors: ``image`` (store row), ``stimulus_id`` and every image-table column;
    channel_descriptors: ``layer``, ``unit``; descriptors: model, stat, neuroprobe version.
    Unreadable images are left out, as in every export.
    """
    rsatoolbox = _rsatoolbox()
    check_stat(stat)
    keep, table = presentation_table(store, id_column)
    parts = sources(store, layers, stat, spatial=False)
    root = open_group(store)
    units = [root[f"{layer}/{stat}"].shape[1] for layer, _ in parts]
    measurements = np.empty((len(table), sum(units)), dtype=np.float64)
    for lo, hi, blocks in lockstep(store, parts, keep):
        measurements[lo:hi] = np.concatenate(blocks, axis=1)
    channels = {"layer": np.repeat([layer for layer, _ in parts], units).astype(str),
                "unit": np.concatenate([np.arange(u) for u in units])}
    descriptors = {"model": str(root.attrs.get("provenance", {}).get("model", "")), "stat": stat,
                   "neuroprobe_version": __version__, "source_store": str(Path(store).resolve())}
    return rsatoolbox.data.Dataset(measurements, descriptors=descriptors,
                                   obs_descriptors={str(c): _descriptor(table[c]) for c in table.columns},
                                   channel_descriptors=channels)


def export_rsatoolbox(store: str | Path, target: str | Path, *, layers: Sequence[str] | None = None,
                      stat: str = "mean", id_column: str | None = None) -> Path:
    """Save :func:`rsa_dataset` with ``Dataset.save(..., file_type="hdf5")`` to ``target``."""
    dataset = rsa_dataset(store, layers=layers, stat=stat, id_column=id_column)
    target = Path(target)
    with atomic_target(target) as partial:
        dataset.save(str(partial), file_type="hdf5")
    log.info("rsatoolbox dataset: %d images x %d units", *dataset.measurements.shape)
    return target
