"""``saccade``'s job: dorsal maps from one or more likelihood stores, cross-validated, and the active-vision test.

Every dorsal choice is scored the same way: k folds over all usable images of all stores; an image's
map comes from a model that never saw it (``saliency`` trains nothing). Each map drives the same three
loops (:data:`LOOPS`), as do the image-blind baselines (the training folds' mean outcome map, a random
map) and the perfect map (the true outcomes), so every comparison is paired on the same images.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.special import expit

from ..data import Manifest, load_image, read_manifest
from ..engine.device import resolve_device
from ..engine.loader import image_batches
from ..engine.provenance import model_of
from ..errors import NeuroprobeError
from ..progress import Progress, track
from .active import saccades
from .dorsal import DorsalTraining, Glimpse, GlimpseEncoder, fit_dorsal, fold_of, save_dorsal, training_meta
from .dorsal_conv import ConvTraining, fit_conv
from .fields import field_weights, mirror_index
from .figures import accuracy_figure, active_vision_figure, dorsal_maps_figure, save_figure
from .likelihood import LikelihoodStore, ViewSettings
from .saliency import SaliencyDorsal
from .search import accuracy_table

log = logging.getLogger(__name__)
DORSAL_CHOICES = ("saliency", "conv", "linear")
BASELINES = ("prior", "random", "perfect")
LOOPS = {   # suffix: saccade options. "": one saccade, class of that view alone (the seed's Figure 7)
    "": dict(count=1, combine="last", stop=False, revisit_centre=True),
    "+evidence": dict(combine="product", stop=True),
    "+igub": dict(combine="product", stop=True, refine="igub"),
}


@dataclass(frozen=True)
class Augmentation:
    """A training copy of an image: left-right flipped or not, glimpse centred at ``shift`` (normalized x, y)."""

    flip: bool = False
    shift: tuple[float, float] = (0.0, 0.0)


def augmentations(flip: bool = True, shift: float = 0.08) -> list[Augmentation]:
    """The plain glimpse first, then shifts by +/- ``shift`` along x and y, each also flipped when ``flip``."""
    shifts = [(0.0, 0.0)] + ([(shift, 0.0), (-shift, 0.0), (0.0, shift), (0.0, -shift)] if shift > 0 else [])
    return [Augmentation(f, s) for f in ((False, True) if flip else (False,)) for s in shifts]


@dataclass
class Images:
    """The usable images of one or more likelihood stores, in one order: store index, row, label, outcomes."""

    stores: list[LikelihoodStore]
    manifests: list[Manifest]
    store: np.ndarray
    row: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def segments(self):
        """(store index, positions in this order, rows of that store) for each store."""
        for k in range(len(self.stores)):
            where = np.flatnonzero(self.store == k)
            if len(where):
                yield k, where, self.row[where]

    def paths(self) -> np.ndarray:
        out = np.empty(len(self), dtype=object)
        for k, where, rows in self.segments():
            out[where] = self.stores[k].images()["path"].to_numpy()[rows]
        return out

    def outcomes(self, target: str) -> np.ndarray:
        """(n, rows, cols): ventral top-1 right (``correct``) or p(label | view) (``probability``) at each fixation."""
        out = np.empty((len(self), *self.stores[0].fixations.shape), dtype=np.float32)
        for k, where, rows in self.segments():
            group = self.stores[k].group
            if target == "correct":
                out[where] = group["top1"].oindex[rows] == self.label[where][:, None, None]
            else:
                for i, r in zip(where, rows, strict=True):
                    out[i] = np.exp(group["log_probability"].oindex[[r]][0][..., self.label[i]].astype(np.float32))
        return out


def open_images(likelihood: Sequence[str | Path], data: Sequence[str | Path | Manifest],
                allow_incomplete: bool) -> tuple[Images, list]:
    """The likelihood stores (same model, layout and views) and their image tables; the completeness states."""
    from ..store.completeness import require_complete

    if len(likelihood) != len(data):
        raise NeuroprobeError(f"{len(likelihood)} likelihood store(s) but {len(data)} image table(s); pass one --data "
                              "per --likelihood, in the same order")
    stores, manifests, states, parts = [], [], [], []
    for k, (path, table) in enumerate(zip(likelihood, data, strict=True)):
        store = LikelihoodStore.open(path)
        states.append(require_complete(path, allow_incomplete))
        manifest = table if isinstance(table, Manifest) else read_manifest(table)
        if manifest.fingerprint() != store.settings["data"]:
            raise NeuroprobeError(f"--data {table} is not the image table {path} was made from; pass that table")
        if stores:
            first = stores[0]
            same = (store.fixations.to_attrs() == first.fixations.to_attrs()
                    and store.settings["view"] == first.settings["view"]
                    and store.settings.get("model") == first.settings.get("model"))
            if not same:
                raise NeuroprobeError(f"{path} differs from {first.path} in model, layout or views; combine only "
                                      "likelihood stores made by the same 'search' options")
        images = store.images()
        usable = np.flatnonzero(images["done"].to_numpy() & (images["status"].to_numpy() == "ok")
                                & (images["target"].to_numpy() >= 0))
        stores.append(store)
        manifests.append(manifest)
        parts.append((np.full(len(usable), k), usable, images["target"].to_numpy()[usable]))
    store_index, rows, labels = (np.concatenate(p) for p in zip(*parts, strict=True))
    seen: dict[str, int] = {}
    for k, manifest in enumerate(manifests):           # one image in two stores would be scored by a model that saw it
        for path in (str(manifest.absolute(int(r))) for r in rows[store_index == k]):
            if seen.setdefault(path, k) != k:
                raise NeuroprobeError(f"{path} is in both {stores[seen[path]].path} and {stores[k].path}; combine "
                                      "likelihood stores of different images")
    return Images(stores, manifests, store_index, rows, labels.astype(np.int64)), states


def _decoded(images: Images, source, batch_size: int, dev: torch.device, desc: str):
    """(positions in the images' order, uint8 batch on ``dev``) for every usable image, store by store."""
    for k, where, rows in images.segments():
        batches = [rows[i:i + batch_size].tolist() for i in range(0, len(rows), batch_size)]
        done = 0
        for batch in track(image_batches(images.manifests[k], source, batches, dev, workers=0), desc, "batch",
                           total=len(batches)):
            _check_readable(batch)
            yield where[done:done + len(batch.rows)], batch.images.to(dev)
            done += len(batch.rows)


def glimpse_inputs(encoder: GlimpseEncoder, images: Images, augs: Sequence[Augmentation], source, batch_size: int,
                   dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's glimpse under every augmentation, as the heads read it: (n, A, 6, h, w) class evidence per
    cell (the conv head's input) and (n, A, C) pooled features (the linear head's)."""
    evidence = pooled = None
    for where, batch in _decoded(images, source, batch_size, dev, "saccade (glimpse features)"):
        maps = [encoder.maps(batch, a.shift, a.flip) for a in augs]
        e = torch.stack([encoder.to_evidence(m).cpu() for m in maps], 1)
        p = torch.stack([m.mean((2, 3)).cpu() for m in maps], 1)
        if evidence is None:
            evidence = torch.empty((len(images), *e.shape[1:]))
            pooled = torch.empty((len(images), *p.shape[1:]))
        evidence[where], pooled[where] = e, p
    return evidence, pooled


def saliency_scores(dorsal: SaliencyDorsal, images: Images, source, batch_size: int,
                    dev: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(n, rows, cols) fixation scores and (n, s, s) glimpse maps of the untrained saliency dorsal map."""
    scores = maps = None
    for where, batch in _decoded(images, source, batch_size, dev, "saccade (saliency maps)"):
        s, m = dorsal(batch)
        if scores is None:
            scores = np.empty((len(images), *s.shape[1:]), dtype=np.float32)
            maps = np.empty((len(images), *m.shape[1:]), dtype=np.float32)
        scores[where], maps[where] = s.numpy(), m.numpy()
    return scores, maps


def _check_readable(batch) -> None:
    if not batch.ok.all():
        bad = [r for r, ok in zip(batch.rows, batch.ok, strict=True) if not ok]
        raise NeuroprobeError(f"image row(s) {bad} were readable when the likelihood store was made and are not now")


def cross_validate(n: int, folds: int, seed: int, fit, score, name: str = "dorsal") -> tuple[np.ndarray, list]:
    """``score(fit(training positions), held-out positions)`` for each fold, stacked in image order; the models."""
    fold = fold_of(n, folds, seed)
    out, models = None, []
    with Progress(folds, f"saccade ({name})", "fold") as meter:     # the heads' own meters nest inside, unseen
        for k in range(folds):
            held = np.flatnonzero(fold == k)
            model = fit(np.flatnonzero(fold != k))
            scores = score(model, held)
            out = np.empty((n, *scores.shape[1:]), dtype=np.float32) if out is None else out
            out[held] = scores
            models.append(model)
            log.info("%s fold %d/%d: trained on %d images, scored %d", name, k + 1, folds, n - len(held), len(held))
            meter.update(1)
    return out, models


def _flip_averaged(net, inputs: torch.Tensor, mirror: np.ndarray | None) -> np.ndarray:
    """Logits of the plain glimpse (input [:, 0]), averaged with the mirrored logits of the flipped one when there is one."""
    with torch.no_grad():
        plain = net(inputs[:, 0].float()).flatten(1)
        if mirror is None:
            return plain.numpy()
        flipped = net(inputs[:, 1].float()).flatten(1)[:, mirror]
    return ((plain + flipped) / 2).numpy()


def saccade_report(likelihood: str | Path | Sequence[str | Path], data: str | Path | Manifest | Sequence, out: str | Path,
                   *, dorsal: Sequence[str] = DORSAL_CHOICES, folds: int = 5, seed: int = 0, count: int = 3,
                   candidates: int = 5, glimpse: int = 112, glimpse_view: str = "crop", glimpse_color: bool = True,
                   flip: bool = True,
                   shift: float = 0.08, saliency_method: str = "gradcam", saliency_size: int = 112,
                   training: DorsalTraining | None = None, conv: ConvTraining | None = None, batch_size: int = 32,
                   device: str | None = None, examples: int = 4, allow_incomplete: bool = False) -> pd.DataFrame:
    """Cross-validated dorsal maps (``dorsal``: saliency, conv, linear) and the active-vision evaluation; the summary.

    ``likelihood`` one store or several made by the same ``search`` options, each with its image table in
    ``data`` (same order); their usable images are pooled into one k-fold split. ``flip`` doubles the
    training images (a flipped image has the mirrored target map); ``shift`` moves the conv head's glimpse.
    Writes dorsal_<choice>_fold<k>.pt (``weights_only`` loadable), dorsal_scores.csv (every image's score of every
    fixation by every map, with its fold), active_vision.csv (per image and policy), summary.csv,
    accuracy.png, active_vision.png (paired differences) and dorsal_maps.png.
    """
    from ..store.completeness import mark_table

    unknown = sorted(set(dorsal) - set(DORSAL_CHOICES))
    if unknown or not dorsal:
        raise NeuroprobeError(f"unknown --dorsal {', '.join(unknown) or '(none)'}; choose from {', '.join(DORSAL_CHOICES)}")
    paths = [likelihood] if isinstance(likelihood, (str, Path)) else list(likelihood)
    tables = [data] if isinstance(data, (str, Path, Manifest)) else list(data)
    images, states = open_images(paths, tables, allow_incomplete)
    state = next((s for s in states if not s.complete), states[0])   # one incomplete store marks every output
    if len(images) < folds:
        raise NeuroprobeError(f"the likelihood store(s) have {len(images)} finished labelled images; cross-validation "
                              f"needs at least --folds ({folds})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    training = training or DorsalTraining(seed=seed)
    conv = conv or ConvTraining(seed=seed)
    first = images.stores[0]
    fixations, centre = first.fixations, first.fixations.center_index
    settings = ViewSettings(**first.settings["view"])
    backbone = model_of(paths[0])
    dev = resolve_device(device)
    source = settings.source(backbone.preprocessing)
    targets = images.outcomes(training.target)
    correct = images.outcomes("correct") if training.target != "correct" else targets
    mirror = mirror_index(fixations) if flip else None
    folds_of = fold_of(len(images), folds, seed)
    per_fold = len(images) - np.bincount(folds_of)
    scores, shown = {}, {}
    if "saliency" in dorsal:
        sal = SaliencyDorsal(backbone, fixations, settings.kind, Glimpse(saliency_size, kind="crop", color=True),
                             saliency_method, dev)
        raw, shown["saliency"] = saliency_scores(sal, images, source, batch_size, dev)
        scores["saliency"] = raw.reshape(len(images), -1)
    trained = [d for d in dorsal if d != "saliency"]
    if trained:
        encoder = GlimpseEncoder(backbone, Glimpse(glimpse, kind=glimpse_view, color=glimpse_color), device=dev)
        scores |= _train_heads(trained, encoder, images, targets, fixations, settings.kind, folds_of, out, mirror,
                               shift, training, conv, source, batch_size, dev, training_meta(
                                   training, encoder.glimpse, encoder.layer, backbone, fixations.to_attrs()))
        for name in trained:
            shown[name] = expit(scores[name]).reshape(len(images), *fixations.shape)
    scores = {name: scores[name] for name in dorsal}                # the caller's order, in tables and figures
    table = evaluate(images, scores, correct.reshape(len(images), -1), folds_of, centre, count, candidates, seed)
    table.insert(2, "path", images.paths()[table["position"].to_numpy()])
    summary = summarize(table)
    summary.insert(len(summary.columns), "training_images_per_fold", float(per_fold.mean()))
    summary = mark_table(summary, state)
    mark_table(table, state).to_csv(out / "active_vision.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    log.info("dorsal training: %s images per fold (%s with flips)", per_fold.tolist(),
             (per_fold * (2 if flip else 1)).tolist())
    title = (f"active vision, {folds}-fold cross-validated, {len(images)} images, {fixations.layout} layout, "
             f"{settings.kind} views")
    save_figure(active_vision_figure(summary, title), out / "active_vision.png", state)
    save_figure(_accuracy_bars(summary, title), out / "accuracy.png", state)
    _score_table(images, scores, folds_of, fixations.shape).to_csv(out / "dorsal_scores.csv", index=False)
    shown_rows = _examples(table, examples)
    if len(shown_rows):
        pictures = [_picture(images, int(i), source) for i in shown_rows]
        chosen = {name: table[(table.policy == name)].set_index("position").loc[shown_rows, "fixation_1"].to_numpy()
                  for name in dorsal}
        dorsal_maps = {name: _for_figure(name, shown[name][shown_rows]) for name in dorsal}
        titles = [f"{Path(str(p)).name} (fold {folds_of[i]})" for i, p in zip(shown_rows, images.paths()[shown_rows],
                                                                              strict=True)]
        save_figure(dorsal_maps_figure(pictures, dorsal_maps, correct[shown_rows], fixations, chosen, titles,
                                       kind=settings.kind), out / "dorsal_maps.png", state)
    return summary


def _accuracy_bars(summary: pd.DataFrame, title: str):
    """Accuracy of every map x loop with Wilson intervals; the centre view and the oracle as reference lines."""
    fig = accuracy_figure(summary[summary["map"] != ""], column="map", names={}, hue="loop", title=title)
    fig.set_size_inches(9, 3.6)
    ax = fig.axes[0]
    for policy, style in (("centre", ":"), ("oracle", "--")):
        level = float(summary.loc[summary.policy == policy, "accuracy"].iat[0])
        ax.axhline(level, color="grey", ls=style, lw=1, label=f"{policy} {level:.3f}")
    ax.legend(fontsize=7, title="loop", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _score_table(images: Images, scores: dict[str, np.ndarray], fold: np.ndarray, shape) -> pd.DataFrame:
    """Every dorsal score, tidy: one row per image, map and fixation, with the fold that held the image out."""
    rows, cols = np.unravel_index(np.arange(shape[0] * shape[1]), shape)
    parts = []
    for name, values in scores.items():
        n, f = values.shape
        parts.append(pd.DataFrame({"store": np.repeat(images.store, f), "image": np.repeat(images.row, f),
                                   "fold": np.repeat(fold, f), "map": name, "fixation": np.tile(np.arange(f), n),
                                   "fy": np.tile(rows, n), "fx": np.tile(cols, n), "score": values.reshape(-1)}))
    return pd.concat(parts, ignore_index=True)


def _examples(table: pd.DataFrame, examples: int) -> np.ndarray:
    """Images for the figure: first those whose centre view is wrong but some view is right (where the dorsal map
    matters), then the first others."""
    centre = table[table.policy == "centre"].set_index("position")["correct"]
    oracle = table[table.policy == "oracle"].set_index("position")["correct"]
    helped = [p for p in centre.index if not centre[p] and oracle[p]]
    rest = [p for p in centre.index if p not in set(helped[:(examples + 1) // 2])]
    return np.array((helped[:(examples + 1) // 2] + rest)[:examples], dtype=np.int64)


def _train_heads(trained: Sequence[str], encoder: GlimpseEncoder, images: Images, targets: np.ndarray, fixations,
                 view_kind: str, fold: np.ndarray, out: Path, mirror: np.ndarray | None, shift: float,
                 training: DorsalTraining, conv: ConvTraining, source, batch_size: int, dev: torch.device,
                 meta: dict) -> dict[str, np.ndarray]:
    """Cross-validated (n, F) logits of the trained heads (``linear``, ``conv``), their fold files written to ``out``."""
    folds, seed = int(fold.max()) + 1, training.seed
    augs = augmentations(mirror is not None, shift if "conv" in trained else 0.0)
    evidence, pooled = glimpse_inputs(encoder, images, augs, source, batch_size, dev)
    aug_targets = torch.as_tensor(np.stack([_augmented_target(targets, a, mirror, fixations.shape) for a in augs], 1))
    plain_flip = [0] + ([augs.index(Augmentation(True))] if mirror is not None else [])
    flip = mirror is not None
    scores = {}
    if "linear" in trained:
        pooled = pooled[:, plain_flip]                                           # (n, 1 or 2, C)
        scores["linear"], nets = cross_validate(
            len(images), folds, seed,
            lambda rows: fit_dorsal(pooled[rows], aug_targets[rows][:, plain_flip], fixations.shape, training),
            lambda net, held: _flip_averaged(net, pooled[held], mirror), "linear head")
        for k, net in enumerate(nets):
            save_dorsal(net, out / f"dorsal_linear_fold{k}.pt", meta | _fold_meta(k, folds, images, fold)
                        | {"l2": float(net.l2), "flip": flip})
    if "conv" in trained:
        glimpse = encoder.glimpse
        fields = torch.stack([field_weights(fixations, view_kind, evidence.shape[-2:], glimpse.kind, a.shift,
                                            rs_min=glimpse.rs_min, rs_max=glimpse.rs_max) for a in augs])
        scores["conv"], nets = cross_validate(
            len(images), folds, seed,
            lambda rows: fit_conv(evidence[rows], aug_targets[rows], fields, fixations.shape, conv),
            lambda net, held: _flip_averaged(net, evidence[held][:, plain_flip], mirror), "conv head")
        for k, net in enumerate(nets):
            save_dorsal(net, out / f"dorsal_conv_fold{k}.pt", meta | _fold_meta(k, folds, images, fold)
                        | {"epochs": int(net.epochs), "flip": flip, "shift": shift, "conv": conv.__dict__})
    return scores


def _augmented_target(targets: np.ndarray, aug: Augmentation, mirror: np.ndarray | None, shape) -> np.ndarray:
    """The target map of an augmented copy: the same map, or the mirrored one for a flipped image."""
    if not aug.flip:
        return targets
    flat = targets.reshape(len(targets), -1)[:, mirror]
    return flat.reshape(len(targets), *shape)


def _fold_meta(k: int, folds: int, images: Images, fold: np.ndarray) -> dict:
    held = fold == k
    return {"fold": k, "folds": folds, "held_out": images.row[held].tolist(),
            "held_out_store": images.store[held].tolist(), "training_images": int((~held).sum())}


def _for_figure(name: str, shown: np.ndarray) -> np.ndarray:
    """What a dorsal map looks like in the figure: predicted p(right) on the fixations, or the saliency map."""
    if name == "saliency":
        low, high = shown.min((1, 2), keepdims=True), shown.max((1, 2), keepdims=True)
        return (shown - low) / np.maximum(high - low, 1e-12)
    return shown


def _picture(images: Images, i: int, source) -> np.ndarray:
    k = int(images.store[i])
    return source.to_uint8(load_image(images.manifests[k].absolute(int(images.row[i])))).permute(1, 2, 0).numpy()


def evaluate(images: Images, dorsal_scores: dict[str, np.ndarray], correct: np.ndarray, fold: np.ndarray,
             centre: int, count: int, candidates: int, seed: int, chunk: int = 128) -> pd.DataFrame:
    """Every map x loop on every image (chunk by chunk), the centre view and the oracle, as a tidy table."""
    prior = np.empty_like(correct, dtype=np.float64)
    for k in np.unique(fold):   # the mean outcome map of the training folds: a fixed, image-blind policy
        prior[fold == k] = correct[fold != k].mean(0)
    maps = dict(dorsal_scores) | {"prior": prior, "random": np.random.default_rng(seed).random(correct.shape),
                                  "perfect": correct.astype(np.float64)}
    records = []
    for k, where, rows in images.segments():
        group = images.stores[k].group
        for start in range(0, len(rows), chunk):
            pos, part = where[start:start + chunk], rows[start:start + chunk]
            lp = group["log_probability"].oindex[part].astype(np.float32)
            lp = lp.reshape(len(lp), -1, lp.shape[-1])
            y = images.label[pos]
            top1 = group["top1"].oindex[part].reshape(len(lp), -1)
            base = {"position": pos, "store": k, "image": part, "target": y, "fold": fold[pos]}
            records.append(pd.DataFrame(base | {"policy": "centre", "map": "", "loop": "centre",
                                                "prediction": top1[:, centre], "saccades": 0, "fixation_1": -1}))
            for name, scores in maps.items():
                for suffix, options in LOOPS.items():
                    options = {"count": count, "candidates": candidates} | options
                    prediction, path, confidence = saccades(lp, scores[pos], centre, **options)
                    frame = pd.DataFrame(base | {"policy": name + suffix, "map": name, "loop": suffix[1:] or "saccade",
                                                 "prediction": prediction, "saccades": (path >= 0).sum(1),
                                                 "confidence": confidence})
                    for step in range(path.shape[1]):
                        frame[f"fixation_{step + 1}"] = path[:, step]
                    records.append(frame)
            records.append(pd.DataFrame(base | {"policy": "oracle", "map": "", "loop": "oracle", "prediction": np.where(
                (top1 == y[:, None]).any(1), y, top1[:, centre]), "saccades": -1, "fixation_1": -1}))
    table = pd.concat(records, ignore_index=True)
    table["correct"] = table["prediction"] == table["target"]
    order = ["centre", *[m + s for s in LOOPS for m in maps], "oracle"]
    table["policy"] = pd.Categorical(table["policy"], categories=order, ordered=True)
    table = table.sort_values(["policy", "position"], kind="stable").reset_index(drop=True)
    table["policy"] = table["policy"].astype(str)
    return table


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per policy with its interval; paired differences from the centre view and from the image-blind
    prior driving the same loop; the share of the centre -> perfect-map gap of the same loop closed."""
    summary = accuracy_table(table)
    first = table.drop_duplicates("policy").set_index("policy")
    outcome = {p: g.sort_values("position")["correct"].to_numpy() for p, g in table.groupby("policy", sort=False)}
    centre = outcome["centre"]
    rows = []
    for policy in summary["policy"]:
        loop, name = first.at[policy, "loop"], first.at[policy, "map"]
        suffix = "" if loop == "saccade" else f"+{loop}"
        mean, low, high = paired_difference(outcome[policy], centre)
        row = {"map": name, "loop": loop, "vs_centre": mean, "vs_centre_low": low, "vs_centre_high": high}
        if name:
            row |= dict(zip(("vs_prior", "vs_prior_low", "vs_prior_high"),
                            paired_difference(outcome[policy], outcome["prior" + suffix]), strict=True))
            gap = outcome["perfect" + suffix].mean() - centre.mean()
        else:
            gap = outcome["oracle"].mean() - centre.mean()
        row["gap_closed"] = mean / gap if gap > 0 else float("nan")
        row["mean_saccades"] = table[table.policy == policy]["saccades"].clip(lower=0).mean()
        rows.append(row)
    return pd.concat([summary, pd.DataFrame(rows)], axis=1)


def paired_difference(a: np.ndarray, b: np.ndarray, z: float = 1.959964) -> tuple[float, float, float]:
    """Difference of two paired proportions (mean of a - b over 0/1 outcomes) and its 95% interval.

    The interval is Bonett & Price's (2012) adjusted Wald interval for paired proportions: it adds one
    to each discordant count, so it stays honest when few (or no) images change outcome, where the
    plain Wald interval collapses to a point.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = len(a)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    gained, lost = int((a & ~b).sum()), int((~a & b).sum())
    p12, p21 = (gained + 1) / (n + 2), (lost + 1) / (n + 2)
    centre = p12 - p21
    half = z * np.sqrt(max(p12 + p21 - centre ** 2, 0.0) / (n + 2))
    return (gained - lost) / n, float(max(centre - half, -1.0)), float(min(centre + half, 1.0))
