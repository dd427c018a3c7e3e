"""Throughput of neuroprobe's likelihood maps against the bare forward pass and the authors' per-image loop.

One run measures, for one model (EfficientNet-Lite0, offline pretrained weights), N images x F
fixations (default: the 7 x 7 grid, F = 49, log-polar views of 224 px):

* ``bare forward``: the model alone in eval mode under ``torch.no_grad()`` on N x F pre-built random
  224 x 224 views already on the device, in passes of ``--views-per-pass``; only the passes are
  timed. It is timed in BOTH memory formats (model and input converted to ``contiguous`` and to
  ``channels_last``); the faster is the denominator of every ratio ("x bare", bare seconds / the
  row's seconds: 1.0 is as fast as the model alone). A pool of at most 4 passes' worth of views is
  built once and cycled through, so that large runs do not hold N x F views in memory.
* ``neuroprobe``: ``neuroprobe.retina.likelihood.likelihood_maps(loaded, manifest, store, ...)`` end
  to end into a fresh Zarr store (the model already loaded and passed as the ``LoadedModel``). The
  call is timed: the probe pass and the store's creation, decoding at 2x the model's resolution
  (``ViewSettings.source``), one ``grid_sample`` per batch of images, the model in passes of
  ``--views-per-pass``, log-softmax + top-1 and the writes of every batch, and the consolidation.
  The issue's target: >= 0.9 x bare (views, softmax and store writing cost <= 10%).
* ``authors-style loop`` (bicv/Retinotopy, ``retinotopy.py``: ``get_saccade_map`` and
  ``apply_grid``): one image at a time, decoded with PIL by the same source preprocessing
  (``ViewSettings().source(preprocessing).to_uint8(load_image(path))``) and normalized; the
  fixation grids are built in a Python loop (per fixation ``torch.stack((grid_x + x, grid_y + y), 2)``
  from a log-polar base grid ``torch.outer(rs, cos ts)``, appended to a list and ``torch.stack``-ed,
  on the CPU as the authors do, then moved to the device), ``image.repeat(F, 1, 1, 1)``, one
  ``F.grid_sample(..., align_corners=False)``, the model on the F views (same ``--views-per-pass``,
  same memory format as neuroprobe), softmax, results kept in a Python list (no store). Its ratio
  to neuroprobe is the speed-up.

The authors' base grid is built with neuroprobe's geometry (``views.py``): radii
``radius * 2 ** linspace(rs_min, rs_max, 224)``, azimuths ``linspace(0, 2 pi, 225)[:-1]``, and the
centres and radii of ``make_layout(layout, n, radius)`` (the authors' own ``rs_max`` is not scaled
by the view's radius; here it is, as in neuroprobe). The base grid is checked to equal
``view_offsets`` bit for bit, and the two contenders' top-1 predictions are compared view by view
(agreement fraction, and the largest difference of the top-1 probability): a benchmark that compared
different work would show it there. With ``--view crop`` the base grid is the pixel-centre square of
``views.py`` (the authors' Cartesian control uses ``linspace(-r, r)``; here it is the same as
neuroprobe's, so that the check still holds).

Every contender is warmed up before it is timed (the bare pass on one full and one partial pass;
neuroprobe with a call on the first batch of images into another store; the loop on one image);
``--repeats`` interleaves the contenders and keeps the fastest of each. Each row also records the
process's CPU seconds and the CPU other processes used meanwhile (in cores, from /proc/stat): a
shared machine skews rates.

Examples::

    .venv/bin/python benchmarks/retina.py                                 # 16 images, 7x7 log-polar, CPU
    .venv/bin/python benchmarks/retina.py --images 4 --threads 1          # a quick check
    .venv/bin/python benchmarks/retina.py --layout rings --view crop --repeats 3 --out runs/retina.md
    python3 benchmarks/retina.py --device cuda --images 256 --views-per-pass 256 --batch-size 16

(``--threads 1`` when other processes share the cores: torch's OpenMP threads otherwise wait for a
descheduled sibling and the rates collapse; see RESULTS.md.)
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "imagenet-sample" / "labels.csv"
EMBEDDED_DATA = REPO / "data" / "sample" / "labels.csv"
FORMATS = ("contiguous", "channels_last")
MODEL = "efficientnet_lite0"
POOL_PASSES = 4  # passes' worth of random views the bare forward pass cycles through


# -- timing -----------------------------------------------------------------------------------------------
def _own_cpu() -> float:
    import resource

    usages = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(u.ru_utime + u.ru_stime for u in usages)


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (or stolen by the hypervisor) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Timer:
    """Wall time of a block, this process's CPU time, and the CPU other processes used meanwhile."""

    def __enter__(self) -> "Timer":
        self.cpu, self.busy, self.wall = _own_cpu(), _machine_busy(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = _own_cpu() - self.cpu
        self.busy = _machine_busy() - self.busy

    def result(self, views: int, **extra) -> dict:
        return {"seconds": self.wall, "views": views, "rate": views / self.wall, "cpu": self.cpu,
                "others": max(0.0, self.busy - self.cpu) / self.wall, **extra}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _format(name: str):
    import torch

    return torch.channels_last if name == "channels_last" else torch.contiguous_format


# -- data and setup ---------------------------------------------------------------------------------------
def default_data() -> Path:
    return SHARED_DATA if SHARED_DATA.exists() else EMBEDDED_DATA


def subset(manifest, n: int):
    """The first ``n`` rows of ``manifest`` (all of them when it has fewer)."""
    from neuroprobe.data import Manifest

    return Manifest(manifest.table.iloc[:n].reset_index(drop=True), manifest.root)


# -- contenders -------------------------------------------------------------------------------------------
class BareForward:
    """The model alone over ``total`` random views in passes of ``per_pass``, in either memory format."""

    def __init__(self, module, total: int, per_pass: int, size: int, device) -> None:
        import torch

        self.module, self.total, self.per_pass, self.device = module, total, per_pass, device
        passes = min(math.ceil(total / per_pass), POOL_PASSES)
        generator = torch.Generator().manual_seed(0)
        pool = torch.randn(min(total, passes * per_pass), 3, size, size, generator=generator)
        self.pool = {"contiguous": pool.to(device)}
        self.pool["channels_last"] = self.pool["contiguous"].contiguous(memory_format=torch.channels_last)
        self.pool_passes = passes

    def _passes(self, fmt: str, total: int) -> None:
        pool = self.pool[fmt]
        for k, lo in enumerate(range(0, total, self.per_pass)):
            size = min(self.per_pass, total - lo)
            start = (k % self.pool_passes) * self.per_pass
            start = start if start + size <= pool.shape[0] else 0
            self.module(pool[start:start + size])
        _sync(self.device)

    def __call__(self, fmt: str) -> dict:
        import torch

        self.module.to(memory_format=_format(fmt))
        warm = self.per_pass + self.total % self.per_pass if self.total > self.per_pass else self.total
        with torch.no_grad():
            self._passes(fmt, warm)
            with Timer() as timer:
                self._passes(fmt, self.total)
        return timer.result(self.total, memory_format=fmt)


def neuroprobe_run(loaded, manifest, args, workdir: Path, warm: bool = True) -> dict:
    """``likelihood_maps`` end to end into a fresh store (after a warm-up call on the first batch)."""
    import zarr

    from neuroprobe.retina.likelihood import likelihood_maps

    kwargs = dict(layout=args.layout, n=args.grid, radius=args.radius, view=args.view, batch_size=args.batch_size,
                  views_per_pass=args.views_per_pass, device=args.device, memory_format=args.memory_format,
                  overwrite=True)
    if warm:
        likelihood_maps(loaded, subset(manifest, args.batch_size), workdir / "warm.zarr", **kwargs)
    out = workdir / "timed.zarr"
    shutil.rmtree(out, ignore_errors=True)
    with Timer() as timer:
        likelihood_maps(loaded, manifest, out, **kwargs)
    group = zarr.open_group(str(out), mode="r")
    fixations = int(group["top1"].shape[1] * group["top1"].shape[2])
    return timer.result(len(manifest) * fixations, top1=group["top1"][:].reshape(len(manifest), -1),
                        top1_probability=group["top1_probability"][:].reshape(len(manifest), -1),
                        done=bool(group["done"][:].all()))


class AuthorsLoop:
    """bicv/Retinotopy's way: one image at a time, its fixation grids built in a Python loop."""

    def __init__(self, loaded, fixations, settings, fmt: str, per_pass: int, device) -> None:
        import torch

        from neuroprobe.retina.views import view_offsets

        self.loaded, self.settings, self.per_pass, self.device = loaded, settings, per_pass, device
        self.fmt = _format(fmt)
        self.source = settings.source(loaded.preprocessing)
        # the centres and radii of neuroprobe's layout, as float32 tensors (row-major, like Fixations.flat)
        self.centers, self.radii = fixations.flat()
        h = w = settings.size
        if settings.kind == "logpolar":   # the authors' get_saccade_map, radii as in views.py
            rs = 2.0 ** torch.linspace(settings.rs_min, settings.rs_max, h, dtype=torch.float64)
            ts = torch.linspace(0, 2 * math.pi, w + 1, dtype=torch.float64)[:-1]
            grid_x, grid_y = torch.outer(rs, torch.cos(ts)), torch.outer(rs, torch.sin(ts))
        else:                              # crop: pixel centres of the square, as in views.py
            xs = (2 * torch.arange(w, dtype=torch.float64) + 1) / w - 1
            ys = (2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        self.grid_x, self.grid_y = grid_x.float(), grid_y.float()
        reference = view_offsets(settings.size, settings.kind, settings.rs_min, settings.rs_max)
        self.same_base = bool(torch.equal(torch.stack((self.grid_x, self.grid_y), 2), reference))

    def grids(self):
        """(F, h, w, 2): one grid per fixation, stacked from a Python list (the source image is square)."""
        import torch

        grids = []
        for k in range(len(self.radii)):
            r, (x, y) = self.radii[k], self.centers[k]
            grids.append(torch.stack((self.grid_x * r + x, self.grid_y * r + y), 2))
        return torch.stack(grids)

    def one(self, path):
        """Softmax (F, classes) of every view of one image."""
        import torch
        import torch.nn.functional as F

        from neuroprobe.data import load_image

        image = self.source.normalize(self.source.to_uint8(load_image(path))[None].to(self.device))
        grid = self.grids().to(self.device)
        views = F.grid_sample(image.repeat(grid.shape[0], 1, 1, 1), grid, mode="bilinear",
                              padding_mode=self.settings.padding, align_corners=False)
        logits = torch.cat([self.loaded.module(views[i:i + self.per_pass].contiguous(memory_format=self.fmt))
                            for i in range(0, len(views), self.per_pass)])
        return torch.softmax(logits.float(), -1).cpu()

    def __call__(self, manifest, warm: bool = True) -> dict:
        import torch

        self.loaded.module.eval().to(self.device).to(memory_format=self.fmt)
        paths = [manifest.absolute(i) for i in range(len(manifest))]
        with torch.no_grad():
            if warm:
                self.one(paths[0])
            with Timer() as timer:
                results = [self.one(path) for path in paths]
        probabilities = torch.stack(results)                       # (N, F, classes)
        top_p, top = probabilities.max(-1)
        return timer.result(probabilities.shape[0] * probabilities.shape[1], top1=top.numpy(),
                            top1_probability=top_p.numpy())


# -- reporting --------------------------------------------------------------------------------------------
def machine_info(device) -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    info = {"date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu,
            "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device),
            "load_start": " ".join(f"{v:.2f}" for v in os.getloadavg())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def machine_line(info: dict) -> str:
    gpu = f"{info['gpu']} (CUDA {info['cuda']})" if "gpu" in info else "no GPU used"
    return (f"machine: {info['cpu']}, {info['cores']} cores; {gpu}; device {info['device']}; torch {info['torch']}, "
            f"{info['threads']} thread(s); python {info['python']}; load average at start {info['load_start']}"
            + (f", at end {info['load_end']}" if "load_end" in info else ""))


def best(timings: list[dict]) -> dict:
    return min(timings, key=lambda t: t["seconds"])


def table_rows(timings: dict[str, list[dict]], bare_format: str) -> list[dict]:
    bare = best(timings[f"bare {bare_format}"])
    other = "contiguous" if bare_format == "channels_last" else "channels_last"
    rows = []
    for name, key, note in ((f"bare forward ({bare_format}, the faster)", f"bare {bare_format}", "random views"),
                            (f"bare forward ({other})", f"bare {other}", "random views"),
                            ("neuroprobe likelihood_maps", "neuroprobe", "decode, views, forward, softmax, store"),
                            ("authors-style loop", "authors", "one image at a time, no store")):
        if key not in timings:
            continue
        r = best(timings[key])
        rows.append({"contender": name, "views": r["views"], "rate": r["rate"], "seconds": r["seconds"],
                     "x_bare": bare["seconds"] / r["seconds"], "cpu": r["cpu"], "others": r["others"],
                     "all": [t["seconds"] for t in timings[key]], "note": note})
    return rows


def format_table(rows: list[dict], markdown: bool) -> str:
    head = ["contender", "views", "views/s", "seconds", "x bare", "CPU s", "others' CPU (cores)", "note"]
    body = [[r["contender"], str(r["views"]), f"{r['rate']:.1f}", f"{r['seconds']:.2f}", f"{r['x_bare']:.2f}",
             f"{r['cpu']:.1f}", f"{r['others']:.2f}", r["note"]] for r in rows]
    if markdown:
        return "\n".join("| " + " | ".join(line) + " |" for line in [head, ["---"] * len(head), *body])
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])


# -- main -------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help=f"image CSV (default: {SHARED_DATA} when it exists, else {EMBEDDED_DATA})")
    p.add_argument("--images", type=int, default=16, help="first N rows of the CSV (default %(default)s)")
    p.add_argument("--layout", default="grid", choices=("grid", "rings"), help="fixation layout (default %(default)s)")
    p.add_argument("--grid", type=int, default=None, help="fixations per side (default: 7 for grid, 11 for rings)")
    p.add_argument("--radius", type=float, default=None,
                   help="view radius (grid) or outer ring's radius (rings) (default: the layout's, 0.5 / 0.1)")
    p.add_argument("--view", default="logpolar", choices=("logpolar", "crop"), help="view kind (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=4, help="images per likelihood_maps batch (default %(default)s)")
    p.add_argument("--views-per-pass", type=int, default=64, help="views per forward pass, every contender "
                   "(default %(default)s)")
    p.add_argument("--memory-format", default="auto", choices=("auto", "channels_last", "contiguous"),
                   help="likelihood_maps' memory_format; the authors' loop runs in the format it resolves to "
                        "(default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark = True for every contender (likelihood_maps leaves it off)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds; the fastest of each is kept "
                   "(default %(default)s)")
    p.add_argument("--no-authors", action="store_true", help="skip the authors-style loop (and the agreement check)")
    p.add_argument("--out", default=None, help="also write the results as Markdown here (overwritten)")
    args = p.parse_args(argv)
    if args.images < 1 or args.repeats < 1 or args.views_per_pass < 1 or args.batch_size < 1:
        p.error("--images, --repeats, --views-per-pass and --batch-size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from neuroprobe.data import read_manifest
    from neuroprobe.engine.device import choose_memory_format
    from neuroprobe.engine.malloc import keep_freed_memory
    from neuroprobe.models.loading import load_model
    from neuroprobe.retina.layouts import make_layout
    from neuroprobe.retina.likelihood import ViewSettings

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    args.device = str(device)
    if device.type == "cpu":
        malloc = ("neuroprobe.engine.malloc.keep_freed_memory() applied" if keep_freed_memory() else
                  "keep_freed_memory() NOT applied (NEUROPROBE_NO_MALLOPT set or not glibc): default glibc")
    else:
        malloc = "default glibc (CUDA run)"
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(device)
    print(machine_line(info) + f"\nmalloc: {malloc}", flush=True)

    loaded = load_model(MODEL)
    loaded.module.eval().to(device)
    data = args.data or default_data()
    manifest = subset(read_manifest(data), args.images)
    fixations = make_layout(args.layout, args.grid, args.radius)
    settings = ViewSettings(kind=args.view, size=loaded.preprocessing.crop).check()
    n_views = len(manifest) * len(fixations)
    fmt = choose_memory_format(loaded.module, args.memory_format)
    rows_, cols_ = fixations.shape
    print(f"{MODEL}; {len(manifest)} images of {data}; layout {args.layout} {rows_}x{cols_} = {len(fixations)} "
          f"fixations, {args.view} views of {settings.size} px from a {settings.source(loaded.preprocessing).crop} px "
          f"source; {n_views} views, {args.views_per_pass} per pass, {args.batch_size} images per batch; "
          f"neuroprobe memory format {fmt}", flush=True)

    bare = BareForward(loaded.module, n_views, args.views_per_pass, settings.size, device)
    authors = AuthorsLoop(loaded, fixations, settings, fmt, args.views_per_pass, device)
    timings: dict[str, list[dict]] = {f"bare {f}": [] for f in FORMATS} | {"neuroprobe": []}
    if not args.no_authors:
        timings["authors"] = []
    workdir = Path(tempfile.mkdtemp(prefix="npretina-"))
    start = time.perf_counter()
    try:
        for repeat in range(args.repeats):
            for name in timings:
                print(f"[{repeat + 1}/{args.repeats}] {name} ...", end=" ", flush=True)
                if name.startswith("bare"):
                    r = bare(name.split()[1])
                elif name == "neuroprobe":
                    r = neuroprobe_run(loaded, manifest, args, workdir)
                else:
                    r = authors(manifest)
                timings[name].append(r)
                print(f"{r['seconds']:.2f} s, {r['rate']:.1f} views/s (others' CPU {r['others']:.2f} cores)",
                      flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    info["load_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    info["threads"] = torch.get_num_threads()

    bare_format = min(FORMATS, key=lambda f: best(timings[f"bare {f}"])["seconds"])
    rows = table_rows(timings, bare_format)
    np_best = best(timings["neuroprobe"])
    lines = [f"command: {' '.join([sys.executable, *sys.argv])}", machine_line(info), f"malloc: {malloc}",
             (f"model {MODEL} (offline pretrained, eval, no_grad); {len(manifest)} images ({data}) x {len(fixations)} "
              f"fixations ({args.layout} {rows_}x{cols_}, radius {fixations.radii.max():.3g}"
              f"{'-' + format(fixations.radii.min(), '.3g') if args.layout == 'rings' else ''}) = {n_views} "
              f"{args.view} views of {settings.size} px; {args.views_per_pass} views per pass; likelihood_maps "
              f"batch_size {args.batch_size}, memory_format {args.memory_format} -> {fmt}"
              + (f"; cudnn.benchmark {args.cudnn_benchmark}" if device.type == "cuda" else "")),
             (f"bare forward: {bare_format} is the faster format (contiguous "
              f"{best(timings['bare contiguous'])['rate']:.1f} views/s, channels_last "
              f"{best(timings['bare channels_last'])['rate']:.1f} views/s) and the denominator"),
             f"neuroprobe / bare = {rows[0]['seconds'] / np_best['seconds']:.2f} (target >= 0.9)"
             + ("" if np_best["done"] else "; WARNING: the store has rows not done")]
    if "authors" in timings:
        au_best = best(timings["authors"])
        speedup = au_best["seconds"] / np_best["seconds"]
        lines.append(f"speed-up of neuroprobe over the authors-style loop: {speedup:.2f}x "
                     f"(loop in {fmt}, as neuroprobe)")
        agree = float((np_best["top1"] == au_best["top1"]).mean())
        dp = float(np.abs(np_best["top1_probability"] - au_best["top1_probability"]).max())
        lines.append(f"agreement neuroprobe vs authors-style loop (same centres, radii and base grid; base grid == "
                     f"views.view_offsets: {authors.same_base}): top-1 equal for {100 * agree:.2f}% of {n_views} "
                     f"views; max |top-1 probability difference| {dp:.2e}")
    per_repeat = "; ".join(f"{r['contender']}: " + ", ".join(f"{s:.2f}" for s in r["all"]) for r in rows)
    if args.repeats > 1:
        lines.append(f"seconds per repeat: {per_repeat}")
    lines.append(f"benchmark wall time {time.perf_counter() - start:.0f} s (warm-ups included)")

    print("\n" + format_table(rows, markdown=False) + "\n\n" + "\n".join(lines), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        title = f"# Likelihood maps: neuroprobe vs bare forward vs the authors' loop ({args.device})\n"
        Path(args.out).write_text("\n".join([title, f"## {info['date']}", "", *[f"- {line}" for line in lines], "",
                                             format_table(rows, markdown=True), ""]))
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
