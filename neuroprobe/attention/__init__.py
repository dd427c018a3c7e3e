"""Attention modules trained with importance maps (GALA), harmonization, and human-alignment scores.

May import: ``neuroprobe.maps``, ``neuroprobe.exports``, ``neuroprobe.analysis`` and everything below them
(``neuroprobe.engine``, ``neuroprobe.store``, ``neuroprobe.models``, ``neuroprobe.data``,
``neuroprobe.training``, ``neuroprobe.progress`` and ``neuroprobe.errors``); never each other, the atlas or
the CLI.
"""
from ..models.gala import GALA, add_gala
from .align_report import align
from .alignment import CLICKME_CEILING, alignment_scores, alignment_summary, spearman_rows, split_half_ceiling
from .clickme import read_clickme_npz, read_clickme_tfrecords
from .losses import GALAAttentionLoss, HarmonizationLoss, pyramid, standardize_cut
from .train import train_attention

__all__ = ["CLICKME_CEILING", "GALA", "GALAAttentionLoss", "HarmonizationLoss", "add_gala", "align", "alignment_scores",
           "alignment_summary", "pyramid", "read_clickme_npz", "read_clickme_tfrecords", "spearman_rows",
           "split_half_ceiling", "standardize_cut", "train_attention"]
