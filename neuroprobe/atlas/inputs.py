"""The optional inputs of an atlas: ``visualize`` folders, an occlusion store and an ``rf`` folder.

Each reader checks its input and names the fix in a one-line :class:`NeuroprobeError`; each gives a
fingerprint, so that a rebuild redoes a layer when one of its inputs changed.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import NeuroprobeError
from ..store.kinds import store_kind
from ..store.location import open_group


def fingerprint_files(paths: Sequence[Path]) -> str:
    """sha256 over the names, sizes and modification times of ``paths`` (cheap; a changed file changes it)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


@dataclass
class Manufactured:
    """A ``visualize`` output folder for one layer: unit -> {direction: image path}."""

    folder: Path
    images: dict[int, dict[str, Path]]
    fingerprint: str


def read_visualize(folder: str | Path) -> Manufactured:
    folder = Path(folder)
    table_path = folder / "visualize.csv"
    if not table_path.is_file():
        raise NeuroprobeError(f"{folder} has no visualize.csv; give a folder written by: python -m neuroprobe "
                              "visualize --layer LAYER --out DIR")
    table = pd.read_csv(table_path)
    missing = {"unit", "direction", "file"} - set(table.columns)
    if missing:
        raise NeuroprobeError(f"{table_path} lacks column(s) {', '.join(sorted(missing))}; rerun visualize")
    images: dict[int, dict[str, Path]] = {}
    for row in table.itertuples(index=False):
        path = folder / str(row.file)
        if path.is_file():
            images.setdefault(int(row.unit), {})[str(row.direction)] = path
    files = [table_path] + [p for d in images.values() for p in d.values()]
    return Manufactured(folder, images, fingerprint_files(files))


def visualize_layers(values: Sequence[str] | None, layers: Sequence[str]) -> dict[str, Manufactured]:
    """``--visualize LAYER=DIR`` (or DIR alone when the atlas has one layer) -> layer -> its folder."""
    out = {}
    for value in values or []:
        layer, _, folder = value.partition("=")
        if layer not in layers or not folder:
            if len(layers) != 1:
                raise NeuroprobeError(f"--visualize {value}: write LAYER=DIR with LAYER one of the atlas's layers "
                                      f"({', '.join(layers)}); DIR alone only when the atlas has one layer")
            layer, folder = layers[0], value
        out[layer] = read_visualize(folder)
    return out


@dataclass
class Occlusion:
    """An occlusion store: its layer and units, and where each of its images sits (by path)."""

    store: str
    layer: str
    units: list[int]
    rows: dict[str, int]
    done: np.ndarray
    fingerprint: str

    def maps(self, image_path: str, units: Sequence[int]) -> dict[int, np.ndarray]:
        """unit -> discrepancy map (y, x) of the image at ``image_path``, for the units it holds."""
        row = self.rows.get(image_path)
        if row is None or not self.done[row]:
            return {}
        block = open_group(self.store)["discrepancy"][row]
        return {u: block[self.units.index(u)] for u in units if u in self.units}


def read_occlusion(store: str | Path) -> Occlusion:
    if store_kind(store) != "occlusion":
        raise NeuroprobeError(f"{store} is not an occlusion store; make one with: python -m neuroprobe occlude "
                              "--layer LAYER --data DATA --out STORE")
    group = open_group(store)
    settings = dict(group.attrs["occlusion"])
    units = [int(u) for u in group["discrepancy"].attrs.get("units", settings["units"])]
    paths = group["images/path"][:]
    done = group["done"][:].astype(bool)
    digest = hashlib.sha256(repr((settings, done.tobytes())).encode()).hexdigest()
    return Occlusion(str(store), str(settings["layer"]), units, {str(p): i for i, p in enumerate(paths)}, done, digest)


@dataclass
class EmpiricalFields:
    folder: str
    sizes: dict[tuple[str, int], float]
    fingerprint: str


def read_rf(folder: str | Path) -> EmpiricalFields:
    path = Path(folder) / "rf.csv"
    if not path.is_file():
        raise NeuroprobeError(f"{folder} has no rf.csv; give a folder written by: python -m neuroprobe rf STORE "
                              "--out DIR")
    table = pd.read_csv(path)
    if not {"layer", "unit", "empirical_rf_px"} <= set(table.columns):
        raise NeuroprobeError(f"{path} lacks the columns layer, unit, empirical_rf_px; rerun rf")
    sizes = {(str(r.layer), int(r.unit)): float(r.empirical_rf_px) if math.isfinite(r.empirical_rf_px) else math.nan
             for r in table.itertuples(index=False)}
    return EmpiricalFields(str(folder), sizes, fingerprint_files([path]))
