"""``export``: a store in the formats of the field (HDF5, NetCDF, rsatoolbox, Brain-Score)."""
from __future__ import annotations

from . import common


def add_commands(sub) -> None:
    p = common.command(sub, "export", _export,
                       "a store as HDF5 (same layout), NetCDF, an rsatoolbox Dataset or a Brain-Score assembly")
    p.add_argument("store")
    p.add_argument("target", help="e.g. run.h5, run.nc")
    p.add_argument("--to", default="hdf5", choices=["hdf5", "netcdf", "rsatoolbox", "brainscore"],
                   help="format (default: %(default)s)")
    common.add_layers(p, required=False, stored=True)
    p.add_argument("--stat", default=None, metavar="STAT",
                   help="pooled statistic: min, mean, max or area (default: mean; netcdf: all four)")
    common.add_incomplete(p)
    p.add_argument("--id-column", default=None,
                   help="image-table column of unique stimulus ids (default: a stimulus_id column, else the "
                        "path's stem)")
    p.add_argument("--pooled", action="store_true",
                   help="brainscore: the pooled --stat also for layers whose spatial maps are stored")


def _export(args) -> int:
    """hdf5: the store's groups, arrays and attributes in one HDF5 file (NaN rows kept). netcdf: pooled statistics, one
    NetCDF group per layer (image x unit). rsatoolbox: a Dataset (images x units, image table as
    obs_descriptors) in rsatoolbox's HDF5 format (needs pip install rsatoolbox). brainscore: a presentation x
    neuroid assembly as NetCDF (one neuroid per channel, or per channel and position for layers with stored
    spatial maps). All but hdf5 leave out unreadable images.
    """
    from ..exports import export

    print(export(args.store, args.target, args.to, layers=args.layers, stat=args.stat, spatial=not args.pooled,
                 id_column=args.id_column, allow_incomplete=args.allow_incomplete))
    return 0
