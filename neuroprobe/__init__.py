"""neuroprobe: what the units of a CNN respond to, where they look, and how selective they are.

Five lines for the common case::

    import neuroprobe as npb
    store = npb.extract("efficientnet_lite0", "images/", ["blocks.3", "bn2"], "run.zarr")
    ds = npb.open_layer(store, "bn2")          # xarray Dataset: min/mean/max/area (image, unit)
    images = npb.read_images(store)            # pandas DataFrame: manifest + status + reason
"""
from .engine import extract
from .errors import NeuroprobeError
from .models import Capture, LayerInfo, LoadedModel, Preprocessing, load_model, probe
from .store import export_hdf5, open_layer, read_images, summary
from .version import __version__

__all__ = ["Capture", "LayerInfo", "LoadedModel", "NeuroprobeError", "Preprocessing", "export_hdf5", "extract",
           "load_model", "open_layer", "probe", "read_images", "summary", "__version__"]
