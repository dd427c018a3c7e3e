"""Tools that need the model itself: receptive fields and occlusion maps (attribution to come)."""
from .occlusion import DiscrepancyMaps, discrepancy_maps
from .receptive_field import theoretical_receptive_fields

__all__ = ["DiscrepancyMaps", "discrepancy_maps", "theoretical_receptive_fields"]
