"""JPEG decoding on the extraction device (``--decode gpu``): workers read bytes, the device decodes.

PIL on the CPU cannot feed a fast GPU, so DataLoader workers only read each file and parse its
JPEG header (:class:`DeviceDecodeDataset`); plain 8-bit YCbCr/grayscale JPEGs travel as bytes and
are decoded in one batched ``torchvision.io.decode_jpeg`` call on the device, then resized and
cropped there (:class:`DeviceDecoder`). Everything else (PNG, CMYK, 16-bit, progressive, broken
files) is decoded by the workers with the CPU path of :mod:`neuroprobe.data`, so bad files are
recorded with exactly the reasons :class:`~neuroprobe.data.ImageDataset` gives.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..data import MAX_PIXELS, ImageDataset, Manifest, failure_reason, load_image, read_manifest
from ..errors import NeuroprobeError

if TYPE_CHECKING:
    from ..models.loading import Preprocessing

log = logging.getLogger(__name__)

DecodeFn = Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]
INTERPOLATIONS = ("bilinear", "bicubic")  # PIL's and torch's antialiased kernels agree for these two
_SOF = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive", 0xC3: "lossless",
        0xC5: "hierarchical", 0xC6: "hierarchical", 0xC7: "hierarchical",
        0xC9: "arithmetic", 0xCA: "arithmetic", 0xCB: "arithmetic",
        0xCD: "arithmetic", 0xCE: "arithmetic", 0xCF: "arithmetic"}
_RGB_IDS = (0x52, 0x47, 0x42)  # component ids 'R', 'G', 'B': libjpeg reads such a file as RGB, not YCbCr


@dataclass(frozen=True)
class JpegHeader:
    """What the frame header (SOFn) of a JPEG file says, and whether the file ends with EOI."""

    coding: str       # baseline, extended, progressive, lossless, hierarchical or arithmetic
    precision: int    # bits per sample
    height: int
    width: int
    components: int
    ycbcr: bool       # 3 components stored as YCbCr (libjpeg's rule: JFIF, Adobe transform, component ids)
    complete: bool    # the last two bytes are the EOI marker: not truncated


def read_jpeg_header(data: bytes | bytearray) -> JpegHeader | None:
    """Walk the markers up to the frame header; None if ``data`` is not a JPEG this walk understands."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    jfif, adobe_transform, pos = False, None, 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None  # bytes between segments: let PIL judge
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            pos += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI, EOI or scan data before any frame header
            return None
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > n:
            return None
        body = data[pos + 4:pos + 2 + min(length, 1024)]  # a SOF body has at most 6 + 3 * 255 bytes
        if marker == 0xE0 and body[:5] == b"JFIF\x00":
            jfif = True
        elif marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
            adobe_transform = body[11]
        elif marker in _SOF:
            if len(body) < 6 or len(body) < 6 + 3 * body[5]:
                return None
            components = body[5]
            ids = tuple(body[6 + 3 * k] for k in range(components))
            if jfif:
                ycbcr = True
            elif adobe_transform is not None:
                ycbcr = adobe_transform != 0
            else:
                ycbcr = ids != _RGB_IDS
            return JpegHeader(coding=_SOF[marker], precision=body[0], height=int.from_bytes(body[1:3], "big"),
                              width=int.from_bytes(body[3:5], "big"), components=components, ycbcr=ycbcr,
                              complete=data[-2:] == b"\xff\xd9")
        pos += 2 + length
    return None


class DeviceDecodeDataset(torch.utils.data.Dataset):
    """Row i -> (i, payload, is_bytes, ok, reason): the JPEG's bytes when the device decoder can take
    them, else the CPU path's uint8 (3, crop, crop) image (blank, ok=False and its reason on failure)."""

    def __init__(self, manifest: Manifest, preprocessing: Preprocessing, max_pixels: int = MAX_PIXELS, *,
                 progressive: bool = False) -> None:
        self.manifest = manifest
        self.max_pixels = max_pixels
        self.codings = {"baseline", "extended"} | ({"progressive"} if progressive else set())
        self.cpu = ImageDataset(manifest, preprocessing, max_pixels)

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, bool, bool, str]:
        data = self._device_bytes(self.manifest.absolute(i))
        if data is not None:
            return i, torch.frombuffer(data, dtype=torch.uint8), True, True, ""
        _, image, ok, reason = self.cpu[i]
        return i, image, False, ok, reason

    def accepts(self, header: JpegHeader | None) -> bool:
        """Whether the device decoder takes a file with this header (the rest goes to PIL)."""
        if header is None or not header.complete or header.coding not in self.codings:
            return False
        if header.precision != 8 or header.components not in (1, 3) or (header.components == 3 and not header.ycbcr):
            return False
        pixels = header.width * header.height
        pil_limit = Image.MAX_IMAGE_PIXELS  # above twice this PIL refuses the file: so must we
        return 0 < pixels <= self.max_pixels and (pil_limit is None or pixels <= 2 * pil_limit)

    def _device_bytes(self, path: Path) -> bytearray | None:
        try:
            with open(path, "rb") as handle:
                if handle.read(2) != b"\xff\xd8":
                    return None  # not a JPEG: the rest of the file is never read here
                data = bytearray(b"\xff\xd8" + handle.read())
        except OSError:
            return None  # the CPU path records the same error
        return data if self.accepts(read_jpeg_header(data)) else None


@dataclass(eq=False)
class EncodedBatch:
    """A batch as workers hand it over: per row the JPEG bytes (``is_bytes``) or a decoded uint8 image.

    Pickled (worker -> main process) as one flat byte tensor plus one stack of images, so a batch
    costs two shared-memory segments whatever its size. ``pin_memory()`` (called by a DataLoader
    with ``pin_memory=True``) pins only the decoded images, as one block; the bytes stay pageable.
    """

    rows: torch.Tensor            # int64 (B,)
    payloads: list[torch.Tensor]  # uint8: 1-D bytes, or (3, crop, crop) image
    is_bytes: list[bool]
    ok: torch.Tensor              # bool (B,)
    reasons: list[str]

    def __len__(self) -> int:
        return len(self.is_bytes)

    def __getstate__(self) -> dict[str, Any]:
        encoded = [p for p, b in zip(self.payloads, self.is_bytes) if b]
        images = [p for p, b in zip(self.payloads, self.is_bytes) if not b]
        return {"rows": self.rows, "is_bytes": self.is_bytes, "ok": self.ok, "reasons": self.reasons,
                "bytes": torch.cat(encoded) if encoded else torch.empty(0, dtype=torch.uint8),
                "lengths": [len(p) for p in encoded], "images": torch.stack(images) if images else None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        encoded = iter(state["bytes"].split(state["lengths"]))
        images = iter(state["images"].unbind(0) if state["images"] is not None else ())
        self.rows, self.is_bytes, self.ok = state["rows"], state["is_bytes"], state["ok"]
        self.reasons = state["reasons"]
        self.payloads = [next(encoded) if b else next(images) for b in self.is_bytes]

    def pin_memory(self) -> EncodedBatch:
        decoded = [k for k, b in enumerate(self.is_bytes) if not b]
        if not decoded:
            return self
        block = torch.stack([self.payloads[k] for k in decoded]).pin_memory()
        payloads = list(self.payloads)
        for j, k in enumerate(decoded):
            payloads[k] = block[j]
        return dataclasses.replace(self, payloads=payloads)


def collate_device_batch(items: Sequence[tuple[int, torch.Tensor, bool, bool, str]]) -> EncodedBatch:
    """DataLoader ``collate_fn`` for :class:`DeviceDecodeDataset` items."""
    return EncodedBatch(rows=torch.tensor([item[0] for item in items], dtype=torch.long),
                        payloads=[item[1] for item in items], is_bytes=[bool(item[2]) for item in items],
                        ok=torch.tensor([bool(item[3]) for item in items], dtype=torch.bool),
                        reasons=[item[4] for item in items])


def _resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Shorter side to ``size``, the longer one truncated: torchvision's rule for ``resize(img, [size])``."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


class DeviceDecoder:
    """:class:`EncodedBatch` -> (uint8 (B, 3, crop, crop) on ``device``, ok (CPU bool), reasons).

    JPEG bytes go through ``decode_fn`` (default: ``torchvision.io.decode_jpeg`` on ``device``, which
    is nvjpeg on CUDA and libjpeg-turbo on the CPU) in one call per batch. If that call raises, the
    batch is split in halves and each retried, down to single images, so one file nvjpeg refuses
    costs about 2*log2(B) extra calls and the others stay batched; an image refused alone is decoded
    from its bytes by PIL, and only if PIL fails too is it recorded bad.

    Host synchronisation: this class makes none (no ``.item()``/``.cpu()``; copies are non-blocking;
    shapes are host metadata). torchvision's CUDA ``decode_jpeg`` synchronises its own private
    stream (not the model's) before and after each call, and once more per image the hardware
    engine does not take (progressive and other non-baseline files: Huffman decoding on the host);
    nvjpeg's internal buffers grow with cudaMalloc/cudaHostAlloc when a larger image arrives.
    Decoding runs with a private stream current, so the output tensors come from that stream's
    memory pool and never from blocks the model's queued kernels still use (nvjpeg's hardware
    engine does not order its writes after queued work: pytorch/vision#9606, torchcodec#1634).
    """

    def __init__(self, preprocessing: Preprocessing, device: str | torch.device, decode_fn: DecodeFn | None = None,
                 max_pixels: int = MAX_PIXELS) -> None:
        from torchvision.transforms import InterpolationMode

        if preprocessing.interpolation not in INTERPOLATIONS:
            raise NeuroprobeError(f"decoding on the device supports {' and '.join(INTERPOLATIONS)} preprocessing, "
                                  f"not {preprocessing.interpolation!r}; decode on the CPU instead")
        self.preprocessing = preprocessing
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.decode_fn = decode_fn or self._decode_jpeg
        self.max_pixels = max_pixels
        self.mode = InterpolationMode(preprocessing.interpolation)
        self.counts: Counter[str] = Counter()  # images per route, all batches: device, worker, fallback, failed
        self.last_route: list[str] = []        # the route of each row of the last batch
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __call__(self, batch: EncodedBatch) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        crop = self.preprocessing.crop
        n = len(batch)
        ok, reasons = batch.ok.clone(), list(batch.reasons)
        route = ["device" if b else "worker" for b in batch.is_bytes]
        parts: list[torch.Tensor | None] = [None] * n
        encoded = [k for k in range(n) if batch.is_bytes[k]]
        on_device = []
        for k, image in zip(encoded, self._decode([batch.payloads[k] for k in encoded])):
            if image is not None:
                on_device.append((k, image))
                continue
            try:
                pil = load_image(io.BytesIO(batch.payloads[k].numpy().tobytes()), self.max_pixels)
                parts[k] = self.preprocessing.to_uint8(pil).to(self.device, non_blocking=True)
                route[k] = "fallback"
            except Exception as exc:  # neither nvjpeg nor PIL can read it: record, go on
                ok[k], reasons[k], route[k] = False, failure_reason(exc), "failed"
                parts[k] = torch.zeros(3, crop, crop, dtype=torch.uint8, device=self.device)
                log.debug("row %d: %s", int(batch.rows[k]), reasons[k])
        for k in range(n):
            if not batch.is_bytes[k]:
                parts[k] = batch.payloads[k].to(self.device, non_blocking=True)
        self.last_route = route
        self.counts.update(route)
        if not on_device:
            return torch.stack(parts), ok, reasons
        crops = self._resize_crop_all([image for _, image in on_device]).to(torch.uint8)
        if len(on_device) == n:
            return crops, ok, reasons
        for j, (k, _) in enumerate(on_device):
            parts[k] = crops[j]
        return torch.stack(parts), ok, reasons

    def _decode_jpeg(self, payloads: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():  # torchvision 0.29 deprecates its image IO in favour of TorchCodec
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
            return decode_jpeg(payloads, mode=ImageReadMode.RGB, device=self.device)

    def _decode(self, payloads: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Decoded (3, H, W) uint8 per payload, None where the decoder refused it."""
        if not payloads:
            return []
        if self._stream is None:
            return self._split_on_failure(payloads)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._stream):
            images = self._split_on_failure(payloads)
        compute.wait_stream(self._stream)
        for image in images:
            if image is not None and image.device == self.device:
                image.record_stream(compute)  # its block is not reused until the resize below has run
        return images

    def _split_on_failure(self, payloads: list[torch.Tensor]) -> list[torch.Tensor | None]:
        try:
            images = list(self.decode_fn(payloads))
            if len(images) != len(payloads):
                raise RuntimeError(f"decoder returned {len(images)} images for {len(payloads)} files")
        except Exception as exc:
            if len(payloads) == 1:
                log.debug("device decoder refused an image (%s); decoding it with PIL", failure_reason(exc))
                return [None]
            log.debug("batched decode of %d images failed (%s); splitting the batch", len(payloads), failure_reason(exc))
            half = len(payloads) // 2
            return self._split_on_failure(payloads[:half]) + self._split_on_failure(payloads[half:])
        return [image if _is_rgb(image) else None for image in images]

    def _resize_crop_all(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 (3, H, W) images -> float (B, 3, crop, crop), one resize per distinct size, not per image.

        Photo collections repeat a few sizes (500x375 and 375x500 in much of ImageNet), so grouping
        turns hundreds of small kernel launches per batch into a handful; each image's result is the same.
        """
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(k)
        if len(groups) == 1:
            return self._resize_crop(torch.stack(images))
        crops: list[torch.Tensor | None] = [None] * len(images)
        for members in groups.values():  # back in row order by stacking views: no index tensor to copy over
            for k, resized in zip(members, self._resize_crop(torch.stack([images[k] for k in members])).unbind(0)):
                crops[k] = resized
        return torch.stack(crops)

    def _resize_crop(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> float (..., 3, crop, crop) holding integers 0..255.

        PIL's 8-bit resampler resizes one axis, rounds and clips to uint8, then resizes the other;
        two antialiased float resizes in PIL's order, each rounded and clipped, stay within 2 levels
        of PIL (one float pass differs by up to 21 levels where bicubic overshoot is clipped).
        """
        from torchvision.transforms.v2 import functional as F

        height, width = image.shape[-2:]
        new_height, new_width = _resized_size(height, width, self.preprocessing.resize)
        if _pil_height_first(height, width, new_height, new_width):
            passes = [(new_height, width), (new_height, new_width)]
        else:
            passes = [(height, new_width), (new_height, new_width)]
        x = image.to(self.device, non_blocking=True).float()
        for size in passes:
            if size != tuple(x.shape[-2:]):
                x = F.resize(x, list(size), interpolation=self.mode, antialias=True).round_().clamp_(0, 255)
        crop = self.preprocessing.crop
        return F.center_crop(x, [crop, crop])


@functools.cache
def _pillow_orders_passes() -> bool:
    """Whether the installed Pillow resizes the height first when it shrinks much more than the width.

    Pillow 13 does (python-pillow/Pillow#9549); older Pillow always starts with the width. Asked
    once, on 16x16 noise whose clipped bicubic overshoot tells the two orders apart.
    """
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    image = Image.fromarray(pixels)
    full = np.asarray(image.resize((14, 6), Image.BICUBIC))
    height_first = np.asarray(image.resize((16, 6), Image.BICUBIC).resize((14, 6), Image.BICUBIC))
    return bool(np.array_equal(full, height_first))


def _pil_height_first(height: int, width: int, new_height: int, new_width: int) -> bool:
    """PIL's choice of pass order for this resize (the rule measured on Pillow 13.0)."""
    return (new_height < height and height - new_height > 2 * (width - new_width)
            and _pillow_orders_passes())


def _is_rgb(image: Any) -> bool:
    return (isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3
            and image.shape[0] == 3 and image.shape[1] > 0 and image.shape[2] > 0)


def decode_difference(data: Manifest | str | Path, preprocessing: Preprocessing, n: int | None = None, *,
                      device: str | torch.device = "cpu", batch_size: int = 64,
                      max_pixels: int = MAX_PIXELS) -> dict[str, Any]:
    """How far the device path is from the PIL path on the first ``n`` images of ``data``.

    Returns counts (images compared, decoded on the device), whether ok/reason records agree, and over
    the pixels of images both paths read: max and mean absolute difference in uint8 levels, the
    share of pixels that differ at all and by more than 1 level. With ``device="cpu"``,
    torchvision's libjpeg-turbo decoder stands in for nvjpeg.
    """
    manifest = data if isinstance(data, Manifest) else read_manifest(data)
    if n is not None:
        manifest = Manifest(manifest.table.iloc[:n].reset_index(drop=True), manifest.root)
    encoded = DeviceDecodeDataset(manifest, preprocessing, max_pixels)
    reference = ImageDataset(manifest, preprocessing, max_pixels)
    decoder = DeviceDecoder(preprocessing, device, max_pixels=max_pixels)
    worst, total, over_1, nonzero, pixels, images, records_equal = 0, 0, 0, 0, 0, 0, True
    for lo in range(0, len(manifest), batch_size):
        rows = range(lo, min(lo + batch_size, len(manifest)))
        out, ok, reasons = decoder(collate_device_batch([encoded[i] for i in rows]))
        ref = [reference[i] for i in rows]
        ref_ok = torch.tensor([r[2] for r in ref])
        records_equal &= ok.tolist() == ref_ok.tolist() and reasons == [r[3] for r in ref]
        both = ok & ref_ok
        diff = (out.cpu().int() - torch.stack([r[1] for r in ref]).int()).abs()[both]
        worst = max(worst, int(diff.max()) if diff.numel() else 0)
        total += int(diff.sum())
        over_1 += int((diff > 1).sum())
        nonzero += int((diff > 0).sum())
        pixels += diff.numel()
        images += int(both.sum())
    pixels = max(pixels, 1)
    return {"images": images, "on_device": decoder.counts["device"], "records_equal": records_equal,
            "max": worst, "mean": total / pixels, "share_differing": nonzero / pixels, "share_over_1": over_1 / pixels}
