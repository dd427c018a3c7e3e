"""``build``: a store -> a static site (index, one page per layer, one generic page per unit) that opens offline.

Steps: check the inputs; fingerprint each layer's inputs and skip the layers the manifest says are done;
project the size; the numbers (``collect``); the peaks (``peaks``); crops, full images and sprite sheets
(``crops``); data chunks, pages and the ``units.csv``/``units.json`` exports (``site``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shlex
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ..data import Manifest
from ..errors import NeuroprobeError
from ..progress import Progress
from ..store.completeness import require_complete
from ..store.layout import open_layer, read_images
from ..store.location import Location, open_group
from ..version import __version__
from . import crops, inputs, site
from . import peaks as peak_finder
from .collect import LayerNumbers, Options, collect, label_column

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
CHUNK = 64            # units per data chunk and per sprite sheet
GRID_COLUMNS = 8      # thumbnails per row of a grid sprite sheet
PROFILES = ("full", "lite")
BYTES_PER_PIXEL = 0.35  # JPEG thumbnails at quality 82: ~0.3 measured (benchmarks/atlas.py), rounded up


def build(store: str | Path, out: str | Path, *, categories: Sequence[str] = ("dog",),
          layers: Sequence[str] | None = None, units: Sequence[int] | None = None, stat: str = "mean", k: int = 9,
          n: int = 50, column: str | None = None, mapping: str | Path | None = None, normalization: str = "minmax",
          threshold: float = 0.65, permutations: int = 1000, seed: int = 0, thumb_size: int | None = None,
          profile: str = "full", visualize: Sequence[str] | None = None, synthesize: bool = False,
          synthesize_steps: int = 256, occlusion: str | Path | None = None, rf: str | Path | None = None,
          device: str | None = None, allow_incomplete: bool = False, command: str | None = None) -> dict:
    """Write the atlas of ``store`` into ``out``; return a summary (layers built and skipped, files, bytes).

    The numbers are ``report``'s (same :func:`neuroprobe.analysis.analyze` call, same defaults) for each of
    ``categories``. ``visualize``: ``LAYER=DIR`` folders written by ``visualize`` (DIR alone for a one-layer
    atlas); ``synthesize``: run it for every unit shown (slow on a CPU). ``occlusion``: an occlusion store;
    ``rf``: a folder written by ``rf``. A rebuild redoes only the layers whose inputs changed.
    """
    if profile not in PROFILES:
        raise NeuroprobeError(f"--profile must be one of {', '.join(PROFILES)}, not '{profile}'")
    thumb = thumb_size or (64 if profile == "full" else 48)
    if thumb < 8 or thumb > 512 or k < 1 or n < 1:
        raise NeuroprobeError("--thumb-size must lie in 8..512 and --k and --n must be at least 1")
    if mapping is not None and not isinstance(mapping, dict) and not Path(mapping).is_file():
        raise NeuroprobeError(f"--category-map {mapping} does not exist; give a CSV with columns label,category")
    state = require_complete(store, allow_incomplete)
    attrs = dict(open_group(store).attrs)
    stored = list(attrs["layers"])
    names = list(dict.fromkeys(layers or stored))
    for name in names:
        open_layer(store, name)  # one line naming the stored layers when one is unknown
    ids = {name: f"L{stored.index(name)}" for name in names}
    options = Options(categories=tuple(categories), stat=stat, k=k, n=n, column=column, mapping=mapping,
                      normalization=normalization, threshold=threshold, permutations=permutations, seed=seed,
                      bins=20 if profile == "full" else 10, allow_incomplete=allow_incomplete)
    images = read_images(store)
    manufactured = inputs.visualize_layers(visualize, names)
    occluded = inputs.read_occlusion(occlusion) if occlusion else None
    empirical = inputs.read_rf(rf) if rf else None
    out = Path(out)
    writer = site.Writer(out)
    store_print = _store_fingerprint(store, attrs)
    shape = {name: dict(open_group(store)[name].attrs) for name in names}
    unit_lists = {name: _units(units, int(shape[name]["units"]), name) for name in names}
    settings = {"schema": SCHEMA_VERSION, "version": __version__, "code": _code_fingerprint(), "store": store_print,
                "thumb": thumb, "profile": profile, "options": {k_: str(v) for k_, v in vars(options).items()},
                "empirical": empirical.fingerprint if empirical else None, "synthesize": synthesize,
                "mapping": hashlib.sha256(Path(mapping).read_bytes()).hexdigest()
                if mapping and not isinstance(mapping, dict) and Path(mapping).is_file() else None}
    prints = {}
    for name in names:
        extra = {"units": unit_lists[name], "visualize": manufactured[name].fingerprint if name in manufactured else None,
                 "occlusion": occluded.fingerprint if occluded and occluded.layer == name else None}
        prints[name] = hashlib.sha256(json.dumps([settings, name, extra], sort_keys=True).encode()).hexdigest()
    todo = [name for name in names if not writer.layer_done(ids[name], prints[name])]
    total_units = sum(len(unit_lists[name]) for name in todo)
    projected = _projected(total_units, k, thumb, profile, len(images), attrs, shape)
    log.info("atlas of %d layer(s), %d to build (%d units), %d done before; projected size of what is built: "
             "%.1f MB", len(names), len(todo), total_units, len(names) - len(todo), projected / 1e6)

    model = _model(store) if todo else None
    fields = _fields(model, todo, attrs)
    if synthesize and todo and model is None:
        raise NeuroprobeError("--synthesize needs the store's model, which could not be loaded; pass --visualize "
                              "LAYER=DIR with folders written by: python -m neuroprobe visualize")
    if synthesize and todo:
        manufactured.update(_synthesize(store, out, todo, unit_lists, ids, model, synthesize_steps, device,
                                        manufactured))
    numbers = collect(store, todo, options, units, {n_: f["size"] for n_, f in fields.items()},
                      empirical.sizes if empirical else None, images) if todo else {}
    manifest = _manifest(images, attrs)
    needs = {name: _pairs(numbers[name], profile) for name in todo}
    spatial = [s for s in attrs.get("spatial_layers", []) if s in todo]
    found = peak_finder.find(store, todo, needs, spatial, model, manifest, profile == "full", device)
    preprocessing = model.preprocessing if model is not None else _preprocessing(attrs)
    pictures = crops.Pictures(manifest, preprocessing)
    labels = images[label_column(images)].astype(str).to_numpy()
    paths = images["path"].astype(str).to_numpy() if "path" in images else np.array([""] * len(images))
    for name in todo:
        files = _write_layer(writer, name, ids[name], numbers[name], found, fields.get(name), thumb,
                             profile, pictures, labels, paths, manufactured.get(name),
                             occluded if occluded and occluded.layer == name else None, options)
        writer.finish_layer(ids[name], prints[name], files)
    parts = {name: json.loads((out / ".atlas" / f"{ids[name]}.json").read_text()) for name in names}
    meta = _meta(store, out, attrs, names, ids, unit_lists, options, thumb, profile, state, manufactured, occluded,
                 empirical, command or _command(store, out, names, options, k, thumb, profile),
                 {name: part["rf"] for name, part in parts.items()})
    _write_pages(writer, meta)
    _write_exports(writer, [parts[name] for name in names], meta)
    writer.save()
    size = writer.size()
    log.info("atlas written to %s: %d file(s) written, %d unchanged, %.1f MB", out, writer.written, writer.kept,
             size / 1e6)
    return {"out": str(out), "layers": names, "built": todo, "skipped": [n_ for n_ in names if n_ not in todo],
            "written": writer.written, "unchanged": writer.kept, "bytes": size, "projected_bytes": projected}


def _units(units: Sequence[int] | None, count: int, layer: str) -> list[int]:
    if units is None:
        return list(range(count))
    bad = [u for u in units if not 0 <= u < count]
    if bad and len(bad) == len(units):
        raise NeuroprobeError(f"--units: layer '{layer}' has units 0..{count - 1}; none of the units given is there")
    return [int(u) for u in units if 0 <= u < count]


def _code_fingerprint() -> str:
    """sha256 of the atlas's own code and templates: a new neuroprobe rebuilds the layers it would draw differently."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".j2", ".js", ".css"):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _store_fingerprint(store, attrs: dict) -> str:
    group = open_group(store)
    digest = hashlib.sha256(json.dumps(attrs, sort_keys=True, default=str).encode())
    digest.update(np.asarray(group["journal"][:]).tobytes())
    digest.update("".join(map(str, group["images/status"][:])).encode())
    return digest.hexdigest()


def _projected(units: int, k: int, thumb: int, profile: str, n_images: int, attrs: dict, shape: dict) -> int:
    per_unit_tiles = (2 * k if profile == "full" else k) + 1
    tiles = units * per_unit_tiles * thumb * thumb * BYTES_PER_PIXEL
    crop = attrs.get("preprocessing", {}).get("crop", 224)
    full = min(n_images, units * 2 * k) * crop * crop * 0.35
    data = units * (600 + 2 * k * 110)
    return int(tiles + full + data)


def _model(store):
    """The store's model, or None (then crops are whole images and no field is known)."""
    from ..engine.provenance import model_of

    try:
        return model_of(store)
    except Exception as exc:  # noqa: BLE001 - an unknown or absent model: the atlas still shows the numbers
        log.warning("the store's model could not be loaded (%s): crops are whole images and receptive fields "
                    "unknown", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None


def _fields(model, layers: Sequence[str], attrs: dict) -> dict[str, dict]:
    """layer -> theoretical field (size, size_y, size_x, jump, centre) where it can be followed."""
    if model is None:
        return {}
    from ..maps.receptive_field import theoretical_receptive_fields

    out = {}
    for layer in layers:
        try:
            row = theoretical_receptive_fields(model.module, [layer], model.preprocessing.crop).iloc[0].to_dict()
        except Exception as exc:  # noqa: BLE001 - a layer the geometry tracker cannot follow: no field
            log.info("layer %s: no theoretical receptive field (%s)", layer, exc)
            continue
        row["size"] = float(max(row["size_y"], row["size_x"]))
        out[layer] = row
    return out


def _preprocessing(attrs: dict):
    from ..models.loading import Preprocessing

    prep = attrs.get("preprocessing")
    if not prep:
        return Preprocessing()
    return Preprocessing(**{**prep, "mean": tuple(prep["mean"]), "std": tuple(prep["std"])})


def _manifest(images: pd.DataFrame, attrs: dict) -> Manifest | None:
    root = attrs.get("data_root")
    if not root or not Path(root).is_dir() or "path" not in images:
        return None
    return Manifest(images.reset_index(drop=True), Path(root))


def _pairs(numbers: LayerNumbers, profile: str) -> list[peak_finder.Pair]:
    pairs = []
    for u in numbers.units:
        pairs += [(image, u, "top") for image, _ in numbers.top[u]]
        if profile == "full":
            pairs += [(image, u, "bottom") for image, _ in numbers.bottom[u]]
    return pairs


def _synthesize(store, out: Path, layers, unit_lists, ids, model, steps: int, device, have) -> dict:
    from ..synthesis.run import visualize_run

    made = {}
    for layer in layers:
        if layer in have:
            continue
        folder = out / ".atlas" / "visualize" / ids[layer]
        if not (folder / "visualize.csv").is_file():
            log.info("manufacturing max and min images of %d unit(s) of %s", len(unit_lists[layer]), layer)
            visualize_run(folder, layer=layer, units=unit_lists[layer], model=model, steps=steps, direction="both",
                          device=device)  # without the store: no figures of natural images the atlas shows anyway
        made[layer] = inputs.read_visualize(folder)
    return made


def _write_layer(writer: site.Writer, name: str, layer_id: str, numbers: LayerNumbers, found, field,
                 thumb: int, profile: str, pictures: crops.Pictures, labels, paths, manufactured, occluded,
                 options: Options) -> list[str]:
    """Sprites, chunk scripts, the grid script and the layer's export rows; the files written."""
    files: list[str] = []
    units = numbers.units
    at = found.at.get(name, {})
    maps = found.maps.get(name, {})
    grid_shape = found.grid.get(name)
    columns = options.k * (2 if profile == "full" else 1)
    chunks = math.ceil(len(units) / CHUNK)

    def put(relative: str, data: bytes) -> None:
        writer.write(relative, data)
        files.append(relative)

    export = []
    with Progress(len(units), f"atlas {name}", "unit") as meter:
        for c in range(chunks):
            chunk_units = units[c * CHUNK:(c + 1) * CHUNK]
            rows = sorted({image for u in chunk_units for image, _ in numbers.top[u] + numbers.bottom[u]})
            shown = pictures.rows(rows)
            for row in rows:
                if f"img/{row}.jpg" not in writer.seen:  # once per build, whichever layer shows it first
                    put(f"img/{row}.jpg", crops.jpeg(shown[row], 88))
                else:
                    files.append(f"img/{row}.jpg")
            tiles, grid_tiles, records = [], [], []
            for r, u in enumerate(chunk_units):
                record = _record(numbers, u, r, at, maps, grid_shape, field, shown, thumb, labels, paths, profile,
                                 tiles, grid_tiles, columns, options.k)
                if manufactured and u in manufactured.images:
                    record["vis"] = {}
                    for direction, source in manufactured.images[u].items():
                        relative = f"vis/{layer_id}/u{u}_{direction}.jpg"
                        with Image.open(source) as picture:
                            put(relative, crops.jpeg(picture, 90))
                        record["vis"][direction] = relative
                if occluded is not None:
                    record["occ"] = _occlusion(occluded, numbers.top[u], u, paths)
                records.append(record)
                export.append(_export_row(numbers, u, record))
            sprite = f"sprites/{layer_id}/c{c}.jpg"
            put(sprite, crops.jpeg(crops.sheet(tiles, columns, thumb)))
            put(f"sprites/{layer_id}/g{c}.jpg", crops.jpeg(crops.sheet(grid_tiles, GRID_COLUMNS, thumb)))
            put(f"data/{layer_id}/c{c}.js", site.assignment("ATLAS_CHUNKS", f"{layer_id}/{c}", {
                "layer": name, "sprite": sprite, "size": thumb, "columns": columns, "units": records}))
            meter.update(len(chunk_units))
    grid = {"layer": name, "units": units, "fields": [f["key"] for f in numbers.fields],
            "values": [numbers.values[:, j] for j in range(len(numbers.fields))],
            "classes": [", ".join(label for label, _ in numbers.classes[u]) for u in units],
            "chunk": CHUNK, "columns": GRID_COLUMNS, "size": thumb}
    put(f"data/{layer_id}/grid.js", site.assignment("ATLAS_GRID", layer_id, grid))
    put(f".atlas/{layer_id}.json", site.script_json({"fields": numbers.fields, "rows": export,
                                                   "rf": field["size"] if field else None}).encode())
    return sorted(set(files))


def _record(numbers: LayerNumbers, u: int, r: int, at, maps, grid_shape, field, pictures, thumb, labels, paths,
            profile, tiles, grid_tiles, columns, k) -> dict:
    """One unit's data for its page; appends its crops to ``tiles`` (one sprite row) and ``grid_tiles``."""
    row_tiles: list = [None] * columns
    shown = {"top": [], "bottom": []}
    for direction, ranked in (("top", numbers.top[u]), ("bottom", numbers.bottom[u])):
        for rank, (image, value) in enumerate(ranked):
            peak = at.get((image, u, direction))
            picture = pictures.get(image)
            size = picture.size[0] if picture is not None else 224
            where = crops.box(peak, field, size)
            entry = {"i": image, "v": value, "l": labels[image], "p": paths[image], "b": list(where),
                     "s": direction == "top" or profile == "full"}
            if peak is not None:
                entry["at"] = list(peak)
            if direction == "top" and (image, u) in maps:
                entry["m"] = crops.encoded(maps[(image, u)])
                entry["mh"], entry["mw"] = grid_shape
            column = rank if direction == "top" else k + rank
            if entry["s"] and picture is not None and column < columns:
                row_tiles[column] = crops.thumbnail(picture, where, thumb)
            shown[direction].append(entry)
    tiles.extend(row_tiles)
    grid_tiles.append(row_tiles[0])
    return {"u": u, "row": r, "v": numbers.values[numbers.units.index(u)], "top": shown["top"],
            "bottom": shown["bottom"], "hist": numbers.hist[u], "classes": numbers.classes[u],
            "opp": numbers.opponent[u], "pref": numbers.preferred.get(u),
            "pref_label": numbers.class_names.get(numbers.preferred.get(u))}


def _occlusion(occluded: inputs.Occlusion, top, u: int, paths) -> list[dict]:
    out = []
    for image, _ in top:
        got = occluded.maps(paths[image], [u])
        if u in got:
            values = got[u]
            out.append({"i": image, "m": crops.encoded(peak_finder.scaled(values)), "h": int(values.shape[0]),
                        "w": int(values.shape[1])})
    return out


def _export_row(numbers: LayerNumbers, u: int, record: dict) -> dict:
    row = {"layer": numbers.layer, "unit": u}
    row.update({f["key"]: v for f, v in zip(numbers.fields, record["v"])})
    row["csi_class"] = record["pref"]
    row["top_classes"] = "; ".join(f"{label} ({count})" for label, count in record["classes"])
    row["top_images"] = " ".join(f"{e['i']}:{e['v']:.6g}" for e in record["top"])
    row["bottom_images"] = " ".join(f"{e['i']}:{e['v']:.6g}" for e in record["bottom"])
    return row


def _relative(store, out: Path) -> str:
    location = Location.of(store)
    if location.remote:
        return str(location)
    return os.path.relpath(Path(store).resolve(), out.resolve())


def _command(store, out, names, options: Options, k, thumb, profile) -> str:
    parts = ["python", "-m", "neuroprobe", "atlas", str(store), "--out", str(out), "--layers", *names,
             "--category", *options.categories, "--stat", options.stat, "--k", str(k), "--n", str(options.n),
             "--thumb-size", str(thumb), "--profile", profile]
    return shlex.join(parts)


def _report_command(store, layer, options: Options, category: str) -> str:
    parts = ["python", "-m", "neuroprobe", "report", str(store), "--category", category, "--layers", layer,
             "--stat", options.stat, "--normalization", options.normalization, "--threshold", f"{options.threshold:g}",
             "--permutations", str(options.permutations), "--seed", str(options.seed), "--k", str(options.k),
             "--n", str(options.n)]
    if options.column:
        parts += ["--category-column", options.column]
    if options.mapping:
        parts += ["--category-map", str(options.mapping)]
    if options.allow_incomplete:
        parts.append("--allow-incomplete")
    return shlex.join(parts + ["--out", "report"])


def _meta(store, out: Path, attrs, names, ids, unit_lists, options: Options, thumb, profile, state, manufactured,
          occluded, empirical, command, rf_sizes) -> dict:
    from .collect import fields_for

    provenance = attrs.get("provenance", {})
    return {
        "schema_version": SCHEMA_VERSION, "neuroprobe": __version__, "store": _relative(store, out),
        "model": provenance.get("model"), "weights": provenance.get("weights"),
        "weights_sha256": provenance.get("weights_sha256"), "provenance": provenance,
        "images": int(attrs.get("n_images", 0)), "completeness": f"{state.label}: {state.done} of {state.total} images", "created": attrs.get("created"),
        "store_command": attrs.get("command"), "capture": attrs.get("capture"),
        "manifest_sha256": attrs.get("manifest_sha256"), "stat": options.stat, "k": options.k, "n": options.n,
        "categories": list(options.categories), "normalization": options.normalization,
        "threshold": options.threshold, "permutations": options.permutations, "thumb": thumb, "profile": profile,
        "command": command, "chunk": CHUNK, "crop": attrs.get("preprocessing", {}).get("crop", 224),
        "fields": fields_for(options.categories, empirical is not None),
        "inputs": {"visualize": {n_: str(m.folder) for n_, m in manufactured.items()},
                   "occlusion": {"store": occluded.store, "layer": occluded.layer} if occluded else None,
                   "rf": empirical.folder if empirical else None},
        "layers": [{"name": n_, "id": ids[n_], "units": unit_lists[n_], "count": len(unit_lists[n_]),
                    "spatial": n_ in attrs.get("spatial_layers", []),
                    "rf": rf_sizes[n_],
                    "report": {c: _report_command(store, n_, options, c) for c in options.categories}}
                   for n_ in names],
    }


def _write_pages(writer: site.Writer, meta: dict) -> None:
    site.static_files(writer)
    writer.write("data/atlas.js", f"window.ATLAS={site.script_json(meta)};\n".encode())
    writer.write("index.html", site.render("index.html.j2", meta=meta, layers=meta["layers"]))


def _write_exports(writer: site.Writer, parts: list[dict], meta: dict) -> None:
    rows, fields = [], []
    for part in parts:
        rows += part["rows"]
        fields = fields or part["fields"]
    for row in rows:
        row["store"] = meta["store"]
        row["schema_version"] = SCHEMA_VERSION
    writer.write("units.json", json.dumps(site.plain({"schema_version": SCHEMA_VERSION, "store": meta["store"],
                                                      "model": meta["model"], "stat": meta["stat"],
                                                      "fields": fields, "units": rows}), indent=1,
                                          ensure_ascii=False).encode())
    writer.write("units.csv", pd.DataFrame(rows).to_csv(index=False).encode())
