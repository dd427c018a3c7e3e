"""Alignment scores batched on the device vs a loop of scipy.stats.spearmanr; a harmonization training
step vs a plain cross-entropy step. One run, ratios, the machine printed with the table.

* Spearman: N maps of 224 x 224 (saliency: random; human: blurred blobs, with the ties clicked maps have),
  ``neuroprobe.attention.alignment.spearman_rows`` in batches of ``--batch`` vs ``scipy.stats.spearmanr`` per
  image. Values compared (max |difference|). Goal: >= 20x.
* Training step: EfficientNet-Lite0 (offline weights), batch ``--train-batch`` of 224 px images, AdamW:
  cross-entropy alone vs cross-entropy + ``HarmonizationLoss`` (double backpropagation through the input
  gradient). Expected about 3x.

    .venv/bin/python benchmarks/alignment.py --images 800
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from neuroprobe.attention import HarmonizationLoss
from neuroprobe.attention.alignment import spearman_rows
from neuroprobe.engine.malloc import keep_freed_memory
from neuroprobe.models.loading import load_model


def maps(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    saliency = torch.rand(n, size, size, generator=g)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.rand(n, 2, generator=g) * size
    human = torch.exp(-((xs - centres[:, :1, None]) ** 2 + (ys - centres[:, 1:, None]) ** 2) / (2 * 40.0 ** 2))
    return saliency, (human * 20).round() / 20          # quantized: ties, as clicked maps have


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--batch", type=int, default=200, help="maps per batched call")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the table as Markdown here")
    args = parser.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    saliency, human = maps(args.images, 224, 0)
    saliency, human = saliency.to(dev), human.to(dev)

    def batched():
        out = torch.cat([spearman_rows(saliency[i:i + args.batch], human[i:i + args.batch])
                         for i in range(0, args.images, args.batch)])
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    ours = batched()
    t_ours = timed(batched, args.repeats)
    s_cpu, h_cpu = saliency.cpu().numpy(), human.cpu().numpy()
    reference = []
    start = time.perf_counter()
    for i in range(args.images):
        reference.append(stats.spearmanr(s_cpu[i].ravel(), h_cpu[i].ravel()).statistic)
    t_scipy = time.perf_counter() - start
    diff = float(np.abs(ours.cpu().numpy() - np.array(reference)).max())

    loaded = load_model("efficientnet_lite0")
    model = loaded.module.to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.train_batch, 3, 224, 224, generator=g).to(dev)
    y = torch.randint(0, 1000, (args.train_batch,), generator=g).to(dev)
    hm = human[: args.train_batch].to(dev)
    has = torch.ones(args.train_batch, dtype=torch.bool, device=dev)
    harmonization = HarmonizationLoss()

    def step(with_harmonization: bool):
        def run():
            optimizer.zero_grad(set_to_none=True)
            if with_harmonization:
                loss, logits = harmonization(model, x, y, hm, has)
                loss = loss + F.cross_entropy(logits, y)
            else:
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
        return run

    step(False)()
    step(True)()
    t_ce = timed(step(False), args.repeats)
    t_harm = timed(step(True), args.repeats)
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
               f"torch {torch.__version__}, device {dev}"
               + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    lines = [f"machine: {machine}", "", "| measure | neuroprobe | reference | ratio |", "| --- | --- | --- | --- |",
             f"| Spearman, {args.images} maps of 224 x 224 (batches of {args.batch}) | {t_ours:.3f} s | scipy loop "
             f"{t_scipy:.3f} s | **{t_scipy / t_ours:.1f}x faster** (max abs diff {diff:.1e}) |",
             f"| training step, EfficientNet-Lite0, batch {args.train_batch} | CE + harmonization {t_harm:.3f} s | "
             f"CE alone {t_ce:.3f} s | **{t_harm / t_ce:.2f}x the time** |"]
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
