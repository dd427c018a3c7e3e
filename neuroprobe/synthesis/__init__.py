"""Manufactured images that drive or silence units (feature visualization).

May import: ``neuroprobe.maps``, ``neuroprobe.exports``, ``neuroprobe.analysis`` and everything below them
(``neuroprobe.engine``, ``neuroprobe.store``, ``neuroprobe.models``, ``neuroprobe.data``,
``neuroprobe.training``, ``neuroprobe.progress`` and ``neuroprobe.errors``); never each other, the atlas or
the CLI.
"""
from .params import PARAMS, ImageBatch, fourier_image, natural_spectrum, phase_image
from .transforms import Transforms
from .visualize import Visualization, visualize

__all__ = ["PARAMS", "ImageBatch", "Transforms", "Visualization", "fourier_image", "natural_spectrum", "phase_image",
           "visualize"]
