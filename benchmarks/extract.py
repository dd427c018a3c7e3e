"""Throughput of neuroprobe's extraction against the bare forward pass and against thingsvision.

One run measures, for one model, batch size and precision (``--amp``), under each requested glibc
malloc setting:

* ``decode``: JPEG decode + resize + crop of every distinct image into one uint8 tensor
  (neuroprobe's ``ImageDataset``, one process); the tensor then feeds the bare forward pass;
* ``bare forward``: the full model in eval mode under ``torch.no_grad()`` (and the same autocast as
  ``--amp``), no hooks, on that preprocessed (normalized float) tensor already on the device; only
  the forward passes are timed. It is timed in BOTH memory formats, the model and its input
  converted to ``contiguous`` and to ``channels_last``; the faster is the denominator of every
  ratio ("x bare forward"), and both rows are shown;
* ``neuroprobe``: ``neuroprobe.extract(...)`` end to end from the image files into a fresh store
  (``progress=False``; ``workers``, ``memory_format`` and ``amp`` as given, by default the library's
  own choices), once per ``--decode`` mode (``cpu``: PIL in DataLoader workers or a background
  thread; ``gpu``: JPEG bytes decoded on the extraction device), and for the truncated case
  (``--truncate``, first decode mode only);
* ``thingsvision``: thingsvision's ``get_extractor_from_model`` + ``ImageDataset`` + ``DataLoader``
  + ``extract_features`` on the same model (same name and weights: the weights' checksum is compared
  between the processes), images, preprocessing recipe, batch size and module names, in a
  subprocess (``--tv-python``), which also times its own bare forward pass (both formats; the
  model is handed to thingsvision in the faster one) so that its ratio can be read against its
  own process. thingsvision has no mixed-precision option: with ``--amp`` it is not run.
  ``--tf-stub`` installs ``benchmarks/tf_stub.py`` (stand-in ``tensorflow``/``keras`` modules)
  before thingsvision is imported: thingsvision 2.7.3 imports TensorFlow at import time even for
  PyTorch models, and no TensorFlow is needed on that path. The first images' features are
  compared with neuroprobe's post-activation capture of the same images (and its pre-activation).

``--images N`` larger than the CSV repeats its rows cyclically (the same file read several times:
the page cache is warm after the first pass, as it is for any data set that fits in memory); the
decode row and the bare forward pass decode each distinct file once.

Every contender is warmed up right before it is timed, on one full batch plus the last partial
batch (so that cudnn.benchmark meets every shape before the clock runs); ``--repeats`` interleaves
the contenders and keeps the best rate. Each row also records the process's CPU time and minor
page faults per image (DataLoader workers included once they exit) and the CPU time other
processes took meanwhile (a shared machine skews rates). Ratios are only compared within one
malloc setting of one run.

Malloc settings (each runs in fresh worker processes, all contenders alike):

* ``default``: glibc as it comes (MALLOC_* removed from the environment, NEUROPROBE_NO_MALLOPT=1);
* ``kept``: ``MALLOC_MMAP_THRESHOLD_=4 GiB`` and ``MALLOC_TRIM_THRESHOLD_=64 GiB`` in the environment,
  so freed activation buffers stay in the heap instead of going back to the OS;
* ``mallopt``: no variables, but ``neuroprobe.engine.malloc.keep_freed_memory()`` (what ``extract()`` calls
  on the CPU) is called first thing in every worker process.

thingsvision, two ways:

* with the TensorFlow stand-in, in any environment that has thingsvision 2.7.3 and its PyTorch-path
  needs (torchtyping, typeguard<3, numba, requests; ``benchmarks/gpu_wheels.sh`` carries the missing
  ones to the GPU machine): ``--tv-python python3 --tf-stub``;
* with the real TensorFlow, in a separate environment (thingsvision 2.7.3 pins torchvision 0.15.2,
  so it goes in with ``--no-deps`` and borrows this venv's packages through a .pth file)::

    python3 -m venv /work/tv-env
    echo /work/main/.venv/lib/python3.11/site-packages > /work/tv-env/lib/python3.11/site-packages/main-venv.pth
    /work/tv-env/bin/pip install --no-deps thingsvision==2.7.3 torchtyping typeguard \\
        tensorflow==2.21.0 absl-py astunparse flatbuffers gast google-pasta opt-einsum protobuf \\
        termcolor wrapt ml-dtypes keras namex optree rich markdown-it-py mdurl pygments six \\
        requests urllib3 idna charset-normalizer certifi

Without a usable interpreter the thingsvision rows are skipped with a message.

Examples::

    .venv/bin/python benchmarks/extract.py                       # CPU, all malloc settings
    .venv/bin/python benchmarks/extract.py --threads 1 --repeats 2 --malloc mallopt --no-thingsvision
    python3 benchmarks/extract.py --device cuda --model resnet50 --weights none --layers layer3 layer4 \\
        --batch-size 256 --images 10240 --malloc default --decode cpu gpu --amp bf16 --no-thingsvision
    bash benchmarks/gpu.sh                                       # the GPU runs, fp32 and bf16, thingsvision too

(``--threads 1`` when other processes share the cores: torch's OpenMP threads otherwise wait
for a descheduled sibling and the rates collapse; see RESULTS.md.)

Exit status: 0 when every requested contender ran, 1 otherwise (a failed worker, thingsvision
included, or a decode mode this neuroprobe lacks).
"""
from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
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
    "mallopt": "kept: neuroprobe.engine.malloc.keep_freed_memory() (mallopt), no env",
}
FORMATS = ("contiguous", "channels_last")
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
    workers: int | None           # None: neuroprobe's own default
    threads: int | None
    repeats: int
    malloc: str = "default"
    amp: str | None = None
    decode: list[str] = field(default_factory=lambda: ["cpu"])
    memory_format: str = "auto"
    tf_stub: bool = False
    tv_workers: int | None = None  # None: as many as neuroprobe's decode=cpu uses
    check_post: bool = False       # pool neuroprobe's post-activation capture of the first images too


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

    def result(self, images: int, **extra) -> dict:
        """img/s; per image: CPU ms and minor page faults of this process; other processes' CPU use in cores."""
        return {"rate": images / self.wall, "cpu_ms": 1000 * self.cpu / images, "faults": self.faults / images,
                "others": max(0.0, self.busy - self.cpu) / self.wall, **extra}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp_context(device, amp: str | None):
    """The autocast neuroprobe's ``--amp`` applies, for the bare forward pass."""
    import contextlib

    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    return torch.autocast(device.type, dtype=dtypes[amp]) if amp in dtypes else contextlib.nullcontext()


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


class Inputs:
    """The preprocessed batch on the device in each memory format (made on first use)."""

    def __init__(self, batch) -> None:
        self.by_format = {"contiguous": batch}

    def __getitem__(self, fmt: str):
        import torch

        if fmt not in self.by_format:
            self.by_format[fmt] = self.by_format["contiguous"].contiguous(memory_format=torch.channels_last)
        return self.by_format[fmt]


def _to_format(module, fmt: str):
    import torch

    return module.to(memory_format=torch.channels_last if fmt == "channels_last" else torch.contiguous_format)


def time_bare_forward(module, inputs: Inputs, fmt: str, cfg: Config, device) -> dict:
    """Timing of the plain forward pass over the preprocessed batch, model and input in ``fmt``."""
    import torch

    _to_format(module, fmt)
    batch = inputs[fmt]

    def passes(n: int) -> None:
        for lo in range(0, n, cfg.batch_size):
            module(batch[lo:lo + cfg.batch_size])
        _sync(device)

    n = batch.shape[0]
    with torch.no_grad(), _amp_context(device, cfg.amp):
        passes(warmup_images(n, cfg.batch_size))
        with Timer() as timer:
            passes(n)
    return timer.result(n, memory_format=fmt)


def extract_api() -> dict:
    """Which of the newer ``neuroprobe.extract`` parameters this checkout has (read from its signature)."""
    import neuroprobe as npb

    params = inspect.signature(npb.extract).parameters
    return {"amp": "amp" in params, "decode": "decode" in params, "memory_format": "memory_format" in params,
            "channels_last": "channels_last" in params,
            "workers_auto": "workers" in params and params["workers"].default is None}


def neuroprobe_workers(cfg: Config, device) -> int:
    """The DataLoader processes neuroprobe's decode=cpu uses: --workers, else the library's default."""
    if cfg.workers is not None:
        return cfg.workers
    try:
        from neuroprobe.engine.device import default_workers
    except ImportError:  # an older neuroprobe: its default was 0
        return 0
    return default_workers(device)


def neuroprobe_format(module, requested: str) -> str:
    """The memory format neuroprobe runs ``module`` in for ``requested`` (auto resolved as the library does)."""
    try:
        from neuroprobe.engine.device import choose_memory_format
    except ImportError:
        return "contiguous" if requested == "auto" else requested
    return choose_memory_format(module, requested)


def extract_kwargs(cfg: Config, decode: str, api: dict) -> dict:
    """Keyword arguments of ``neuroprobe.extract`` for this configuration, as far as this checkout takes them."""
    kwargs = {"batch_size": cfg.batch_size, "device": cfg.device, "progress": False}
    if cfg.workers is not None or api["workers_auto"]:
        kwargs["workers"] = cfg.workers
    if cfg.amp:
        kwargs["amp"] = cfg.amp
    if api["memory_format"]:
        kwargs["memory_format"] = cfg.memory_format
    elif api["channels_last"] and cfg.memory_format != "auto":
        kwargs["channels_last"] = cfg.memory_format == "channels_last"
    if api["decode"]:
        kwargs["decode"] = decode
    elif decode != "cpu":
        raise RuntimeError(f"this neuroprobe.extract() has no decode parameter: decode={decode} cannot run")
    return kwargs


def time_neuroprobe(loaded, manifest, layers: list[str], cfg: Config, decode: str, workdir: Path,
                    check: dict | None) -> dict:
    """Timing of ``neuroprobe.extract`` from the files into a fresh store; fills ``check`` once."""
    import zarr

    import neuroprobe as npb
    from neuroprobe.data import Manifest

    kwargs = extract_kwargs(cfg, decode, extract_api())

    def run(man: Manifest, name: str) -> tuple[Path, Timer]:
        out = workdir / f"{name}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        with Timer() as timer:
            npb.extract(loaded, man, layers, out, **kwargs)
        return out, timer

    warm = Manifest(manifest.table.iloc[:warmup_images(len(manifest), cfg.batch_size)].reset_index(drop=True),
                    manifest.root)
    shutil.rmtree(run(warm, "warmup")[0])
    out, timer = run(manifest, "timed")
    # read with zarr alone (the store's plain layout), so that the benchmark does not depend on xarray's version
    root = zarr.open_group(str(out), mode="r")
    bad = [i for i, value in enumerate(root["images/status"][:].tolist()) if str(value) != "ok"]
    if bad:
        reason = root["images/reason"][:].tolist()[bad[0]]
        raise RuntimeError(f"neuroprobe decode={decode}: {len(bad)} image(s) not ok, e.g. row {bad[0]}: {reason}")
    if check is not None and not check:
        for layer in layers:
            check[layer] = {stat: root[f"{layer}/{stat}"][:CHECK_IMAGES].tolist() for stat in ("mean", "max")}
    shutil.rmtree(out)
    return timer.result(len(manifest), decode=decode, workers=neuroprobe_workers(cfg, loaded_device(loaded)),
                        memory_format=neuroprobe_format(loaded.module, cfg.memory_format))


def loaded_device(loaded):
    return next(loaded.module.parameters()).device


def post_activation_check(loaded, manifest, layers: list[str], cfg: Config) -> dict:
    """neuroprobe's post-activation capture (what thingsvision hooks) of the first images, pooled: mean and max."""
    from neuroprobe.data import Manifest
    from neuroprobe.engine.extract import pool_images
    from neuroprobe.store.layout import STATS

    first = Manifest(manifest.table.iloc[:CHECK_IMAGES].reset_index(drop=True), manifest.root)
    pooled = pool_images(loaded, first, layers, post_activation=True, batch_size=CHECK_IMAGES, device=cfg.device)
    return {layer: {"mean": values[:, STATS.index("mean")].tolist(), "max": values[:, STATS.index("max")].tolist()}
            for layer, values in pooled.items()}


def _manifest(cfg: Config):
    """The first ``cfg.images`` rows of the CSV, its rows repeated cyclically when it has fewer."""
    import numpy as np

    from neuroprobe.data import Manifest, read_manifest

    manifest = read_manifest(cfg.data)
    rows = np.arange(cfg.images) % len(manifest)
    return Manifest(manifest.table.iloc[rows].reset_index(drop=True), manifest.root)


def _distinct(manifest):
    """The manifest's first rows up to the first repeated path: each file once."""
    from neuroprobe.data import Manifest

    paths = manifest.table["path"]
    repeated = paths.duplicated()
    n = int(repeated.values.argmax()) if repeated.any() else len(paths)
    return Manifest(manifest.table.iloc[:n].reset_index(drop=True), manifest.root)


def _preprocessed(images_distinct, n: int, preprocessing, device):
    """The distinct decoded images, normalized on the device and repeated to ``n`` rows (contiguous)."""
    import torch

    distinct = torch.cat([preprocessing.normalize(images_distinct[lo:lo + 256].to(device))
                          for lo in range(0, images_distinct.shape[0], 256)])
    if n == distinct.shape[0]:
        return distinct
    return distinct[torch.arange(n, device=device) % distinct.shape[0]]


def _setup_torch(cfg: Config):
    """Threads, device and cudnn as neuroprobe sets them; returns the torch.device."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", 0)
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


def _weights_checksum(module) -> float:
    import torch

    with torch.no_grad():
        return float(sum(p.double().sum() for p in module.parameters()))


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
    """Decode, bare forward (both memory formats) and neuroprobe extraction(s), in this process."""
    import torch

    device, loaded, module, manifest = _prepare(cfg)
    api = extract_api()
    missing = [d for d in cfg.decode if d != "cpu" and not api["decode"]]
    images, decode_timing = time_decode(_distinct(manifest), loaded.preprocessing)
    inputs = Inputs(_preprocessed(images, len(manifest), loaded.preprocessing, device))
    del images
    decodes = [d for d in cfg.decode if d not in missing]

    def contenders(workdir: Path, check: dict) -> dict:
        found = {f"bare forward {fmt}": (lambda fmt=fmt: time_bare_forward(module, inputs, fmt, cfg, device))
                 for fmt in FORMATS}
        for i, decode in enumerate(decodes):
            found[f"neuroprobe decode={decode}"] = (
                lambda decode=decode, i=i: time_neuroprobe(loaded, manifest, cfg.layers, cfg, decode, workdir,
                                                           check if i == 0 else None))
        if cfg.truncated and decodes:
            found["neuroprobe truncated"] = lambda: time_neuroprobe(loaded, manifest, cfg.truncated, cfg, decodes[0],
                                                                    workdir, None)
        return found

    timings, check = _measure(cfg, contenders)
    result = {"timings": {"decode": [decode_timing]} | timings, "check": {"pre": check},
              "threads": torch.get_num_threads(), "images": len(manifest), "distinct": decode_timing_images(manifest),
              "api": api, "missing_decode": missing, "weights_checksum": _weights_checksum(module),
              "workers": neuroprobe_workers(cfg, device),
              "memory_format": neuroprobe_format(module, cfg.memory_format)}
    if cfg.check_post:
        result["check"]["post"] = post_activation_check(loaded, manifest, cfg.layers, cfg)
    return result


def decode_timing_images(manifest) -> int:
    return len(_distinct(manifest))


def _tv_transform(preprocessing):
    """neuroprobe's Preprocessing as the torchvision Compose that thingsvision expects."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(preprocessing.resize, interpolation=T.InterpolationMode(preprocessing.interpolation),
                               antialias=True),
                      T.CenterCrop(preprocessing.crop), T.ToTensor(),
                      T.Normalize(mean=list(preprocessing.mean), std=list(preprocessing.std))])


def _tv_batches(dataset, cfg: Config, workers: int):
    """thingsvision's own DataLoader (one process), or torch's with ``workers`` processes."""
    if workers == 0:
        from thingsvision.utils.data import DataLoader

        return DataLoader(dataset=dataset, batch_size=cfg.batch_size, backend="pt")
    import torch

    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, num_workers=workers, shuffle=False)


def time_thingsvision(extractor, paths: list[Path], layers: list[str], cfg: Config, workers: int, workdir: Path,
                      check: dict | None) -> dict:
    """Timing of thingsvision's documented pipeline: ImageDataset -> DataLoader -> extract_features."""
    from thingsvision.utils.data import ImageDataset

    # thingsvision reads a folder; a flat folder of numbered links keeps the manifest's order (and its repeats).
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
            features = extractor.extract_features(batches=_tv_batches(dataset, cfg, workers), module_names=layers,
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
    del features
    return timer.result(len(names), workers=workers)


def import_thingsvision(tf_stub: bool):
    """Import thingsvision (with the TensorFlow stand-in when asked); (module, stubbed module names)."""
    import numpy as np
    import torch  # noqa: F401  (with the real TensorFlow, torch's stack must load first: it segfaults otherwise)
    import torchvision  # noqa: F401

    if not hasattr(np, "AxisError"):  # thingsvision 2.7.3 pins numpy<2; numpy 2 moved AxisError
        np.AxisError = np.exceptions.AxisError
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if tf_stub:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import tf_stub

        tf_stub.install()
    import thingsvision

    stubbed = []
    if tf_stub:
        import tf_stub

        stubbed = tf_stub.touched()
    return thingsvision, stubbed


def thingsvision_worker(cfg: Config) -> dict:
    """Bare forward (both formats) and thingsvision extraction(s), in the thingsvision environment's process."""
    import torch
    from PIL import Image

    thingsvision, stubbed = import_thingsvision(cfg.tf_stub)
    from thingsvision import get_extractor_from_model

    device, loaded, module, manifest = _prepare(cfg)
    paths = [manifest.absolute(i) for i in range(len(manifest))]
    distinct = _distinct(manifest)
    workers = cfg.tv_workers if cfg.tv_workers is not None else neuroprobe_workers(cfg, device)
    transform = _tv_transform(loaded.preprocessing)
    decoded = torch.stack([transform(Image.open(distinct.absolute(i)).convert("RGB")) for i in range(len(distinct))])
    batch = decoded.to(device)
    if len(distinct) != len(manifest):
        batch = batch[torch.arange(len(manifest), device=device) % len(distinct)]
    inputs = Inputs(batch)

    # Both bare formats are timed first; the model goes to thingsvision in the faster one. That first
    # round is the bare rows' first measurement (further --repeats rounds are interleaved as usual).
    first = {fmt: time_bare_forward(module, inputs, fmt, cfg, device) for fmt in FORMATS}
    best_format = max(first, key=lambda f: first[f]["rate"])
    _to_format(module, best_format)
    extractor = get_extractor_from_model(model=module, device=str(device), backend="pt", preprocess=transform)
    rounds: dict[str, int] = {}

    def bare(fmt: str) -> dict:
        rounds[fmt] = rounds.get(fmt, 0) + 1
        return first[fmt] if rounds[fmt] == 1 else time_bare_forward(module, inputs, fmt, cfg, device)

    def contenders(workdir: Path, check: dict) -> dict:
        def tv(layers, check):
            _to_format(module, best_format)
            return time_thingsvision(extractor, paths, layers, cfg, workers, workdir, check) | {
                "memory_format": best_format}

        found = {f"bare forward {fmt} (thingsvision process)": (lambda fmt=fmt: bare(fmt)) for fmt in FORMATS}
        found["thingsvision"] = lambda: tv(cfg.layers, check)
        if cfg.truncated:
            found["thingsvision truncated"] = lambda: tv(cfg.truncated, None)
        return found

    timings, check = _measure(cfg, contenders)
    return {"timings": timings, "check": check, "threads": torch.get_num_threads(), "images": len(paths),
            "thingsvision": thingsvision.__version__, "stubbed": stubbed, "workers": workers,
            "memory_format": best_format, "weights_checksum": _weights_checksum(module),
            "tensorflow": "stand-in (benchmarks/tf_stub.py)" if cfg.tf_stub else _real_tf_version()}


def _real_tf_version() -> str:
    tf = sys.modules.get("tensorflow")
    return getattr(tf, "__version__", "?") if tf is not None else "not imported"


WORKERS = {"neuroprobe": neuroprobe_worker, "thingsvision": thingsvision_worker}


def worker_main(role: str, cfg_json: str, out: str) -> int:
    """Entry point of a worker process: apply the malloc setting, measure, write JSON."""
    cfg = Config(**json.loads(cfg_json))
    result: dict = {"malloc_applied": None}
    if cfg.malloc == "mallopt":
        from neuroprobe.engine.malloc import keep_freed_memory

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
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def spawn(python: str, role: str, cfg: Config, log_dir: Path, errors: list[str]) -> dict | None:
    """Run one worker; its result, or None (with the log's tail printed and kept in ``errors``) when it fails."""
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
        last = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
        errors.append(f"{cfg.malloc}: {role} worker failed (exit {code}): {last}")
        return None
    print(f"  {role} worker done in {time.monotonic() - start:.0f} s", flush=True)
    return json.loads(out.read_text())


def machine_info(device: str) -> dict:
    import timm
    import torch
    import torchvision

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
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["tf32"] = (f"cuDNN convolutions TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 "
                        f"{torch.backends.cuda.matmul.allow_tf32} (torch's defaults: 'fp32' convolutions run in TF32)")
    return info


def _best(timings: list[dict]) -> dict:
    return max(timings, key=lambda t: t["rate"])


def _fastest_bare(source: dict) -> float:
    return max(_best(t)["rate"] for name, t in source["timings"].items() if name.startswith("bare forward"))


def _what(name: str, best: dict, layers: dict, source: dict) -> str:
    if name == "decode":
        return f"decode+resize+crop only (PIL, 1 process, {source.get('distinct', '?')} distinct files)"
    if name.startswith("bare forward"):
        return f"full model, preprocessed tensor, {best.get('memory_format', '?')}"
    what = f"{' '.join(layers[name])}; {best.get('memory_format', '?')}"
    if "decode" in best:
        what += f", decode {best['decode']}"
    if "workers" in best:
        what += f", {best['workers']} worker(s)"
    return what


def rows_for(setting: str, results: dict[str, dict | None], cfg: Config) -> list[dict]:
    """Table rows of one malloc setting: the best timing of each contender and its ratios."""
    main, tv = results.get("neuroprobe"), results.get("thingsvision")
    if main is None:
        return []
    bare = _fastest_bare(main)
    tv_bare = _fastest_bare(tv) if tv else None
    layers = {f"neuroprobe decode={d}": cfg.layers for d in cfg.decode} | {
        "neuroprobe truncated": cfg.truncated, "thingsvision": cfg.layers, "thingsvision truncated": cfg.truncated}
    rows: list[dict] = []
    for source in filter(None, (main, tv)):
        for name, timings in source["timings"].items():
            best = _best(timings)
            rows.append({"malloc": setting, "contender": name.replace(" truncated", ""),
                         "layers": _what(name, best, layers, source),
                         "images": best.get("images", source["distinct"] if name == "decode" else source["images"]),
                         **best, "all": [t["rate"] for t in timings],
                         "x bare": best["rate"] / bare if name != "decode" else None,
                         "x own bare": best["rate"] / tv_bare if source is tv and tv_bare else None})
    return rows


def format_table(rows: list[dict], markdown: bool) -> str:
    head = ["malloc", "contender", "layers / setup", "images", "img/s", "× bare forward", "× bare (same process)",
            "CPU ms/img", "page faults/img", "others' CPU (cores)"]
    body = [[r["malloc"], r["contender"], r["layers"], str(r["images"]),
             f"{r['rate']:.1f}" + (f" ({', '.join(f'{x:.1f}' for x in r['all'])})" if len(r["all"]) > 1 else ""),
             "" if r["x bare"] is None else f"{r['x bare']:.2f}",
             "" if r["x own bare"] is None else f"{r['x own bare']:.2f}",
             f"{r['cpu_ms']:.1f}", f"{r['faults']:.0f}", f"{r['others']:.2f}"] for r in rows]
    if markdown:
        return "\n".join("| " + " | ".join(line) + " |" for line in [head, ["---"] * len(head), *body])
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in [head, *body])


def _rel(a, b) -> float:
    """max |a - b| / max |b|."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def check_lines(results: dict[str, dict], setting: str) -> list[str]:
    """How far thingsvision's maps, pooled as neuroprobe pools, are from neuroprobe's post- and pre-activation."""
    main, tv = results.get("neuroprobe"), results.get("thingsvision")
    if not main or not tv:
        return []
    lines = []
    if main.get("weights_checksum") is not None:
        same = abs(main["weights_checksum"] - tv["weights_checksum"]) <= 1e-9 * max(1.0, abs(main["weights_checksum"]))
        lines.append(f"{setting}: model weights in the two processes: sum of parameters {main['weights_checksum']:.6f} "
                     f"vs {tv['weights_checksum']:.6f} ({'same' if same else 'DIFFERENT'})")
    for layer, theirs in tv["check"].items():
        parts = []
        for kind, label in (("post", "post-activation (what thingsvision hooks)"), ("pre", "pre-activation")):
            ours = main["check"].get(kind, {}).get(layer)
            if ours is not None:
                parts.append(f"vs neuroprobe {label}: mean {_rel(theirs['mean'], ours['mean']):.2e}, "
                             f"max {_rel(theirs['max'], ours['max']):.2e}")
        lines.append(f"{setting}: {layer} (map {'x'.join(map(str, theirs['shape']))}), thingsvision maps pooled over "
                     f"{CHECK_IMAGES} images, max |Δ| / max |value| " + "; ".join(parts))
    return lines


def _shown(path: str) -> str:
    """A path relative to the repository when it lies inside it (how the command is typed there)."""
    try:
        return str(Path(path).absolute().relative_to(REPO))
    except ValueError:
        return path


def denominator_lines(rows: list[dict]) -> list[str]:
    """Which bare forward pass each malloc setting's ratios are divided by."""
    lines = []
    for setting in dict.fromkeys(r["malloc"] for r in rows):
        bare = {r["contender"].rsplit(" ", 1)[-1]: r["rate"] for r in rows
                if r["malloc"] == setting and r["contender"] in ("bare forward contiguous", "bare forward channels_last")}
        if bare:
            fastest = max(bare, key=bare.get)
            shown = ", ".join(f"{fmt} {rate:.1f} img/s" for fmt, rate in bare.items())
            slower = min(bare.values())
            lines.append(f"{setting}: denominator = the faster bare forward pass, **{fastest}** ({shown}; "
                         f"{bare[fastest] / slower:.2f}x the slower)")
    return lines


def markdown_section(args, info: dict, rows: list[dict], checks: list[str], notes: list[str]) -> str:
    """The run as a Markdown section: settings, machine, the table, the cross-checks and notes."""
    gpu = f", GPU {info['gpu']} (CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')})" if "gpu" in info else ""
    repeated = (f"{args.images_used} images = {args.distinct} distinct files repeated (page cache warm)"
                if args.images_used > args.distinct else f"{args.images_used} images")
    lines = [f"## {info['date']}: {args.model} ({args.weights or 'default weights'}), {args.device}, "
             f"batch {args.batch_size}, {args.amp or 'fp32'}",
             "",
             f"- command: `{' '.join([_shown(sys.executable), _shown(sys.argv[0]), *sys.argv[1:]])}`",
             f"- machine: {info['cpu']}, {info['ram']} RAM{gpu}; load average at start {info['load_start']}, "
             f"at end {info['load_end']}",
             f"- python {info['python']}, {info['glibc']}, torch {info['torch']}, torchvision {info['torchvision']}, "
             f"timm {info['timm']}, thingsvision {info.get('thingsvision', 'not run')}; torch threads "
             f"{info.get('threads', '?')}; neuroprobe workers {info.get('workers', '?')} "
             f"({'--workers' if args.workers is not None else 'its default'}), memory format "
             f"{info.get('memory_format', '?')} (--memory-format {args.memory_format}), decode {' '.join(args.decode)}, "
             f"amp {args.amp or 'none'}",
             f"- data: {_shown(str(args.data_path))}; {repeated}; layers {' '.join(args.layers)}; truncated case "
             f"{' '.join(args.truncate) or 'none'}; best of {args.repeats} interleaved run(s)",
             "- malloc settings: " + "; ".join(f"**{s}** = {MALLOC_LABELS[s]}" for s in args.malloc_list),
             *([f"- precision: {info['tf32']}"] if "tf32" in info else []),
             "", format_table(rows, markdown=True), ""]
    lines += [f"- {line}" for line in denominator_lines(rows) + checks + notes]
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
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="autocast dtype of neuroprobe and of the bare forward pass (default: none = fp32)")
    p.add_argument("--decode", nargs="+", choices=["cpu", "gpu"], default=["cpu"],
                   help="neuroprobe decode mode(s), one contender each (default: cpu)")
    p.add_argument("--memory-format", choices=["auto", "channels_last", "contiguous"], default="auto",
                   help="neuroprobe's memory format (default: auto, the library's choice); the bare forward pass "
                        "is always timed in both")
    p.add_argument("--workers", type=int, default=None,
                   help="neuroprobe's DataLoader processes (default: the library's default: a background thread "
                        "on the CPU, the cores' share on a GPU)")
    p.add_argument("--tv-workers", type=int, default=None,
                   help="thingsvision's DataLoader processes (default: as many as neuroprobe's decode=cpu uses; "
                        "0 = thingsvision's own single-process DataLoader)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--data", default=None, help=f"CSV with a 'path' column (default: {SHARED_DATA} if present, "
                                                f"else {EMBEDDED_DATA})")
    p.add_argument("--images", type=int, default=None,
                   help="images per timed run (default: the CSV's rows); more than the CSV has repeats its rows")
    p.add_argument("--default-images", type=int, default=256,
                   help="images for the (slow) default-malloc setting on the CPU (default: %(default)s)")
    p.add_argument("--malloc", choices=[*MALLOC_SETTINGS, "all"], default="all",
                   help="malloc setting(s) to measure (default: all three)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved timed runs per contender, best kept")
    p.add_argument("--tv-python", default=None,
                   help=f"interpreter that has thingsvision (default: {TV_PYTHON} if it exists, else this one with "
                        "--tf-stub)")
    p.add_argument("--tf-stub", action="store_true",
                   help="import thingsvision with benchmarks/tf_stub.py's stand-in tensorflow/keras modules")
    p.add_argument("--no-thingsvision", action="store_true", help="skip the thingsvision rows")
    p.add_argument("--require-thingsvision", action="store_true",
                   help="exit 1 when the thingsvision rows cannot be measured (default: skip them with a note)")
    p.add_argument("--check-post", action="store_true",
                   help="also pool neuroprobe's post-activation capture of the first images (always with thingsvision)")
    p.add_argument("--markdown", default=None, metavar="FILE", help="append the results as a Markdown section")
    p.add_argument("--json", default=None, metavar="FILE", help="write the raw results as JSON")
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--worker-config", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.amp = None if args.amp == "none" else args.amp
    args.malloc_list = list(MALLOC_SETTINGS) if args.malloc == "all" else [args.malloc]
    if args.truncate is None:
        args.truncate = ["blocks.3"] if args.model == "efficientnet_lite0" and "blocks.3" in args.layers else []
    elif not args.truncate:
        args.truncate = args.layers[:1]
    return args


def thingsvision_interpreter(args, notes: list[str]) -> str | None:
    """The interpreter for the thingsvision worker, or None (with a note) when it cannot run."""
    if args.no_thingsvision:
        return None
    if args.amp:
        notes.append(f"thingsvision not run under --amp {args.amp}: it has no mixed-precision option "
                     "(its hooks hand the maps to NumPy, which has no bfloat16); see the fp32 run")
        return None
    python = args.tv_python or (TV_PYTHON if Path(TV_PYTHON).exists() and not args.tf_stub else sys.executable)
    if args.tv_python is None and python == sys.executable:
        args.tf_stub = True
    probe = ("import importlib.util, sys; importlib.util.find_spec('thingsvision') or sys.exit("
             "'ModuleNotFoundError: No module named thingsvision'); sys.path.insert(0, sys.argv[1]); "
             + ("import tf_stub; tf_stub.install(); " if args.tf_stub else "")
             + "import numpy as np; np.AxisError = getattr(np, 'AxisError', None) or np.exceptions.AxisError; "
               "import torch, torchvision, thingsvision; print(thingsvision.__version__)")
    env = worker_env("default")
    try:
        done = subprocess.run([python, "-c", probe, str(Path(__file__).resolve().parent)], env=env,
                              capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        notes.append(f"thingsvision skipped: {python} cannot run ({exc})")
        return None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        notes.append(f"thingsvision skipped: not importable by {_shown(python)}"
                     f"{' with the TensorFlow stand-in' if args.tf_stub else ''} ({last})")
        return None
    print(f"thingsvision {done.stdout.strip()} by {_shown(python)}"
          f"{' with the TensorFlow stand-in (benchmarks/tf_stub.py)' if args.tf_stub else ''}", flush=True)
    return python


def run_setting(args, setting: str, tv_python: str | None, logs: Path, errors: list[str]) -> tuple[Config, dict]:
    """Both workers of one malloc setting; (their config, their results by role)."""
    images = args.images or args.available
    if setting == "default" and args.device == "cpu":
        images = min(images, args.default_images)
    cfg = Config(data=str(args.data_path), images=images, model=args.model, weights=args.weights,
                 layers=args.layers, truncated=args.truncate, batch_size=args.batch_size, device=args.device,
                 workers=args.workers, threads=args.threads, repeats=args.repeats, malloc=setting, amp=args.amp,
                 decode=args.decode, memory_format=args.memory_format, tf_stub=bool(tv_python and args.tf_stub),
                 tv_workers=args.tv_workers, check_post=bool(tv_python) or args.check_post)
    print(f"malloc {setting}: {MALLOC_LABELS[setting]}; {images} images", flush=True)
    results = {"neuroprobe": spawn(sys.executable, "neuroprobe", cfg, logs, errors)}
    if tv_python:
        results["thingsvision"] = spawn(tv_python, "thingsvision", cfg, logs, errors)
    return cfg, results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.worker_config, args.worker_out)
    import pandas as pd

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"--device {args.device}: torch sees no CUDA device", file=sys.stderr)
            return 1
    args.data_path = Path(args.data) if args.data else (SHARED_DATA if SHARED_DATA.exists() else EMBEDDED_DATA)
    args.available = len(pd.read_csv(args.data_path))
    args.images_used = args.images or args.available
    args.distinct = min(args.images_used, args.available)
    notes: list[str] = []
    errors: list[str] = []
    tv_python = thingsvision_interpreter(args, notes)
    if notes:
        print("\n".join(notes), flush=True)
    if args.require_thingsvision and not tv_python and not args.amp and not args.no_thingsvision:
        errors.append("thingsvision required (--require-thingsvision) but cannot run")
    info = machine_info(args.device)
    rows, checks, raw = [], [], {}
    with tempfile.TemporaryDirectory(prefix="npbench-logs-") as logs:
        for setting in args.malloc_list:
            cfg, results = run_setting(args, setting, tv_python, Path(logs), errors)
            for role, result in results.items():
                if result is None:
                    continue
                info["threads"] = result["threads"]
                if role == "neuroprobe":
                    info["workers"], info["memory_format"] = result.get("workers"), result.get("memory_format")
                    for decode in result.get("missing_decode", []):
                        errors.append(f"{setting}: neuroprobe decode={decode} not measured: this neuroprobe.extract() "
                                      "has no decode parameter")
                    api = result.get("api", {})
                    if not api.get("memory_format"):
                        notes.append("this neuroprobe.extract() has no memory_format parameter: neuroprobe ran in its "
                                     "default format")
                    if not api.get("workers_auto") and args.workers is None:
                        notes.append("this neuroprobe.extract() has no automatic workers (workers=None): it ran "
                                     "with its default")
                if result.get("thingsvision"):
                    info["thingsvision"] = result["thingsvision"]
                    notes.append(f"{setting}: thingsvision {result['thingsvision']}, TensorFlow: {result['tensorflow']}"
                                 + (f" ({len(result['stubbed'])} stand-in modules imported: "
                                    f"{', '.join(result['stubbed'][:6])}{', ...' if len(result['stubbed']) > 6 else ''})"
                                    if result.get("stubbed") else "")
                                 + f"; model handed to it in {result['memory_format']} (its faster bare format); "
                                   f"{result['workers']} DataLoader worker(s)")
                if setting == "mallopt" and result["malloc_applied"] is False:
                    notes.append("mallopt: keep_freed_memory() returned False (not applied)")
            raw[setting] = results
            new = rows_for(setting, results, cfg)
            rows += new
            checks += check_lines(results, setting)
            if new:
                print(format_table(new, markdown=False) + "\n", flush=True)
    info["load_end"] = "%.2f %.2f %.2f" % os.getloadavg()
    notes = list(dict.fromkeys(notes))
    print(format_table(rows, markdown=False))
    for line in denominator_lines(rows) + checks + notes + [f"ERROR: {e}" for e in errors]:
        print(line)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        with open(args.markdown, "a") as handle:
            handle.write("\n" + markdown_section(args, info, rows, checks, notes + [f"**ERROR**: {e}" for e in errors]))
        print(f"appended to {args.markdown}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"info": info, "args": {k: v for k, v in vars(args).items()
                                                                     if k not in ("worker_config",)},
                                               "results": raw, "errors": errors, "notes": notes},
                                              indent=1, default=str))
    return 0 if rows and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
