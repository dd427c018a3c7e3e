"""Time to equal quality: seconds per unit for neuroprobe to reach torch-lucent's 512-step activation (CPU).

torch-lucent 0.1.8 (``benchmarks/visualize_peers.py`` in /work/peers-venv, its defaults: fft + decorrelate,
standard transforms, Adam 0.05) makes one image per unit at ``--lucent-steps`` (512); neuroprobe's ``visualize``
(``fft``, its defaults, all units in one batch) runs at increasing step counts (``--ladder``), each a fresh run,
stopping once every unit has reached lucent's activation. Both are scored as in ``visualize.py``: the image
quantized to uint8, fed at its size without transforms, the unit's spatial mean pre-activation read by
neuroprobe's capture. Per unit: the smallest neuroprobe step count whose activation >= lucent's, and
neuroprobe's seconds per unit at that step count (the batch's wall clock / units) vs lucent's seconds for that
unit. Same thread count for both, glibc malloc kept (keep_freed_memory) in both processes.

    .venv/bin/python benchmarks/visualize_quality.py [--units 8 --lucent-steps 512 --size 224]
"""
import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import visualize as bench  # benchmarks/visualize.py (benchmarks/ is on sys.path when run as a script)

import neuroprobe as npb
from neuroprobe.engine.malloc import keep_freed_memory
from neuroprobe.synthesis import visualize

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="blocks.4.0.bn2")
    parser.add_argument("--units", type=int, default=8, help="units 0..N-1")
    parser.add_argument("--lucent-steps", type=int, default=512)
    parser.add_argument("--ladder", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "visualize_quality"))
    parser.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    units = list(range(args.units))
    model = npb.load_model("efficientnet_lite0")
    load = os.getloadavg()

    if not bench.PEERS_PYTHON.exists():
        raise SystemExit(f"{bench.PEERS_PYTHON} missing; see benchmarks/visualize_peers.py for the environment")
    command = [str(bench.PEERS_PYTHON), str(HERE / "visualize_peers.py"), "--library", "lucent", "--layer", args.layer,
               "--units", *map(str, units), "--steps", str(args.lucent_steps), "--size", str(args.size),
               "--threads", str(args.threads), "--out", str(out), "--tag", "quality"]
    subprocess.run(command, check=True, cwd=ROOT)
    saved = np.load(out / "quality_lucent.npz")
    lucent_images = (torch.from_numpy(saved["images"]).clamp(0, 1) * 255).round().to(torch.uint8)
    target, _ = bench.score(model, args.layer, lucent_images, units)
    lucent_seconds = np.asarray(saved["seconds"], dtype=float)
    print("lucent", args.lucent_steps, "steps:", np.round(target, 3), f"{lucent_seconds.mean():.2f} s per unit",
          flush=True)

    ladder = []  # (steps, activations, seconds per unit)
    for steps in args.ladder:
        start = time.perf_counter()
        vis = visualize(model, args.layer, units, param="fft", steps=steps, size=args.size, batch_size=len(units),
                        device="cpu")
        seconds = (time.perf_counter() - start) / len(units)
        pre, _ = bench.score(model, args.layer, vis.images, units)
        ladder.append((steps, pre, seconds))
        reached = pre >= target
        print(f"neuroprobe fft {steps} steps: {seconds:.2f} s per unit, reached {reached.sum()}/{len(units)}",
              np.round(pre, 3), flush=True)
        if reached.all():
            break

    rows = []
    for i, unit in enumerate(units):
        hit = next(((s, p[i], sec) for s, p, sec in ladder if p[i] >= target[i]), None)
        rows.append({"unit": unit, "lucent_activation": float(target[i]), "lucent_seconds": float(lucent_seconds[i]),
                     "neuroprobe_steps": hit[0] if hit else None,
                     "neuroprobe_activation": float(hit[1]) if hit else float(ladder[-1][1][i]),
                     "neuroprobe_seconds": float(hit[2]) if hit else None,
                     "ratio": float(lucent_seconds[i] / hit[2]) if hit else None})
    reached = [r for r in rows if r["neuroprobe_steps"] is not None]
    summary = {
        "units": len(units), "reached": len(reached),
        "median_steps": float(np.median([r["neuroprobe_steps"] for r in reached])) if reached else None,
        "median_neuroprobe_seconds": float(np.median([r["neuroprobe_seconds"] for r in reached])) if reached else None,
        "median_lucent_seconds": float(np.median(lucent_seconds)),
        "median_ratio": float(np.median([r["ratio"] for r in reached])) if reached else None,
        # time for neuroprobe to have every unit at lucent's level (one batch at the largest step count needed)
        "all_units_neuroprobe_seconds": float(max(r["neuroprobe_seconds"] for r in reached)) if len(reached) == len(rows) else None,
        "ladder_seconds_per_unit": {s: sec for s, _, sec in ladder},
        "load_average_at_start": load, "load_average_at_end": os.getloadavg(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "threads": args.threads,
        "torch": torch.__version__, "settings": vars(args),
    }
    (out / "quality.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    lines = [("| unit | lucent 512-step activation | lucent s | neuroprobe steps to reach | neuroprobe activation "
             "| neuroprobe s per unit | lucent / neuroprobe |"), "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["neuroprobe_steps"] is None:
            lines.append(f"| {r['unit']} | {r['lucent_activation']:.3f} | {r['lucent_seconds']:.1f} | not reached by "
                         f"{ladder[-1][0]} | {r['neuroprobe_activation']:.3f} | - | - |")
        else:
            lines.append(f"| {r['unit']} | {r['lucent_activation']:.3f} | {r['lucent_seconds']:.1f} | "
                         f"{r['neuroprobe_steps']} | {r['neuroprobe_activation']:.3f} | {r['neuroprobe_seconds']:.2f} | "
                         f"{r['ratio']:.1f}x |")
    if reached:
        lines.append(f"| median | | {summary['median_lucent_seconds']:.1f} | {summary['median_steps']:g} | | "
                     f"{summary['median_neuroprobe_seconds']:.2f} | {summary['median_ratio']:.1f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
