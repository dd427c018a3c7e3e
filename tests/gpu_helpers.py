"""Helpers of the GPU suite (tests/test_gpu.py): the device under test, exact fp32 on CUDA, the small data
sets, store comparisons with stated tolerances, host-synchronisation counting and a throttled CLI run."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import zarr
from helpers_robustness import PYTHON, ROOT, SAMPLE_DIR, cli_env, make_bad_files, sample_table, store_arrays
from PIL import Image

DEVICE_ENV = "NEUROPROBE_GPU_TESTS_DEVICE"
SKIP_REASON = (f"no CUDA GPU visible; set {DEVICE_ENV}=cpu to rehearse the GPU tests on the CPU "
               "(benchmarks/gpu.sh --dry-run does)")


def device_under_test() -> str | None:
    """"cuda" when a GPU is visible; else "cpu" when NEUROPROBE_GPU_TESTS_DEVICE=cpu (rehearsal); else None."""
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get(DEVICE_ENV, "").strip().lower() == "cpu":
        return "cpu"
    return None


@contextlib.contextmanager
def exact_fp32():
    """TF32 off for cuBLAS and cuDNN (cuDNN convolutions use TF32 by default on Ampere and later, which
    rounds their inputs to 10 mantissa bits: ~1e-3 relative, far above fp32's 1e-4 comparisons)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# -- data -----------------------------------------------------------------------------------------------
def png_copy(source: Path, target: Path) -> Path:
    """The JPEG ``source`` re-encoded losslessly as PNG (the device decoder hands PNGs to PIL)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image.convert("RGB").save(target, format="PNG")
    return target


def extraction_data(folder: Path) -> tuple[Path, dict[int, str]]:
    """labels.csv of 5 rows: sample JPEGs 0 and 1, a truncated JPEG, sample image 2 as PNG, random bytes
    named .jpg (absolute paths). Returns the CSV and {bad row: word its reason holds}."""
    bad = make_bad_files(folder / "bad")
    table = sample_table()
    rows = table.iloc[:3].to_dict("records")
    rows[2] = dict(rows[2], path=str(png_copy(Path(rows[2]["path"]), folder / "png" / "image2.png")))
    broken = {"wnid": "", "class_index": -1, "class_name": "broken"}
    rows.insert(2, {"path": str(bad["truncated.jpg"][0]), **broken})
    rows.insert(4, {"path": str(bad["random.jpg"][0]), **broken})
    csv = folder / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv, {2: "truncated", 4: "cannot identify"}


def map_data(folder: Path) -> tuple[Path, int]:
    """labels.csv of 3 rows for the map stores: sample JPEG 0, garbage bytes at row 1 (a valid class
    index, since saliency reads one per row), sample image 2 as PNG. Returns the CSV and the bad row."""
    table = pd.read_csv(SAMPLE_DIR / "labels.csv").iloc[:3].reset_index(drop=True)
    paths = []
    for row, path in enumerate(table.path):
        source = SAMPLE_DIR / path
        if row == 1:
            target = folder / "garbage.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes())
        elif row == 2:
            target = png_copy(source, folder / "image2.png")
        else:
            target = folder / Path(path).name
            target.write_bytes(source.read_bytes())
        paths.append(target.name)
    table["path"] = paths
    csv = folder / "labels.csv"
    table.to_csv(csv, index=False)
    return csv, 1


def sample_pixels(size: int, rows: list[int]) -> torch.Tensor:
    """Sample images ``rows`` resized to size x size (bicubic), uint8 (n, 3, size, size)."""
    table = pd.read_csv(SAMPLE_DIR / "labels.csv")
    arrays = [np.asarray(Image.open(SAMPLE_DIR / table.path[r]).convert("RGB").resize((size, size), Image.BICUBIC))
              for r in rows]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def normalized(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 images -> ImageNet-normalized float32 model inputs (on the CPU)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (pixels.float() / 255 - mean) / std


# -- comparisons ------------------------------------------------------------------------------------------
def errors(actual, expected) -> dict[str, float]:
    """How far ``actual`` is from ``expected`` (tensors on any device, or arrays), in float64: max and mean
    absolute error relative to max |expected|, relative L2 error, Pearson correlation."""
    a, b = (x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
            for x in (actual, expected))
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    a, b = a.ravel(), b.ravel()
    scale = np.abs(b).max()
    assert scale > 0, "the reference is all zeros: nothing is compared"
    diff = np.abs(a - b)
    spread = a.std() * b.std()
    corr = float(np.mean((a - a.mean()) * (b - b.mean())) / spread) if spread > 0 else float(np.array_equal(a, b))
    return {"max": float(diff.max() / scale), "mean": float(diff.mean() / scale),
            "l2": float(np.linalg.norm(a - b) / np.linalg.norm(b)), "corr": corr}


def assert_close_to_scale(actual, expected, rtol: float, what: str = "") -> None:
    """Every element within ``rtol`` x max |expected| (the tolerance relative to the array's scale)."""
    err = errors(actual, expected)
    assert err["max"] <= rtol, f"{what}: max |a - b| = {err['max']:.2e} x max |ref| > {rtol:.0e} ({err})"


def image_table(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k.startswith("images/")}


def assert_images_equal(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """The image tables (manifest columns, status, reason) are identical."""
    a, b = image_table(actual), image_table(expected)
    assert sorted(a) == sorted(b)
    for key in b:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def layer_positions(store: Path) -> dict[str, int]:
    """{layer: positions per unit map} from the store's attributes (area is a multiple of 1/positions)."""
    root = zarr.open_group(str(store), mode="r")
    return {name: int(np.prod(root[name].attrs["feature_map_shape"][1:]))
            for name in root.attrs["layers"]}


def assert_area_flips(actual: np.ndarray, expected: np.ndarray, positions: int, what: str) -> None:
    """``area`` counts positions > 0: a value within rounding of 0 may land on either side on another
    device (with ~5e5 values per store and fp32 differences of 1e-6-1e-5, a few do). Allowed: at most 2
    such positions per (image, unit), in at most 3 or 1% of the (image, unit) pairs, whichever is more."""
    flips = np.abs(actual.astype(np.float64) - expected.astype(np.float64)) * positions
    assert np.allclose(flips, np.rint(flips), atol=1e-3), f"{what}: area is not a count of positions"
    flips = np.rint(flips)
    assert flips.max() <= 2 and (flips > 0).sum() <= max(3, 0.01 * flips.size), (
        f"{what}: {int((flips > 0).sum())} of {flips.size} areas differ, by up to {int(flips.max())} positions")


def assert_extraction_close(actual: Path, expected: Path, rtol: float = 1e-4) -> None:
    """Two extraction stores of the same data: identical image tables and journal, NaN exactly in the rows
    of unreadable images, float32 statistics within ``rtol`` x the layer's max |value| per statistic
    (area: see :func:`assert_area_flips`), float16 spatial maps within one float16 rounding step
    (2^-10 relative) plus ``rtol`` x the layer's scale."""
    a, b = store_arrays(actual), store_arrays(expected)
    assert sorted(a) == sorted(b)
    assert_images_equal(a, b)
    np.testing.assert_array_equal(a["journal"], b["journal"])
    assert b["journal"].all()
    ok = b["images/status"] == "ok"
    assert 0 < ok.sum() < len(ok), "the data must hold readable and unreadable images"
    positions = layer_positions(expected)
    for key in sorted(b):
        if key.startswith("images/") or key == "journal":
            continue
        layer, name = key.rsplit("/", 1)
        got, want = a[key], b[key]
        assert got.dtype == want.dtype == (np.float16 if name == "spatial" else np.float32), key
        assert np.isnan(got[~ok]).all() and np.isnan(want[~ok]).all(), f"{key}: rows of unreadable images not NaN"
        got, want = got[ok], want[ok]
        assert np.isfinite(got).all(), f"{key}: non-finite values in readable rows"
        if name == "area":
            assert_area_flips(got, want, positions[layer], key)
        elif name == "spatial":
            scale = float(np.abs(want.astype(np.float32)).max())
            np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2.0 ** -10,
                                       atol=rtol * scale, err_msg=key)
        else:
            assert_close_to_scale(got, want, rtol, key)


def representable_share(values: np.ndarray, amp: str) -> float:
    """Share of float32 ``values`` that the amp dtype holds exactly: 1.0 for statistics computed (or
    rounded) in that dtype, near 0 for float32 means of many half-precision values."""
    values = np.asarray(values, dtype=np.float32)
    if amp == "bf16":
        exact = (values.view(np.uint32) & 0xFFFF) == 0
    else:
        with np.errstate(over="ignore"):
            exact = values.astype(np.float16).astype(np.float32) == values
    return float(exact.mean())


# -- host synchronisation ------------------------------------------------------------------------------------
# CUDA runtime/driver calls that block the host: explicit synchronisation and the synchronous copies
# (cudaMemcpy, cudaMemcpy2D, cuMemcpyDtoH_v2, ...; the *Async ones do not block)
SYNC_CALL = re.compile(r"^cu(da)?(Stream|Device|Ctx|Event)Synchronize|^cu(da)?Memcpy(?!.*Async)")


def host_syncs(run: Callable[[], object], cuda: bool) -> tuple[Counter, list[str], Counter]:
    """Run ``run`` under torch.profiler (CPU activity, plus CUDA on a GPU) and, on a GPU, with
    ``torch.cuda.set_sync_debug_mode("warn")``. Returns (host-blocking CUDA calls the profiler saw, by
    name; the sync-debug warnings; every profiled event name, counted)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with profile(activities=activities) as prof:
                run()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    names = Counter(event.name for event in prof.events())
    calls = Counter({name: n for name, n in names.items() if SYNC_CALL.match(name)})
    warned = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    return calls, warned, names


# -- a CLI run whose chunk writes are slowed down ----------------------------------------------------------------
THROTTLED_MAIN = """\
import runpy, sys, time
from neuroprobe.store.layout import Store
_write = Store.write_chunk
def _slow_write(self, *args, **kwargs):
    time.sleep({delay!r})
    return _write(self, *args, **kwargs)
Store.write_chunk = _slow_write
sys.argv = ["neuroprobe", *{args!r}]
runpy.run_module("neuroprobe", run_name="__main__", alter_sys=True)
"""


def start_throttled(args: list, log: Path, delay: float, **env: str) -> subprocess.Popen:
    """``python -m neuroprobe ARGS`` (through runpy, as -m does) with a ``delay`` s sleep before each chunk
    write, so that a kill after the first journal entry surely lands before the job ends, on a GPU too."""
    code = THROTTLED_MAIN.format(delay=float(delay), args=[str(a) for a in args])
    return subprocess.Popen([PYTHON, "-c", code], cwd=ROOT, env=cli_env(**env), stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)


def journal(store: Path) -> np.ndarray:
    return zarr.open_array(str(store / "journal"), mode="r")[:].astype(bool)

