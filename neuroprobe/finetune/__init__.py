"""Fine-tuning a new classifier head, with a confusion matrix (and a checkpoint every command loads)."""
from ..models.heads import find_head, replace_head
from .train import FineTuned, confusion_matrix, finetune

__all__ = ["FineTuned", "confusion_matrix", "find_head", "finetune", "replace_head"]
