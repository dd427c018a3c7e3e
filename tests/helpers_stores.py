"""Small real stores (Store.create + write_chunk) with known values, spatial maps and unreadable rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neuroprobe.data import Manifest
from neuroprobe.models.capture import LayerInfo
from neuroprobe.store.layout import Store

STATS = ("min", "mean", "max", "area")


def make_store(path: Path, table: pd.DataFrame, layers: dict[str, dict[str, np.ndarray]], chunk: int = 7,
               failed: np.ndarray | None = None, spatial: dict[str, np.ndarray] | None = None,
               chunks: list[int] | None = None) -> Path:
    """A store of ``layers`` ({name: {stat: (n, units)}}) and float16 ``spatial`` maps ({name: (n, units, y, x)});
    ``failed`` rows are written as unreadable (NaN, status "error"); only ``chunks`` when given (the rest
    not extracted yet)."""
    spatial = spatial or {}
    n = len(table)
    infos = {name: LayerInfo(name, "Synthetic", tuple(spatial[name].shape[1:]) if name in spatial
                             else (v["mean"].shape[1], 3, 3), "pre-activation: output", 1)
             for name, v in layers.items()}
    store = Store.create(path, Manifest(table, path.parent), infos, {"provenance": {"model": "synthetic"}}, chunk,
                         spatial=list(spatial))
    ok = np.ones(n, bool) if failed is None else ~failed
    for c in range(store.n_chunks) if chunks is None else chunks:
        rows = store.chunk_rows(c)
        sl = slice(rows.start, rows.stop)
        stats = {name: np.stack([v[s][sl] for s in STATS]).astype(np.float32).copy() for name, v in layers.items()}
        maps = {name: m[sl].astype(np.float16).copy() for name, m in spatial.items()}
        store.write_chunk(c, stats, maps, ok[sl].copy(), ["" if o else "broken" for o in ok[sl]])
    return path


def synthetic(path: Path, n: int = 40, seed: int = 0, chunk: int = 7,
              chunks: list[int] | None = None) -> tuple[Path, pd.DataFrame, dict, dict, np.ndarray]:
    """A store with a spatial layer ``conv`` (5 units, 3x4 maps) and a pooled layer ``fc`` (6 units); 4 rows
    unreadable; image table: path (stems unique), class_name, class_index, a bool column."""
    rng = np.random.default_rng(seed)
    classes = np.array(["cat", "dog", "car", "tree"])
    label = rng.integers(0, 4, n)
    table = pd.DataFrame({"path": [f"{classes[k]}/img{i:03d}.jpg" for i, k in enumerate(label)],
                          "class_name": classes[label], "class_index": label.astype(np.int64),
                          "flipped": rng.uniform(size=n) < 0.5})
    failed = np.zeros(n, bool)
    failed[[2, 9, 10, 31]] = True
    maps = (rng.normal(size=(n, 5, 3, 4)) + label[:, None, None, None]).astype(np.float16)
    values = {}
    for name, units in (("conv", 5), ("fc", 6)):
        if name == "conv":
            flat = maps.astype(np.float32).reshape(n, 5, -1)
            stats = {"min": flat.min(2), "mean": flat.mean(2), "max": flat.max(2), "area": (flat > 0).mean(2)}
        else:
            mean = rng.normal(size=(n, units)) * 3 + label[:, None] + 10
            stats = {"min": mean - 1, "mean": mean, "max": mean + 1, "area": rng.uniform(size=(n, units))}
        stats = {k: v.astype(np.float32) for k, v in stats.items()}
        for v in stats.values():
            v[failed] = np.nan
        values[name] = stats
    maps[failed] = np.nan
    make_store(path, table, values, chunk=chunk, failed=failed, spatial={"conv": maps}, chunks=chunks)
    return path, table, values, {"conv": maps}, failed
