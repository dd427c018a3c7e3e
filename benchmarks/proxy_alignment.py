"""Issue 12's proxy experiment: does map supervision move a model's saliency onto the object, at no cost in top-1?

EfficientNet-Lite0 (offline weights) with GALA before ``--gala`` blocks is fine-tuned on object mosaics of
600 photos (one photo in a random cell of a 2 x 2 mosaic, three phase-scrambled photos; its importance map
is its cell) three ways from the same seed: (a) cross-entropy only, (b) + GALA attention supervision,
(c) + the harmonization loss; evaluated on mosaics of the 200 other photos. Per variant: top-1, Spearman
of |gradient| with the cell map, grid pointing game of Grad-CAM and of the gradient; paired differences
from (a) with 95% intervals (t for the scores, Bonett-Price for top-1). A proxy for the paper's ClickMe
result, not a reproduction of it. CPU (2 cores), about 6 minutes with the defaults.

    .venv/bin/python benchmarks/proxy_alignment.py --seed 0 --tag final_seed0   # seeds 0, 1, 2 are saved in benchmarks/proxy_alignment/
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from neuroprobe.attention.proxy import evaluate, fine_tune, object_mosaics
from neuroprobe.data import read_manifest
from neuroprobe.engine.malloc import keep_freed_memory
from neuroprobe.models.loading import load_model
from neuroprobe.retina.report import paired_difference

HERE = Path(__file__).resolve().parent
SCORES = ("spearman", "pointing_gradcam", "pointing_gradient")


def mean_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[np.isfinite(d)]
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/imagenet-sample/labels.csv")
    parser.add_argument("--gala", nargs="+", default=["blocks.4.0", "blocks.5.0"])
    parser.add_argument("--variants", nargs="+", default=["none", "gala", "harmonization"])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--trainable", default="gala")
    parser.add_argument("--gala-weight", type=float, default=1.0)
    parser.add_argument("--harmonization-weight", type=float, default=0.05)
    parser.add_argument("--train-mosaics", type=int, default=480)
    parser.add_argument("--test-mosaics", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning (initialisation, batch order)")
    parser.add_argument("--tag", default="run")
    args = parser.parse_args()
    torch.set_num_threads(2)
    keep_freed_memory()
    out = HERE / "proxy_alignment"
    out.mkdir(exist_ok=True)
    model = load_model("efficientnet_lite0")
    manifest = read_manifest(args.data)
    labels = manifest.table["class_index"].to_numpy()
    rows = np.random.default_rng(0).permutation(len(manifest))
    split = int(0.75 * len(rows))
    train = object_mosaics(model, manifest, rows[:split], args.train_mosaics, labels, seed=1)
    test = object_mosaics(model, manifest, rows[split:], args.test_mosaics, labels, seed=2)
    tables = {"pretrained": evaluate(model, test)}
    weights = {"none": 0.0, "gala": args.gala_weight, "harmonization": args.harmonization_weight}
    seconds = {}
    for variant in args.variants:
        start = time.perf_counter()
        tuned = fine_tune(model, args.gala, variant, train, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          weight=weights[variant], trainable=args.trainable, seed=args.seed)
        seconds[variant] = time.perf_counter() - start
        tables[variant] = evaluate(tuned, test)
        tuned.history.to_csv(out / f"{args.tag}_history_{variant}.csv", index=False)
        print(variant, round(seconds[variant]), tables[variant].mean(numeric_only=True).round(3).to_dict(), flush=True)
    per_mosaic = pd.concat([t.assign(model=name) for name, t in tables.items()], ignore_index=True)
    per_mosaic.to_csv(out / f"{args.tag}_per_mosaic.csv", index=False)
    summary = []
    for name, table in tables.items():
        row = {"model": name, "top1": table["correct"].mean(), **{s: table[s].mean() for s in SCORES},
               "train_seconds": seconds.get(name, 0.0)}
        if name not in ("pretrained", "none") and "none" in tables:
            base = tables["none"]
            row["top1_diff"], row["top1_low"], row["top1_high"] = paired_difference(table["correct"], base["correct"])
            for s in SCORES:
                row[f"{s}_diff"], row[f"{s}_low"], row[f"{s}_high"] = mean_difference(table[s], base[s])
        summary.append(row)
    summary = pd.DataFrame(summary)
    summary.to_csv(out / f"{args.tag}_summary.csv", index=False)
    (out / f"{args.tag}_settings.json").write_text(json.dumps(vars(args), indent=1))
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(summary.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
