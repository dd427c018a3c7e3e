"""Tools that need the model itself: receptive fields, occlusion maps, attribution maps and their scores.

Lives here: ``occlusion`` and ``occlusion_store`` (discrepancy maps), ``receptive_field`` and ``empirical_rf``
(theoretical and measured fields), ``attribution``, ``methods``, ``dff``, ``feedback`` and ``activations``
(attribution maps), ``saliency_store``, ``boxes``, ``pointing``, ``localize`` (weakly supervised localization
and pointing games) and their reports and figures.

May import: ``neuroprobe.analysis`` and everything below it (``neuroprobe.engine``, ``neuroprobe.store``,
``neuroprobe.models``, ``neuroprobe.data``, ``neuroprobe.training``, ``neuroprobe.progress`` and
``neuroprobe.errors``); never exports or the capabilities above (retina, attention, synthesis, finetune,
atlas).
"""
from .localize import GridPointingGame, grid_pointing_game
from .methods import METHODS, attribute
from .occlusion import DiscrepancyMaps, discrepancy_maps
from .receptive_field import theoretical_receptive_fields

__all__ = ["METHODS", "DiscrepancyMaps", "GridPointingGame", "attribute", "discrepancy_maps", "grid_pointing_game",
           "theoretical_receptive_fields"]
