"""Checkpoints of models that neuroprobe changed (GALA modules inserted, a new head), loadable by every command.

A checkpoint is ``{"state_dict": ..., "neuroprobe": {"model": name, "edits": {...}, ...}}`` saved with
``torch.save``; ``--weights FILE`` (:func:`neuroprobe.models.loading.load_model`) builds the named model, replays the
recorded edits on it, then loads the state dict by name, strictly. Everything in it is tensors, strings and
numbers, so it loads with ``torch.load(weights_only=True)``.

Edits, replayed in this order:

* ``head``: ``{"layer": name, "classes": [...]}``, the classifier replaced by one for these classes
  (:func:`neuroprobe.models.heads.replace_head`);
* ``gala``: ``{"layers": [...], "reduction": r}``, GALA modules before those blocks
  (:func:`neuroprobe.attention.add_gala`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import NeuroprobeError

log = logging.getLogger(__name__)
KEY = "neuroprobe"


def save_checkpoint(module: nn.Module, path: str | Path, model: str, edits: dict[str, Any],
                    **info: Any) -> Path:
    """Save ``module``'s state dict with the edits that rebuild it from ``load_model(model, "none")``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    torch.save({"state_dict": state, KEY: {"model": model, "edits": edits, **info}}, path)
    return path


def checkpoint_info(raw: Any) -> dict[str, Any] | None:
    """The neuroprobe record of a loaded file's contents, or None for a plain state dict."""
    return raw.get(KEY) if isinstance(raw, dict) and isinstance(raw.get(KEY), dict) else None


def apply_edits(module: nn.Module, info: dict[str, Any], model: str, path: str) -> None:
    """Replay a checkpoint's edits on a freshly built ``model``; refuse a checkpoint of another model."""
    if info.get("model") not in (None, model):
        raise NeuroprobeError(f"{path} was trained from {info['model']}, not {model}; pass --model {info['model']}")
    edits = info.get("edits", {})
    unknown = set(edits) - {"gala", "head"}
    if unknown:
        raise NeuroprobeError(f"{path} records edits this neuroprobe does not know ({', '.join(sorted(unknown))}); "
                              "upgrade neuroprobe")
    if "head" in edits:
        from .heads import replace_head

        replace_head(module, edits["head"]["layer"], len(edits["head"]["classes"]))
        log.info("replaced %s by a head for %d classes", edits["head"]["layer"], len(edits["head"]["classes"]))
    if "gala" in edits:
        from .gala import add_gala

        add_gala(module, edits["gala"]["layers"], reduction=int(edits["gala"].get("reduction", 4)))
        log.info("re-created GALA modules before %s", ", ".join(edits["gala"]["layers"]))
