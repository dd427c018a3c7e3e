"""The active-vision loop against a per-image reimplementation; dorsal heads, folds, checkpoints, live loop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from neuroprobe.data import Manifest, read_manifest
from neuroprobe.errors import NeuroprobeError
from neuroprobe.models.loading import load_model
from neuroprobe.retina.active import saccades
from neuroprobe.retina.dorsal import (
    ActiveVision,
    DorsalTraining,
    Glimpse,
    GlimpseEncoder,
    cross_validated_maps,
    fit_dorsal,
    fold_of,
    load_dorsal,
    save_dorsal,
)
from neuroprobe.retina.likelihood import LikelihoodStore, ViewClassifier, ViewSettings, likelihood_maps
from neuroprobe.retina.report import saccade_report

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "labels.csv"


def loop_reference(logp, scores, centre, count, combine, refine, candidates, stop, revisit_centre, keep=True):
    """One image at a time, written from the docstring's words."""
    belief = logp[centre].astype(np.float64)
    confidence = belief.max()
    visited = set() if revisit_centre else {centre}
    path = []
    for _ in range(count):
        order = sorted((u for u in range(len(scores)) if u not in visited), key=lambda u: (-scores[u], u))
        if refine == "igub":
            def gain(u):
                joint = belief + logp[u]
                q = np.exp(joint - np.log(np.exp(joint - joint.max()).sum()) - joint.max())
                return sum(qk * lk for qk, lk in zip(q, logp[u], strict=True) if qk > 0)
            pool = order[:candidates]
            u = max(pool, key=lambda v: (gain(v), -pool.index(v)))
        else:
            u = order[0]
        new = belief + logp[u] if combine == "product" else logp[u].astype(np.float64)
        new = new - (new.max() + np.log(np.exp(new - new.max()).sum()))
        rising = new.max() > confidence
        if stop and not rising and not keep:
            break
        belief, confidence = new, new.max()
        visited.add(u)
        path.append(u)
        if stop and not rising:
            break
    return int(belief.argmax()), path + [-1] * (count - len(path))


@pytest.mark.parametrize("combine,refine,stop,revisit,keep", [
    ("product", "none", True, False, True), ("last", "none", False, True, True), ("product", "igub", True, False, True),
    ("product", "none", False, False, True), ("last", "igub", True, False, True), ("product", "none", True, False, False),
    ("product", "igub", True, False, False)])
def test_saccade_loop_equals_a_per_image_reimplementation(combine, refine, stop, revisit, keep):
    rng = np.random.default_rng(1)
    n, fixations, classes = 40, 9, 6
    logits = rng.normal(size=(n, fixations, classes)) * 2
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    scores = rng.normal(size=(n, fixations))
    scores[0] = 0.0                                          # ties: the first fixation wins
    prediction, path, confidence = saccades(logp, scores, 4, count=3, combine=combine, refine=refine, candidates=3,
                                            stop=stop, revisit_centre=revisit, keep_falling=keep)
    for i in range(n):
        expected = loop_reference(logp[i], scores[i], 4, 3, combine, refine, 3, stop, revisit, keep)
        assert (prediction[i], path[i].tolist()) == expected, i
    assert ((confidence > 0) & (confidence <= 1)).all()


def test_folds_are_balanced_and_each_image_is_scored_by_a_head_that_never_saw_it():
    fold = fold_of(23, 5, seed=3)
    assert sorted(np.bincount(fold).tolist()) == [4, 4, 5, 5, 5]
    torch.manual_seed(0)
    features = torch.randn(30, 8)
    targets = (torch.rand(30, 2, 3) < torch.sigmoid(features[:, :6].reshape(30, 2, 3))).float()
    settings = DorsalTraining(epochs=50, seed=2)
    logits, fold, nets = cross_validated_maps(features, targets, (2, 3), folds=3, settings=settings)
    for k in range(3):
        held = fold == k
        refit = fit_dorsal(features[torch.from_numpy(~held)], targets[torch.from_numpy(~held)], (2, 3), settings)
        with torch.no_grad():
            np.testing.assert_allclose(logits[held], refit(features[torch.from_numpy(held)]).numpy(), atol=1e-6)
    with pytest.raises(NeuroprobeError, match="--folds"):
        fold_of(3, 5)


def test_dorsal_heads_learn_and_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    features = torch.randn(200, 5)
    targets = (features[:, :4] > 0).float().reshape(200, 2, 2)   # each fixation's outcome is one feature's sign
    net = fit_dorsal(features, targets, (2, 2), DorsalTraining(epochs=300, lr=1e-2, weight_decay=0.0))
    with torch.no_grad():
        assert ((net(features) > 0).float() == targets).float().mean() > 0.95
    path = save_dorsal(net, tmp_path / "dorsal.pt", {"note": "test", "shape": [2, 2]})
    loaded, meta = load_dorsal(path)                       # torch.load(weights_only=True) inside
    assert meta["note"] == "test"
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(features).numpy(), net(features).numpy())
    torch.save({"not": object()}, tmp_path / "bad.pt")
    with pytest.raises(NeuroprobeError, match="cannot load"):
        load_dorsal(tmp_path / "bad.pt")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    manifest = read_manifest(SAMPLE)
    manifest = Manifest(manifest.table.iloc[:10].reset_index(drop=True), manifest.root)
    model = load_model("efficientnet_lite0")
    out = tmp_path_factory.mktemp("lk") / "lk.zarr"
    return model, manifest, likelihood_maps(model, manifest, out, layout="grid", n=3, radius=0.5, view="crop",
                                            batch_size=5)


def test_live_loop_equals_the_store_based_evaluation(small_store):
    model, manifest, out = small_store
    store = LikelihoodStore.open(out)
    settings = ViewSettings(**store.settings["view"])
    source = settings.source(model.preprocessing)
    encoder = GlimpseEncoder(model, Glimpse(32))
    images = torch.stack([source.to_uint8(__import__("neuroprobe.data", fromlist=["load_image"]).load_image(
        manifest.absolute(i))) for i in range(4)])
    features = encoder(images)
    torch.manual_seed(0)
    net = fit_dorsal(features, torch.rand(4, 3, 3), (3, 3), DorsalTraining(epochs=5))
    live = ActiveVision(net, encoder, ViewClassifier(model.module, settings), store.fixations, count=2,
                        combine="product", refine="igub", candidates=3)(images, source)
    group = zarr.open_group(str(out), mode="r")
    logp = group["log_probability"][:4].astype(np.float32).reshape(4, 9, -1)
    with torch.no_grad():
        scores = net(features).flatten(1).numpy()
    prediction, path, _ = saccades(logp, scores, store.fixations.center_index, count=2, combine="product",
                                   refine="igub", candidates=3)
    np.testing.assert_array_equal(live["prediction"], prediction)
    np.testing.assert_array_equal(live["path"], path)


def test_saccade_report_writes_cross_validated_networks_and_tables(small_store, tmp_path):
    model, manifest, out = small_store
    summary = saccade_report(out, manifest, tmp_path / "sa", folds=2, glimpse=32, saliency_size=32,
                             training=DorsalTraining(epochs=20))
    maps = ["saliency", "conv", "linear", "prior", "random", "perfect"]
    assert list(summary.policy) == ["centre", *maps, *[m + "+evidence" for m in maps], *[m + "+igub" for m in maps],
                                    "oracle"]
    for column in ("map", "loop", "accuracy", "ci_low", "ci_high", "vs_centre", "vs_centre_low", "vs_centre_high",
                   "vs_prior", "vs_prior_low", "vs_prior_high", "gap_closed", "training_images_per_fold"):
        assert column in summary.columns, column
    table = pd.read_csv(tmp_path / "sa" / "active_vision.csv")
    for name in ("conv", "linear"):
        held = [set(load_dorsal(tmp_path / "sa" / f"dorsal_{name}_fold{k}.pt")[1]["held_out"]) for k in range(2)]
        assert held[0].isdisjoint(held[1]) and held[0] | held[1] == set(range(10))
        for k in range(2):
            assert set(table[(table.policy == name) & (table.fold == k)].image) == held[k]
            assert load_dorsal(tmp_path / "sa" / f"dorsal_{name}_fold{k}.pt")[1]["training_images"] == 10 - len(held[k])
    by = summary.set_index("policy")
    assert by.at["centre", "vs_centre"] == 0 and by.at["prior+evidence", "vs_prior"] == 0
    for loop in ("", "+evidence", "+igub"):      # the perfect map closes its own loop's whole gap, when there is one
        perfect = by.loc["perfect" + loop]
        assert perfect.gap_closed == pytest.approx(1.0) or perfect.accuracy == by.at["centre", "accuracy"]
        for name in maps:                         # differences are paired: accuracy minus the other's, same images
            assert by.at[name + loop, "vs_prior"] == pytest.approx(
                by.at[name + loop, "accuracy"] - by.at["prior" + loop, "accuracy"])
    for name in ("accuracy.png", "active_vision.png", "dorsal_maps.png", "summary.csv", "dorsal_scores.csv"):
        assert (tmp_path / "sa" / name).stat().st_size > 0
    other = Manifest(manifest.table.iloc[:5].reset_index(drop=True), manifest.root)
    with pytest.raises(NeuroprobeError, match="made from"):
        saccade_report(out, other, tmp_path / "sb")
    with pytest.raises(NeuroprobeError, match="unknown --dorsal"):
        saccade_report(out, manifest, tmp_path / "sb", dorsal=["fovea"])


def test_a_head_that_finds_nothing_falls_back_to_the_prior():
    """Features unrelated to the outcomes: the chosen L2 keeps the head at the per-fixation mean outcome."""
    torch.manual_seed(0)
    features = torch.randn(300, 40)
    rates = torch.tensor([[0.9, 0.1], [0.5, 0.3]])
    targets = (torch.rand(300, 2, 2) < rates).float()
    net = fit_dorsal(features, targets, (2, 2), DorsalTraining(epochs=200, lr=1e-2))
    with torch.no_grad():
        predicted = torch.sigmoid(net(features))
    assert net.l2 >= 0.1                                                      # the strongest penalties win
    np.testing.assert_allclose(predicted.mean(0), targets.mean(0), atol=0.03)
    assert predicted.std(0).max() < 0.05                                     # nearly one map for every image
