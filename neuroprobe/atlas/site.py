"""Writing the site: files only when their content changed, data as classic scripts, pages from templates.

Data reach the pages as ``<script src="data/...js">`` files that assign into a global
(``window.ATLAS_CHUNKS["L0/3"] = {...}``): browsers refuse ``fetch`` of ``file://`` URLs, not scripts.
The JSON inside is safe in a script (``<``, ``>``, ``&``, U+2028 and U+2029 escaped). The manifest
(``.atlas/manifest.json``) records each layer's input fingerprint and the sha256 of every file written,
so that a rebuild skips finished layers and rewrites no file whose content is the same.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..errors import NeuroprobeError

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = ("atlas.css", "common.js", "layer.js", "unit.js")
PAGES = ("layer.html", "unit.html")  # generic pages, driven by their URL hash
MANIFEST = ".atlas/manifest.json"
ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def plain(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN and infinities to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def script_json(value: Any) -> str:
    """JSON that cannot end a ``<script>`` element or break a JS string."""
    text = json.dumps(plain(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escape in ESCAPES.items():
        text = text.replace(char, escape)
    return text


def assignment(name: str, key: str, value: Any) -> bytes:
    """``window.NAME = window.NAME || {}; window.NAME[key] = value;`` as UTF-8."""
    return (f"window.{name}=window.{name}||{{}};window.{name}[{script_json(key)}]={script_json(value)};\n"
            ).encode("utf-8")


def url(*segments: str) -> str:
    """A relative URL with each segment quoted (a name holding '#', '%', '/' or spaces stays one segment)."""
    return "/".join(quote(str(s), safe="") for s in segments)


class Writer:
    """Writes files under ``root`` only when their bytes differ, and keeps the manifest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            (self.root / ".atlas").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NeuroprobeError(f"cannot write into {self.root} ({exc.strerror}); choose another --out") from exc
        path = self.root / MANIFEST
        try:
            self.manifest = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            self.manifest = {}
        self.manifest.setdefault("layers", {})
        self.manifest.setdefault("files", {})
        self.written = self.kept = 0
        self.seen: set[str] = set()  # files written or kept by this build

    def write(self, relative: str, data: bytes) -> None:
        self.seen.add(relative)
        digest = hashlib.sha256(data).hexdigest()
        target = self.root / relative
        if self.manifest["files"].get(relative) == digest and target.is_file() and target.stat().st_size == len(data):
            self.kept += 1
            return
        if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
            self.manifest["files"][relative] = digest
            self.kept += 1
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(data)
        os.replace(partial, target)
        self.manifest["files"][relative] = digest
        self.written += 1

    def layer_done(self, layer_id: str, fingerprint: str) -> bool:
        """Whether ``layer_id`` was built from ``fingerprint`` and all its files are still there."""
        entry = self.manifest["layers"].get(layer_id)
        if not entry or entry.get("fingerprint") != fingerprint:
            return False
        return all((self.root / f).is_file() for f in entry.get("files", []))

    def finish_layer(self, layer_id: str, fingerprint: str, files: list[str]) -> None:
        self.manifest["layers"][layer_id] = {"fingerprint": fingerprint, "files": files}
        self.save()

    def save(self) -> None:
        data = json.dumps(self.manifest, indent=1, sort_keys=True).encode()
        target = self.root / MANIFEST
        if not target.is_file() or target.read_bytes() != data:
            partial = target.with_name(".manifest.json.partial")
            partial.write_bytes(data)
            os.replace(partial, target)

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file() and ".atlas" not in p.parts)


def render(name: str, **context: Any) -> bytes:
    """A server-side template rendered with autoescape on (every value is text, never markup)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["segment"] = lambda value: quote(str(value), safe="")
    return env.get_template(name).render(**context).encode("utf-8")


def static_files(writer: Writer) -> None:
    for name in STATIC:
        writer.write(name, (TEMPLATES / name).read_bytes())
    for name in PAGES:
        writer.write(name, render(f"{name}.j2"))
