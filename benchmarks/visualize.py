"""Feature visualization: activation reached and seconds per unit, neuroprobe (batched) vs torch-lucent and horama.

For the first ``--units`` units of a layer of the offline model, at equal steps and image size:
neuroprobe's ``visualize`` (fft and maco, all units in one batch) and, for the first ``--peer-units``
units, the peers one unit per call (their way; ``benchmarks/visualize_peers.py`` in /work/peers-venv).
Every image is scored the same way: quantized to uint8, fed at its size without transforms, and the
unit's spatial mean **pre-activation** read by neuroprobe's capture (also the post-ReLU6 mean, which the
peers optimize); as a fraction of the unit's strongest natural image (spatial mean pre-activation over the
800 sample photos, from a store). Dead units (constant over the natural images) are excluded from medians.

    .venv/bin/python benchmarks/visualize.py [--units 64 --peer-units 8 --steps 128 --size 224]
"""
import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import neuroprobe as npb
from neuroprobe.data import ImageDataset, read_manifest
from neuroprobe.engine.malloc import keep_freed_memory
from neuroprobe.synthesis import natural_spectrum, visualize
from neuroprobe.synthesis.visualize import _normalize, layer_values

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS_PYTHON = Path("/work/peers-venv/bin/python")


def score(model, layer: str, images: torch.Tensor, units: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Spatial mean pre-activation and post-ReLU6 mean of each image's unit (uint8 images)."""
    pre, post = [], []
    device = next(model.module.parameters()).device
    for start in range(0, len(images), 16):
        part = images[start:start + 16].to(device)
        with torch.no_grad():
            values = layer_values(model.module, layer, _normalize(model, part.float() / 255), keep_graph=False)
        chosen = values[torch.arange(len(part)), torch.tensor(units[start:start + 16])].cpu()
        pre.append(chosen.flatten(1).mean(1))
        post.append(chosen.clamp(0, 6).flatten(1).mean(1))
    return torch.cat(pre).double().numpy(), torch.cat(post).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/imagenet-sample/labels.csv")
    parser.add_argument("--layer", default="blocks.4.0.bn2")
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--peer-units", type=int, default=8)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--peers", nargs="*", default=["lucent", "horama"])
    parser.add_argument("--out", default=str(HERE / "visualize"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the peers always run on the CPU)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", default=None, help="also write the summary as a Markdown section here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = npb.load_model("efficientnet_lite0")
    data = args.data if Path(args.data).exists() else str(ROOT / "data" / "sample" / "labels.csv")
    store = out / "natural.zarr"
    npb.extract(model, data, [args.layer], store, batch_size=32, device=args.device)
    natural = npb.open_layer(store, args.layer)["mean"].values
    manifest = read_manifest(data)
    dataset = ImageDataset(manifest, model.preprocessing)
    spectrum = natural_spectrum(torch.stack([dataset[i][1] for i in range(min(256, len(manifest)))]), args.size)
    np.save(out / "spectrum.npy", spectrum.numpy())
    units = list(range(args.units))
    rows, images = [], {}
    for param in ("fft", "maco"):
        start = time.perf_counter()
        vis = visualize(model, args.layer, units, param=param, steps=args.steps, size=args.size,
                        spectrum=spectrum if param == "maco" else None, batch_size=args.units, device=args.device)
        seconds = time.perf_counter() - start
        images[f"neuroprobe-{param}"] = vis.images
        pre, post = score(model, args.layer, vis.images, units)
        rows += [{"library": f"neuroprobe {param} (batch of {args.units})", "unit": u, "pre": a, "post": b,
                  "seconds_per_unit": seconds / len(units)} for u, a, b in zip(units, pre, post)]
        print(param, f"{seconds:.1f} s", flush=True)
    # neuroprobe one unit per call, for the batching gain on the same machine
    start = time.perf_counter()
    for u in units[:2]:
        visualize(model, args.layer, [u], steps=args.steps, size=args.size, device=args.device)
    single = (time.perf_counter() - start) / 2
    rows.append({"library": "neuroprobe fft (one unit per call)", "unit": -1, "seconds_per_unit": single})
    peer_units = units[:args.peer_units]
    versions = {}
    for library in args.peers:
        if not PEERS_PYTHON.exists():
            print(f"{library}: {PEERS_PYTHON} missing; see benchmarks/visualize_peers.py for the environment")
            continue
        command = [str(PEERS_PYTHON), str(HERE / "visualize_peers.py"), "--library", library, "--layer", args.layer,
                   "--units", *map(str, peer_units), "--steps", str(args.steps), "--size", str(args.size),
                   "--spectrum", str(out / "spectrum.npy"), "--out", str(out), "--quiet"]
        subprocess.run(command, check=True, cwd=ROOT)
        saved = np.load(out / f"{library}.npz")
        versions[library] = json.loads((out / f"{library}.json").read_text()).get("versions", {})
        peer_images = (torch.from_numpy(saved["images"]).clamp(0, 1) * 255).round().to(torch.uint8)
        pre, post = score(model, args.layer, peer_images, peer_units)
        rows += [{"library": library, "unit": u, "pre": a, "post": b, "seconds_per_unit": s}
                 for u, a, b, s in zip(peer_units, pre, post, saved["seconds"])]
        print(library, f"{saved['seconds'].mean():.1f} s per unit", flush=True)
    table = pd.DataFrame(rows)
    alive = natural.max(0) - natural.min(0) > 1e-6
    table["natural"] = [natural[:, u].max() if u >= 0 else np.nan for u in table["unit"]]
    table["fraction"] = table["pre"] / table["natural"]
    table["alive"] = [bool(alive[u]) if u >= 0 else False for u in table["unit"]]
    table.to_csv(out / "per_unit.csv", index=False)
    common = table[table["unit"].isin([u for u in peer_units if alive[u]])]
    summary = (common.groupby("library").agg(units=("unit", "size"), pre_median=("pre", "median"),
                                             post_median=("post", "median"), fraction_median=("fraction", "median"),
                                             seconds_per_unit=("seconds_per_unit", "mean")).reset_index())
    summary.to_csv(out / "summary.csv", index=False)
    everything = table[table["alive"]].groupby("library").agg(units=("unit", "size"), fraction_median=("fraction", "median"),
                                                              seconds_per_unit=("seconds_per_unit", "mean"))
    (out / "settings.json").write_text(json.dumps({**vars(args), "single_call_seconds": single,
                                                   "peer_versions": versions, "torch": torch.__version__}, indent=1))
    print(summary.round(3).to_string(index=False))
    print(everything.round(3).to_string())
    if args.markdown:
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
        lines = [f"{args.units} units of {args.layer}, {args.steps} steps at {args.size} px on {device}; "
                 f"one unit per call: {single:.2f} s per unit", "",
                 "| library | units | median fraction of the best photo | seconds per unit |", "| --- | --- | --- | --- |"]
        lines += [f"| {name} | {row.units} | {row.fraction_median:.2f} | {row.seconds_per_unit:.3f} |"
                  for name, row in everything.iterrows()]
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
