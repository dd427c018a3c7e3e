"""Dorsal maps that carry spatial information: field pooling, flips, class evidence, the conv head, saliency,
several likelihood stores pooled, and the live loop with each kind of dorsal map."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from neuroprobe.data import Manifest, load_image, read_manifest
from neuroprobe.errors import NeuroprobeError
from neuroprobe.models.loading import load_model
from neuroprobe.retina.active import saccades
from neuroprobe.retina.active_report import saccade_report
from neuroprobe.retina.dorsal import ActiveVision, Glimpse, GlimpseEncoder, load_dorsal
from neuroprobe.retina.dorsal_conv import ConvTraining, cell_classifier, evidence_maps, fit_conv
from neuroprobe.retina.fields import field_weights, mirror_index
from neuroprobe.retina.layouts import make_layout
from neuroprobe.retina.likelihood import LikelihoodStore, ViewClassifier, ViewSettings, likelihood_maps
from neuroprobe.retina.saliency import SaliencyDorsal
from neuroprobe.retina.views import retinotopic_views

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "labels.csv"


def cell_reference(h, w, kind, centre, rs_min=0.0, rs_max=-5.0):
    """Each cell's centre on the image, written out: pixel centres of a resize, or the middle of a log-polar band."""
    out = []
    for i in range(h):
        for j in range(w):
            if kind == "crop":
                out.append((centre[0] + (2 * j + 1) / w - 1, centre[1] + (2 * i + 1) / h - 1))
            else:
                r = 2.0 ** (rs_min + (i + 0.5) / h * (rs_max - rs_min))
                a = 2 * math.pi * (j + 0.5) / w
                out.append((centre[0] + r * math.cos(a), centre[1] + r * math.sin(a)))
    return out


@pytest.mark.parametrize("layout,view,glimpse,shift", [("grid", "crop", "crop", (0.0, 0.0)),
                                                       ("grid", "crop", "crop", (0.08, -0.08)),
                                                       ("rings", "logpolar", "crop", (0.0, 0.0)),
                                                       ("grid", "logpolar", "logpolar", (0.0, 0.0)),
                                                       ("rings", "crop", "logpolar", (-0.1, 0.0))])
def test_field_weights_average_the_cells_inside_each_field(layout, view, glimpse, shift):
    fixations = make_layout(layout)
    h, w = 7, 9
    weights = field_weights(fixations, view, (h, w), glimpse, shift).numpy()
    cells = cell_reference(h, w, glimpse, shift)
    for f, ((cx, cy), r) in enumerate(zip(fixations.centers.reshape(-1, 2), fixations.radii.reshape(-1),
                                          strict=True)):
        if view == "crop":
            inside = [max(abs(x - cx), abs(y - cy)) <= r for x, y in cells]
        else:
            inside = [math.hypot(x - cx, y - cy) <= r for x, y in cells]
        if not any(inside):      # a field too small for the map takes its nearest cell
            distance = [max(abs(x - cx), abs(y - cy)) / r if view == "crop" else math.hypot(x - cx, y - cy) / r
                        for x, y in cells]
            inside = [k == int(np.argmin(distance)) for k in range(len(cells))]
        expected = np.array(inside, dtype=float) / sum(inside)
        np.testing.assert_allclose(weights[f], expected, atol=1e-6, err_msg=f"fixation {f}")
    sums = field_weights(fixations, view, (h, w), glimpse, shift, mean=False).numpy()
    np.testing.assert_array_equal(sums, weights > 0)


@pytest.mark.parametrize("layout", ["grid", "rings"])
def test_a_flipped_image_seen_at_the_mirrored_fixation_is_the_flipped_view(layout):
    """What makes a flipped image's target the mirrored map: its view at mirror[f] is the view at f, flipped."""
    fixations = make_layout(layout)
    mirror = mirror_index(fixations)
    assert sorted(mirror.tolist()) == list(range(len(fixations)))
    np.testing.assert_array_equal(mirror[mirror], np.arange(len(fixations)))
    image = torch.rand(1, 3, 40, 40, dtype=torch.float64)
    centers, radii = fixations.flat(dtype=torch.float64)
    views = retinotopic_views(image, centers, radii, 16, "crop")[0]
    flipped = retinotopic_views(image.flip(-1), centers, radii, 16, "crop")[0]
    torch.testing.assert_close(flipped[mirror], views.flip(-1))
    lopsided = make_layout("grid")
    lopsided.centers[0, 0, 0] += 0.05
    with pytest.raises(NeuroprobeError, match="--no-flip"):
        mirror_index(lopsided)


def test_class_evidence_per_cell_equals_a_loop_over_cells():
    torch.manual_seed(0)
    classifier = torch.nn.Linear(6, 5)
    maps = torch.rand(2, 6, 3, 4)
    got = evidence_maps(maps, classifier).numpy()
    W, b = classifier.weight.detach().numpy().astype(np.float64), classifier.bias.detach().numpy()
    for n in range(2):
        top = int(np.argmax(W @ maps[n].numpy().astype(np.float64).mean((1, 2)) + b))
        for i in range(3):
            for j in range(4):
                v = maps[n, :, i, j].numpy().astype(np.float64)
                z = W @ v + b
                lse = math.log(sum(math.exp(x) for x in z))
                p = [math.exp(x - lse) for x in z]
                expected = [z[top], max(z), lse, -sum(q * math.log(q) for q in p), z[top] - lse, np.linalg.norm(v)]
                np.testing.assert_allclose(got[n, :, i, j], expected, rtol=1e-5, atol=1e-5)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                 torch.nn.Linear(6, 5))
    assert cell_classifier(module, 6) is module[3] and cell_classifier(module, 7) is None


def planted(n, seed, shape=(3, 3), size=6):
    """Evidence maps with one bright blob per image; the view is right where its field holds the blob."""
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, 1, 6, size, size, generator=gen) * 0.3
    where = torch.randint(0, size, (n, 2), generator=gen)
    maps[torch.arange(n), 0, 0, where[:, 0], where[:, 1]] += 3.0
    fields = field_weights(make_layout("grid", n=shape[0], radius=0.4), "crop", (size, size), "crop")[None]
    inside = (fields[0][None] * maps[:, 0, 0].flatten(1)[:, None]).sum(-1) > 3.0 / 20
    return maps, inside.float().reshape(n, 1, *shape), fields


def test_the_conv_head_learns_where_the_evidence_is_and_falls_back_to_the_prior_on_noise():
    maps, targets, fields = planted(300, 0)
    net = fit_conv(maps, targets, fields, (3, 3), ConvTraining(epochs=30, lr=1e-2, hidden=8))
    test_maps, test_targets, _ = planted(200, 1)
    with torch.no_grad():
        predicted = net(test_maps[:, 0])
    pick = predicted.flatten(1).argmax(1)
    hit = test_targets[:, 0].flatten(1)[torch.arange(200), pick].mean()
    prior_hit = test_targets[:, 0].flatten(1)[:, targets[:, 0].flatten(1).mean(0).argmax()].mean()
    assert net.epochs > 0 and hit > 0.9 and hit > prior_hit + 0.3
    noise = (torch.rand(300, 1, 3, 3, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    blind = fit_conv(maps, noise, fields, (3, 3), ConvTraining(epochs=30, lr=1e-2, hidden=8))
    with torch.no_grad():
        guessed = torch.sigmoid(blind(test_maps[:, 0]))
    assert (guessed - noise.mean(0)).abs().max() < 0.12        # stays near each fixation's base rate


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    """The first 6 and the next 4 sample images, each in its own likelihood store (3 x 3 grid, crop views)."""
    manifest = read_manifest(SAMPLE)
    model = load_model("efficientnet_lite0")
    root = tmp_path_factory.mktemp("two")
    out = []
    for name, rows in (("a", slice(0, 6)), ("b", slice(6, 10))):
        part = Manifest(manifest.table.iloc[rows].reset_index(drop=True), manifest.root)
        out.append((part, likelihood_maps(model, part, root / f"{name}.zarr", layout="grid", n=3, radius=0.5,
                                          view="crop", batch_size=5)))
    return model, out


def test_several_stores_pool_into_one_cross_validation_and_saliency_scores_each_image_alone(two_stores, tmp_path):
    model, [(a, store_a), (b, store_b)] = two_stores
    summary = saccade_report([store_a, store_b], [a, b], tmp_path / "ab", dorsal=["saliency", "conv"], folds=2,
                             saliency_size=32, glimpse=32, examples=2)
    assert (summary.n == 10).all() and summary["training_images_per_fold"].iat[0] == 5
    table = pd.read_csv(tmp_path / "ab" / "active_vision.csv")
    assert sorted(zip(table[table.policy == "centre"].store, table[table.policy == "centre"].image)) == \
        [(0, i) for i in range(6)] + [(1, i) for i in range(4)]
    scores = pd.read_csv(tmp_path / "ab" / "dorsal_scores.csv")
    store = LikelihoodStore.open(store_b)
    source = ViewSettings(**store.settings["view"]).source(model.preprocessing)
    alone = SaliencyDorsal(model, store.fixations, "crop", Glimpse(32, kind="crop", color=True))
    image = source.to_uint8(load_image(b.absolute(2)))[None]
    expected = alone(image)[0].flatten().numpy()
    got = scores[(scores["map"] == "saliency") & (scores.store == 1) & (scores.image == 2)].sort_values("fixation")
    np.testing.assert_allclose(got.score.to_numpy(), expected, rtol=1e-4, atol=1e-6)
    held = [set(load_dorsal(tmp_path / "ab" / f"dorsal_conv_fold{k}.pt")[1]["held_out_store"]) for k in range(2)]
    assert held[0] | held[1] == {0, 1}
    with pytest.raises(NeuroprobeError, match="one --data per --likelihood"):
        saccade_report([store_a, store_b], [a], tmp_path / "x")
    other = likelihood_maps(model, b, tmp_path / "c.zarr", layout="grid", n=2, radius=0.5, view="crop", batch_size=5)
    with pytest.raises(NeuroprobeError, match="same 'search' options"):
        saccade_report([store_a, other], [a, b], tmp_path / "x")


@pytest.mark.parametrize("kind", ["conv", "saliency"])
def test_the_live_loop_with_a_spatial_dorsal_map_equals_the_store_based_evaluation(two_stores, tmp_path, kind):
    model, [(a, path), _] = two_stores
    store = LikelihoodStore.open(path)
    settings = ViewSettings(**store.settings["view"])
    source = settings.source(model.preprocessing)
    images = torch.stack([source.to_uint8(load_image(a.absolute(i))) for i in range(6)])
    if kind == "conv":
        encoder = GlimpseEncoder(model, Glimpse(32, kind="crop", color=True))
        evidence = encoder.evidence(images)
        fields = field_weights(store.fixations, "crop", evidence.shape[-2:], "crop")[None]
        targets = torch.rand(6, 1, 3, 3, generator=torch.Generator().manual_seed(0)).round()
        dorsal = fit_conv(evidence[:, None], targets, fields, (3, 3), ConvTraining(epochs=3), epochs=3)
        with torch.no_grad():
            scores = dorsal(evidence).flatten(1).numpy()
    else:
        encoder, dorsal = None, SaliencyDorsal(model, store.fixations, "crop", Glimpse(32, kind="crop", color=True))
        scores = dorsal(images)[0].flatten(1).numpy()
    live = ActiveVision(dorsal, encoder, ViewClassifier(model.module, settings), store.fixations, count=2,
                        combine="product", refine="igub", candidates=3)(images, source)
    logp = zarr.open_group(str(path), mode="r")["log_probability"][:6].astype(np.float32).reshape(6, 9, -1)
    prediction, route, _ = saccades(logp, scores, store.fixations.center_index, count=2, combine="product",
                                    refine="igub", candidates=3)
    np.testing.assert_array_equal(live["prediction"], prediction)
    np.testing.assert_array_equal(live["path"], route)
