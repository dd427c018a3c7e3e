"""Models: names -> ``nn.Module`` + preprocessing + provenance, and what a layer name means in them.

Lives here: ``loading`` (torchvision, timm and the offline model; weights and their sha256),
``checkpoint`` (checkpoints that replay their edits), the edits themselves (``gala``: GALA attention
modules; ``heads``: a new classifier head), ``capture`` (capture points: the pre-activation of a layer,
safe from in-place activations) and ``geometry`` (receptive fields and unit layouts, op by op).

May import: ``neuroprobe.errors`` and third-party libraries only (nothing of the store, the engine or
the capabilities above).
"""
from .capture import Capture, LayerInfo, StopForward, UnitLayout, probe, unit_layouts
from .loading import LoadedModel, Preprocessing, available_models, load_model

__all__ = ["Capture", "LayerInfo", "LoadedModel", "Preprocessing", "StopForward", "UnitLayout", "available_models",
           "load_model", "probe", "unit_layouts"]
