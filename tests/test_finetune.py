"""Fine-tuning a head: sklearn's confusion matrix and split, the checkpoint through --weights, one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from resnet_cli_fixtures import run_main
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

import neuroprobe as npb
from neuroprobe.data import ImageDataset, read_manifest
from neuroprobe.engine.provenance import model_of
from neuroprobe.finetune import find_head, finetune

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "labels.csv"


@pytest.fixture(scope="module")
def dogs(tmp_path_factory) -> Path:
    """The embedded sample with a 'kind' column: dog (ImageNet classes 151-268) or other."""
    table = pd.read_csv(SAMPLE)
    table["path"] = [str(SAMPLE.parent / p) for p in table["path"]]
    table["kind"] = np.where(table["class_index"].between(151, 268), "dog", "other")
    path = tmp_path_factory.mktemp("dogs") / "dogs.csv"
    table.to_csv(path, index=False)
    return path


def test_heads_are_found_in_every_family(random_weights):
    for name, expected in (("resnet18", "fc"), ("squeezenet1_1", "classifier.1"), ("efficientnet_lite0", "classifier"),
                           ("vgg11", "classifier.6")):
        loaded = npb.load_model(name, None if name == "efficientnet_lite0" else "none")
        assert find_head(loaded.module, torch.zeros(1, 3, 64, 64)) == expected


def test_finetune_matches_sklearn_and_its_checkpoint_loads_everywhere(dogs, tmp_path):
    code, stdout, err = run_main(["finetune", "--data", dogs, "--label-column", "kind", "--epochs", 8,
                                  "--balance", "loss", "--out", tmp_path / "ft"])
    assert code == 0, err
    predictions = pd.read_csv(tmp_path / "ft" / "predictions.csv")
    table = pd.read_csv(dogs)
    assert len(predictions) == 8                                        # 20% of 40, stratified
    assert (predictions["label"] == table["kind"].to_numpy()[predictions["image"]]).all()
    assert predictions["label"].value_counts().to_dict() == {"other": 5, "dog": 3}
    counts = pd.read_csv(tmp_path / "ft" / "confusion.csv", index_col=0)
    expected = confusion_matrix(predictions["label"], predictions["predicted"], labels=["dog", "other"])
    np.testing.assert_array_equal(counts.to_numpy(), expected)
    per_class = pd.read_csv(tmp_path / "ft" / "per_class.csv")
    p, r, _, _ = precision_recall_fscore_support(predictions["label"], predictions["predicted"], labels=["dog", "other"],
                                                 zero_division=0)
    np.testing.assert_allclose(per_class[["precision", "recall"]].to_numpy(), np.stack([p, r], 1))
    history = pd.read_csv(tmp_path / "ft" / "history.csv")
    assert list(history["epoch"]) == list(range(1, 9)) and history["train_loss"].iat[-1] < history["train_loss"].iat[0]

    # the checkpoint rebuilds the 2-class model; its logits equal the predictions written above
    checkpoint = tmp_path / "ft" / "checkpoint.pt"
    tuned = npb.load_model("efficientnet_lite0", str(checkpoint))
    assert tuned.provenance["edits"]["head"] == {"layer": "classifier", "classes": ["dog", "other"]}
    manifest = read_manifest(dogs)
    dataset = ImageDataset(manifest, tuned.preprocessing)
    x = tuned.preprocessing.normalize(torch.stack([dataset[int(i)][1] for i in predictions["image"]]))
    with torch.no_grad():
        probabilities = tuned.module(x).softmax(1)
    names = np.array(["dog", "other"])[probabilities.argmax(1).numpy()]
    assert (names == predictions["predicted"]).all()
    np.testing.assert_allclose(probabilities.max(1).values.numpy(), predictions["probability"], rtol=1e-5)
    # a store made with it re-creates the same model (what report, rf, occlude and the rest load)
    store = npb.extract(tuned, manifest.subset(range(4)), ["classifier"], tmp_path / "ft.zarr", batch_size=4)
    again = model_of(store)
    with torch.no_grad():
        torch.testing.assert_close(again.module(x[:2]), tuned.module(x[:2]))
    assert npb.open_layer(store, "classifier")["mean"].shape == (4, 2)
    code, stdout, _ = run_main(["layers", "--weights", checkpoint])
    assert code == 0 and "classifier" in stdout


def test_training_only_the_head_on_cached_features_equals_training_it_end_to_end(dogs):
    """The head-only shortcut (features computed once) against the full forward pass, same seed and batches."""
    loaded = npb.load_model("efficientnet_lite0")
    cached = finetune(loaded, dogs, "kind", epochs=2, batch_size=16, lr=1e-2)
    full = finetune(loaded, dogs, "kind", epochs=2, batch_size=16, lr=1e-2, train_layers=["classifier"])
    assert not cached.model.provenance["finetune"]["train_layers"] and full.model.provenance["finetune"]["train_layers"]
    for name in ("classifier.weight", "classifier.bias"):
        torch.testing.assert_close(cached.model.module.state_dict()[name], full.model.module.state_dict()[name],
                                   rtol=1e-4, atol=1e-5)


def test_finetune_errors_are_one_line(dogs, tmp_path):
    code, _, err = run_main(["finetune", "--data", dogs, "--label-column", "kinds", "--out", tmp_path])
    assert code == 2 and "kind" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(["finetune", "--data", dogs, "--label-column", "class_name", "--out", tmp_path])
    assert code == 2 and "at least 2 images" in err
    code, _, err = run_main(["finetune", "--data", dogs, "--label-column", "kind", "--train-layers", "blocks.60",
                             "--out", tmp_path])
    assert code == 2 and "blocks.60" in err
