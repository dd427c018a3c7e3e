"""Time and peak memory of neuroprobe's unit analyses on a large synthetic store, against the read floor.

One run:

1. builds (or reuses, when one with the same size and seed is complete) a synthetic store of
   ``--images`` x ``--units`` for one layer through neuroprobe's own ``Store.create`` and
   ``Store.write_chunk`` (chunk size 1024, all four statistics min/mean/max/area as float32), with an
   image table holding ``path`` and ``class_index`` (uniform 0-999, so ~11.8% are ImageNet dogs).
   Values are generated chunk by chunk (memory bounded by one chunk) from one seed per chunk, so an
   interrupted build resumes where it stopped and gives the same store;
2. measures the floor: every statistic the analyses read (min, mean, max, area), read once, block by
   block, through ``neuroprobe.analysis.scan.read_blocks`` exactly as ``scan`` reads them, doing
   nothing with the data;
3. measures ``neuroprobe.analysis.analyze(store, "dog", stat="mean", k=9, ...)`` for
   ``parts=("selectivity", "topk")`` with each ``--permutations`` count (the permutation null is
   the costly part of selectivity), then once with ``parts=("selectivity", "topk", "opponent")``;
4. with ``--dask-workers 1 2``: the same analyses with ``scheduler=`` a ``distributed.LocalCluster``
   of that many single-threaded workers (started before the clock, inside the measured process;
   ``--dask-processes`` puts the workers in processes of their own), checked equal to the
   single-process tables of the same run.

Every measurement runs in a fresh Python process (same imports for all), timed around the call
only; its peak memory is that process's ``ru_maxrss``. Page cache: with ``--cache cold`` (default)
the store's own files are evicted from the OS page cache (``posix_fadvise(DONTNEED)``, no root
needed, other processes' cache untouched) before each measurement; with ``--cache warm`` they are
read once before each measurement (only meaningful when the store fits in RAM).

Examples::

    .venv/bin/python benchmarks/analysis.py --images 20000 --markdown ''      # quick check
    .venv/bin/python benchmarks/analysis.py                                   # 1,000,000 x 2,048
    .venv/bin/python benchmarks/analysis.py --root /data/bench --rebuild --cleanup
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LAYER = "synthetic"
NEEDED_STATS = ("min", "mean", "max", "area")  # what selectivity (mean) + top-K (all criteria) read
AREA_STEPS = 49                                # a 7x7 feature map: area is a multiple of 1/49
SELECTIVE_UNITS = 32                           # the first units respond more to dog images
DOGS = (151, 268)
HERE = Path(__file__).resolve().parent


# -- the synthetic store ------------------------------------------------------------------------------
def unit_profile(units: int, seed: int) -> dict[str, np.ndarray]:
    """Per-unit scale, offset and spread (min/max distance from the mean), so units differ."""
    rng = np.random.default_rng([seed, 1 << 40])
    return {"scale": rng.lognormal(0.0, 0.5, units).astype(np.float32),
            "offset": rng.normal(0.0, 1.0, units).astype(np.float32),
            "spread": rng.uniform(0.2, 2.0, units).astype(np.float32)}


def synthetic_chunk(chunk: int, rows: range, dog: np.ndarray, profile: dict[str, np.ndarray],
                    seed: int) -> np.ndarray:
    """Statistics (4, n, units) float32 in neuroprobe's order (min, mean, max, area) for one chunk.

    mean = scale * z + offset (+ a dog bonus on the first units), min/max = mean -/+ spread * |noise|,
    area = the share of a 7x7 map above zero, growing with z, quantised to 1/49.
    """
    rng = np.random.default_rng([seed, chunk])
    n, units = len(rows), profile["scale"].size
    out = np.empty((4, n, units), dtype=np.float32)
    z = rng.standard_normal((n, units), dtype=np.float32)
    z[:, :SELECTIVE_UNITS] += 1.5 * dog[rows.start:rows.stop, None]
    np.multiply(z, profile["scale"], out=out[1])
    out[1] += profile["offset"]
    low, high = (np.abs(rng.standard_normal((n, units), dtype=np.float32)) for _ in range(2))
    np.subtract(out[1], low * profile["spread"], out=out[0])
    np.add(out[1], high * profile["spread"], out=out[2])
    area = np.clip(0.5 + 0.25 * z + 0.1 * (high - low), 0.0, 1.0)
    np.divide(np.rint(area * AREA_STEPS), AREA_STEPS, out=out[3])
    return out


def image_table(images: int, seed: int) -> pd.DataFrame:
    """The manifest: a path per image and a uniform ImageNet class index 0-999."""
    rng = np.random.default_rng([seed, 1 << 41])
    paths = np.char.add(np.char.add("n/img", np.char.zfill(np.arange(images).astype(str), 8)), ".JPEG")
    return pd.DataFrame({"path": paths.astype(object), "class_index": rng.integers(0, 1000, images)})


def store_spec(images: int, units: int, seed: int) -> dict[str, Any]:
    """What identifies a synthetic store, kept in its attributes to decide whether it can be reused."""
    return {"images": images, "units": units, "seed": seed, "layer": LAYER, "version": 1}


def open_matching(path: Path, spec: dict[str, Any]):
    """The existing store at ``path`` when it was made with ``spec`` (complete or not), else None."""
    from neuroprobe.store.layout import Store

    if not (path / "zarr.json").exists():
        return None
    try:
        store = Store(path)
    except (OSError, KeyError, ValueError):  # a broken or foreign folder: rebuild it
        return None
    return store if store.attrs.get("benchmark") == spec else None


def build_store(path: Path, images: int, units: int, seed: int, rebuild: bool) -> tuple[float, bool]:
    """Create or complete the synthetic store; returns (seconds spent, whether it was reused as is).

    Chunks are generated in a helper thread while the previous one is written (both release the GIL).
    """
    from neuroprobe.data import Manifest
    from neuroprobe.models.capture import LayerInfo
    from neuroprobe.store.layout import DEFAULT_CHUNK, Store

    spec = store_spec(images, units, seed)
    store = None if rebuild else open_matching(path, spec)
    if store is not None and not store.pending_chunks():
        return 0.0, True
    start = time.perf_counter()
    table = image_table(images, seed)
    dog = table["class_index"].between(*DOGS).to_numpy()
    if store is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        layer = LayerInfo(LAYER, "Synthetic", (units, 7, 7), "pre-activation: output", 1)
        store = Store.create(path, Manifest(table, path.parent), {LAYER: layer},
                             {"provenance": {"model": "synthetic"}, "benchmark": spec}, DEFAULT_CHUNK)
    profile = unit_profile(units, seed)
    pending = store.pending_chunks()
    print(f"writing {len(pending)} of {store.n_chunks} chunks to {path}", flush=True)
    with ThreadPoolExecutor(1) as pool:
        def generate(c: int):
            return pool.submit(synthetic_chunk, c, store.chunk_rows(c), dog, profile, seed)

        upcoming = generate(pending[0])
        for i, chunk in enumerate(pending):
            stats = upcoming.result()
            if i + 1 < len(pending):
                upcoming = generate(pending[i + 1])
            n = stats.shape[1]
            store.write_chunk(chunk, {LAYER: stats}, {}, np.ones(n, bool), [""] * n)
            if (i + 1) % 100 == 0:
                print(f"  {i + 1}/{len(pending)} chunks, {time.perf_counter() - start:.0f} s", flush=True)
    os.sync()
    return time.perf_counter() - start, False


def store_files(path: Path) -> Iterator[Path]:
    """Every file of the store."""
    for folder, _, names in os.walk(path):
        for name in names:
            yield Path(folder) / name


def store_bytes(path: Path) -> int:
    """Size of the store on disk (allocated blocks)."""
    return sum(f.stat().st_blocks * 512 for f in store_files(path))


def set_cache(path: Path, mode: str) -> None:
    """Evict the store's files from the page cache ('cold') or read them all once ('warm')."""
    for file in store_files(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            if mode == "cold":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 16 << 20):
                    pass
        finally:
            os.close(fd)


# -- measurements (each in a fresh process) -------------------------------------------------------
def rss_mb() -> float:
    """Resident memory of this process now (MiB)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def run_floor(store: str) -> dict[str, Any]:
    """Read every needed statistic once, block by block, as ``scan`` does; keep nothing."""
    from neuroprobe.analysis.scan import read_blocks

    rows = 0
    for block_rows, _, _ in read_blocks(store, LAYER, NEEDED_STATS):
        rows += len(block_rows)
    return {"rows": rows}


def table_digest(out: dict[str, pd.DataFrame]) -> str:
    """sha256 (12 digits) of the tables' exact contents, to check that two paths agree bit for bit."""
    import hashlib

    digest = hashlib.sha256()
    for part, frame in out.items():
        digest.update(part.encode())
        digest.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    return digest.hexdigest()[:12]


def run_analysis(store: str, parts: list[str], permutations: int, k: int, scheduler=None) -> dict[str, Any]:
    """``neuroprobe.analysis.analyze`` for the dog category on the mean; returns the table sizes."""
    from neuroprobe.analysis import analyze

    out = analyze(store, "dog", stat="mean", k=k, parts=tuple(parts), permutations=permutations, scheduler=scheduler)
    return {**{f"{part}_rows": len(frame) for part, frame in out.items()}, "tables": table_digest(out)}


def start_cluster(workers: int, processes: bool):
    """A LocalCluster of ``workers`` single-threaded workers and its client, ready before the clock starts."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes, dashboard_address=None)
    client = Client(cluster)
    client.wait_for_workers(workers)
    return cluster, client


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in this (fresh) process: wall and CPU seconds, RSS before it and peak RSS."""
    sources = source_hash()  # of the code this process imports next
    import torch

    import neuroprobe.analysis  # noqa: F401  same imports (torch included) for every measurement

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cluster = client = None
    if spec["kind"] == "dask":
        cluster, client = start_cluster(spec["workers"], spec["processes"])
    baseline = rss_mb()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if spec["kind"] == "floor":
        info = run_floor(spec["store"])
    else:
        info = run_analysis(spec["store"], spec["parts"], spec["permutations"], spec["k"], client)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if client is not None:
        client.close()
        cluster.close()
    return {**spec, **info, "seconds": seconds, "cpu_seconds": cpu, "baseline_mb": baseline,
            "peak_mb": after.ru_maxrss / 1024, "sources": sources, "torch_threads": torch.get_num_threads()}


def measure(spec: dict[str, Any], store: Path, cache: str) -> dict[str, Any]:
    """Prepare the page cache, then run ``spec`` in a fresh interpreter and return its result."""
    set_cache(store, cache)
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], check=True,
                          stdout=subprocess.PIPE, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_before"] = load
    return result


def plan(store: Path, permutations: list[int], k: int, opponent_permutations: int,
         threads: int, dask_workers: list[int] = (), processes: bool = False) -> list[dict[str, Any]]:
    """The measurements of one run: the floor, then the analyses (single process, then on each cluster)."""
    specs: list[dict[str, Any]] = [{"kind": "floor", "label": "floor: read min/mean/max/area once"}]
    analyses = [{"parts": ["selectivity", "topk"], "permutations": p, "k": k,
                 "label": f"selectivity + topk, permutations={p}"} for p in permutations]
    analyses.append({"parts": ["selectivity", "topk", "opponent"], "permutations": opponent_permutations, "k": k,
                     "label": f"selectivity + topk + opponent, permutations={opponent_permutations}"})
    for analysis in analyses:
        specs.append({"kind": "analysis", **analysis})
        for workers in dask_workers:
            where = "processes" if processes else "threads"
            specs.append({"kind": "dask", **analysis, "workers": workers, "processes": processes,
                          "label": f"dask, {workers} worker {where}: {analysis['label']}",
                          "single": analysis["label"]})
    return [{**s, "store": str(store), "threads": threads} for s in specs]


# -- reporting --------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """CPU model, cores, RAM and library versions."""
    import torch
    import zarr

    cpu = platform.processor() or "?"
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    with open("/proc/meminfo") as info:
        ram_kb = int(next(line for line in info if line.startswith("MemTotal:")).split()[1])
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram_kb / 1024 ** 2, "python": platform.python_version(),
            "torch": torch.__version__, "zarr": zarr.__version__, "numpy": np.__version__}


def package_folder() -> Path:
    """Where neuroprobe's sources are (without importing it)."""
    import importlib.util

    return Path(importlib.util.find_spec("neuroprobe").origin).parent


def source_hash() -> str:
    """sha256 (12 digits) of the sources the analyses run: neuroprobe/analysis/*.py and store.py."""
    import hashlib

    package = package_folder()
    digest = hashlib.sha256()
    for source in sorted((package / "analysis").glob("*.py")) + [package / "store.py"]:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def code_state() -> dict[str, str]:
    """Which neuroprobe is measured: git commit, uncommitted files, hash of the analysis sources."""
    package = package_folder()

    def git(*command: str) -> str:
        done = subprocess.run(["git", "-C", str(package.parent), *command], check=False, capture_output=True,
                              text=True)
        return done.stdout.strip() if done.returncode == 0 else "?"

    return {"commit": git("log", "-1", "--format=%h %s"), "modified": git("status", "--porcelain", "--", str(package)),
            "sources": source_hash()}


def table_rows(results: list[dict[str, Any]], images: int, units: int, disk: int) -> list[list[str]]:
    """One row per measurement: time, throughput, ratio to the floor and to the single process, memory."""
    floor = next(r["seconds"] for r in results if r["kind"] == "floor")
    single = {r["label"]: r for r in results if r["kind"] == "analysis"}
    raw = images * units * 4 * len(NEEDED_STATS)
    rows = []
    for r in results:
        s = r["seconds"]
        versus = same = ""
        if r["kind"] == "dask":
            reference = single[r["single"]]
            versus = f"{s / reference['seconds']:.2f}"
            same = "yes" if r["tables"] == reference["tables"] else "NO"
        rows.append([r["label"], f"{s:.1f}", f"{r['cpu_seconds']:.1f}", f"{images / s:,.0f}",
                     f"{disk / s / 1e9:.2f}", f"{raw / s / 1e9:.2f}", f"{s / floor:.2f}", versus, same,
                     f"{r['baseline_mb']:.0f}", f"{r['peak_mb']:.0f}", f"{r['load_before']:.1f}"])
    return rows


HEADER = ["measurement", "seconds", "CPU seconds", "images/s", "GB/s on disk", "GB/s decoded", "x floor",
          "x single process", "tables equal", "RSS before (MiB)", "peak RSS (MiB)", "load avg before"]


def markdown_table(rows: list[list[str]]) -> str:
    """A Markdown table of ``rows`` under HEADER."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(args: argparse.Namespace, info: dict[str, Any], results: list[dict[str, Any]], disk: int,
           build: tuple[float, bool], loads: tuple[float, float], code: dict[str, str]) -> str:
    """The Markdown report of one run."""
    raw = args.images * args.units * 4 * len(NEEDED_STATS)
    built = "reused as is" if build[1] else f"built (or completed) in {build[0]:.0f} s"
    cache = ("cold: the store's files evicted from the page cache (posix_fadvise DONTNEED) before each measurement"
             if args.cache == "cold" else "warm: every store file read once before each measurement")
    busy = max(loads) > 0.5 * (info["cores"] or 1)
    sources = {r["sources"] for r in results}
    peak = max(r["peak_mb"] for r in results)
    command = " ".join(["benchmarks/analysis.py", *sys.argv[1:]])
    bullets = [
        (f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gb']:.1f} GB RAM; torch threads in the "
        f"measured processes: {results[0]['torch_threads']}"),
        f"python {info['python']}, torch {info['torch']}, zarr {info['zarr']}, numpy {info['numpy']}",
        (f"neuroprobe: commit {code['commit']!r}"
         + (f", uncommitted changes: {code['modified']!r}" if code["modified"] else ", no uncommitted changes")
         + f"; analysis sources (analysis/*.py + store.py) sha256 {code['sources']}"
         + ("" if sources == {code["sources"]} else
            f" -- the sources CHANGED during the run; each row ran: {', '.join(r['sources'] for r in results)}")),
        (f"store: {args.images:,} images x {args.units:,} units, one layer, chunks of 1024 images, min/mean/max/area "
        f"float32 = {raw / 1e9:.1f} GB decoded, {disk / 1e9:.1f} GB on disk (zarr's default zstd); {built}"),
        f"page cache: {cache}",
        f"load average (1 min) at start {loads[0]:.2f}, at end {loads[1]:.2f} on {info['cores']} cores"
        + (": other processes were using the CPU, so wall times may be inflated" if busy else ""),
        ("every row is a fresh process (imports not timed); `CPU seconds` = user + system time of that process "
        "during the call, all threads (less sensitive to other load than wall time, though torch's threads "
         "spin-wait, which inflates it too when the cores are shared); `x floor` = seconds / "
        "floor seconds; peak RSS = ru_maxrss of that process, imports included"),
        (f"analysis: `analyze(store, 'dog', stat='mean', k={args.k}, parts=..., permutations=P)`; selectivity = "
        "Malakhova + balanced + Morcos (per-class sums); top-K = 5 criteria (top max/mean/area, bottom min/mean)"),
    ]
    lines = [
        "# Analysis benchmark", "",
        f"Generated by `{command}` on {dt.datetime.now().isoformat(timespec='seconds')}.", "",
        *(f"- {bullet}" for bullet in bullets), "",
        markdown_table(table_rows(results, args.images, args.units, disk)), "",
        f"Peak memory of every measurement is {'under' if peak < 2048 else 'OVER'} 2 GiB (largest {peak:.0f} MiB).",
    ]
    return "\n".join(lines) + "\n"


# -- command line -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000, help="images in the store (default 1,000,000)")
    parser.add_argument("--units", type=int, default=2048, help="units of its one layer (default 2,048)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/neuroprobe-bench"),
                        help="folder of the synthetic stores (default /tmp/neuroprobe-bench)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the store even if a complete one exists")
    parser.add_argument("--cleanup", action="store_true", help="delete the store at the end")
    parser.add_argument("--cache", choices=("cold", "warm"), default="cold",
                        help="page cache state before each measurement (default cold)")
    parser.add_argument("--permutations", type=int, nargs="+", default=[0, 100],
                        help="permutation counts for selectivity + topk (default 0 100)")
    parser.add_argument("--opponent-permutations", type=int, default=0,
                        help="permutations for the selectivity + topk + opponent run (default 0)")
    parser.add_argument("--k", type=int, default=9, help="top/bottom-K (default 9)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in the measured processes (default: torch's own choice)")
    parser.add_argument("--dask-workers", type=int, nargs="*", default=[],
                        help="also run every analysis on a LocalCluster of each of these worker counts (e.g. 1 2)")
    parser.add_argument("--dask-processes", action="store_true",
                        help="dask workers in processes of their own (default: threads of the measured process)")
    parser.add_argument("--build-only", action="store_true", help="build the store and stop")
    parser.add_argument("--markdown", default=str(HERE / "results_analysis.md"),
                        help="where to write the report ('' for nowhere; default benchmarks/results_analysis.md)")
    parser.add_argument("--json", default="", help="also write the raw results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    path = args.root / f"synthetic-{args.images}x{args.units}-seed{args.seed}.zarr"
    build = build_store(path, args.images, args.units, args.seed, args.rebuild)
    disk = store_bytes(path)
    print(f"store {path}: {disk / 1e9:.2f} GB on disk ({'reused' if build[1] else f'built in {build[0]:.0f} s'})")
    if args.build_only:
        return
    if args.cache == "warm":
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if disk > 0.8 * available:
            print(f"warning: the store ({disk / 1e9:.1f} GB) does not fit in free memory "
                  f"({available / 1e9:.1f} GB): 'warm' reads will partly come from disk", flush=True)
    info, code = machine(), code_state()
    load_start = os.getloadavg()[0]
    results = []
    for spec in plan(path, args.permutations, args.k, args.opponent_permutations, args.threads, args.dask_workers,
                     args.dask_processes):
        print(f"{spec['label']} ...", end=" ", flush=True)
        results.append(measure(spec, path, args.cache))
        print(f"{results[-1]['seconds']:.1f} s, peak {results[-1]['peak_mb']:.0f} MiB", flush=True)
    text = report(args, info, results, disk, build, (load_start, os.getloadavg()[0]), code)
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "code": code, "results": results}, indent=1))
    if args.cleanup:
        shutil.rmtree(path)


if __name__ == "__main__":
    main()
