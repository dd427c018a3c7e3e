"""Exports of a store to the tools of the field: HDF5 (the same layout), NetCDF (pooled statistics),
rsatoolbox (a Dataset in its HDF5 format) and Brain-Score (a NeuroidAssembly as NetCDF).

Every export but ``hdf5`` (a verbatim copy, NaN rows included) leaves out the images that could not be
read, and gives each kept image its store row (``image``) and a ``stimulus_id``.

May import: ``neuroprobe.analysis`` and everything below it (``neuroprobe.engine``, ``neuroprobe.store``,
``neuroprobe.models``, ``neuroprobe.data``, ``neuroprobe.training``, ``neuroprobe.progress`` and
``neuroprobe.errors``); never maps or the capabilities above.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import NeuroprobeError
from ..store.completeness import require_complete
from ..store.layout import export_hdf5
from .brainscore import export_brainscore
from .netcdf import export_netcdf
from .rsa import export_rsatoolbox, rsa_dataset

FORMATS = ("hdf5", "netcdf", "rsatoolbox", "brainscore")


def export(store: str | Path, target: str | Path, to: str = "hdf5", *, layers: Sequence[str] | None = None,
           stat: str | None = None, spatial: bool = True, id_column: str | None = None,
           allow_incomplete: bool = False) -> Path:
    """Write ``store`` to ``target`` in format ``to`` (one of FORMATS); see each ``export_*`` function.

    ``stat``: the pooled statistic (rsatoolbox, brainscore: default mean; netcdf: default all four).
    ``spatial`` (brainscore): neuroids per map position for layers whose spatial maps are stored.
    An incomplete store is refused (``hdf5`` copies it as it is) unless ``allow_incomplete``.
    """
    if to not in FORMATS:
        raise NeuroprobeError(f"unknown export format '{to}'; choose one of {', '.join(FORMATS)} (--to)")
    if to == "hdf5":
        if layers or stat or id_column:
            raise NeuroprobeError("--to hdf5 copies the whole store; --layers, --stat and --id-column apply to "
                                  "netcdf, rsatoolbox and brainscore")
        return export_hdf5(store, target)
    require_complete(store, allow_incomplete)
    if to == "netcdf":
        return export_netcdf(store, target, layers=layers, stat=stat, id_column=id_column)
    if to == "rsatoolbox":
        return export_rsatoolbox(store, target, layers=layers, stat=stat or "mean", id_column=id_column)
    return export_brainscore(store, target, layers=layers, stat=stat or "mean", spatial=spatial, id_column=id_column)


__all__ = ["FORMATS", "export", "export_brainscore", "export_hdf5", "export_netcdf", "export_rsatoolbox",
           "rsa_dataset"]
