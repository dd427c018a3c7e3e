"""The model a store was made with, rebuilt from the provenance the store records."""
from __future__ import annotations

from pathlib import Path

from ..errors import NeuroprobeError
from ..models.loading import LoadedModel, Preprocessing, load_model
from ..store.location import open_group


def model_of(store: str | Path) -> LoadedModel:
    """The model a store was made with, from its provenance, with the store's own preprocessing.

    Extraction stores keep provenance and preprocessing at the top of their attributes; map stores
    (occlusion, saliency, likelihood) inside their settings, where they are read from as well.
    """
    attrs = dict(open_group(store).attrs)
    if "provenance" not in attrs:
        settings = [v for v in attrs.values() if isinstance(v, dict) and "provenance" in v]
        if not settings:
            raise NeuroprobeError(f"{store} does not record the model it was made with; pass model=load_model(...)")
        attrs = {**settings[0], **attrs}
    provenance = attrs["provenance"]
    weights = provenance.get("weights")
    if provenance.get("weights_package"):  # the offline model's shipped file
        weights = None
    elif weights and weights != "none" and provenance.get("weights_sha256") and not Path(weights).exists():
        raise NeuroprobeError(f"the weights file {weights} of this store is gone; pass model=load_model(...)")
    loaded = load_model(provenance["model"], weights)
    if provenance.get("weights_sha256") and loaded.provenance.get("weights_sha256") != provenance["weights_sha256"]:
        raise NeuroprobeError("the weights file changed since the store was made (sha256 differs); "
                              "pass model=load_model(...) with the original weights")
    prep = attrs.get("preprocessing")
    if prep:
        loaded.preprocessing = Preprocessing(**{**prep, "mean": tuple(prep["mean"]), "std": tuple(prep["std"])})
    return loaded
