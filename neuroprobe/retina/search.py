"""Visual search policies on a likelihood store: which fixation to look at, and what is seen there.

For each image, with log p(k | x_u) of every view u (``log_probability``) and the centre view x0:

* ``centre``: the prediction of the centre view (the first glimpse);
* ``label``: label-driven search, the fixation where p(label | x_u) peaks, and the prediction there;
* ``uncued``: the view and class of the largest logit over all fixations and classes;
* ``igub``: the fixation of largest IGUB(u) = sum_k p(k | x0, x_u) log p(k | x_u), where the joint
  p(k | x0, x_u) is the product of the two views' likelihoods renormalised over classes (the two glimpses
  taken as independent evidence under a flat prior); the prediction is that joint's argmax;
* ``vote``: the class most views predict (ties go to the larger summed log-probability);
* ``sum_logits``: the largest logit summed over views (= the largest summed log-probability: each view's
  normaliser is the same for every class);
* ``oracle``: whether any view's prediction is the label (its fixation: the first such view).

Every policy's accuracy comes with a 95% Wilson interval; the per-image table is tidy (one row per image
and policy). Reading is chunk by chunk, so stores of any size run in bounded memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import NeuroprobeError
from .likelihood import LikelihoodStore

POLICIES = ("centre", "label", "uncued", "igub", "vote", "sum_logits", "oracle")
LABELLED = ("label", "oracle")   # policies that need the label


def igub(log_probability: np.ndarray, centre: int) -> tuple[np.ndarray, np.ndarray]:
    """IGUB (n, F) of every view and the joint log p(k | x0, x_u) (n, F, K), from log p (n, F, K)."""
    joint = log_probability[:, centre:centre + 1, :] + log_probability
    joint = joint - _logsumexp(joint)[..., None]
    q = np.exp(joint)
    terms = np.where(q > 0, q * log_probability, 0.0)
    return terms.sum(-1), joint


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(-1, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(-1, keepdims=True)))[..., 0]


def policy_choices(log_probability: np.ndarray, top1: np.ndarray, top1_logit: np.ndarray, labels: np.ndarray,
                   centre: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per policy: (fixation (n,), prediction (n,)) for n images; -1 where undefined (no label, no view)."""
    n, fixations, classes = log_probability.shape
    rows = np.arange(n)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out["centre"] = (np.full(n, centre), top1[:, centre])
    labelled = labels >= 0
    label_lp = log_probability[rows, :, np.where(labelled, labels, 0)]                    # (n, F)
    best = label_lp.argmax(1)
    out["label"] = (np.where(labelled, best, -1), np.where(labelled, top1[rows, best], -1))
    best = top1_logit.argmax(1)
    out["uncued"] = (best, top1[rows, best])
    gain, joint = igub(log_probability, centre)
    best = gain.argmax(1)
    out["igub"] = (best, joint[rows, best].argmax(-1))
    counts = np.zeros((n, classes), dtype=np.int64)
    np.add.at(counts, (np.repeat(rows, fixations), top1.reshape(-1)), 1)
    summed = log_probability.sum(1)
    tied = counts == counts.max(1, keepdims=True)
    out["vote"] = (np.full(n, -1), np.where(tied, summed, -np.inf).argmax(1))
    out["sum_logits"] = (np.full(n, -1), summed.argmax(1))
    hit = top1 == labels[:, None]
    first = hit.argmax(1)
    any_hit = hit.any(1) & labelled
    out["oracle"] = (np.where(any_hit, first, -1), np.where(any_hit, labels, np.where(labelled, top1[:, centre], -1)))
    return out


@dataclass
class Search:
    """The per-image table (one row per image and policy) and the accuracy of each policy."""

    table: pd.DataFrame
    summary: pd.DataFrame


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaNs when n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(correct), int(n)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_table(table: pd.DataFrame, by: str = "policy") -> pd.DataFrame:
    """Accuracy with a 95% Wilson interval per ``by`` group, over rows whose ``correct`` is defined."""
    rows = []
    for key, group in table.groupby(by, sort=False):
        scored = group["correct"].dropna().astype(bool)
        low, high = wilson_interval(int(scored.sum()), len(scored))
        rows.append({by: key, "n": len(scored), "correct": int(scored.sum()),
                     "accuracy": scored.mean() if len(scored) else float("nan"), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def visual_search(store: str | Path | LikelihoodStore, chunk: int = 128) -> Search:
    """Every policy on every finished, readable image of a likelihood store; accuracy per policy."""
    lk = store if isinstance(store, LikelihoodStore) else LikelihoodStore.open(store)
    group, fixations = lk.group, lk.fixations
    images = lk.images()
    usable = np.flatnonzero(images["done"].to_numpy() & (images["status"].to_numpy() == "ok"))
    if len(usable) == 0:
        raise NeuroprobeError(f"{lk.path} has no finished readable image; run 'search' to fill it")
    rows_, cols = fixations.shape
    centre = fixations.center_index
    parts = []
    for start in range(0, len(usable), chunk):
        rows = usable[start:start + chunk]
        labels = group["target"].oindex[rows]
        choices = policy_choices(group["log_probability"].oindex[rows].astype(np.float32).reshape(len(rows), -1,
                                                                                              group["log_probability"].shape[-1]),
                                 group["top1"].oindex[rows].reshape(len(rows), -1),
                                 group["top1_logit"].oindex[rows].reshape(len(rows), -1), labels, centre)
        for policy, (fixation, prediction) in choices.items():
            correct = np.where(labels >= 0, prediction == labels, np.nan)
            if policy == "oracle":
                correct = np.where(labels >= 0, fixation >= 0, np.nan)
            parts.append(pd.DataFrame({
                "image": rows, "path": images["path"].to_numpy()[rows], "target": labels, "policy": policy,
                "fixation": fixation, "fy": np.where(fixation >= 0, fixation // cols, -1),
                "fx": np.where(fixation >= 0, fixation % cols, -1), "prediction": prediction, "correct": correct}))
    table = pd.concat(parts, ignore_index=True)
    table["policy"] = pd.Categorical(table["policy"], categories=POLICIES, ordered=True)
    table = table.sort_values(["policy", "image"], kind="stable").reset_index(drop=True)
    table["policy"] = table["policy"].astype(str)
    settings = lk.settings
    summary = accuracy_table(table)
    summary.insert(0, "layout", fixations.layout)
    summary.insert(1, "view", settings["view"]["kind"])
    summary.insert(2, "fixations", len(fixations))
    return Search(table, summary)
