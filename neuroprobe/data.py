"""Image manifests (folder or CSV) and robust decoding: bad files are recorded, never fatal."""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFile

from .errors import NeuroprobeError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb limit (about 0.25 GB of RGB pixels)
RESERVED_COLUMNS = ("status", "reason")  # written by the store beside the manifest's columns
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class Manifest:
    """The image table: one row per image, ``path`` relative to ``root``, other columns carried."""

    table: pd.DataFrame
    root: Path

    def __len__(self) -> int:
        return len(self.table)

    def absolute(self, i: int) -> Path:
        return self.root / self.table["path"].iat[i]

    def subset(self, rows) -> "Manifest":
        """The manifest of ``rows`` (positions, or a slice), renumbered from 0, same root."""
        table = self.table.iloc[rows] if isinstance(rows, slice) else self.table.iloc[list(rows)]
        return Manifest(table.reset_index(drop=True), self.root)

    def fingerprint(self) -> str:
        """sha256 of the table's CSV form: identifies the data without reading every image."""
        return hashlib.sha256(self.table.to_csv(index=False).encode()).hexdigest()


def read_manifest(data: str | Path) -> Manifest:
    """A folder (ImageFolder layout -> ``label`` column, or flat) or a CSV with a ``path`` column."""
    source = Path(data)
    if not source.exists():
        raise NeuroprobeError(f"data not found: {data} (give a folder of images or a CSV with a 'path' column)")
    if source.is_dir():
        table = _scan_folder(source)
        root = source
    else:
        try:
            # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark; Windows line endings parse as usual
            table = pd.read_csv(source, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
        except Exception as exc:
            raise NeuroprobeError(f"cannot read {data} as CSV ({exc}); give a CSV with a 'path' column or a folder") from exc
        if "path" not in table.columns:
            raise NeuroprobeError(f"{data} has no 'path' column (columns: {', '.join(map(str, table.columns))}); "
                                  "add one with image paths relative to the CSV's folder")
        clash = [str(c) for c in table.columns if c in RESERVED_COLUMNS or "/" in str(c)]
        if clash:
            raise NeuroprobeError(f"{data} has column(s) {', '.join(clash)}: the store writes its own "
                                  f"{' and '.join(RESERVED_COLUMNS)} and column names cannot hold '/'; rename them")
        table["path"] = table["path"].astype(str)
        root = source.parent
    if len(table) == 0:
        raise NeuroprobeError(f"no images in {data}; give a folder holding images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                              "or a CSV with at least one row")
    repeated = int(table["path"].duplicated().sum())
    if repeated:
        log.warning("%d row(s) of %s repeat an earlier path; each row is kept (store rows follow the manifest), "
                    "e.g. %s", repeated, data, table["path"][table["path"].duplicated()].iat[0])
    return Manifest(table.reset_index(drop=True), root.resolve())


def _walk(folder: Path):
    """Every file below ``folder``, through symlinked folders too (each real folder once: no loops), hidden
    files and folders (".ipynb_checkpoints", ".thumbs") left out."""
    seen = set()
    for current, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield from (Path(current) / n for n in names if not n.startswith("."))


def _scan_folder(folder: Path) -> pd.DataFrame:
    files = sorted(p for p in _walk(folder) if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    rel = [p.relative_to(folder) for p in images]
    nested = [r for r in rel if len(r.parts) > 1]
    if nested and len(nested) == len(rel):
        classes = sorted({r.parts[0] for r in rel})
        index = {c: i for i, c in enumerate(classes)}
        return pd.DataFrame({"path": [r.as_posix() for r in rel], "label": [r.parts[0] for r in rel],
                             "label_index": [index[r.parts[0]] for r in rel]})
    return pd.DataFrame({"path": [r.as_posix() for r in rel]})


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16-bit and float scaled to 8 bits, transparency composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0  # "I" too: Pillow opens 16-bit PGM/PPM/TIFF as "I", scaled to 0..65535, dark or not
        if image.mode == "F":  # float: [0, 1], [0, 255] or 16-bit range, judged by the largest value
            peak = values.max(initial=0)
            top = 1.0 if peak <= 1.0 else 255.0 if peak <= 255 else 65535.0
        image = Image.fromarray(np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):  # PNG colour keys too
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image(path: Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``path`` fully into RGB; raises ``ValueError``/``OSError`` with a short reason."""
    with Image.open(path) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ValueError(f"decompression bomb refused: {width}x{height} pixels > {max_pixels}")
        image.load()
        return to_rgb(image)


def failure_reason(exc: BaseException) -> str:
    """The one-line reason recorded for an image that could not be read."""
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]


class ImageDataset(torch.utils.data.Dataset):
    """Row i of the manifest -> (i, uint8 image, ok, reason). Failures give zeros and ok=False."""

    def __init__(self, manifest: Manifest, preprocessing, max_pixels: int = MAX_PIXELS) -> None:
        self.manifest = manifest
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels
        self.blank = torch.zeros(3, preprocessing.crop, preprocessing.crop, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int):
        path = self.manifest.absolute(i)
        try:
            image = self.preprocessing.to_uint8(load_image(path, self.max_pixels))
            return i, image, True, ""
        except Exception as exc:  # unreadable, truncated, empty, not an image, bomb: record, go on
            reason = failure_reason(exc)
            log.debug("skipping %s: %s", path, reason)
            return i, self.blank, False, reason
