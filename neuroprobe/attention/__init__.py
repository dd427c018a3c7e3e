"""Attention modules trained with importance maps (GALA), harmonization, and human-alignment scores."""
from .alignment import alignment_scores, spearman_rows
from .gala import GALA, add_gala
from .losses import GALAAttentionLoss, HarmonizationLoss, pyramid, standardize_cut

__all__ = ["GALA", "GALAAttentionLoss", "HarmonizationLoss", "add_gala", "alignment_scores", "pyramid",
           "spearman_rows", "standardize_cut"]
