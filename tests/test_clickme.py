"""ClickMe readers return what a test-written shard or npz file holds (no TensorFlow involved)."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from neuroprobe.attention.clickme import (
    crc32c,
    parse_example,
    read_clickme_npz,
    read_clickme_tfrecords,
    tfrecords,
    write_tfrecords,
)
from neuroprobe.errors import NeuroprobeError


def varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def example(image: bytes, heatmap: bytes, label: int) -> bytes:
    """A tf.train.Example, serialized by hand from the protobuf spec (bytes_list = 1, int64_list = 3)."""
    def feature(name: str, body: bytes) -> bytes:
        return field(1, field(1, name.encode()) + field(2, body))
    entries = feature("image", field(1, field(1, image))) + feature("heatmap", field(1, field(1, heatmap))) \
        + feature("label", field(3, field(1, varint(label))))
    return field(1, entries)


def jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=100)
    return buffer.getvalue()


def test_crc32c_is_the_castagnoli_checksum():
    assert crc32c(b"123456789") == 0xE3069283            # the standard check value of CRC-32C


def test_tfrecord_shards_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    maps = [np.kron(rng.integers(0, 256, (4, 4)), np.ones((8, 8))).astype(np.uint8) for _ in range(3)]
    paths = [write_tfrecords(tmp_path / "val-0.tfrecords", [example(jpeg(i), jpeg(m), k)
                                                           for k, (i, m) in enumerate(zip(images[:2], maps[:2]))]),
             write_tfrecords(tmp_path / "val-1.tfrecords", [example(jpeg(images[2]), jpeg(maps[2]), 999)])]
    samples = list(read_clickme_tfrecords(paths))
    assert [s.label for s in samples] == [0, 1, 999]
    for sample, image, heatmap in zip(samples, images, maps, strict=True):
        assert sample.image.shape == (32, 32, 3) and sample.heatmap.shape == (32, 32)
        # exactly the pixels of the JPEG bytes the test wrote
        np.testing.assert_array_equal(sample.image, np.asarray(Image.open(io.BytesIO(jpeg(image)))))
        np.testing.assert_array_equal(sample.heatmap, np.asarray(Image.open(io.BytesIO(jpeg(heatmap)))))
        assert np.abs(sample.heatmap - heatmap).mean() < 3           # and the map survives JPEG
    assert samples[2].source.endswith("val-1.tfrecords#0")
    record = next(tfrecords(paths[0]))
    assert parse_example(record)["label"] == [0]


def test_corrupted_or_cut_shards_fail_in_one_line(tmp_path):
    data = example(jpeg(np.zeros((8, 8, 3), np.uint8)), jpeg(np.zeros((8, 8), np.uint8)), 5)
    path = write_tfrecords(tmp_path / "a.tfrecords", [data, data])
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0xFF                                        # a flipped byte inside the first record
    (tmp_path / "bad.tfrecords").write_bytes(bytes(raw))
    with pytest.raises(NeuroprobeError, match="record 0 fails its checksum"):
        list(read_clickme_tfrecords([tmp_path / "bad.tfrecords"]))
    (tmp_path / "cut.tfrecords").write_bytes(path.read_bytes()[:-10])
    with pytest.raises(NeuroprobeError, match="record 1 is truncated"):
        list(read_clickme_tfrecords([tmp_path / "cut.tfrecords"]))
    (tmp_path / "text.tfrecords").write_bytes(struct.pack("<Q", 3) + b"abcdefgh")
    with pytest.raises(NeuroprobeError, match="checksum"):
        list(tfrecords(tmp_path / "text.tfrecords"))


def test_npz_files(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    heatmap = rng.random((16, 16, 1)).astype(np.float32)
    np.savez(tmp_path / "a.npz", image=image, clickmap=heatmap, label=np.array([7]))
    np.savez(tmp_path / "b.npz", img=image, heatmap=heatmap[..., 0])
    a, b = read_clickme_npz([tmp_path / "a.npz", tmp_path / "b.npz"])
    np.testing.assert_array_equal(a.image, image)
    np.testing.assert_array_equal(a.heatmap, heatmap[..., 0])
    assert (a.label, b.label) == (7, -1)
    np.savez(tmp_path / "c.npz", picture=image)
    with pytest.raises(NeuroprobeError, match="no image array"):
        list(read_clickme_npz([tmp_path / "c.npz"]))
