"""Stores: the Zarr layout users open without neuroprobe, and everything that keeps it whole.

Lives here: ``layout`` (extraction stores: groups, arrays, image table, journal; views and HDF5 copy),
``map_store`` (occlusion, saliency and likelihood stores: one ``done`` flag per image), ``kinds`` (which
kind of store a folder holds), ``blocks`` (reading statistics block by block), ``location`` (folders and
fsspec URLs), ``integrity`` (crc32c chunks, ``info --check``), ``lock`` (one writer per store) and
``completeness`` (incomplete stores refused unless asked for).

May import: ``neuroprobe.errors``, ``neuroprobe.data`` (manifests) and ``neuroprobe.models`` (layer
descriptions); never the engine or the capabilities above.
"""
from .completeness import completeness, require_complete
from .layout import SPATIAL, STATS, Store, export_hdf5, open_layer, read_images, summary
from .location import Location, open_group

__all__ = ["SPATIAL", "STATS", "Location", "Store", "completeness", "export_hdf5", "open_group", "open_layer",
           "read_images", "require_complete", "summary"]
