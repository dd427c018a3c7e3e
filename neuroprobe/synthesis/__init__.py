"""Manufactured images that drive or silence units (feature visualization)."""
from .params import PARAMS, ImageBatch, fourier_image, natural_spectrum, phase_image
from .transforms import Transforms
from .visualize import Visualization, visualize

__all__ = ["PARAMS", "ImageBatch", "Transforms", "Visualization", "fourier_image", "natural_spectrum", "phase_image",
           "visualize"]
