"""Helpers shared by the robustness tests (data, resume, distributed, CLI): files that break
decoders, manifests, the CLI as a real subprocess, and store comparison done with plain zarr."""
from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CSV = ROOT / "data" / "sample" / "labels.csv"
SAMPLE_DIR = SAMPLE_CSV.parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent
VOLATILE_ATTRS = ("created", "command")  # differ between two runs of the same extraction


# -- processes ----------------------------------------------------------------------------------------
def cli_env(**extra: str) -> dict[str, str]:
    """Environment for ``python -m neuroprobe``: this checkout first on the path, nothing online."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "TORCH_HOME": str(ROOT / ".no-torch-home")})  # a weights download would fail, never fetch
    env.update(extra)
    return env


def cli(args: list[str], cwd: Path | None = None, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -m neuroprobe ARGS`` as a real process; text stdout/stderr."""
    return subprocess.run([PYTHON, "-m", "neuroprobe", *map(str, args)], cwd=cwd or ROOT, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """Assert exit code 2 and a stderr of exactly one 'neuroprobe: error:' line; return that line."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, f"exit code {result.returncode}\nstderr:\n{result.stderr}"
    assert len(lines) == 1 and lines[0].startswith("neuroprobe: error:"), f"stderr is not one error line:\n{result.stderr}"
    return lines[0]


# -- files that break decoders ------------------------------------------------------------------------
def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of a blank ``width`` x ``height`` image: a few KB on disk, huge once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def make_bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken 'images' in ``folder``: name -> (path, a word the recorded reason must contain)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = (SAMPLE_DIR / "images" / "n01440764.jpg").read_bytes()
    files = {
        "random.jpg": (np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "cannot identify"),
        "truncated.jpg": (good[: len(good) // 2], "truncated"),
        "empty.jpg": (b"", "cannot identify"),
        "notes.png": (b"this is a text file, not an image\n" * 20, "cannot identify"),
    }
    out = {}
    for name, (content, word) in files.items():
        (folder / name).write_bytes(content)
        out[name] = (folder / name, word)
    out["missing.jpg"] = (folder / "missing.jpg", "no such file")
    out["bomb.png"] = (png_bomb(folder / "bomb.png", 20000, 20000), "decompression bomb")
    return out


# -- manifests ----------------------------------------------------------------------------------------
def sample_table() -> pd.DataFrame:
    """The embedded sample's labels.csv with absolute paths."""
    table = pd.read_csv(SAMPLE_CSV)
    table["path"] = [str(SAMPLE_DIR / p) for p in table["path"]]
    return table


def sample_with_bad(folder: Path, positions: dict[int, str]) -> tuple[Path, list[int]]:
    """labels.csv of the 40 sample images with broken files inserted at ``positions`` (row -> bad name).

    Returns the CSV's path and the rows that hold broken files.
    """
    bad = make_bad_files(folder / "bad")
    rows = sample_table().to_dict("records")
    for position in sorted(positions):
        name = positions[position]
        rows.insert(position, {"path": str(bad[name][0]), "wnid": "", "class_index": -1, "class_name": "broken"})
    table = pd.DataFrame(rows)
    csv = folder / "labels.csv"
    table.to_csv(csv, index=False)
    return csv, sorted(positions)


# -- stores -------------------------------------------------------------------------------------------
def store_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store, read with plain zarr: 'group/name' -> values."""
    out: dict[str, np.ndarray] = {}

    def walk(group: zarr.Group, prefix: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            members = list(group.members())
        for name, member in members:
            key = f"{prefix}{name}"
            if isinstance(member, zarr.Group):
                walk(member, key + "/")
            else:
                out[key] = member[...]

    walk(zarr.open_group(str(path), mode="r"), "")
    return out


def store_attrs(path: Path) -> dict[str, dict]:
    """The attributes of the root and of every group, without the ones that name a run's moment."""
    root = zarr.open_group(str(path), mode="r")
    out = {"": {k: v for k, v in root.attrs.items() if k not in VOLATILE_ATTRS}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, group in root.groups():
            out[name] = dict(group.attrs)
    return out


def assert_stores_equal(actual: Path, expected: Path) -> None:
    """Same arrays (NaN == NaN, bit for bit), same status/reason, same attributes but the run's time."""
    a, b = store_arrays(actual), store_arrays(expected)
    assert sorted(a) == sorted(b)
    for key in b:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key, strict=True)  # NaN equals NaN here
    assert store_attrs(actual) == store_attrs(expected)


def tree_digest(path: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``path`` (folders as '<dir>')."""
    out = {}
    for item in sorted(path.rglob("*")):
        rel = item.relative_to(path).as_posix()
        out[rel] = "<dir>" if item.is_dir() else hashlib.sha256(item.read_bytes()).hexdigest()
    return out
