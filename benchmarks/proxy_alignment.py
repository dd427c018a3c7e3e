"""Issue 12's proxy experiment, first run (work in progress): fine-tune the offline model with GALA before
blocks.4.0 and blocks.5.0 on 480 object mosaics of 600 photos, 60 steps of 8, three variants; evaluate on
160 mosaics of the 200 other photos. Prints the mean of each score per variant (see RESULTS.md).

    .venv/bin/python benchmarks/proxy_alignment.py
"""
import time, torch, numpy as np, logging
torch.set_num_threads(2)
from neuroprobe.malloc import keep_freed_memory; keep_freed_memory()
from neuroprobe.models import load_model
from neuroprobe.data import read_manifest
from neuroprobe.attention.proxy import object_mosaics, fine_tune, evaluate
m = load_model("efficientnet_lite0")
man = read_manifest("/work/shared/data/imagenet-sample/labels.csv")
labels = man.table["class_index"].to_numpy()
rows = np.random.default_rng(0).permutation(800)
train_rows, test_rows = rows[:600], rows[600:]
t = time.time()
train = object_mosaics(m, man, train_rows, 480, labels, seed=1)
test = object_mosaics(m, man, test_rows, 160, labels, seed=2)
print("mosaics", time.time() - t, flush=True)
base = evaluate(m, test); print("base", base.mean(numeric_only=True).round(3).to_dict(), flush=True)
for variant in ("none", "gala", "harmonization"):
    t = time.time()
    ft = fine_tune(m, ["blocks.4.0", "blocks.5.0"], variant, train, steps=60, batch_size=8, lr=1e-4)
    ev = evaluate(ft, test)
    print(variant, round(time.time() - t), ev.mean(numeric_only=True).round(3).to_dict(), ft.history.tail(3).loss.mean(), flush=True)
