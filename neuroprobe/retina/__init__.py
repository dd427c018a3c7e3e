"""Retinotopic views, likelihood maps, visual search policies and a dual-pathway active-vision model.

May import: ``neuroprobe.maps``, ``neuroprobe.exports``, ``neuroprobe.analysis`` and everything below them
(``neuroprobe.engine``, ``neuroprobe.store``, ``neuroprobe.models``, ``neuroprobe.data``,
``neuroprobe.training``, ``neuroprobe.progress`` and ``neuroprobe.errors``); never each other, the atlas or
the CLI.
"""
from .active import saccades
from .active_report import saccade_report
from .dorsal import ActiveVision, DorsalNetwork, Glimpse, GlimpseEncoder, load_dorsal, save_dorsal
from .dorsal_conv import DorsalConv
from .layouts import Fixations, fixation_grid, fixation_rings, make_layout
from .likelihood import LikelihoodStore, ViewClassifier, ViewSettings, likelihood_maps
from .report import search_report
from .saliency import SaliencyDorsal
from .search import POLICIES, igub, visual_search
from .views import inverse_views, retinotopic_views

__all__ = ["POLICIES", "ActiveVision", "DorsalConv", "DorsalNetwork", "Fixations", "Glimpse", "GlimpseEncoder", "LikelihoodStore",
           "SaliencyDorsal", "ViewClassifier", "ViewSettings", "fixation_grid", "fixation_rings", "igub", "inverse_views",
           "likelihood_maps", "load_dorsal", "make_layout", "retinotopic_views", "saccade_report", "saccades",
           "save_dorsal", "search_report", "visual_search"]
