"""Time of neuroprobe's occlusion discrepancy maps against the forward-pass floor and against Captum.

One run, one process, one image, one machine. The model is torchvision ResNet-18 with seeded random
weights (``torch.manual_seed(0); resnet18()``, eval mode, wrapped in a ``neuroprobe.LoadedModel``
with the ImageNet mean/std), the image the first one of ``/work/shared/data/imagenet-sample`` (or of
the embedded ``data/sample``), resized and center-cropped to ``--size`` (224: resize 256, crop 224)
as uint8. Occluder: ``--window`` 11 px, ``--stride`` 3 px, ``--fill`` zero (black), so 224 px gives
72 x 72 = 5184 occluded copies. Measured:

* ``neuroprobe``: ``neuroprobe.maps.discrepancy_maps(model, image, "layer3", method=M)`` for all 256 units,
  once per ``--methods`` (``dense``: every copy's forward pass stops at layer3; ``incremental``: each op
  recomputes only the region the patches can change; goal <= 0.3x the floor), batch size left to neuroprobe
  (``--batch-size`` to fix it); the dense method's batch is read from its log and used by the floor. The
  incremental maps are checked against the dense ones (max |diff| / each unit's response scale; ``--no-tf32``
  on CUDA). ``--model efficientnet_lite0`` times ``blocks.3`` of the offline pretrained model instead, and
  ``--sweep-windows 5 11 31`` adds a table of floor and incremental per occluder size and layer
  (``--sweep-layers``, ``--sweep-stride``);
* ``floor``: the same occluded copies through ``nn.Sequential(conv1, bn1, relu, maxpool, layer1,
  layer2, layer3)`` of the same module, no hooks, under ``torch.no_grad()``, with neuroprobe's
  batch size. Each batch of copies is built (pixel-space mask, same fill, normalised) before its
  timer starts; only the forward passes are timed. Goal: neuroprobe / floor <= 1.3;
* ``rf_only``: ``discrepancy_maps(..., rf_only=True)`` for all units and for one unit of each of
  ``--rf-layers`` (default layer3 and layer2; layer2 gets its own floor, truncated after layer2),
  with the fraction of occluders evaluated. The layer3 all-unit maps are checked against the full
  sweep;
* ``captum``: ``captum.attr.Occlusion`` attributing ONE unit at a time, ``forward_func`` = the
  truncated model's layer3 pre-activation (what neuroprobe captures: the input of the last ReLU)
  at the unit's peak position on the unoccluded image, ``baselines`` = the normalised fill (black
  for ``zero``), ``sliding_window_shapes=(3, window, window)``, ``strides=(3, stride, stride)``.
  ``perturbations_per_eval`` is picked among ``--captum-ppe`` (16 64 256) on a trial with a 4x
  coarser stride (at most the window: Captum refuses a stride larger than its window), then ``--captum-units`` units (default 1) are timed with the full stride and
  the time for all 256 units is EXTRAPOLATED as 256 x the mean time per unit. Speed-up = Captum's
  256-unit time / neuroprobe's. Goal: >= 100x. Captum's map of each timed unit is compared with
  neuroprobe's ``pixel_view()`` of the timed neuroprobe run (max |diff| / max |Captum|); at 224 px
  with stride 3 the occluders tile the image exactly (213 = 71 x 3).

Every contender is warmed up once right before it is timed, on a small subset (a coarser stride; one
batch for the floor; the image's top-left corner for Captum). Times are wall-clock (``time.perf_counter``, with
``torch.cuda.synchronize`` around each timed region on CUDA); the process CPU time is shown beside
them (CPU s / wall s well below the thread count means other processes took the cores). On CPU,
``neuroprobe.engine.malloc.keep_freed_memory()`` (what the CLI calls at start-up) is called first, so all
contenders run under the same glibc malloc setting (NEUROPROBE_NO_MALLOPT=1 to measure without).

Examples (the full run is about seven sweeps' worth of 224 px forward passes, ~15-20 min at 1 thread on
an idle core of the 2-core dev machine; ``--quick`` takes ~15 s)::

    .venv/bin/python benchmarks/occlusion.py --quick                 # 65 px image: checks the script, < 1 min
    .venv/bin/python benchmarks/occlusion.py --out benchmarks/results_occlusion.md
    .venv/bin/python benchmarks/occlusion.py --device cuda --threads 4 --captum-units 8 --out occlusion.json

``--threads`` defaults to 1 (torch.set_num_threads): on a shared machine torch's OpenMP threads
otherwise wait for a descheduled sibling and the rates collapse (see RESULTS.md).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "imagenet-sample" / "labels.csv"
EMBEDDED_DATA = REPO / "data" / "sample" / "labels.csv"
STEM = ("conv1", "bn1", "relu", "maxpool")
STAGES = ("layer1", "layer2", "layer3", "layer4")            # the ResNet stages the hand-written references cover
MODELS = {"resnet18": ("layer3", STAGES), "efficientnet_lite0": ("blocks.3", tuple(f"blocks.{i}" for i in range(7)))}
METHODS = ("dense", "incremental")


# -- setup ----------------------------------------------------------------------------------------------
def default_image() -> Path:
    """The first image listed in the shared ImageNet sample, else in the embedded one."""
    import pandas as pd

    csv = SHARED_DATA if SHARED_DATA.is_file() else EMBEDDED_DATA
    return csv.parent / pd.read_csv(csv).path.iloc[0]


def build_model(size: int, name: str = "resnet18"):
    """ResNet-18 (torch.manual_seed(0) random weights) or the offline pretrained EfficientNet-Lite0, eval
    mode, as a LoadedModel cropping to ``size``."""
    import torch
    from torchvision.models import resnet18

    from neuroprobe.models.loading import LoadedModel, Preprocessing, load_model

    preprocessing = Preprocessing(resize=round(size * 256 / 224), crop=size, source="benchmark")
    if name == "efficientnet_lite0":
        loaded = load_model(name)
        return LoadedModel(loaded.module.eval(), preprocessing, loaded.provenance)
    torch.manual_seed(0)
    module = resnet18().eval()
    return LoadedModel(module, preprocessing, {"model": "resnet18", "weights": "none", "init_seed": 0})


def load_image(path: Path, loaded):
    """The image as uint8 (1, 3, size, size), through the model's resize + center crop."""
    from PIL import Image

    with Image.open(path) as image:
        return loaded.preprocessing.to_uint8(image.convert("RGB"))[None]          # (1, 3, H, W) uint8


def truncated(module, layer: str):
    """conv1 .. ``layer`` (ResNet) or conv_stem .. ``blocks.k`` (EfficientNet) as a plain nn.Sequential
    sharing the module's parameters (no hooks)."""
    from torch import nn

    if layer.startswith("blocks."):
        return nn.Sequential(module.conv_stem, module.bn1, *module.blocks[:int(layer.split(".")[1]) + 1])
    names = [*STEM, *[f"layer{i}" for i in range(1, int(layer[-1]) + 1)]]
    return nn.Sequential(*[getattr(module, name) for name in names])


def pre_activation(module, layer: str):
    """x -> ``layer``'s pre-activation (its last block's residual sum before the final ReLU), no hooks.

    Independent of neuroprobe's capture code: the torchvision BasicBlock written out by hand. EfficientNet
    stages end in a linear bottleneck: their pre-activation is the output.
    """
    if layer.startswith("blocks."):
        return truncated(module, layer)
    index = int(layer[-1])
    head = truncated(module, f"layer{index - 1}") if index > 1 else None
    stage = getattr(module, layer)

    def forward(x):
        x = module.maxpool(module.relu(module.bn1(module.conv1(x)))) if head is None else head(x)
        for block in list(stage)[:-1]:
            x = block(x)
        last = stage[-1]
        identity = x if last.downsample is None else last.downsample(x)
        out = last.relu(last.bn1(last.conv1(x)))
        return last.bn2(last.conv2(out)) + identity

    return forward


class BatchLog(logging.Handler):
    """Remembers the last 'occluded copies ... per pass' line neuroprobe logs (the batch size it chose)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.copies = self.batch = None

    def emit(self, record: logging.LogRecord) -> None:
        if "per pass" in str(record.msg) and len(record.args or ()) == 4:
            _layer, self.copies, _images, self.batch = record.args


# -- timing ---------------------------------------------------------------------------------------------
class Clock:
    """Wall and process CPU time of a region, synchronising CUDA at both ends."""

    def __init__(self, device) -> None:
        self.device = device
        self.wall = self.cpu = 0.0

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self._sync()
        self._t, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.wall += time.perf_counter() - self._t
        self.cpu += time.process_time() - self._c


def coarse(size: int, window: int, stride: int, factor: int = 4) -> int:
    """A stride ``factor`` times coarser (for warm-ups and trials), at most the largest that fits."""
    return max(1, min(stride * factor, size - window))


def run_neuroprobe(loaded, image, layer: str, args, device, log: BatchLog, **kwargs) -> dict:
    """Warm up on a coarse stride, then time one discrepancy_maps call; the maps and the timing."""
    from neuroprobe.maps import discrepancy_maps

    common = dict(window=args.window, fill=args.fill, batch_size=args.batch_size, device=str(device), **kwargs)
    discrepancy_maps(loaded, image, layer, stride=coarse(args.size, args.window, args.stride), **common)
    with Clock(device) as clock:
        maps = discrepancy_maps(loaded, image, layer, stride=args.stride, **common)
    return {"maps": maps, "seconds": clock.wall, "cpu": clock.cpu, "copies": int(maps.evaluated.sum()),
            "batch": log.batch, "fraction": float(maps.evaluated.mean())}


def normalizer(loaded, device):
    """[0, 1] pixels -> model input, as neuroprobe normalises a LoadedModel's images."""
    import torch

    mean = torch.tensor(loaded.preprocessing.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(loaded.preprocessing.std, device=device).view(1, -1, 1, 1)
    return lambda x: (x - mean) / std


def occluded_batches(loaded, image, window: int, stride: int, fill: str, batch: int, device):
    """Yield normalised occluded copies, ``batch`` at a time, in neuroprobe's order (row-major)."""
    from neuroprobe.maps.occlusion import fill_images, occluder_positions

    pixels = image.to(device).float() / 255
    inputs, occluder = normalizer(loaded, device)(pixels), normalizer(loaded, device)(fill_images(pixels, fill, window))
    height, width = pixels.shape[-2:]
    ys, xs = occluder_positions(height, window, stride), occluder_positions(width, window, stride)
    jobs = [(y, x) for y in ys for x in xs]
    for start in range(0, len(jobs), batch):
        part = jobs[start:start + batch]
        copies = inputs.expand(len(part), -1, -1, -1).clone()
        for i, (y, x) in enumerate(part):
            copies[i, :, y:y + window, x:x + window] = occluder[0, :, y:y + window, x:x + window]
        yield copies


def run_floor(loaded, image, layer: str, batch: int, args, device) -> dict:
    """One full batch untimed, then every batch of copies through the bare truncated model, forwards timed."""
    import torch

    trunk = truncated(loaded.module, layer).to(device).eval()
    clock, copies = Clock(device), 0
    with torch.no_grad():
        trunk(next(occluded_batches(loaded, image, args.window, args.stride, args.fill, batch, device)))
        for batch_copies in occluded_batches(loaded, image, args.window, args.stride, args.fill, batch, device):
            with clock:
                trunk(batch_copies)
            copies += len(batch_copies)
    return {"seconds": clock.wall, "cpu": clock.cpu, "copies": copies, "batch": batch}


def captum_unit(loaded, inputs, baseline, layer: str, unit: int, stride: int, ppe: int, args):
    """Captum Occlusion of one unit at its peak on the unoccluded image: (attribution, peak)."""
    import torch
    from captum.attr import Occlusion

    forward = pre_activation(loaded.module, layer)
    with torch.no_grad():
        original = forward(inputs)[0, unit]
    py, px = divmod(int(original.flatten().argmax()), original.shape[-1])

    def unit_at_peak(x):
        return forward(x)[:, unit, py, px]

    with torch.no_grad():
        attribution = Occlusion(unit_at_peak).attribute(
            inputs, baselines=baseline, sliding_window_shapes=(3, args.window, args.window),
            strides=(3, stride, stride), perturbations_per_eval=ppe)
    return attribution, (py, px)


def run_captum(loaded, image, layer: str, units: list[int], args, device) -> dict:
    """Pick perturbations_per_eval on a coarse-stride trial, then time ``units`` one at a time."""
    from neuroprobe.maps.occlusion import fill_images

    normalize, pixels = normalizer(loaded, device), image.to(device).float() / 255
    inputs, baseline = normalize(pixels), normalize(fill_images(pixels, args.fill, args.window))
    trial_stride = min(coarse(args.size, args.window, args.stride), args.window)   # Captum: stride <= window
    corner = slice(0, min(args.size, 4 * args.window))
    captum_unit(loaded, inputs[..., corner, corner], baseline[..., corner, corner], layer, units[0], args.window,
                min(args.captum_ppe), args)                                      # warm-up on the top-left corner
    trials = {}
    for ppe in args.captum_ppe:
        with Clock(device) as clock:
            captum_unit(loaded, inputs, baseline, layer, units[0], trial_stride, ppe, args)
        trials[ppe] = clock.wall
        print(f"  captum trial (stride {trial_stride}) perturbations_per_eval={ppe}: {clock.wall:.2f} s", flush=True)
    best = min(trials, key=trials.get)
    maps, peaks, clock = {}, {}, Clock(device)
    for unit in units:
        with clock:
            attribution, peaks[unit] = captum_unit(loaded, inputs, baseline, layer, unit, args.stride, best, args)
        maps[unit] = attribution[0].cpu().numpy()
    return {"seconds": clock.wall, "cpu": clock.cpu, "ppe": best, "trials": trials, "trial_stride": trial_stride,
            "maps": maps, "peaks": peaks, "units": units}


def agreement(maps, captum: dict) -> list[dict]:
    """Per Captum unit: max |pixel_view - Captum| / max |Captum|, and whether the peaks agree."""
    view = maps.pixel_view()
    out = []
    for unit in captum["units"]:
        column = int(np.flatnonzero(maps.units == unit)[0])
        theirs = captum["maps"][unit].astype(np.float64)
        ours = view[0, column].astype(np.float64)
        channels_equal = all(np.array_equal(theirs[0], theirs[c]) for c in range(1, theirs.shape[0]))
        finite = np.isfinite(ours)
        scale = np.abs(theirs[0][finite]).max()
        diff = np.abs(ours[finite] - theirs[0][finite]).max()
        out.append({"unit": unit, "max_rel_diff": float(diff / scale) if scale > 0 else float("nan"),
                    "max_abs_diff": float(diff), "scale": float(scale), "uncovered_px": int((~finite).sum()),
                    "peak_neuroprobe": [int(v) for v in maps.peak[0, column]],
                    "peak_captum": list(captum["peaks"][unit]), "captum_channels_equal": channels_equal})
    return out


# -- reporting ------------------------------------------------------------------------------------------
def machine_info(device) -> dict:
    import captum
    import torch
    import torchvision

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    info = {"date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu,
            "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "captum": captum.__version__,
            "threads": torch.get_num_threads(), "device": str(device), "load_start": " ".join(f"{v:.2f}" for v in os.getloadavg())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def table_rows(results: dict, units: dict[str, int]) -> list[dict]:
    """One row per contender: seconds, copies/s, x floor of the same layer, speed-up of Captum over it."""
    floors = {layer: r["seconds"] for layer, r in results["floor"].items()}
    captum = results.get("captum")
    per_unit = captum["seconds"] / len(captum["units"]) if captum else None
    captum_all = per_unit * units[results["layer"]] if captum else None
    rows = []

    def add(name, layer, n_units, r, captum_time=None, note=""):
        rows.append({"contender": name, "layer": layer, "units": n_units, "copies": r["copies"],
                     "batch": r.get("batch"), "seconds": r["seconds"], "cpu": r.get("cpu"),
                     "rate": r["copies"] / r["seconds"] if r["seconds"] else float("nan"),
                     "x_floor": r["seconds"] / floors[layer] if layer in floors else None,
                     "speedup": captum_time / r["seconds"] if captum_time else None, "note": note})

    layer = results["layer"]
    for method, r in results["methods"].items():
        add(f"neuroprobe ({method})", layer, units[layer], r, captum_all)
    for name, r in results["floor"].items():
        add("floor (bare truncated forward)", name, "-", r)
    for (rf_layer, which), r in results["rf_only"].items():
        n = units[rf_layer] if which == "all" else 1
        versus = (captum_all if which == "all" else per_unit) if rf_layer == layer and captum else None
        add(f"neuroprobe rf_only ({which})", rf_layer, n, r, versus, f"{100 * r['fraction']:.1f}% of occluders")
    if captum:
        n = len(captum["units"])
        add(f"captum Occlusion, ppe={captum['ppe']} (measured)", layer, n,
            {"seconds": captum["seconds"], "cpu": captum["cpu"], "copies": n * results["neuroprobe"]["copies"]},
            None, "one unit per attribution")
        add(f"captum Occlusion, ppe={captum['ppe']} (EXTRAPOLATED: {units[layer]} x per-unit time)", layer,
            units[layer], {"seconds": captum_all, "cpu": None, "copies": units[layer] * results["neuroprobe"]["copies"]},
            None, "not run")
    return rows


def format_table(rows: list[dict], markdown: bool) -> str:
    head = ["contender", "layer", "units", "copies", "batch", "seconds", "CPU s", "copies/s", "x floor",
            "Captum speed-up", "note"]

    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    body = [[r["contender"], r["layer"], str(r["units"]), str(r["copies"]), fmt(r["batch"], "d"),
             fmt(r["seconds"], ".2f"), fmt(r["cpu"], ".2f"), fmt(r["rate"], ".1f"), fmt(r["x_floor"], ".2f"),
             "" if r["speedup"] is None else f"{r['speedup']:.0f}x", r["note"]] for r in rows]
    if markdown:
        return "\n".join("| " + " | ".join(line) + " |" for line in [head, ["---"] * len(head), *body])
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])


def summary_lines(args, info: dict, results: dict, checks: list[dict], malloc: str) -> list[str]:
    image = results["image"]
    lines = [f"command: {' '.join([sys.executable, *sys.argv])}",
             (f"machine: {info['cpu']}, {info['cores']} cores; {info.get('gpu', 'no GPU used')}; "
              f"device {info['device']}; TF32 {info['tf32']}; torch threads {info['threads']}; load average at start "
              f"{info['load_start']}, at end {info['load_end']}"),
             (f"python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, "
              f"captum {info['captum']}; malloc: {malloc}"),
             (f"model: {MODEL_TEXT[args.model]}, eval; image {image} -> "
              f"{args.size}x{args.size}, ImageNet mean/std; window {args.window}, stride {args.stride}, fill "
              f"'{args.fill}', response 'peak' (pre-activation)")]
    for c in checks:
        lines.append(f"agreement, unit {c['unit']} of {results['layer']}: max |pixel_view - Captum| / max |Captum| = "
                     f"{c['max_rel_diff']:.2e} (abs {c['max_abs_diff']:.2e}, scale {c['scale']:.3g}; peak "
                     f"neuroprobe {tuple(c['peak_neuroprobe'])}, Captum {tuple(c['peak_captum'])}; "
                     f"{c['uncovered_px']} px uncovered)")
    if "rf_check" in results:
        lines.append(f"rf_only (all units) vs full sweep on {results['layer']}: max |diff| / max |full| = "
                     f"{results['rf_check']:.2e}")
    captum = results.get("captum")
    if captum:
        trials = ", ".join(f"{p}: {s:.2f} s" for p, s in captum["trials"].items())
        lines.append(f"Captum perturbations_per_eval trial (stride {captum['trial_stride']}): {trials} -> "
                     f"{captum['ppe']}; {len(captum['units'])} unit(s) timed at stride {args.stride}, the "
                     f"{results['units'][results['layer']]}-unit time is extrapolated (per-unit time x units)")
    return lines


MODEL_TEXT = {"resnet18": "torchvision resnet18, torch.manual_seed(0) random weights",
              "efficientnet_lite0": "timm tf_efficientnet_lite0, the offline pretrained weights"}


def equality(results: dict) -> str | None:
    """Incremental vs dense maps of the timed runs: max |diff| / each unit's response scale."""
    methods = results["methods"]
    if not {"dense", "incremental"} <= set(methods):
        return None
    dense, incremental = methods["dense"]["maps"], methods["incremental"]["maps"]
    scale = np.maximum(np.abs(dense.reference).max(0), np.abs(dense.values).max(axis=(0, 2, 3)))
    error = np.abs(incremental.values - dense.values) / np.maximum(scale, 1e-30)[None, :, None, None]
    return (f"incremental vs dense on {results['layer']}: max |diff| / unit's response scale = {error.max():.2e} "
            "(goal <= 1e-5)")


def run_sweep(loaded, image, args, device, log: BatchLog) -> list[dict]:
    """Floor and incremental (and dense with --sweep-dense) per occluder size and layer, at --sweep-stride."""
    rows = []
    for window in args.sweep_windows:
        for layer in args.sweep_layers:
            sub = argparse.Namespace(**{**vars(args), "window": window, "stride": args.sweep_stride})
            print(f"sweep: window {window}, {layer} ...", end=" ", flush=True)
            row = {"window": window, "layer": layer}
            for method in ("incremental", "dense") if args.sweep_dense else ("incremental",):
                r = run_neuroprobe(loaded, image, layer, sub, device, log, method=method)
                row[method] = {k: r[k] for k in ("seconds", "cpu", "copies", "batch")}
            floor = run_floor(loaded, image, layer, row["incremental"]["batch"] or args.batch_size, sub, device)
            row["floor"] = floor
            rows.append(row)
            print(f"floor {floor['seconds']:.2f} s, incremental {row['incremental']['seconds']:.2f} s "
                  f"({row['incremental']['seconds'] / floor['seconds']:.2f}x)", flush=True)
    return rows


def sweep_table(rows: list[dict], markdown: bool) -> str:
    head = ["window", "layer", "copies", "floor s", "floor CPU s", "incremental s", "incremental CPU s",
            "x floor (wall)", "x floor (CPU)", "dense x floor"]
    body = []
    for r in rows:
        f, i = r["floor"], r["incremental"]
        dense = f"{r['dense']['seconds'] / f['seconds']:.2f}" if "dense" in r else ""
        body.append([str(r["window"]), r["layer"], str(i["copies"]), f"{f['seconds']:.2f}", f"{f['cpu']:.2f}",
                     f"{i['seconds']:.2f}", f"{i['cpu']:.2f}", f"{i['seconds'] / f['seconds']:.2f}",
                     f"{i['cpu'] / f['cpu']:.2f}", dense])
    if markdown:
        return "\n".join("| " + " | ".join(line) + " |" for line in [head, ["---"] * len(head), *body])
    widths = [max(len(line[k]) for line in [head, *body]) for k in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])


def write_out(path: str, args, info, rows, lines, checks, results, as_json: bool = False) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if as_json or path.endswith(".json"):
        data = {"info": info, "args": vars(args), "rows": rows, "checks": checks, "notes": lines,
                "sweep": results.get("sweep", [])}
        Path(path).write_text(json.dumps(data, indent=1, default=str) + "\n")
        return
    title = f"# Occlusion maps: neuroprobe vs floor vs Captum ({'quick' if args.quick else 'full'} run)\n"
    parts = [title, f"## {info['date']}", "", *[f"- {line}" for line in lines], "", format_table(rows, markdown=True), ""]
    if results.get("sweep"):
        parts += [f"Occluder size and depth (stride {args.sweep_stride}):", "",
                  sweep_table(results["sweep"], markdown=True), ""]
    text = "\n".join(parts)
    Path(path).write_text(text)


# -- main -----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny configuration to check the script: 65 px image (stride 3 -> 19x19 copies), "
                        "~15 s)")
    p.add_argument("--size", type=int, default=None, help="image side in px (default 224; 65 with --quick)")
    p.add_argument("--window", type=int, default=11, help="occluder side in px (default %(default)s)")
    p.add_argument("--stride", type=int, default=3, help="occluder stride in px (default %(default)s)")
    p.add_argument("--fill", default="zero", choices=("zero", "mean", "noise"),
                   help="occluder fill for every contender (Captum's baseline = the same, normalised; "
                        "default %(default)s)")
    p.add_argument("--model", default="resnet18", choices=tuple(MODELS),
                   help="resnet18 (seeded random weights) or efficientnet_lite0 (offline pretrained; default %(default)s)")
    p.add_argument("--layer", default=None,
                   help="layer of the main comparison (default: layer3 for resnet18, blocks.3 for efficientnet_lite0)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="discrepancy_maps methods timed in the main table (default: dense incremental)")
    p.add_argument("--rf-layers", nargs="*", default=None,
                   help="layers of the rf_only rows, each with its own floor (default: layer3 layer2 for resnet18; "
                        "none for efficientnet_lite0; give the option alone for none)")
    p.add_argument("--sweep-windows", type=int, nargs="*", default=[],
                   help="occluder sizes of the sweep table (e.g. 5 11 31; default: no sweep)")
    p.add_argument("--sweep-layers", nargs="+", default=None,
                   help="layers of the sweep table (default: layer1 layer2 layer3 for resnet18)")
    p.add_argument("--sweep-stride", type=int, default=6, help="occluder stride of the sweep (default %(default)s)")
    p.add_argument("--sweep-dense", action="store_true", help="also time the dense method in the sweep")
    p.add_argument("--rf-unit", type=int, default=0, help="the unit of the single-unit rf_only rows (default 0)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="occluded copies per pass for neuroprobe and the floor (default: neuroprobe's choice)")
    p.add_argument("--captum-units", type=int, default=1,
                   help="units Captum attributes (timed, one at a time; default 1; 0 skips Captum)")
    p.add_argument("--captum-ppe", type=int, nargs="+", default=[16, 64, 256],
                   help="perturbations_per_eval values tried on the coarse-stride trial (default: 16 64 256)")
    p.add_argument("--image", type=Path, default=None, help="image file (default: first image of the sample)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: a shared machine)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument("--no-tf32", action="store_true",
                   help="CUDA: convolutions and matmuls in full fp32 (TF32 off), so that the incremental and dense "
                        "maps can be checked equal within 1e-5 (TF32 rounds to ~1e-3)")
    p.add_argument("--out", default=None,
                   help="write the results here: .json -> JSON, else a Markdown file (overwritten)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON here (overwritten)")
    args = p.parse_args(argv)
    args.size = args.size or (65 if args.quick else 224)
    default_layer, layers = MODELS[args.model]
    args.layer = args.layer or default_layer
    if args.rf_layers is None:
        args.rf_layers = ["layer3", "layer2"] if args.model == "resnet18" else []
    if args.sweep_layers is None:
        args.sweep_layers = ["layer1", "layer2", "layer3"] if args.model == "resnet18" else ["blocks.1", "blocks.2", "blocks.3"]
    bad = [name for name in [args.layer, *args.rf_layers, *args.sweep_layers] if name not in layers]
    if bad:
        p.error(f"layer(s) {bad} not covered for {args.model}; choose from {', '.join(layers)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from neuroprobe.engine.malloc import keep_freed_memory
    from neuroprobe.maps.occlusion import occluder_positions

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if device.type == "cpu":
        applied = keep_freed_memory()
        malloc = ("neuroprobe.engine.malloc.keep_freed_memory() applied (mmap off, trim threshold 2 GiB)" if applied else
                  "keep_freed_memory() NOT applied (NEUROPROBE_NO_MALLOPT set or not glibc): default glibc")
    else:
        malloc = "default glibc (CUDA run)"
    torch.set_num_threads(args.threads)
    if args.no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    info = machine_info(device)
    info["tf32"] = "off" if args.no_tf32 or device.type != "cuda" else "on (torch's default for cuDNN convolutions)"
    print(f"{info['cpu']}, {info['cores']} cores; torch {info['torch']}, {info['threads']} thread(s); "
          f"device {device}{', ' + info['gpu'] if 'gpu' in info else ''}\nmalloc: {malloc}", flush=True)

    log = BatchLog()
    logger = logging.getLogger("neuroprobe.maps.occlusion")
    logger.setLevel(logging.DEBUG)  # the batch it chose is a debug line
    logger.addHandler(log)
    logger.propagate = False

    loaded = build_model(args.size, args.model)
    loaded.module.to(device)
    image_path = args.image or default_image()
    image = load_image(image_path, loaded)
    n_pos = len(occluder_positions(args.size, args.window, args.stride))
    with torch.no_grad():
        shapes = {name: truncated(loaded.module, name)(loaded.preprocessing.normalize(image.to(device))).shape[1]
                  for name in {args.layer, *args.rf_layers}}
    units = {name: int(n) for name, n in shapes.items()}
    results: dict = {"layer": args.layer, "units": units, "image": str(image_path), "floor": {}, "rf_only": {}}
    print(f"image {image_path} -> {args.size}x{args.size}; {n_pos}x{n_pos} = {n_pos ** 2} occluded copies; "
          f"window {args.window}, stride {args.stride}, fill {args.fill}", flush=True)

    start = time.perf_counter()
    results["methods"] = {}
    for method in args.methods:
        print(f"neuroprobe ({method}) {args.layer}, {units[args.layer]} units ...", end=" ", flush=True)
        results["methods"][method] = run_neuroprobe(loaded, image, args.layer, args, device, log, method=method)
        print(f"{results['methods'][method]['seconds']:.2f} s (batch {results['methods'][method]['batch']})", flush=True)
    main_method = "incremental" if "incremental" in results["methods"] else args.methods[0]
    results["neuroprobe"] = results["methods"][main_method]
    # the floor runs at the dense method's batch (neuroprobe's memory budget), when it was timed
    batch = results["methods"].get("dense", results["neuroprobe"])["batch"] or args.batch_size

    for layer in dict.fromkeys([args.layer, *args.rf_layers]):
        print(f"floor {layer} ...", end=" ", flush=True)
        results["floor"][layer] = run_floor(loaded, image, layer, batch, args, device)
        print(f"{results['floor'][layer]['seconds']:.2f} s", flush=True)
        for which, chosen in (("all", None), (f"unit {args.rf_unit}", [args.rf_unit])):
            print(f"neuroprobe rf_only {layer} {which} ...", end=" ", flush=True)
            r = run_neuroprobe(loaded, image, layer, args, device, log, units=chosen, rf_only=True)
            results["rf_only"][(layer, which)] = r
            print(f"{r['seconds']:.2f} s, {100 * r['fraction']:.1f}% of occluders", flush=True)
            if layer == args.layer and chosen is None:
                full, limited = results["neuroprobe"]["maps"].values, r["maps"].values
                results["rf_check"] = float(np.abs(limited - full).max() / np.abs(full).max())

    checks: list[dict] = []
    if args.captum_units > 0:
        captum_units = sorted({int(u) for u in np.linspace(0, units[args.layer] - 1, args.captum_units)})
        print(f"captum {args.layer}, unit(s) {captum_units} ...", flush=True)
        results["captum"] = run_captum(loaded, image, args.layer, captum_units, args, device)
        print(f"  captum {len(captum_units)} unit(s) at stride {args.stride}: {results['captum']['seconds']:.2f} s "
              f"(ppe {results['captum']['ppe']})", flush=True)
        checks = agreement(results["neuroprobe"]["maps"], results["captum"])
    if args.sweep_windows:
        results["sweep"] = run_sweep(loaded, image, args, device, log)
    info["load_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    info["total_s"] = time.perf_counter() - start
    info["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    rows = table_rows(results, units)
    lines = summary_lines(args, info, results, checks, malloc)
    lines.append(f"benchmark wall time {info['total_s']:.0f} s, peak RSS {info['max_rss_mb']:.0f} MiB")
    goals = {"dense": "goal <= 1.3", "incremental": "goal <= 0.3"}
    goal = [f"neuroprobe ({row['contender'][12:-1]}) / floor = {row['x_floor']:.2f} ({goals[row['contender'][12:-1]]})"
            for row in rows[:len(results["methods"])]]
    if rows[0]["speedup"]:
        goal += [f"Captum ({units[args.layer]} units, extrapolated) / neuroprobe ({row['contender'][12:-1]}) = "
                 f"{row['speedup']:.0f}x (goal >= 100x)" for row in rows[:len(results["methods"])]]
    lines.append("; ".join(goal))
    cpu_ratios = ", ".join(f"{method} {r['cpu'] / results['floor'][args.layer]['cpu']:.2f}"
                           for method, r in results["methods"].items())
    lines.append(f"by process CPU time instead of wall time: neuroprobe / floor = {cpu_ratios} (wall time well above "
                 "CPU time x threads means the process waited for a core: other load on the machine)")
    check = equality(results)
    if check:
        lines.append(check)
    text = "\n" + format_table(rows, markdown=False) + "\n\n" + "\n".join(lines)
    if results.get("sweep"):
        text += f"\n\nsweep (stride {args.sweep_stride}):\n" + sweep_table(results["sweep"], markdown=False)
    print(text, flush=True)
    for path, as_json in ((args.out, False), (args.json, True)):
        if path:
            write_out(path, args, info, rows, lines, checks, results, as_json)
            print(f"written to {path}")


if __name__ == "__main__":
    main()
