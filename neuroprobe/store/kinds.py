"""Which kind of store a folder holds, so that no command ever replaces a store of another kind.

``extract`` writes extraction stores; ``occlude``, ``saliency`` and ``search`` write map stores whose
settings sit in the root attributes under their kind. Every writer calls :func:`check_replaceable`
before it opens or replaces ``--out``: ``--overwrite`` replaces a store of the writer's own kind made
with other settings, never a store of another kind, nor a folder that is not a store at all.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import NeuroprobeError
from .location import Location

MAP_KINDS = ("occlusion", "saliency", "likelihood")
KINDS = ("extraction", *MAP_KINDS)
FOREIGN = "foreign"  # a Zarr store that neuroprobe did not make (or whose attributes do not read)


def store_kind(out: str | Path | Location) -> str | None:
    """``extraction``, ``occlusion``, ``saliency``, ``likelihood``, ``foreign``, or None when ``out`` holds no store."""
    out = Location.of(out)
    if not out.is_store():
        return None
    try:
        attrs = dict(out.open_group(mode="r").attrs)
    except Exception:  # noqa: BLE001 - unreadable metadata: not something we may replace
        return FOREIGN
    if "layers" in attrs and "chunk_size" in attrs and "n_images" in attrs:
        return "extraction"
    return next((kind for kind in MAP_KINDS if kind in attrs), FOREIGN)


def described(kind: str) -> str:
    """'an extraction store', 'a saliency store', 'a Zarr store that neuroprobe did not make'."""
    if kind == FOREIGN:
        return "a Zarr store that neuroprobe did not make"
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} store"


def check_replaceable(out: str | Path | Location, kind: str) -> str | None:
    """Refuse ``out`` unless it is absent, empty, a killed remote creation or a ``kind`` store; return what it holds."""
    out = Location.of(out)
    found = store_kind(out)
    if found is None:
        if not out.is_partial() and not out.is_empty():
            raise NeuroprobeError(f"{out} is a non-empty folder that is not a store; choose another --out")
        return None
    if found != kind:
        raise NeuroprobeError(f"{out} is {described(found)}, not {described(kind)}; --overwrite never replaces a store "
                              "of another kind: choose another --out")
    return found
