"""Search policies and IGUB against a per-image reimplementation on the stored maps; intervals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from neuroprobe.data import Manifest, read_manifest
from neuroprobe.models.loading import load_model
from neuroprobe.retina.likelihood import likelihood_maps
from neuroprobe.retina.search import policy_choices, visual_search, wilson_interval

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "labels.csv"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    manifest = read_manifest(SAMPLE)
    manifest = Manifest(manifest.table.iloc[:16].reset_index(drop=True), manifest.root)
    return likelihood_maps(load_model("efficientnet_lite0"), manifest, tmp_path_factory.mktemp("lk") / "lk.zarr",
                           layout="grid", n=3, radius=0.5, view="crop", batch_size=8)


def reference(logp: np.ndarray, top1: np.ndarray, top1_logit: np.ndarray, label: int, centre: int) -> dict:
    """One image, every policy written from its definition with plain loops (float64)."""
    fixations, classes = logp.shape
    out = {"centre": (centre, int(top1[centre]))}
    best = max(range(fixations), key=lambda u: (logp[u, label], -u))
    out["label"] = (best, int(top1[best]))
    best = max(range(fixations), key=lambda u: (top1_logit[u], -u))
    out["uncued"] = (best, int(top1[best]))
    p = np.exp(logp)
    gains, joints = [], []
    for u in range(fixations):
        joint = [p[centre, k] * p[u, k] for k in range(classes)]
        total = sum(joint)
        joint = [j / total for j in joint]
        joints.append(joint)
        gains.append(sum(q * logp[u, k] for k, q in enumerate(joint) if q > 0))
    best = max(range(fixations), key=lambda u: (gains[u], -u))
    out["igub"] = (best, int(np.argmax(joints[best])))
    votes: dict[int, int] = {}
    for u in range(fixations):
        votes[int(top1[u])] = votes.get(int(top1[u]), 0) + 1
    summed = logp.sum(0)
    top = max(votes.values())
    out["vote"] = (-1, max((k for k, v in votes.items() if v == top), key=lambda k: summed[k]))
    out["sum_logits"] = (-1, int(np.argmax(summed)))
    hits = [u for u in range(fixations) if top1[u] == label]
    out["oracle"] = (hits[0] if hits else -1, label if hits else int(top1[centre]))
    return out


def test_policies_equal_a_per_image_reimplementation(store):
    group = zarr.open_group(str(store), mode="r")
    logp = group["log_probability"][:].astype(np.float64)
    n, rows, cols, classes = logp.shape
    logp = logp.reshape(n, rows * cols, classes)
    top1 = group["top1"][:].reshape(n, -1)
    top1_logit = group["top1_logit"][:].reshape(n, -1)
    labels = group["target"][:]
    centre = 4
    search = visual_search(store)
    table = search.table.set_index(["policy", "image"])
    for i in range(n):
        for policy, (fixation, prediction) in reference(logp[i], top1[i], top1_logit[i], int(labels[i]), centre).items():
            row = table.loc[(policy, i)]
            assert (row.fixation, row.prediction) == (fixation, prediction), (policy, i)
            assert row.correct == (fixation >= 0 if policy == "oracle" else prediction == labels[i])
    # the summed logits rank classes as the summed log-probabilities do: check with the real logits
    logits = logp + group["logsumexp"][:].reshape(n, -1)[..., None]
    np.testing.assert_array_equal(logits.sum(1).argmax(-1), table.loc["sum_logits"].prediction.to_numpy())
    accuracy = search.summary.set_index("policy").accuracy
    assert accuracy["oracle"] >= max(accuracy[p] for p in ("centre", "label", "uncued", "igub"))


def test_policy_choices_on_constructed_maps():
    """Hand-made maps whose answers are known: a tie in the vote, a fixation where the label peaks."""
    logp = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]],
                            [[0.4, 0.3, 0.3], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]]]))
    top1 = logp.argmax(-1)
    choices = policy_choices(logp, top1, logp.max(-1) + 1.0, np.array([2, 1]), centre=0)
    assert choices["label"][0].tolist() == [2, 0]             # where p(label) is largest
    # image 0: a 3-way tie, broken by the summed log p (log .014, .048, .005); image 1: two votes for 0
    assert choices["vote"][1].tolist() == [1, 0]
    assert choices["oracle"][1].tolist() == [2, 0]             # image 1: no view predicts 1 -> the centre's class
    assert choices["oracle"][0].tolist() == [2, -1]


def test_wilson_interval_matches_its_formula():
    for correct, n in ((0, 10), (7, 10), (790, 1000), (800, 800)):
        p, z = correct / n, 1.959963984540054
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        np.testing.assert_allclose(wilson_interval(correct, n), (centre - half, centre + half), atol=1e-9)


def test_paired_difference_interval_is_bonett_price_and_never_collapses():
    from neuroprobe.retina.report import paired_difference

    a = np.array([1] * 30 + [0] * 10 + [1] * 5 + [0] * 55, dtype=bool)   # 5 gained, 10 lost... per pair below
    b = np.array([1] * 30 + [1] * 10 + [0] * 5 + [0] * 55, dtype=bool)
    mean, low, high = paired_difference(a, b)
    n, gained, lost, z = 100, 5, 10, 1.959964
    p12, p21 = (gained + 1) / (n + 2), (lost + 1) / (n + 2)
    half = z * np.sqrt((p12 + p21 - (p12 - p21) ** 2) / (n + 2))
    assert mean == pytest.approx(-0.05)
    assert (low, high) == pytest.approx((p12 - p21 - half, p12 - p21 + half))
    mean, low, high = paired_difference(b, b)                             # nothing changes: still an interval
    assert mean == 0 and low < 0 < high
