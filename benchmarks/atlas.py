"""Build time and size of a unit atlas of 2,048 units x 5 layers, and its speed in headless Chromium.

The store is synthetic: ``Store.create`` + ``write_chunk`` with normally distributed values (no model ran
on the images to make them). Its images are the 40 embedded sample images repeated (``--images``, default
200), its provenance names torchvision's ``resnet50`` with ``weights: none`` (a seeded random init, no
download), and its 5 layers are resnet50's 2,048-unit layers (``layer4.*``): so the atlas does all its real
work: the analyses (1,000 permutations), one model pass for the peaks, the crops, sprites and pages.

Measured:

1. ``neuroprobe.atlas.build`` (profile full, then lite, each into a fresh folder): wall time, site size,
   the size projected before writing; then a rebuild of the full site (nothing to redo);
2. in headless Chromium (Debian's chromium + chromedriver, Selenium), from ``file://``, each ``--repeats``
   times in a fresh page: the layer page of 2,048 units (first contentful paint, and the grid rendered:
   ``ATLAS_TIMING.painted``, both from navigation start), a sort and a text filter (from the change
   event to the next frame), a unit page (navigation start to its content painted).

Example::

    .venv/bin/python benchmarks/atlas.py --root /tmp/atlas-bench --markdown benchmarks/results_atlas.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LAYERS = ["layer4.0.bn3", "layer4.0.downsample.1", "layer4.1.bn3", "layer4.2.bn3", "layer4.2"]


def synthetic_store(path: Path, n_images: int, units: int = 2048, seed: int = 0) -> Path:
    from neuroprobe.data import Manifest
    from neuroprobe.models.capture import LayerInfo
    from neuroprobe.store.layout import STATS, Store

    if (path / "zarr.json").is_file():
        return path
    sample = pd.read_csv(ROOT / "data" / "sample" / "labels.csv")
    table = pd.concat([sample] * -(-n_images // len(sample)), ignore_index=True).iloc[:n_images]
    layers = {name: LayerInfo(name, "Synthetic", (units, 7, 7), "pre-activation: output", 1) for name in LAYERS}
    attrs = {"provenance": {"model": "resnet50", "weights": "none", "library": "torchvision"},
             "command": "benchmarks/atlas.py (synthetic values)"}
    store = Store.create(path, Manifest(table.reset_index(drop=True), ROOT / "data" / "sample"), layers, attrs,
                         n_images)
    rng = np.random.default_rng(seed)
    stats = {}
    for name in LAYERS:
        mean = rng.normal(size=(n_images, units)).astype(np.float32)
        spread = rng.uniform(0.1, 2, size=(n_images, units)).astype(np.float32)
        values = {"mean": mean, "min": mean - spread, "max": mean + spread, "area": rng.uniform(size=mean.shape)}
        stats[name] = np.stack([values[s] for s in STATS]).astype(np.float32)
    store.write_chunk(0, stats, {}, np.ones(n_images, bool), [""] * n_images)
    return path


def timed_build(store: Path, out: Path, **options) -> dict:
    from neuroprobe.atlas import build

    start = time.perf_counter()
    summary = build(store, out, device="cpu", **options)
    summary["seconds"] = time.perf_counter() - start
    return summary


def browser_timings(site: Path, repeats: int) -> dict:
    os.environ["SE_AVOID_STATS"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", "--window-size=1280,900", f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    ready = "return !!(window.ATLAS_TIMING && window.ATLAS_TIMING.painted)"
    after_event = """
        const [id, value, kind, done] = arguments;
        const control = document.getElementById(id), t0 = performance.now();
        control.value = value;
        control.dispatchEvent(new Event(kind));
        const js = performance.now() - t0;
        requestAnimationFrame(() => setTimeout(() => done([js, performance.now() - t0]), 0));"""
    runs: dict[str, list[float]] = {k: [] for k in ("layer_fcp", "layer_grid", "sort_js", "sort_frame", "filter_js",
                                                    "filter_frame", "unit_painted", "unit_fcp")}
    layer_url = (site / "layer.html").as_uri() + "#layer=" + LAYERS[0]
    try:
        for _ in range(repeats):
            driver.get("about:blank")
            driver.get(layer_url)
            WebDriverWait(driver, 60).until(lambda d: d.execute_script(ready))
            runs["layer_grid"].append(driver.execute_script("return ATLAS_TIMING.painted"))
            runs["layer_fcp"].append(driver.execute_script(
                "const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null"))
            js, frame = driver.execute_async_script(after_event, "sort", "malakhova[dog]", "change")
            runs["sort_js"].append(js)
            runs["sort_frame"].append(frame)
            js, frame = driver.execute_async_script(after_event, "q", "terrier", "input")
            runs["filter_js"].append(js)
            runs["filter_frame"].append(frame)
            driver.get("about:blank")
            driver.get((site / "unit.html").as_uri() + f"#{LAYERS[2]}/1000")
            WebDriverWait(driver, 60).until(lambda d: d.execute_script(ready))
            runs["unit_painted"].append(driver.execute_script("return ATLAS_TIMING.painted"))
            runs["unit_fcp"].append(driver.execute_script(
                "const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null"))
        version = driver.capabilities.get("browserVersion")
    finally:
        driver.quit()
    return {"browser": f"chromium {version}", "repeats": repeats,
            **{k: {"median": statistics.median(v), "max": max(v)} for k, v in runs.items() if v and None not in v}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    root = Path(args.root or tempfile.mkdtemp(prefix="atlas-bench."))
    root.mkdir(parents=True, exist_ok=True)
    store = synthetic_store(root / "synthetic.zarr", args.images)
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs (shared), "
                          "CPU only", "images": args.images, "units": 2048, "layers": len(LAYERS)}
    for profile in ("full", "lite"):
        out = root / f"site-{profile}"
        shutil.rmtree(out, ignore_errors=True)
        summary = timed_build(store, out, profile=profile)
        results[f"build_{profile}"] = {"seconds": summary["seconds"], "bytes": summary["bytes"],
                                       "projected_bytes": summary["projected_bytes"],
                                       "files": summary["written"] + summary["unchanged"]}
    again = timed_build(store, root / "site-full", profile="full")
    results["rebuild_full"] = {"seconds": again["seconds"], "written": again["written"], "built": again["built"]}
    results["browser"] = browser_timings(root / "site-full", args.repeats)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
