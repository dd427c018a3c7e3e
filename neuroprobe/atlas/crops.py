"""Receptive-field crops around each peak, the full images they come from, and sprite sheets of thumbnails.

Images are those the model saw: resized and centre-cropped by the store's preprocessing. A crop is the
unit's theoretical receptive field (size, jump and centre from
:func:`neuroprobe.maps.receptive_field.theoretical_receptive_fields`) centred on the peak position and clipped
to the image; without a field or a peak it is the whole image.
"""
from __future__ import annotations

import io
import math
from collections import OrderedDict
from typing import Sequence

import numpy as np
from PIL import Image

from ..data import ImageDataset, Manifest

GREY = (128, 128, 128)
JPEG_QUALITY = 82


class Pictures:
    """The images the model saw, decoded once and kept (the ``limit`` most recently used): grey where unreadable
    or where the data is gone."""

    def __init__(self, manifest: Manifest | None, preprocessing, limit: int = 4096) -> None:
        self.dataset = ImageDataset(manifest, preprocessing) if manifest is not None else None
        self.crop, self.limit = preprocessing.crop, limit
        self.kept: OrderedDict[int, Image.Image] = OrderedDict()

    def __getitem__(self, row: int) -> Image.Image:
        if row in self.kept:
            self.kept.move_to_end(row)
            return self.kept[row]
        picture = Image.new("RGB", (self.crop, self.crop), GREY)
        if self.dataset is not None:
            _, tensor, ok, _ = self.dataset[row]
            if ok:
                picture = Image.fromarray(tensor.permute(1, 2, 0).numpy())
        self.kept[row] = picture
        if len(self.kept) > self.limit:
            self.kept.popitem(last=False)
        return picture

    def rows(self, rows: Sequence[int]) -> dict[int, Image.Image]:
        return {row: self[row] for row in rows}


def box(peak: tuple[int, int] | None, field: dict | None, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the receptive field centred on ``peak``, inside a ``size`` image."""
    if peak is None or not field or not math.isfinite(field["size_y"]) or not math.isfinite(field["size_x"]):
        return 0, 0, size, size
    y, x = peak
    cy, cx = field["center_y"] + field["jump_y"] * y, field["center_x"] + field["jump_x"] * x
    half_y, half_x = min(field["size_y"], size) / 2, min(field["size_x"], size) / 2
    top, left = round(min(max(cy - half_y, 0), size - 2 * half_y)), round(min(max(cx - half_x, 0), size - 2 * half_x))
    return left, top, left + max(round(2 * half_x), 1), top + max(round(2 * half_y), 1)


def thumbnail(image: Image.Image, where: tuple[int, int, int, int], size: int) -> Image.Image:
    return image.crop(where).resize((size, size), Image.Resampling.BICUBIC)


def sheet(tiles: Sequence[Image.Image | None], columns: int, size: int) -> Image.Image:
    """Tiles row by row, ``columns`` wide; a missing tile stays grey."""
    rows = max(math.ceil(len(tiles) / columns), 1)
    out = Image.new("RGB", (columns * size, rows * size), GREY)
    for i, tile in enumerate(tiles):
        if tile is not None:
            out.paste(tile, ((i % columns) * size, (i // columns) * size))
    return out


def jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def encoded(values: np.ndarray) -> str:
    """A uint8 map as latin-1 hex (2 characters per value), for a canvas overlay drawn in the page."""
    return values.astype(np.uint8).tobytes().hex()
