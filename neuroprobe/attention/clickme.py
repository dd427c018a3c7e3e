"""Importance-map data without TensorFlow: ClickMe TFRecord shards, per-image ``.npz`` files, and plain
folders/CSVs of maps beside images. Nothing is downloaded: users fetch ClickMe themselves (README).

A ClickMe record (serre-lab/Harmonization) is a ``tf.train.Example`` with ``image`` (JPEG bytes, 256 x 256
RGB), ``heatmap`` (JPEG bytes, 256 x 256 gray) and ``label`` (int64). TFRecord framing: uint64 length,
masked CRC-32C of the length, the bytes, masked CRC-32C of the bytes (both checked here, with the
CRC-32C of numcodecs, which zarr already needs).
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from ..errors import NeuroprobeError

NPZ_KEYS = {"image": ("image", "img", "images"), "heatmap": ("heatmap", "clickmap", "map", "heatmaps"),
            "label": ("label", "labels", "y")}


@dataclass
class ImportanceSample:
    """One image (H, W, 3) uint8, its importance map (H, W) float32, its label (-1 if none) and origin."""

    image: np.ndarray
    heatmap: np.ndarray
    label: int
    source: str


def crc32c(data: bytes) -> int:
    from numcodecs import CRC32C

    return int.from_bytes(CRC32C().encode(np.frombuffer(data, dtype=np.uint8))[-4:], "little")


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecords(path: str | Path, check: bool = True) -> Iterator[bytes]:
    """The records of one TFRecord file; a torn or corrupted record fails with one line naming it."""
    with open(path, "rb") as handle:
        index = 0
        while True:
            header = handle.read(12)
            if not header:
                return
            if len(header) < 12:
                raise NeuroprobeError(f"{path}: record {index} is truncated (file cut short?)")
            length, length_crc = struct.unpack("<QI", header)
            if check and masked_crc(header[:8]) != length_crc:
                raise NeuroprobeError(f"{path}: record {index} has a bad length checksum: not a TFRecord file?")
            data, footer = handle.read(length), handle.read(4)
            if len(data) < length or len(footer) < 4:
                raise NeuroprobeError(f"{path}: record {index} is truncated (file cut short?)")
            if check and masked_crc(data) != struct.unpack("<I", footer)[0]:
                raise NeuroprobeError(f"{path}: record {index} fails its checksum (corrupted file)")
            yield data
            index += 1


def write_tfrecords(path: str | Path, records: Iterable[bytes]) -> Path:
    """Write records with TFRecord framing (for converting data, and for the tests)."""
    with open(path, "wb") as handle:
        for data in records:
            length = struct.pack("<Q", len(data))
            handle.write(length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data)))
    return Path(path)


def _varint(buffer: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buffer[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buffer: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message: varints as ints, length-delimited as bytes."""
    pos = 0
    while pos < len(buffer):
        key, pos = _varint(buffer, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buffer, pos)
        elif wire == 2:
            size, pos = _varint(buffer, pos)
            value, pos = buffer[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buffer[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = buffer[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def parse_example(record: bytes) -> dict[str, list]:
    """A serialized ``tf.train.Example`` -> {feature: list of bytes, floats or ints}."""
    out: dict[str, list] = {}
    for number, _, features in _fields(record):
        if number != 1:
            continue
        for entry_number, _, entry in _fields(features):            # map<string, Feature> entries
            if entry_number != 1:
                continue
            name, feature = "", b""
            for n, _, v in _fields(entry):
                if n == 1:
                    name = v.decode()
                elif n == 2:
                    feature = v
            for kind, _, values in _fields(feature):                 # oneof bytes/float/int64 list
                if kind == 1:
                    out[name] = [v for _, _, v in _fields(values)]
                elif kind == 2:
                    out[name] = _floats(values)
                elif kind == 3:
                    out[name] = _ints(values)
    return out


def _floats(values: bytes) -> list[float]:
    items: list[float] = []
    for _, wire, v in _fields(values):
        items += list(struct.unpack(f"<{len(v) // 4}f", v)) if wire == 2 else [struct.unpack("<f", v)[0]]
    return items


def _ints(values: bytes) -> list[int]:
    items: list[int] = []
    for _, wire, v in _fields(values):
        if wire == 2:                                                # packed
            pos = 0
            while pos < len(v):
                n, pos = _varint(v, pos)
                items.append(n - (1 << 64) if n >= 1 << 63 else n)
        else:
            items.append(v - (1 << 64) if v >= 1 << 63 else v)
    return items


def _jpeg(data: bytes, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert(mode))


def read_clickme_tfrecords(paths: Iterable[str | Path]) -> Iterator[ImportanceSample]:
    """ClickMe samples from TFRecord shards, in file and record order."""
    for path in paths:
        for index, record in enumerate(tfrecords(path)):
            features = parse_example(record)
            missing = [k for k in ("image", "heatmap") if k not in features]
            if missing:
                raise NeuroprobeError(f"{path}: record {index} has no {', '.join(missing)} (features: "
                                      f"{', '.join(features)}): not a ClickMe shard?")
            yield ImportanceSample(_jpeg(features["image"][0], "RGB"),
                                   _jpeg(features["heatmap"][0], "L").astype(np.float32),
                                   int(features.get("label", [-1])[0]), f"{path}#{index}")


def read_clickme_npz(paths: Iterable[str | Path]) -> Iterator[ImportanceSample]:
    """Samples from per-image ``.npz`` files (keys: image, heatmap or clickmap, label; see NPZ_KEYS)."""
    for path in paths:
        with np.load(path) as data:
            found = {}
            for field, names in NPZ_KEYS.items():
                name = next((n for n in names if n in data.files), None)
                if name is None and field != "label":
                    raise NeuroprobeError(f"{path} has no {field} array (arrays: {', '.join(data.files)}; "
                                          f"accepted names: {', '.join(names)})")
                found[field] = data[name] if name else np.array(-1)
        heatmap = np.asarray(found["heatmap"], dtype=np.float32)
        yield ImportanceSample(np.asarray(found["image"], dtype=np.uint8), heatmap.reshape(heatmap.shape[:2]),
                               int(np.asarray(found["label"]).reshape(-1)[0]), str(path))
