"""Tools that need the model itself: receptive fields, occlusion maps, attribution maps and their scores."""
from .localize import GridPointingGame, grid_pointing_game
from .methods import METHODS, attribute
from .occlusion import DiscrepancyMaps, discrepancy_maps
from .receptive_field import theoretical_receptive_fields

__all__ = ["METHODS", "DiscrepancyMaps", "GridPointingGame", "attribute", "discrepancy_maps", "grid_pointing_game",
           "theoretical_receptive_fields"]
