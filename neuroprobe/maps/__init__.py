"""Tools that need the model itself: receptive fields (and, to come, occlusion and attribution maps)."""
from .receptive_field import theoretical_receptive_fields

__all__ = ["theoretical_receptive_fields"]
