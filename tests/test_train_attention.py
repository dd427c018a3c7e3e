"""``train-attention`` against a hand-written training loop; its checkpoint in the other commands."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from resnet_cli_fixtures import run_main

import neuroprobe as npb
from neuroprobe.attention.align_report import load_map
from neuroprobe.attention.losses import GALAAttentionLoss
from neuroprobe.attention.maps import preprocess_human_maps
from neuroprobe.attention.proxy import object_mosaics, save_mosaics
from neuroprobe.data import ImageDataset, read_manifest
from neuroprobe.models.gala import add_gala
from neuroprobe.models.loading import load_model

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "labels.csv"
LAYERS = ["blocks.4.0", "blocks.5.0"]


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    loaded = load_model("efficientnet_lite0")
    manifest = read_manifest(SAMPLE)
    data = object_mosaics(loaded, manifest, range(len(manifest)), 6, manifest.table["class_index"].to_numpy(), seed=0)
    return save_mosaics(data, tmp_path_factory.mktemp("mosaics"))


def reference_training(table: Path, steps: int, batch_size: int, lr: float, weight: float) -> torch.nn.Module:
    """The loop written out: GALA before LAYERS, only GALA trains, BatchNorm in eval, CE + weight x GALA loss."""
    loaded = load_model("efficientnet_lite0")
    manifest = read_manifest(table)
    torch.manual_seed(0)
    modules = add_gala(loaded.module, LAYERS)
    attention = []
    for m in modules.values():
        m.attention.register_forward_hook(lambda _m, _a, out: attention.append(out))
    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr)
    dataset = ImageDataset(manifest, loaded.preprocessing)
    maps = preprocess_human_maps(torch.stack([load_map(manifest.root / p, loaded.preprocessing)
                                              for p in manifest.table["map"]]), 224)
    generator = torch.Generator().manual_seed(0)
    loss_fn = GALAAttentionLoss(weight)
    loaded.module.eval()
    for _ in range(steps):
        index = torch.randint(len(manifest), (batch_size,), generator=generator)
        x = loaded.preprocessing.normalize(torch.stack([dataset[int(i)][1] for i in index]))
        y = torch.as_tensor(manifest.table["class_index"].to_numpy()[index.numpy()])
        attention.clear()
        optimizer.zero_grad()
        logits = loaded.module(x)
        (F.cross_entropy(logits, y) + loss_fn(attention, maps[index], torch.ones(batch_size, dtype=torch.bool))).backward()
        optimizer.step()
    return loaded.module


def test_train_attention_equals_a_hand_written_loop_and_its_checkpoint_loads_everywhere(mosaics, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_main(["train-attention", "--gala", *LAYERS, "--loss", "gala", "--data", mosaics,
                                  "--maps", "map", "--steps", 3, "--batch-size", 4, "--lr", 1e-2,
                                  "--trainable", "gala", "--out", out])
    assert code == 0, err
    assert "--weights" in stdout and (out / "training.png").stat().st_size > 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.step) == [1, 2, 3] and (metrics.map_loss > 0).all() and (metrics.with_map == 4).all()

    tuned = load_model("efficientnet_lite0", str(out / "checkpoint.pt"))
    assert tuned.provenance["edits"]["gala"]["layers"] == LAYERS
    reference = reference_training(mosaics, steps=3, batch_size=4, lr=1e-2, weight=1.0)
    state = tuned.module.state_dict()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(state["blocks.4.0.gala.alpha"], torch.zeros_like(state["blocks.4.0.gala.alpha"]))
    base = load_model("efficientnet_lite0").module.state_dict()
    assert torch.equal(state["conv_head.weight"], base["conv_head.weight"])      # only GALA trained

    # the checkpoint's attention is a capture point for extract, and align reads the tuned model
    store = npb.extract(tuned, read_manifest(mosaics).subset(range(2)), ["blocks.4.0.gala.attention"],
                        tmp_path / "run.zarr", batch_size=2)
    assert npb.open_layer(store, "blocks.4.0.gala.attention")["mean"].shape[0] == 2
    code, stdout, err = run_main(["align", "--weights", out / "checkpoint.pt", "--data", mosaics, "--maps", "map",
                                  "--out", tmp_path / "align"])
    assert code == 0, err
    with_gala = pd.read_csv(tmp_path / "align" / "alignment.csv")
    run_main(["align", "--data", mosaics, "--maps", "map", "--out", tmp_path / "plain"])
    plain = pd.read_csv(tmp_path / "plain" / "alignment.csv")
    assert not np.allclose(with_gala.spearman, plain.spearman)                 # the GALA modules are there


def test_train_attention_errors_are_one_line(mosaics, tmp_path):
    base = ["train-attention", "--data", mosaics, "--maps", "map", "--steps", 1, "--out", tmp_path / "x"]
    code, _, err = run_main([*base, "--gala", "blocks.40", "--loss", "gala"])
    assert code == 2 and "blocks.40" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main([*base[:3], "--maps", tmp_path, "--steps", 1, "--gala", "blocks.4.0", "--loss", "gala",
                             "--out", tmp_path / "x"])
    assert code == 2 and "no map" in err
    code, _, err = run_main(["align", "--model", "resnet18", "--weights", "none", "--data", mosaics, "--maps", "map",
                             "--out", tmp_path / "y"])
    assert code == 0
    run_main([*base, "--gala", "blocks.4.0", "--loss", "none"])
    code, _, err = run_main(["align", "--model", "resnet18", "--weights", tmp_path / "x" / "checkpoint.pt",
                             "--data", mosaics, "--maps", "map", "--out", tmp_path / "z"])
    assert code == 2 and "--model efficientnet_lite0" in err and len(err.strip().splitlines()) == 1
