"""Fine-tuning a new classifier head, with a confusion matrix (and a checkpoint every command loads).

May import: ``neuroprobe.maps``, ``neuroprobe.exports``, ``neuroprobe.analysis`` and everything below them
(``neuroprobe.engine``, ``neuroprobe.store``, ``neuroprobe.models``, ``neuroprobe.data``,
``neuroprobe.training``, ``neuroprobe.progress`` and ``neuroprobe.errors``); never each other, the atlas or
the CLI.
"""
from ..models.heads import find_head, replace_head
from .train import FineTuned, confusion_matrix, finetune

__all__ = ["FineTuned", "confusion_matrix", "find_head", "finetune", "replace_head"]
