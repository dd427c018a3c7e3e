"""Decoding on the device (neuroprobe.engine.decode) against the CPU path (ImageDataset: PIL decodes and resizes).

The device path runs here with device="cpu": torchvision's libjpeg-turbo decoder stands in for nvjpeg
behind the same batched call, and torch resizes. Measured against PIL on the 40 embedded images and
on 800 ImageNet photos, for bilinear and bicubic, resize 232/256/288: at most 2 uint8 levels apart,
mean below 0.06 levels, under 2e-5 of pixels more than 1 level apart. The tests hold that tolerance.
"""
from __future__ import annotations

import io
import math
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_robustness import SAMPLE_CSV, make_bad_files, png_bomb
from PIL import Image

from neuroprobe.data import ImageDataset, Manifest, read_manifest
from neuroprobe.engine.decode import (
    DeviceDecodeDataset,
    DeviceDecoder,
    EncodedBatch,
    collate_device_batch,
    decode_difference,
    read_jpeg_header,
)
from neuroprobe.models.loading import Preprocessing

MAX_LEVELS = 2        # largest |device - PIL| in uint8 levels, any pixel
MEAN_LEVELS = 0.06    # mean |device - PIL| over all pixels
SHARE_OVER_1 = 1e-4   # share of pixels more than 1 level apart (measured <= 1.6e-5)
RNG = np.random.default_rng(11)


def _cpu_decode(payloads):
    """torchvision's CPU JPEG decoder, the stand-in for nvjpeg (what the default decode_fn runs on the CPU)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(list(payloads), mode=ImageReadMode.RGB)


def _device_path(manifest, preprocessing, decoder=None, batch_size=16, **dataset_kw):
    """Every row through DeviceDecodeDataset -> collate_device_batch -> DeviceDecoder, in batches."""
    dataset = DeviceDecodeDataset(manifest, preprocessing, **dataset_kw)
    decoder = decoder or DeviceDecoder(preprocessing, "cpu")
    images, ok, reasons, is_bytes, routes = [], [], [], [], []
    for lo in range(0, len(manifest), batch_size):
        batch = collate_device_batch([dataset[i] for i in range(lo, min(lo + batch_size, len(manifest)))])
        out, batch_ok, batch_reasons = decoder(batch)
        assert out.dtype == torch.uint8 and out.shape == (len(batch), 3, preprocessing.crop, preprocessing.crop)
        assert batch_ok.device.type == "cpu" and batch_ok.dtype == torch.bool
        images.append(out.cpu())
        ok += batch_ok.tolist()
        reasons += batch_reasons
        is_bytes += batch.is_bytes
        routes += decoder.last_route
    return torch.cat(images), ok, reasons, is_bytes, routes


def _pil_path(manifest, preprocessing, **dataset_kw):
    items = [ImageDataset(manifest, preprocessing, **dataset_kw)[i] for i in range(len(manifest))]
    return torch.stack([it[1] for it in items]), [it[2] for it in items], [it[3] for it in items]


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    diff = (actual.int() - expected.int()).abs().float()
    assert diff.max() <= MAX_LEVELS, f"max {diff.max():.0f} levels"
    assert diff.mean() <= MEAN_LEVELS, f"mean {diff.mean():.4f} levels"
    assert (diff > 1).float().mean() <= SHARE_OVER_1, f"{(diff > 1).float().mean():.2e} of pixels differ by > 1"


def _manifest(paths) -> Manifest:
    return Manifest(pd.DataFrame({"path": [str(p) for p in paths]}), SAMPLE_CSV.parent.resolve())


@pytest.fixture(scope="module")
def sample():
    return read_manifest(SAMPLE_CSV)


# -- the device path equals the PIL path within the tolerance ----------------------------------------
@pytest.mark.parametrize("interpolation,resize", [("bilinear", 256), ("bilinear", 288), ("bicubic", 232),
                                                  ("bicubic", 256)])
def test_matches_pil_on_sample(sample, interpolation, resize):
    pre = Preprocessing(resize=resize, crop=224, interpolation=interpolation)
    images, ok, reasons, is_bytes, routes = _device_path(sample, pre)
    expected, expected_ok, _ = _pil_path(sample, pre)
    # PIL says every sample file is a baseline (non-progressive) JPEG: all must take the device route
    for i in range(len(sample)):
        with Image.open(sample.absolute(i)) as image:
            assert image.format == "JPEG" and not image.info.get("progressive")
    assert all(is_bytes) and routes == ["device"] * len(sample)
    assert ok == expected_ok == [True] * len(sample) and reasons == [""] * len(sample)
    _assert_close(images, expected)
    assert images.float().std() > 30  # real photos, not blanks


@pytest.mark.parametrize("size", [(270, 900), (900, 270), (40, 30)], ids=["tall", "wide", "upscaled"])
def test_pass_order_follows_pil(tmp_path, size):
    """Noise, where bicubic overshoot is clipped between PIL's two passes: resizing the axes in another
    order than PIL (Pillow 13 shrinks the height first for tall images) is off by far more than 2 levels."""
    width, height = size
    noise = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    noise[::2] = 255 - noise[::2]
    Image.fromarray(noise).save(tmp_path / "noise.jpg", quality=95)
    manifest = _manifest([tmp_path / "noise.jpg"])
    pre = Preprocessing(resize=256, crop=224, interpolation="bicubic")
    images, ok, _, is_bytes, _ = _device_path(manifest, pre)
    expected, _, _ = _pil_path(manifest, pre)
    assert is_bytes == [True] and ok == [True]
    diff = (images.int() - expected.int()).abs()
    assert diff.max() <= MAX_LEVELS and diff.float().mean() <= MEAN_LEVELS


def test_decode_difference_reports_the_same_numbers(sample):
    pre = Preprocessing(resize=288, crop=224, interpolation="bicubic")
    head = Manifest(sample.table.iloc[:8].reset_index(drop=True), sample.root)
    images, _, _, _, _ = _device_path(head, pre)
    expected, _, _ = _pil_path(head, pre)
    diff = (images.int() - expected.int()).abs()
    report = decode_difference(SAMPLE_CSV, pre, n=8, batch_size=3)
    assert report["images"] == report["on_device"] == 8 and report["records_equal"]
    assert report["max"] == int(diff.max())
    assert report["mean"] == pytest.approx(diff.float().mean().item(), rel=1e-6)
    assert report["share_over_1"] == pytest.approx((diff > 1).float().mean().item(), abs=1e-9)


# -- headers ------------------------------------------------------------------------------------------
def _jpeg_bytes(**save_kw) -> bytes:
    buffer = io.BytesIO()
    mode = save_kw.pop("mode", "RGB")
    shape = (37, 53) if mode == "L" else (37, 53, len(mode))
    Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, "JPEG", **save_kw)
    return buffer.getvalue()


def _without_jfif_and_rgb_ids(data: bytes) -> bytes:
    """Drop the JFIF APP0 segment and name the components 'R', 'G', 'B': libjpeg then reads RGB, not YCbCr."""
    assert data[2:4] == b"\xff\xe0"
    data = bytearray(data[:2] + data[4 + int.from_bytes(data[4:6], "big"):])
    sof, sos = data.index(b"\xff\xc0"), data.index(b"\xff\xda")
    for k, cid in enumerate(b"RGB"):
        data[sof + 10 + 3 * k] = cid  # frame header: id, sampling, table
        data[sos + 5 + 2 * k] = cid   # scan header: id, Huffman tables
    return bytes(data)


def test_header_agrees_with_pil():
    cases = {"rgb": _jpeg_bytes(quality=90), "gray": _jpeg_bytes(mode="L"), "cmyk": _jpeg_bytes(mode="CMYK"),
             "progressive": _jpeg_bytes(progressive=True), "rgb-ids": _without_jfif_and_rgb_ids(_jpeg_bytes())}
    for name, data in cases.items():
        header = read_jpeg_header(data)
        with Image.open(io.BytesIO(data)) as image:
            assert (header.width, header.height) == image.size, name
            assert header.components == len(image.getbands()), name
            assert (header.coding == "progressive") == bool(image.info.get("progressive")), name
        assert header.precision == 8 and header.complete
    assert [read_jpeg_header(cases[k]).components for k in ("rgb", "gray", "cmyk")] == [3, 1, 4]
    assert read_jpeg_header(cases["rgb"]).ycbcr and not read_jpeg_header(cases["rgb-ids"]).ycbcr
    assert read_jpeg_header(cases["rgb"]).coding == "baseline"
    assert not read_jpeg_header(cases["rgb"][:-100]).complete
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    assert read_jpeg_header(png.getvalue()) is None and read_jpeg_header(b"") is None


# -- the robustness corpus: same records as the CPU path ---------------------------------------------
def _patched(data: bytes, find: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    out[out.index(find) + offset] = value
    return bytes(out)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """name -> (path, takes the device route): every kind of file the loader meets."""
    folder = tmp_path_factory.mktemp("decode-corpus")
    files = {name: (path, False) for name, (path, _) in make_bad_files(folder / "bad").items()}
    files["bomb-warning.png"] = (png_bomb(folder / "bomb-warning.png", 10000, 10000), False)
    good = [SAMPLE_CSV.parent / p for p in pd.read_csv(SAMPLE_CSV).path[:3]]
    for k, path in enumerate(good):
        files[f"good{k}.jpg"] = (path, True)
    jpeg = good[0].read_bytes()
    written = {
        "gray.jpg": (_jpeg_bytes(mode="L"), True),
        "small.jpg": (_jpeg_bytes(quality=95), True),     # 53x37: upscaled to 256
        "cmyk.jpg": (_jpeg_bytes(mode="CMYK"), False),
        "progressive.jpg": (_jpeg_bytes(progressive=True), False),
        "rgb-ids.jpg": (_without_jfif_and_rgb_ids(_jpeg_bytes()), False),
        "12-bit.jpg": (_patched(jpeg, b"\xff\xc0", 4, 12), False),
        "arithmetic.jpg": (jpeg.replace(b"\xff\xc0", b"\xff\xc9", 1), False),
        "jpeg-bomb.jpg": (_patched(_patched(jpeg, b"\xff\xc0", 5, 0x27), b"\xff\xc0", 7, 0x27), False),  # ~10000^2
        "trailing.jpg": (jpeg + b"\x00" * 16, False),     # data after EOI: PIL decides
        "corrupt.jpg": (jpeg[:len(jpeg) // 2] + RNG.integers(0, 256, 600, dtype=np.uint8).tobytes()
                        + jpeg[len(jpeg) // 2 + 600:], True),  # EOI intact: the decoder has to refuse it
    }
    for name, (data, device) in written.items():
        (folder / name).write_bytes(data)
        files[name] = (folder / name, device)
    for name, array, mode in [
        ("rgba.png", RNG.integers(0, 256, (30, 40, 4), dtype=np.uint8), "RGBA"),
        ("gray.png", RNG.integers(0, 256, (30, 40), dtype=np.uint8), "L"),
        ("deep.png", RNG.integers(0, 65536, (30, 40)).astype(np.uint16), None),
    ]:
        Image.fromarray(array, mode).save(folder / name)
        files[name] = (folder / name, False)
    palette = Image.fromarray(RNG.integers(0, 8, (30, 40), dtype=np.uint8), "P")
    palette.putpalette(RNG.integers(0, 256, 24, dtype=np.uint8).tolist())
    palette.save(folder / "palette.png", transparency=2)
    palette.save(folder / "palette.gif", transparency=2)
    files["palette.png"], files["palette.gif"] = (folder / "palette.png", False), (folder / "palette.gif", False)
    names = sorted(files)
    order = [names[(7 * k) % len(names)] for k in range(len(names))]  # shuffled: bad files between good ones
    return order, [files[n][0] for n in order], [files[n][1] for n in order]


def test_corpus_records_match_cpu_path(corpus):
    names, paths, device_route = corpus
    manifest = _manifest(paths)
    pre = Preprocessing(resize=256, crop=224, interpolation="bicubic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        images, ok, reasons, is_bytes, routes = _device_path(manifest, pre, batch_size=8)
        expected, expected_ok, expected_reasons = _pil_path(manifest, pre)
    assert dict(zip(names, is_bytes)) == dict(zip(names, device_route))
    assert dict(zip(names, ok)) == dict(zip(names, expected_ok))
    assert dict(zip(names, reasons)) == dict(zip(names, expected_reasons))
    bad = {n for n, good in zip(names, expected_ok) if not good}
    surely_bad = {"random.jpg", "truncated.jpg", "empty.jpg", "notes.png", "missing.jpg", "bomb.png",
                  "bomb-warning.png", "jpeg-bomb.jpg", "corrupt.jpg"}
    assert surely_bad <= bad <= surely_bad | {"12-bit.jpg", "arithmetic.jpg"}  # PIL decides these two
    assert "decompression bomb" in dict(zip(names, reasons))["jpeg-bomb.jpg"]
    route = dict(zip(names, routes))
    assert route["corrupt.jpg"] == "failed"  # the decoder refused it, then PIL did too
    on_device = {n for n, d in zip(names, device_route) if d} - {"corrupt.jpg"}
    assert {n for n, r in route.items() if r == "device"} == on_device
    good = torch.tensor(expected_ok)
    _assert_close(images[good], expected[good])
    assert not images[~good].any()  # bad rows are blank
    worker_rows = torch.tensor([not b for b in is_bytes]) & good
    assert torch.equal(images[worker_rows], expected[worker_rows])  # decoded by the same CPU code


# -- the fallback when the device decoder refuses an image -------------------------------------------
def test_refused_image_goes_to_pil_and_the_rest_stays_batched(sample):
    pre = Preprocessing(resize=288, crop=224, interpolation="bilinear")
    head = Manifest(sample.table.iloc[:8].reset_index(drop=True), sample.root)
    refused = sample.absolute(5).read_bytes()
    calls: list[list[int]] = []  # per decode_fn call: the rows it was given

    def picky(payloads):
        rows = [next(i for i in range(8) if head.absolute(i).read_bytes() == bytes(p.numpy())) for p in payloads]
        calls.append(rows)
        if 5 in rows:
            raise RuntimeError("nvjpeg: unsupported stream")  # as nvjpeg fails a batch: no partial result
        return _cpu_decode(payloads)

    decoder = DeviceDecoder(pre, "cpu", decode_fn=picky)
    images, ok, reasons, _, routes = _device_path(head, pre, decoder=decoder, batch_size=8)
    expected, _, _ = _pil_path(head, pre)
    assert bytes(DeviceDecodeDataset(head, pre)[5][1].numpy()) == refused
    assert calls[0] == list(range(8))  # one batched call first
    assert calls == [list(range(8)), [0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [4], [5], [6, 7]]  # halves, not 8 singles
    assert len(calls) <= 1 + 2 * math.ceil(math.log2(8))
    decoded = [row for call in calls if 5 not in call for row in call]
    assert sorted(decoded) == [0, 1, 2, 3, 4, 6, 7]  # each other image decoded once, 6 of 7 in batches
    assert routes == ["device"] * 5 + ["fallback"] + ["device"] * 2
    assert ok == [True] * 8 and reasons == [""] * 8
    assert torch.equal(images[5], expected[5])  # the fallback is the PIL path itself
    _assert_close(images, expected)
    assert decoder.counts["fallback"] == 1 and decoder.counts["device"] == 7


def test_malformed_decoder_output_goes_to_pil(sample):
    pre = Preprocessing(resize=256, crop=224, interpolation="bicubic")
    head = Manifest(sample.table.iloc[:4].reset_index(drop=True), sample.root)

    def one_gray(payloads):  # a decoder that hands back a single-channel image for the second file
        out = list(_cpu_decode(payloads))
        if len(out) > 1:
            out[1] = out[1][:1]
        return out

    images, ok, _, _, routes = _device_path(head, pre, decoder=DeviceDecoder(pre, "cpu", decode_fn=one_gray))
    expected, _, _ = _pil_path(head, pre)
    assert routes == ["device", "fallback", "device", "device"] and ok == [True] * 4
    assert torch.equal(images[1], expected[1])
    _assert_close(images, expected)


# -- worker processes ---------------------------------------------------------------------------------
def _assert_batches_equal(a: EncodedBatch, b: EncodedBatch) -> None:
    assert torch.equal(a.rows, b.rows) and torch.equal(a.ok, b.ok)
    assert a.is_bytes == b.is_bytes and a.reasons == b.reasons
    assert len(a.payloads) == len(b.payloads)
    for x, y in zip(a.payloads, b.payloads):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_workers_hand_over_the_same_batches(corpus, sample):
    names, paths, _ = corpus
    keep = [p for n, p in zip(names, paths) if not n.startswith(("bomb", "jpeg-bomb"))]
    manifest = _manifest(keep + [sample.absolute(i) for i in range(6)])
    pre = Preprocessing(resize=256, crop=224, interpolation="bilinear")
    dataset = DeviceDecodeDataset(manifest, pre)
    sampler = [list(range(lo, min(lo + 5, len(manifest)))) for lo in range(0, len(manifest), 5)]
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                             collate_fn=collate_device_batch)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == len(sampler)
    assert any(any(b.is_bytes) and not all(b.is_bytes) for b in batches[0])  # mixed batches travel
    decoder = DeviceDecoder(pre, "cpu")
    for serial, parallel in zip(batches[0], batches[2]):
        _assert_batches_equal(serial, parallel)
        _assert_batches_equal(serial, pickle.loads(pickle.dumps(serial)))
        assert torch.equal(decoder(serial)[0], decoder(parallel)[0])
    all_bytes = collate_device_batch([dataset[len(manifest) - 1]])
    _assert_batches_equal(all_bytes, pickle.loads(pickle.dumps(all_bytes)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvjpeg)")
def test_nvjpeg_close_to_pil(sample, record_property):
    """On a GPU: nvjpeg decodes, records match the CPU path. nvjpeg's IDCT and chroma upsampling are
    not libjpeg-turbo's, so the bound here is a loose one (not yet measured on hardware)."""
    pre = Preprocessing(resize=256, crop=224, interpolation="bicubic")
    decoder = DeviceDecoder(pre, "cuda")
    batch = collate_device_batch([DeviceDecodeDataset(sample, pre)[i] for i in range(len(sample))])
    images, ok, reasons = decoder(batch.pin_memory())
    expected, expected_ok, expected_reasons = _pil_path(sample, pre)
    assert images.device.type == "cuda" and ok.tolist() == expected_ok and reasons == expected_reasons
    assert decoder.last_route == ["device"] * len(sample)
    diff = (images.cpu().int() - expected.int()).abs().float()
    for name, value in {"max": diff.max(), "mean": diff.mean(), "share_over_1": (diff > 1).float().mean()}.items():
        record_property(f"nvjpeg_vs_pil_{name}", float(value))  # the tolerance to state: gpu-tests.xml
    assert diff.mean() < 2.0


def test_resizing_grouped_by_size_equals_resizing_each_image(sample):
    """One resize call per distinct size gives each image exactly what a call of its own gives."""
    from torchvision.io import decode_jpeg

    pre = Preprocessing(resize=232, crop=224, interpolation="bicubic")
    decoder = DeviceDecoder(pre, "cpu")
    images = [decode_jpeg(torch.from_numpy(np.fromfile(sample.absolute(i), dtype=np.uint8))) for i in range(12)]
    assert len({tuple(im.shape) for im in images}) > 1 and len({tuple(im.shape) for im in images}) < 12
    grouped = decoder._resize_crop_all(images)
    assert torch.equal(grouped, torch.stack([decoder._resize_crop(im) for im in images]))
