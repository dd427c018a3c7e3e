"""Active vision: first glimpse at the centre, saccades chosen from a fixation map, evidence accumulated.

One loop, :func:`saccades`, for every policy that picks fixations from a score map (the dorsal network's,
a prior, a random one): per image, the belief starts as the centre view's log p(k | x0); each saccade
goes to the best-scored fixation not yet visited (or, with ``refine="igub"``, to the candidate of the
``candidates`` best with the largest IGUB under the current belief), and the belief becomes either the
new view's likelihood alone (``combine="last"``: the seed's Figure 7, where the ventral network classifies
the new view) or the renormalised product of the belief and the new view (``combine="product"``).
With ``stop=True`` the loop ends after the first saccade that does not raise the belief's confidence
(its largest probability); what that saccade saw is kept in the belief (a view seen is not unseen), or,
with ``keep_falling=False``, dropped (the loop answers with its most confident belief).
"""
from __future__ import annotations

import numpy as np

from .search import _logsumexp

REFINES = ("none", "igub")
COMBINES = ("product", "last")


def saccades(log_probability: np.ndarray, scores: np.ndarray, centre: int, *, count: int = 1,
             combine: str = "product", refine: str = "none", candidates: int = 5, stop: bool = True,
             revisit_centre: bool = False, keep_falling: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions (n,), fixation paths (n, count; -1 where the loop stopped) and final confidence (n,).

    ``log_probability`` (n, F, K) of every view; ``scores`` (n, F) of the fixation map (higher = look
    there). ``revisit_centre`` lets the first saccade stay at the centre (no eye movement).
    """
    if combine not in COMBINES or refine not in REFINES:
        raise ValueError(f"combine must be one of {COMBINES} and refine one of {REFINES}")
    n, fixations, _ = log_probability.shape
    rows = np.arange(n)
    belief = log_probability[:, centre].astype(np.float64)
    confidence = belief.max(1)
    visited = np.zeros((n, fixations), dtype=bool)
    visited[:, centre] = not revisit_centre
    active = np.ones(n, dtype=bool)
    path = np.full((n, count), -1, dtype=np.int64)
    for step in range(count):
        open_scores = np.where(visited, -np.inf, scores)
        if refine == "igub":
            cand = np.argsort(-open_scores, axis=1, kind="stable")[:, :candidates]
            views = log_probability[rows[:, None], cand].astype(np.float64)             # (n, m, K)
            joint = belief[:, None, :] + views
            q = np.exp(joint - _logsumexp(joint)[..., None])
            gain = np.where(q > 0, q * views, 0.0).sum(-1)
            gain = np.where(np.isfinite(open_scores[rows[:, None], cand]), gain, -np.inf)
            target = cand[rows, gain.argmax(1)]
        else:
            target = open_scores.argmax(1)
        view = log_probability[rows, target].astype(np.float64)
        new = belief + view if combine == "product" else view
        new = new - _logsumexp(new)[:, None]
        new_confidence = new.max(1)
        rising = new_confidence > confidence
        take = active if keep_falling or not stop else active & rising
        belief[take], confidence[take] = new[take], new_confidence[take]
        visited[rows[take], target[take]] = True
        path[take, step] = target[take]
        if stop:
            active = active & rising
    return belief.argmax(1), path, np.exp(confidence)
