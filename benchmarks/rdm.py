"""Time and peak memory of ``neuroprobe.analysis.rdm`` on a synthetic 50,000 x 2,048 store.

The store is built as ``benchmarks/analysis.py`` builds its own (same generator, one layer
``synthetic``, chunks of 1024 images, min/mean/max/area float32, a uniform ``class_index`` 0-999).
Each measurement runs in a fresh Python process and reports wall and CPU seconds around the call and
that process's peak RSS (``ru_maxrss``, imports included):

1. ``rdm(store, "synthetic", method=M, out=RDM.zarr, memory=...)``: the image RDM, 50,000 x 50,000
   float32 (9.3 GiB) written to disk tile by tile, with each ``--memory`` cache of prepared blocks
   (default 1 GiB: all 50,000 x 2,048 float64 rows in one pass; less: more passes over the store);
2. ``rdm(store, "synthetic", method=M, by="class_index")``: the 1,000 x 1,000 RDM of category means,
   in memory.

A few entries of the image RDM are checked against NumPy on rows read straight from the store.

    .venv/bin/python benchmarks/rdm.py --methods correlation euclidean --memory 1024 256
    .venv/bin/python benchmarks/rdm.py --images 5000 --markdown ''   # quick check
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import analysis as bench  # noqa: E402  (the synthetic store of the analysis benchmark)


def worker(spec: dict) -> dict:
    """One measurement in this process: rdm(**spec) timed, with peak RSS and a spot check."""
    import zarr

    from neuroprobe.analysis import rdm

    before = resource.getrusage(resource.RUSAGE_SELF)
    rss_before = before.ru_maxrss / 1024
    start = time.perf_counter()
    memory = {"memory": spec["memory_mb"] << 20} if spec.get("memory_mb") else {}
    result = rdm(spec["store"], bench.LAYER, "mean", spec["method"], by=spec.get("by"), out=spec.get("out"), **memory)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    check = None
    if spec.get("out"):
        values = zarr.open_group(spec["store"], mode="r")[f"{bench.LAYER}/mean"]
        rng = np.random.default_rng(0)
        pairs = rng.integers(0, result.shape[0], size=(5, 2))
        errors = []
        for i, j in pairs:
            x, y = values[int(i)].astype(np.float64), values[int(j)].astype(np.float64)
            expected = (1 - np.corrcoef(x, y)[0, 1] if spec["method"] == "correlation"
                        else np.sum((x - y) ** 2) / x.size)
            errors.append(abs(float(result[int(i), int(j)].values) - expected))
        check = max(errors)
    return {"seconds": seconds, "cpu_seconds": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "rss_before_mb": rss_before, "peak_mb": after.ru_maxrss / 1024, "shape": list(result.shape),
            "max_abs_error_vs_numpy": check}


def measure(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1]) | spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--units", type=int, default=2048)
    parser.add_argument("--root", type=Path, default=Path("/tmp/neuroprobe-rdm-bench"))
    parser.add_argument("--methods", nargs="+", default=["correlation"])
    parser.add_argument("--memory", type=int, nargs="+", default=[1024],
                        help="rdm(memory=...) values in MiB for the image RDM (default: 1024, its default)")
    parser.add_argument("--keep", action="store_true", help="keep the store and the RDM on disk")
    parser.add_argument("--markdown", default="", help="append a Markdown section to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    store = args.root / f"store-{args.images}x{args.units}.zarr"
    built, reused = bench.build_store(store, args.images, args.units, 0, rebuild=False)
    print(f"store {store}: {'reused' if reused else f'built in {built:.0f} s'}", flush=True)
    results = []
    for method in args.methods:
        out = args.root / f"rdm-{method}.zarr"
        specs = [{"store": str(store), "method": method, "out": str(out), "memory_mb": m} for m in args.memory]
        for spec in specs + [{"store": str(store), "method": method, "by": "class_index"}]:
            load = os.getloadavg()[0]
            result = measure(spec) | {"load_before": load}
            if spec.get("out"):
                result["disk_gb"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e9
                if not args.keep:
                    shutil.rmtree(out)
            print(json.dumps(result), flush=True)
            results.append(result)
    if not args.keep:
        shutil.rmtree(store)
    info = bench.machine()
    lines = [f"\n## RDM of one layer: {args.images:,} images x {args.units:,} units ({time.strftime('%Y-%m-%d')})\n",
             f"Generated by `benchmarks/rdm.py`; machine: {info.get('cpu', platform.processor())}, "
             f"{os.cpu_count()} cores, shared with other processes (load average in the table). "
             "Each row is a fresh process; peak RSS = its ru_maxrss, imports included.\n",
             "| call | RDM | seconds | CPU seconds | peak RSS (MiB) | RSS after imports (MiB) | on disk | max error vs NumPy | load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        call = f"rdm(method='{r['method']}'" + (f", out=zarr, memory={r['memory_mb']} MiB)" if r.get("out")
                                                else f", by='{r['by']}')")
        disk = f"{r['disk_gb']:.1f} GB" if "disk_gb" in r else "in memory"
        error = f"{r['max_abs_error_vs_numpy']:.1e}" if r["max_abs_error_vs_numpy"] is not None else ""
        lines.append(f"| `{call}` | {r['shape'][0]:,} x {r['shape'][1]:,} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | "
                     f"{r['peak_mb']:.0f} | {r['rss_before_mb']:.0f} | {disk} | {error} | {r['load_before']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
