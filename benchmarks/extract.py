"""Throughput of neuroprobe's extraction against the bare forward pass and against thingsvision.

One run measures, for one model and batch size, under each requested glibc malloc setting:

* ``decode``: JPEG decode + resize + crop of every image into one uint8 tensor (neuroprobe's
  ``ImageDataset``, one process); the tensor then feeds the bare forward pass;
* ``bare forward``: the full model in eval mode under ``torch.no_grad()``, no hooks, on that
  preprocessed (normalized float) tensor already on the device; only the forward passes are timed;
* ``neuroprobe``: ``neuroprobe.extract(...)`` end to end from the image files into a fresh store
  (``progress=False``), for the requested layers and for the truncated case (``--truncate``);
* ``thingsvision``: thingsvision's ``get_extractor_from_model`` + ``ImageDataset`` + ``DataLoader``
  + ``extract_features`` on the same nn.Module, images, preprocessing recipe, batch size and
  module names, in a subprocess of a separate environment (``--tv-python``), which also times
  its own bare forward pass so that its ratio can be read against its own process.

Every contender is warmed up right before it is timed, on one full batch plus the last partial
batch (so that cudnn.benchmark meets every shape before the clock runs); ``--repeats`` interleaves
the contenders and keeps the best rate. Each row also records the process's CPU time and minor
page faults per image and the CPU time other processes took meanwhile (a shared machine skews
rates). Ratios are only compared within one malloc setting of one run.

Malloc settings (each runs in fresh worker processes, all contenders alike):

* ``default``: glibc as it comes (MALLOC_* and NEUROPROBE_NO_MALLOPT removed from the environment);
* ``kept``: ``MALLOC_MMAP_THRESHOLD_=4 GiB`` and ``MALLOC_TRIM_THRESHOLD_=64 GiB`` in the environment,
  so freed activation buffers stay in the heap instead of going back to the OS;
* ``mallopt``: no variables, but ``neuroprobe.malloc.keep_freed_memory()`` (what the CLI calls at
  start-up) is called first thing in every worker process.

The thingsvision environment (thingsvision 2.7.3 pins torchvision 0.15.2, so it goes in with
``--no-deps`` and borrows this venv's packages through a .pth file)::

    python3 -m venv /work/tv-env
    echo /work/main/.venv/lib/python3.11/site-packages > /work/tv-env/lib/python3.11/site-packages/main-venv.pth
    /work/tv-env/bin/pip install --no-deps thingsvision==2.7.3 torchtyping typeguard \\
        tensorflow==2.21.0 absl-py astunparse flatbuffers gast google-pasta opt-einsum protobuf \\
        termcolor wrapt ml-dtypes keras namex optree rich markdown-it-py mdurl pygments six \\
        requests urllib3 idna charset-normalizer certifi

(thingsvision imports tensorflow at import time even for PyTorch models.) Without that
interpreter the thingsvision rows are skipped with a message.

Examples (the second took 13 minutes on a shared 2-core machine)::

    .venv/bin/python benchmarks/extract.py                       # CPU, all malloc settings
    .venv/bin/python benchmarks/extract.py --threads 1 --repeats 2 --markdown benchmarks/RESULTS.md
    .venv/bin/python benchmarks/extract.py --device cuda --workers 8 --model resnet50 \\
        --weights none --layers layer4 --batch-size 256 --malloc default

(``--threads 1`` when other processes share the cores: torch's OpenMP threads otherwise wait
for a descheduled sibling and the rates collapse; see RESULTS.md.)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "imagenet-sample" / "labels.csv"
EMBEDDED_DATA = REPO / "data" / "sample" / "labels.csv"
TV_PYTHON = "/work/tv-env/bin/python"
KEPT_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}
MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_",
               "MALLOC_ARENA_MAX", "NEUROPROBE_NO_MALLOPT")
MALLOC_SETTINGS = ("kept", "mallopt", "default")
MALLOC_LABELS = {
    "default": "default glibc",
    "kept": "kept: env MALLOC_MMAP_THRESHOLD_=4GiB MALLOC_TRIM_THRESHOLD_=64GiB",
    "mallopt": "kept: neuroprobe.malloc.keep_freed_memory() (mallopt), no env",
}
CHECK_IMAGES = 4  # images whose pooled values are compared between neuroprobe and thingsvision


@dataclass
class Config:
    """What one worker process measures (passed to it as JSON)."""

    data: str
    images: int
    model: str
    weights: str | None
    layers: list[str]
    truncated: list[str]          # a second layer set (empty: no truncation case)
    batch_size: int
    device: str
    workers: int
    threads: int | None
    repeats: int
    malloc: str = "default"


# --------------------------------------------------------------------------------------------
# measurements (run inside the worker processes)
# --------------------------------------------------------------------------------------------

def _own_usage() -> tuple[float, int]:
    """CPU seconds (user + system) and minor page faults of this process, its threads and reaped children."""
    import resource

    usages = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(u.ru_utime + u.ru_stime for u in usages), sum(u.ru_minflt for u in usages)


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (or stolen by the hypervisor) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Timer:
    """Wall time of a block, with this process's CPU time and page faults, and everybody else's CPU use.

    Page faults show what the malloc setting does whatever the machine's load; the others' CPU use
    tells whether a rate was measured on a quiet machine.
    """

    def __enter__(self) -> "Timer":
        (self.cpu, self.faults), self.busy, self.wall = _own_usage(), _machine_busy(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        cpu, faults = _own_usage()
        self.cpu, self.faults = cpu - self.cpu, faults - self.faults
        self.busy = _machine_busy() - self.busy

    def result(self, images: int) -> dict:
        """img/s; per image: CPU ms and minor page faults of this process; other processes' CPU use in cores."""
        return {"rate": images / self.wall, "cpu_ms": 1000 * self.cpu / images, "faults": self.faults / images,
                "others": max(0.0, self.busy - self.cpu) / self.wall}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_decode(manifest, preprocessing):
    """Decode + resize + crop every image once (neuroprobe's decoder); (uint8 tensor, timing)."""
    import torch
    from neuroprobe.data import ImageDataset

    dataset = ImageDataset(manifest, preprocessing)
    with Timer() as timer:
        images = torch.stack([dataset[i][1] for i in range(len(dataset))])
    return images, timer.result(len(dataset))


def warmup_images(n: int, batch_size: int) -> int:
    """Images of a warm-up run that meets every batch shape of the timed run (full, then the rest)."""
    return min(n, batch_size + n % batch_size)


def time_bare_forward(module, batch: "torch.Tensor", cfg: Config, device) -> dict:
    """Timing of the plain forward pass over ``batch`` (already normalized, on the device)."""
    import torch

    def passes(n: int) -> None:
        for lo in range(0, n, cfg.batch_size):
            module(batch[lo:lo + cfg.batch_size])
        _sync(device)

    n = batch.shape[0]
    with torch.no_grad():
        passes(warmup_images(n, cfg.batch_size))
        with Timer() as timer:
            passes(n)
    return timer.result(n)


def time_neuroprobe(loaded, manifest, layers: list[str], cfg: Config, workdir: Path, check: dict | None) -> dict:
    """Timing of ``neuroprobe.extract`` from the files into a fresh store; fills ``check`` once."""
    import neuroprobe as npb
    from neuroprobe.data import Manifest

    def run(man: Manifest, name: str) -> tuple[Path, Timer]:
        out = workdir / f"{name}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        with Timer() as timer:
            npb.extract(loaded, man, layers, out, batch_size=cfg.batch_size, device=cfg.device,
                        workers=cfg.workers, progress=False)
        return out, timer

    warm = Manifest(manifest.table.iloc[:warmup_images(len(manifest), cfg.batch_size)].reset_index(drop=True),
                    manifest.root)
    shutil.rmtree(run(warm, "warmup")[0])
    out, timer = run(manifest, "timed")
    if check is not None and not check:
        for layer in layers:
            ds = npb.open_layer(out, layer).isel(image=slice(0, CHECK_IMAGES))
            check[layer] = {"mean": ds["mean"].values.tolist(), "max": ds["max"].values.tolist()}
    shutil.rmtree(out)
    return timer.result(len(manifest))


def _normalized_on_device(images, preprocessing, device):
    import torch

    return torch.cat([preprocessing.normalize(images[lo:lo + 256].to(device))
                      for lo in range(0, images.shape[0], 256)])


def _manifest(cfg: Config):
    from neuroprobe.data import Manifest, read_manifest

    manifest = read_manifest(cfg.data)
    if cfg.images < len(manifest):
        manifest = Manifest(manifest.table.iloc[:cfg.images].reset_index(drop=True), manifest.root)
    return manifest


def _setup_torch(cfg: Config):
    """Threads, device and cudnn as neuroprobe sets them; returns the torch.device."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as neuroprobe's engine does
    return device


def _interleave(contenders: dict, repeats: int) -> dict[str, list[dict]]:
    """Run every contender ``repeats`` times, round-robin; the timings per contender."""
    timings: dict[str, list[dict]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, measure in contenders.items():
            timings[name].append(measure())
            print(f"[{name}] {timings[name][-1]}", file=sys.stderr, flush=True)
    return timings


def _prepare(cfg: Config):
    """Threads, device, the model (eval, on the device) and the manifest, as every worker needs them."""
    import neuroprobe as npb

    device = _setup_torch(cfg)
    loaded = npb.load_model(cfg.model, cfg.weights)
    module = loaded.module.to(device).eval()
    return device, loaded, module, _manifest(cfg)


def _measure(cfg: Config, contenders) -> tuple[dict, dict]:
    """Interleaved timings of ``contenders(workdir, check)``'s measurements, in a scratch folder."""
    check: dict = {}
    workdir = Path(tempfile.mkdtemp(prefix="npbench-"))
    try:
        return _interleave(contenders(workdir, check), cfg.repeats), check
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def neuroprobe_worker(cfg: Config) -> dict:
    """Decode, bare forward and neuroprobe extraction(s), in this (main venv) process."""
    import torch

    device, loaded, module, manifest = _prepare(cfg)
    images, decode_timing = time_decode(manifest, loaded.preprocessing)
    batch = _normalized_on_device(images, loaded.preprocessing, device)
    del images

    def contenders(workdir: Path, check: dict) -> dict:
        found = {"bare forward": lambda: time_bare_forward(module, batch, cfg, device),
                 "neuroprobe": lambda: time_neuroprobe(loaded, manifest, cfg.layers, cfg, workdir, check)}
        if cfg.truncated:
            found["neuroprobe truncated"] = lambda: time_neuroprobe(loaded, manifest, cfg.truncated, cfg, workdir, None)
        return found

    timings, check = _measure(cfg, contenders)
    return {"timings": {"decode": [decode_timing]} | timings, "check": check, "threads": torch.get_num_threads(),
            "images": len(manifest)}


def _tv_transform(preprocessing):
    """neuroprobe's Preprocessing as the torchvision Compose that thingsvision expects."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(preprocessing.resize, interpolation=T.InterpolationMode(preprocessing.interpolation),
                               antialias=True),
                      T.CenterCrop(preprocessing.crop), T.ToTensor(),
                      T.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std))])


def _tv_batches(dataset, cfg: Config):
    """thingsvision's own DataLoader (one process), or torch's with ``--workers`` processes."""
    if cfg.workers == 0:
        from thingsvision.utils.data import DataLoader

        return DataLoader(dataset=dataset, batch_size=cfg.batch_size, backend="pt")
    import torch

    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.workers, shuffle=False)


def time_thingsvision(extractor, paths: list[Path], layers: list[str], cfg: Config, workdir: Path,
                      check: dict | None) -> dict:
    """Timing of thingsvision's documented pipeline: ImageDataset -> DataLoader -> extract_features."""
    from thingsvision.utils.data import ImageDataset

    # thingsvision reads a folder; a flat folder of numbered links keeps the manifest's order.
    links = workdir / "images"
    if not links.exists():
        links.mkdir()
        for i, path in enumerate(paths):
            (links / f"{i:06d}_{path.name}").symlink_to(path)
    names = sorted(p.name for p in links.iterdir())

    def run(files: list[str]) -> tuple[dict, Timer]:
        with Timer() as timer:
            dataset = ImageDataset(root=str(links), out_path=str(workdir / "order"), backend="pt", file_names=files,
                                   transforms=extractor.get_transformations())
            features = extractor.extract_features(batches=_tv_batches(dataset, cfg), module_names=layers,
                                                  flatten_acts=False, output_type="ndarray")
        return features, timer

    run(names[:warmup_images(len(names), cfg.batch_size)])
    features, timer = run(names)
    for layer in layers:
        if features[layer].shape[0] != len(names):
            raise RuntimeError(f"thingsvision returned {features[layer].shape} for {layer}")
    if check is not None and not check:
        for layer in layers:
            maps = features[layer][:CHECK_IMAGES].reshape(min(CHECK_IMAGES, len(names)), features[layer].shape[1], -1)
            check[layer] = {"mean": maps.mean(axis=2).tolist(), "max": maps.max(axis=2).tolist(),
                            "shape": list(features[layer].shape[1:])}
    return timer.result(len(names))


def thingsvision_worker(cfg: Config) -> dict:
    """Bare forward and thingsvision extraction(s), in the thingsvision environment's process."""
    import torch
    import torchvision  # noqa: F401  (torch's compiler stack must load before tensorflow: it segfaults otherwise)
    import numpy as np

    if not hasattr(np, "AxisError"):  # thingsvision 2.7.3 pins numpy<2; numpy 2 moved AxisError
        np.AxisError = np.exceptions.AxisError
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import thingsvision
    from thingsvision import get_extractor_from_model

    from PIL import Image

    device, loaded, module, manifest = _prepare(cfg)
    paths = [manifest.absolute(i) for i in range(len(manifest))]
    extractor = get_extractor_from_model(model=module, device=cfg.device, backend="pt",
                                         preprocess=_tv_transform(loaded.preprocessing))
    transform = extractor.get_transformations()
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths]).to(device)

    def contenders(workdir: Path, check: dict) -> dict:
        found = {"bare forward (thingsvision process)": lambda: time_bare_forward(module, batch, cfg, device),
                 "thingsvision": lambda: time_thingsvision(extractor, paths, cfg.layers, cfg, workdir, check)}
        if cfg.truncated:
            found["thingsvision truncated"] = lambda: time_thingsvision(extractor, paths, cfg.truncated, cfg, workdir,
                                                                        None)
        return found

    timings, check = _measure(cfg, contenders)
    return {"timings": timings, "check": check, "threads": torch.get_num_threads(), "images": len(paths),
            "thingsvision": thingsvision.__version__}


WORKERS = {"neuroprobe": neuroprobe_worker, "thingsvision": thingsvision_worker}


def worker_main(role: str, cfg_json: str, out: str) -> int:
    """Entry point of a worker process: apply the malloc setting, measure, write JSON."""
    cfg = Config(**json.loads(cfg_json))
    result: dict = {"malloc_applied": None}
    if cfg.malloc == "mallopt":
        from neuroprobe.malloc import keep_freed_memory

        result["malloc_applied"] = keep_freed_memory()
    result |= WORKERS[role](cfg)
    Path(out).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------
# orchestration (the process the user starts)
# --------------------------------------------------------------------------------------------

def worker_env(setting: str) -> dict[str, str]:
    """This environment with the malloc setting applied and the repository importable."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_VARS}
    if setting == "kept":
        env |= KEPT_ENV
    if setting != "mallopt":  # extract() would otherwise apply its mallopt to neuroprobe alone
        env["NEUROPROBE_NO_MALLOPT"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def spawn(python: str, role: str, cfg: Config, log_dir: Path) -> dict | None:
    """Run one worker; its result, or None (with the log's tail printed) when it fails."""
    out = log_dir / f"{role}-{cfg.malloc}.json"
    log = log_dir / f"{role}-{cfg.malloc}.log"
    cmd = [python, str(Path(__file__).resolve()), "--worker", role, "--worker-config", json.dumps(asdict(cfg)),
           "--worker-out", str(out)]
    print(f"  {role} worker ({cfg.malloc}) ...", flush=True)
    start = time.monotonic()
    with open(log, "w") as handle:
        code = subprocess.call(cmd, env=worker_env(cfg.malloc), stdout=handle, stderr=subprocess.STDOUT)
    if code != 0 or not out.exists():
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print(f"  {role} worker failed (exit {code}); last lines of {log}:\n    " + "\n    ".join(tail), flush=True)
        return None
    print(f"  {role} worker done in {time.monotonic() - start:.0f} s", flush=True)
    return json.loads(out.read_text())


def machine_info(device: str) -> dict:
    import torch
    import torchvision
    import timm

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    info = {"date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "cpu": f"{cpu}, {len(os.sched_getaffinity(0))} cores", "ram": f"{mem_kb / 2**20:.1f} GiB",
            "python": platform.python_version(), "glibc": "-".join(platform.libc_ver()),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
            "load_start": "%.2f %.2f %.2f" % os.getloadavg()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _best(timings: list[dict]) -> dict:
    return max(timings, key=lambda t: t["rate"])


def rows_for(setting: str, results: dict[str, dict | None], cfg: Config) -> list[dict]:
    """Table rows of one malloc setting: the best timing of each contender and its ratios."""
    main, tv = results.get("neuroprobe"), results.get("thingsvision")
    if main is None:
        return []
    bare = _best(main["timings"]["bare forward"])["rate"]
    tv_bare = _best(tv["timings"]["bare forward (thingsvision process)"])["rate"] if tv else None
    layers = {"neuroprobe": cfg.layers, "neuroprobe truncated": cfg.truncated,
              "thingsvision": cfg.layers, "thingsvision truncated": cfg.truncated}
    rows: list[dict] = []
    for source in filter(None, (main, tv)):
        for name, timings in source["timings"].items():
            best = _best(timings)
            what = ("decode+resize+crop only (PIL, 1 process)" if name == "decode" else
                    "full model, preprocessed tensor" if name.startswith("bare") else " ".join(layers[name]))
            rows.append({"malloc": setting, "contender": name.replace(" truncated", ""), "layers": what,
                         "images": source["images"], **best, "all": [t["rate"] for t in timings],
                         "x bare": best["rate"] / bare if name != "decode" else None,
                         "x own bare": best["rate"] / tv_bare if source is tv and tv_bare else None})
    return rows


def format_table(rows: list[dict], markdown: bool) -> str:
    head = ["malloc", "contender", "layers", "images", "img/s", "× bare forward", "× bare (same process)",
            "CPU ms/img", "page faults/img", "others' CPU (cores)"]
    body = [[r["malloc"], r["contender"], r["layers"], str(r["images"]),
             f"{r['rate']:.1f}" + (f" ({', '.join(f'{x:.1f}' for x in r['all'])})" if len(r["all"]) > 1 else ""),
             "" if r["x bare"] is None else f"{r['x bare']:.2f}",
             "" if r["x own bare"] is None else f"{r['x own bare']:.2f}",
             f"{r['cpu_ms']:.0f}", f"{r['faults']:.0f}", f"{r['others']:.2f}"] for r in rows]
    if markdown:
        return "\n".join("| " + " | ".join(line) + " |" for line in [head, ["---"] * len(head), *body])
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in [head, *body])


def check_lines(results: dict[str, dict], setting: str) -> list[str]:
    """How far neuroprobe's pooled values are from the same pooling of thingsvision's maps."""
    import numpy as np

    main, tv = results.get("neuroprobe"), results.get("thingsvision")
    if not main or not tv:
        return []
    lines = []
    for layer, ours in main["check"].items():
        theirs = tv["check"].get(layer)
        if theirs is None:
            continue
        d_mean = np.abs(np.array(ours["mean"]) - np.array(theirs["mean"])).max()
        d_max = np.abs(np.array(ours["max"]) - np.array(theirs["max"])).max()
        lines.append(f"{setting}: {layer} (map {'x'.join(map(str, theirs['shape']))}): max |Δ| over "
                     f"{CHECK_IMAGES} images × units, neuroprobe vs thingsvision maps pooled: "
                     f"mean {d_mean:.2e}, max {d_max:.2e}")
    return lines


def _shown(path: str) -> str:
    """A path relative to the repository when it lies inside it (how the command is typed there)."""
    try:
        return str(Path(path).absolute().relative_to(REPO))
    except ValueError:
        return path


def markdown_section(args, info: dict, rows: list[dict], checks: list[str], notes: list[str]) -> str:
    """The run as a Markdown section: settings, machine, the table, the cross-checks and notes."""
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    lines = [f"## {info['date']}: {args.model} ({args.weights or 'default weights'}), {args.device}, "
             f"batch {args.batch_size}",
             "",
             f"- command: `{' '.join([_shown(sys.executable), _shown(sys.argv[0]), *sys.argv[1:]])}`",
             f"- machine: {info['cpu']}, {info['ram']} RAM{gpu}; load average at start {info['load_start']}, "
             f"at end {info['load_end']}",
             f"- python {info['python']}, {info['glibc']}, torch {info['torch']}, torchvision {info['torchvision']}, "
             f"timm {info['timm']}, thingsvision {info.get('thingsvision', 'not run')}; torch threads "
             f"{info.get('threads', '?')}, workers {args.workers}",
             f"- data: {args.data_path}; layers {' '.join(args.layers)}; truncated case "
             f"{' '.join(args.truncate) or 'none'}; best of {args.repeats} interleaved run(s)",
             "- malloc settings: " + "; ".join(f"**{s}** = {MALLOC_LABELS[s]}" for s in args.malloc_list),
             "", format_table(rows, markdown=True), ""]
    lines += [f"- {line}" for line in checks + notes]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_lite0", help="neuroprobe model name (default: %(default)s)")
    p.add_argument("--weights", default=None, help="neuroprobe weights (default: the model's default; 'none' = random)")
    p.add_argument("--layers", nargs="+", default=["blocks.3", "bn2"], help="layers to extract (default: %(default)s)")
    p.add_argument("--truncate", nargs="*", default=None, metavar="LAYER",
                   help="layers of the truncation case (default: blocks.3 for efficientnet_lite0, else none; "
                        "give it without names to use the first of --layers)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--workers", type=int, default=0, help="image-decoding processes of both extractors (default: 0)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--data", default=None, help=f"CSV with a 'path' column (default: {SHARED_DATA} if present, "
                                                f"else {EMBEDDED_DATA})")
    p.add_argument("--images", type=int, default=None, help="first N images only (default: all)")
    p.add_argument("--default-images", type=int, default=256,
                   help="images for the (slow) default-malloc setting on the CPU (default: %(default)s)")
    p.add_argument("--malloc", choices=[*MALLOC_SETTINGS, "all"], default="all",
                   help="malloc setting(s) to measure (default: all three)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved timed runs per contender, best kept")
    p.add_argument("--tv-python", default=TV_PYTHON, help="interpreter of the thingsvision env (default: %(default)s)")
    p.add_argument("--no-thingsvision", action="store_true", help="skip the thingsvision rows")
    p.add_argument("--markdown", default=None, metavar="FILE", help="append the results as a Markdown section")
    p.add_argument("--json", default=None, metavar="FILE", help="write the raw results as JSON")
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--worker-config", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.malloc_list = list(MALLOC_SETTINGS) if args.malloc == "all" else [args.malloc]
    if args.truncate is None:
        args.truncate = ["blocks.3"] if args.model == "efficientnet_lite0" and "blocks.3" in args.layers else []
    elif not args.truncate:
        args.truncate = args.layers[:1]
    return args


def run_setting(args, setting: str, tv_python: str | None, logs: Path) -> tuple[Config, dict]:
    """Both workers of one malloc setting; (their config, their results by role)."""
    images = min(args.images or args.available, args.available)
    if setting == "default" and args.device == "cpu":
        images = min(images, args.default_images)
    cfg = Config(data=str(args.data_path), images=images, model=args.model, weights=args.weights,
                 layers=args.layers, truncated=args.truncate, batch_size=args.batch_size, device=args.device,
                 workers=args.workers, threads=args.threads, repeats=args.repeats, malloc=setting)
    print(f"malloc {setting}: {MALLOC_LABELS[setting]}; {images} images", flush=True)
    results = {"neuroprobe": spawn(sys.executable, "neuroprobe", cfg, logs)}
    if tv_python:
        results["thingsvision"] = spawn(tv_python, "thingsvision", cfg, logs)
    return cfg, results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.worker_config, args.worker_out)
    import pandas as pd

    args.data_path = Path(args.data) if args.data else (SHARED_DATA if SHARED_DATA.exists() else EMBEDDED_DATA)
    args.available = len(pd.read_csv(args.data_path))
    tv_python = None if args.no_thingsvision else args.tv_python
    notes: list[str] = []
    if tv_python and not Path(tv_python).exists():
        notes.append(f"thingsvision skipped: {tv_python} not found (see this script's docstring to create it)")
        print(notes[-1], flush=True)
        tv_python = None
    info = machine_info(args.device)
    rows, checks, raw = [], [], {}
    with tempfile.TemporaryDirectory(prefix="npbench-logs-") as logs:
        for setting in args.malloc_list:
            cfg, results = run_setting(args, setting, tv_python, Path(logs))
            for result in filter(None, results.values()):
                info["threads"] = result["threads"]
                if result.get("thingsvision"):
                    info["thingsvision"] = result["thingsvision"]
                if setting == "mallopt" and result["malloc_applied"] is False:
                    notes.append("mallopt: keep_freed_memory() returned False (not applied)")
            raw[setting] = results
            new = rows_for(setting, results, cfg)
            rows += new
            checks += check_lines(results, setting)
            print(format_table(new, markdown=False) + "\n", flush=True)
    info["load_end"] = "%.2f %.2f %.2f" % os.getloadavg()
    print(format_table(rows, markdown=False))
    for line in checks + notes:
        print(line)
    if args.markdown:
        with open(args.markdown, "a") as handle:
            handle.write("\n" + markdown_section(args, info, rows, checks, notes))
        print(f"appended to {args.markdown}")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "results": raw}, indent=1))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
