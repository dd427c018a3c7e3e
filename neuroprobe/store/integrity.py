"""Corrupted or truncated chunk files: find them, name them in one line, and say which images to redo.

New stores carry a crc32c checksum after every chunk (zarr v3's ``crc32c`` codec, see
:data:`CHUNK_CODECS`), so a flipped byte fails to decode; a truncated file fails either way. Older
stores without the checksum keep working (a truncated chunk is still found, a flipped byte may not).
:func:`bad_chunks` decodes every chunk that exists (missing ones are unwritten: their fill value
is right); :func:`readable` turns a failed read anywhere into one line naming the bad chunk;
``extract`` drops the image chunks holding bad chunks from the journal and recomputes them.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from ..errors import NeuroprobeError
from ..progress import Progress
from .location import Location

log = logging.getLogger(__name__)

JOURNAL = "journal"
CHUNK_CODECS = (ZstdCodec(level=0, checksum=False), Crc32cCodec())  # zarr's default compressor, then a checksum


@dataclass(frozen=True)
class BadChunk:
    """One chunk file that does not decode: its array, chunk coordinates, file key and image rows."""

    array: str
    coords: tuple[int, ...]
    key: str
    rows: range
    reason: str

    def describe(self) -> str:
        return (f"{self.array} chunk {'.'.join(map(str, self.coords))} (file {self.array}/{self.key}, images "
                f"{self.rows.start}-{self.rows.stop - 1}): {self.reason}")


def arrays(group: zarr.Group, prefix: str = "") -> Iterator[tuple[str, zarr.Array]]:
    """Every array below ``group`` as ('group/name', array)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        members = sorted(group.members(), key=lambda kv: kv[0])
    for name, member in members:
        if isinstance(member, zarr.Group):
            yield from arrays(member, f"{prefix}{name}/")
        else:
            yield f"{prefix}{name}", member


def bad_chunks(store: Any, rows: set[int] | None = None, names: Callable[[str], bool] | None = None, *,
               progress: bool = True) -> list[BadChunk]:
    """Every chunk of the store that exists and does not decode (optionally only chunks covering image
    ``rows``, of the arrays whose names pass ``names``). ``progress=False`` when it only words an error."""
    location = Location.of(store.location if hasattr(store, "location") else store)
    root = location.open_group(mode="r")
    per_entry = int(root.attrs.get("chunk_size", 1))  # journal entries count image chunks, not images
    n_images = int(root.attrs.get("n_images", 0))
    found = []
    chosen = [(name, array) for name, array in arrays(root) if array.ndim and (names is None or names(name))]
    total = sum(math.prod(-(-s // c) for s, c in zip(a.shape, a.chunks)) for _, a in chosen)
    meter = Progress(total, f"checking {location}", "chunk", mode=None if progress else "off")
    for name, array in chosen:
        step = array.chunks[0]
        for coords in itertools.product(*(range(-(-s // c)) for s, c in zip(array.shape, array.chunks))):
            meter.update(1)
            lo = coords[0] * step
            span = range(lo, min(lo + step, array.shape[0]))
            if name == JOURNAL:
                span = range(coords[0] * per_entry, min((coords[0] + 1) * per_entry, n_images))
            if rows is not None and not rows.intersection(span):
                continue
            try:
                array.get_block_selection(coords)
            except Exception as exc:  # noqa: BLE001 - zstd, crc32c and numcodecs errors have no common base
                reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
                found.append(BadChunk(name, coords, array.metadata.encode_chunk_key(coords), span, reason))
    meter.close()
    return found


def corruption_message(store: Any, bad: list[BadChunk]) -> str:
    """The one line for a store with bad chunks: the first one named, how many, and the fix."""
    location = Location.of(store.location if hasattr(store, "location") else store)
    attrs = dict(location.open_group(mode="r").attrs)
    command = attrs.get("command") or "the same command that made it"
    more = f" and {len(bad) - 1} more chunk(s)" if len(bad) > 1 else ""
    return (f"{location}: corrupted chunk {bad[0].describe()}{more}; run {command} to recompute "
            "exactly those images (python -m neuroprobe info STORE --check lists them all)")


@contextlib.contextmanager
def readable(store: Any) -> Iterator[None]:
    """Run a reader; if it fails on a chunk that does not decode, raise one line naming that chunk instead."""
    try:
        yield
    except (NeuroprobeError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        try:
            bad = bad_chunks(store, progress=False)
        except Exception:  # noqa: BLE001 - the store itself is unreadable: the original error says more
            raise exc from None
        if not bad:
            raise
        raise NeuroprobeError(corruption_message(store, bad)) from exc


__all__ = ["CHUNK_CODECS", "BadChunk", "arrays", "bad_chunks", "corruption_message", "readable"]
