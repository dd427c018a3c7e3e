"""The two jobs of the retina tools, as the CLI runs them: visual search and active vision, to CSV + PNG."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy.special import expit

from ..data import ImageDataset, Manifest, load_image, read_manifest
from ..engine.device import resolve_device
from ..engine.distributed import Distributed
from ..engine.loader import image_batches
from ..engine.provenance import model_of
from ..errors import NeuroprobeError
from ..maps.methods import attribute
from ..models.loading import LoadedModel, load_model
from ..progress import track
from ..store.kinds import described, store_kind
from .active import saccades
from .dorsal import DorsalTraining, Glimpse, GlimpseEncoder, cross_validated_maps, save_dorsal, training_meta
from .figures import accuracy_figure, dorsal_figure, likelihood_figure, views_on_image
from .likelihood import LikelihoodStore, ViewSettings, likelihood_maps
from .search import accuracy_table, visual_search

log = logging.getLogger(__name__)
METHOD_NAMES = {"gradcam": "Grad-CAM", "dff": "DFF"}


def _save(fig: plt.Figure, path: Path, state=None) -> None:
    if state is not None:
        from ..store.completeness import mark_figure

        mark_figure(fig, state)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def search_report(model: str | LoadedModel, data: str | Path | Manifest, out: str | Path, *, examples: int = 4,
                  attribution: Sequence[str] = ("gradcam", "dff"), **options) -> pd.DataFrame | None:
    """Likelihood store, per-image search table, accuracy summary and figures in ``out``; returns the summary
    (None on the ranks other than 0 of a torchrun job, which only compute their share of the store).

    ``options`` go to :func:`likelihood_maps` (layout, n, radius, view, padding, batch_size, device, ...).
    """
    out = Path(out)
    kind = store_kind(out)
    if kind:  # the folder holds the likelihood store, tables and figures: never inside another store
        raise NeuroprobeError(f"{out} is {described(kind)}; search --out takes a folder for likelihood.zarr, tables "
                              "and figures: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, options.pop("weights", None))
    manifest = data if isinstance(data, Manifest) else read_manifest(data)
    path = likelihood_maps(loaded, manifest, out / "likelihood.zarr", **options)
    if Distributed.from_environment().rank != 0:  # under torchrun, rank 0 scores the finished store alone
        return None
    store = LikelihoodStore.open(path)
    result = visual_search(store)
    result.table.to_csv(out / "search.csv", index=False)
    result.summary.to_csv(out / "summary.csv", index=False)
    settings = store.settings["view"]
    _save(accuracy_figure(result.summary, title=f"{loaded.name}: {store.fixations.layout} layout, "
                          f"{len(store.fixations)} {settings['kind']} views, {result.summary.n.max()} images"),
          out / "accuracy.png")
    shown = _example_rows(result.table, examples)
    if len(shown):
        _example_figures(loaded, manifest, store, result.table, shown, out, attribution, options.get("device"))
    return result.summary


def _example_rows(table: pd.DataFrame, examples: int) -> np.ndarray:
    """Labelled images for the figures: the first ones whose centre view is wrong but some view is right
    (where search matters), then the first others."""
    centre = table[table.policy == "centre"].set_index("image")
    oracle = table[table.policy == "oracle"].set_index("image")
    labelled = centre.index[centre.target >= 0]
    helped = [i for i in labelled if centre.at[i, "correct"] == 0 and oracle.at[i, "correct"] == 1]
    rest = [i for i in labelled if i not in set(helped)]
    return np.array((helped[: (examples + 1) // 2] + rest)[:examples], dtype=np.int64)


def _example_figures(loaded: LoadedModel, manifest: Manifest, store: LikelihoodStore, table: pd.DataFrame,
                     rows: np.ndarray, out: Path, attribution: Sequence[str], device: str | None) -> None:
    dev = resolve_device(device)
    module = loaded.module.to(dev).eval()
    dataset = ImageDataset(manifest, loaded.preprocessing)
    images = torch.stack([dataset[int(r)][1] for r in rows])
    labels = store.group["target"].oindex[rows]
    lp = store.group["log_probability"].oindex[rows].astype(np.float32)
    likelihood = np.exp(lp[np.arange(len(rows)), :, :, labels])
    x = loaded.preprocessing.normalize(images.to(dev))
    maps = {name: attribute(module, x, torch.as_tensor(labels, device=dev), name).map[:, 0].detach().cpu().numpy()
            for name in attribution}
    pictures = [img.permute(1, 2, 0).numpy() for img in images]
    label_rows = table[table.policy == "label"].set_index("image")
    names = manifest.table["class_name"].iloc[rows] if "class_name" in manifest.table.columns else labels
    titles = [f"{Path(p).name}\n{t}, centre view {'right' if c else 'wrong'}"
              for p, t, c in zip(manifest.table["path"].iloc[rows], names,
                                 table[table.policy == "centre"].set_index("image").loc[rows, "correct"], strict=True)]
    _save(likelihood_figure(pictures, likelihood, store.fixations,
                            {METHOD_NAMES.get(m, m): v for m, v in maps.items()}, titles),
          out / "likelihood_maps.png")
    settings = ViewSettings(**{k: v for k, v in store.settings["view"].items()})
    source = settings.source(loaded.preprocessing)
    first = int(rows[0])
    picture = source.to_uint8(_load(manifest, first))
    best = int(label_rows.at[first, "fixation"])
    centre = store.fixations.center_index
    centers, radii = store.fixations.flat()
    pick = [centre, best]
    views = settings.views(picture[None].float() / 255, (centers[pick], radii[pick]))[0]
    _save(views_on_image(picture.permute(1, 2, 0).numpy(), store.fixations, likelihood[0],
                         [v.permute(1, 2, 0).clamp(0, 1).numpy() for v in views],
                         ["centre view", "label-driven best view"],
                         f"{Path(manifest.table['path'].iat[first]).name}: fields coloured by p(label)", pick,
                         kind=settings.kind),
          out / "views.png")


def _load(manifest: Manifest, row: int):
    return load_image(manifest.absolute(row))


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


def saccade_report(likelihood: str | Path, data: str | Path | Manifest, out: str | Path, *, folds: int = 5,
                   seed: int = 0, count: int = 3, candidates: int = 5, glimpse: int = 64,
                   training: DorsalTraining | None = None, batch_size: int = 32, device: str | None = None,
                   examples: int = 4, allow_incomplete: bool = False) -> pd.DataFrame:
    """Cross-validated dorsal networks on a likelihood store and the active-vision evaluation; returns the summary.

    An incomplete likelihood store is refused unless ``allow_incomplete`` (tables and titles then say so).

    Writes dorsal_fold<k>.pt (``weights_only`` loadable), active_vision.csv (per image and policy),
    summary.csv (accuracy, 95% interval, difference from the centre view with its interval, share of the
    centre -> oracle gap closed) and figures.
    """
    out = Path(out)
    from ..store.completeness import mark_table, require_complete

    store = LikelihoodStore.open(likelihood)  # one line for a path that is not a likelihood store
    state = require_complete(likelihood, allow_incomplete)
    manifest = data if isinstance(data, Manifest) else read_manifest(data)
    if manifest.fingerprint() != store.settings["data"]:
        raise NeuroprobeError(f"--data is not the image table {likelihood} was made from; pass that table")
    training = training or DorsalTraining(seed=seed)
    images = store.images()
    usable = np.flatnonzero(images["done"].to_numpy() & (images["status"].to_numpy() == "ok")
                            & (images["target"].to_numpy() >= 0))
    if len(usable) < folds:
        raise NeuroprobeError(f"{likelihood} has {len(usable)} finished labelled images; cross-validation needs at "
                              f"least --folds ({folds})")
    out.mkdir(parents=True, exist_ok=True)
    fixations, centre = store.fixations, store.fixations.center_index
    backbone = model_of(likelihood)
    dev = resolve_device(device)
    encoder = GlimpseEncoder(backbone, Glimpse(glimpse), device=dev)
    settings = ViewSettings(**store.settings["view"])
    features = glimpse_features(encoder, manifest, usable, settings.source(backbone.preprocessing), batch_size, dev)
    group = store.group
    labels = group["target"].oindex[usable]
    top1 = group["top1"].oindex[usable]
    if training.target == "correct":
        targets = top1 == labels[:, None, None]
    else:
        targets = np.exp(np.stack([group["log_probability"].oindex[[r]][0][..., t].astype(np.float32)
                                   for r, t in zip(usable, labels, strict=True)]))
    targets = torch.as_tensor(targets, dtype=torch.float32)
    logits, fold, nets = cross_validated_maps(features, targets, fixations.shape, folds, training)
    meta = training_meta(training, encoder.glimpse, encoder.layer, backbone, fixations.to_attrs())
    for k, net in enumerate(nets):
        save_dorsal(net, out / f"dorsal_fold{k}.pt", meta | {"fold": k, "folds": folds, "l2": float(net.l2),
                                                               "held_out": usable[fold == k].tolist()})
    table = _evaluate(group, usable, labels, logits, targets.numpy(), fold, centre, count, candidates, seed)
    table.insert(1, "path", images["path"].to_numpy()[table["image"].to_numpy()])
    summary = _summary(table)
    mark_table(table, state).to_csv(out / "active_vision.csv", index=False)
    summary = mark_table(summary, state)
    summary.to_csv(out / "summary.csv", index=False)
    _save(accuracy_figure(summary, names={}, title=f"active vision, {folds}-fold cross-validated, "
                                                    f"{len(usable)} images, {fixations.layout} layout"),
          out / "accuracy.png", state)
    shown = usable[:examples]
    source = settings.source(backbone.preprocessing)
    pictures = [source.to_uint8(_load(manifest, int(r))).permute(1, 2, 0).numpy() for r in shown]
    dorsal_rows = table[table.policy == "dorsal"].set_index("image")
    _save(dorsal_figure(pictures, expit(logits[:examples]), targets.numpy()[:examples], fixations,
                        [int(dorsal_rows.at[r, "fixation_1"]) for r in shown],
                        [f"{Path(images['path'].iat[r]).name} (fold {fold[i]})" for i, r in enumerate(shown)],
                        kind=settings.kind),
          out / "dorsal_maps.png", state)
    return summary


def glimpse_features(encoder: GlimpseEncoder, manifest: Manifest, rows: np.ndarray, source, batch_size: int,
                     dev: torch.device) -> torch.Tensor:
    """Backbone features (len(rows), D) of each image's glimpse, decoded as the likelihood store's source."""
    batches = [rows[i:i + batch_size].tolist() for i in range(0, len(rows), batch_size)]
    parts = []
    for batch in track(image_batches(manifest, source, batches, dev, workers=0), "saccade (glimpse features)",
                       "batch", total=len(batches)):
        if not batch.ok.all():
            bad = [r for r, ok in zip(batch.rows, batch.ok, strict=True) if not ok]
            raise NeuroprobeError(f"image row(s) {bad} were readable when the likelihood store was made and are not now")
        parts.append(encoder(batch.images.to(dev)).cpu())
    return torch.cat(parts)


VARIANTS = {   # name: (score map, saccade options)
    "dorsal": ("dorsal", dict(count=1, combine="last", stop=False, revisit_centre=True)),
    "dorsal+evidence": ("dorsal", dict(combine="product", stop=True)),
    "dorsal+igub": ("dorsal", dict(combine="product", stop=True, refine="igub")),
    "prior+evidence": ("prior", dict(combine="product", stop=True)),
    "random+evidence": ("random", dict(combine="product", stop=True)),
    "perfect dorsal+evidence": ("actual", dict(combine="product", stop=True)),
}


def _evaluate(group, usable: np.ndarray, labels: np.ndarray, logits: np.ndarray, actual: np.ndarray,
              fold: np.ndarray, centre: int, count: int, candidates: int, seed: int,
              chunk: int = 128) -> pd.DataFrame:
    """Every variant of the loop on every usable image (chunk by chunk), as a tidy table."""
    n = len(usable)
    flat_logits = logits.reshape(n, -1)
    flat_actual = actual.reshape(n, -1).astype(np.float64)
    prior = np.empty_like(flat_actual)
    for k in np.unique(fold):   # the mean outcome map of the training folds: a fixed, image-blind policy
        prior[fold == k] = flat_actual[fold != k].mean(0)
    maps = {"dorsal": flat_logits, "prior": prior, "actual": flat_actual,
            "random": np.random.default_rng(seed).random(flat_logits.shape)}
    records = []
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        lp = group["log_probability"].oindex[usable[part]].astype(np.float32)
        lp = lp.reshape(len(lp), -1, lp.shape[-1])
        y = labels[part]
        top1 = group["top1"].oindex[usable[part]].reshape(len(lp), -1)
        base = {"image": usable[part], "target": y, "fold": fold[part]}
        records.append(pd.DataFrame(base | {"policy": "centre", "prediction": top1[:, centre],
                                            "saccades": 0, "fixation_1": -1}))
        for name, (source, options) in VARIANTS.items():
            options = {"count": count, "candidates": candidates} | options
            prediction, path, confidence = saccades(lp, maps[source][part], centre, **options)
            frame = pd.DataFrame(base | {"policy": name, "prediction": prediction,
                                         "saccades": (path >= 0).sum(1), "confidence": confidence})
            for step in range(path.shape[1]):
                frame[f"fixation_{step + 1}"] = path[:, step]
            records.append(frame)
        records.append(pd.DataFrame(base | {"policy": "oracle", "prediction": np.where(
            (top1 == y[:, None]).any(1), y, top1[:, centre]), "saccades": -1, "fixation_1": -1}))
    table = pd.concat(records, ignore_index=True)
    table["correct"] = table["prediction"] == table["target"]
    order = ["centre", *VARIANTS, "oracle"]
    table["policy"] = pd.Categorical(table["policy"], categories=order, ordered=True)
    table = table.sort_values(["policy", "image"], kind="stable").reset_index(drop=True)
    table["policy"] = table["policy"].astype(str)
    return table


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per policy with its interval, the paired difference from the centre view, the gap closed."""
    summary = accuracy_table(table)
    centre = table[table.policy == "centre"].sort_values("image")["correct"].to_numpy()
    oracle = table[table.policy == "oracle"].sort_values("image")["correct"].to_numpy()
    gap = oracle.mean() - centre.mean()
    diffs = []
    for policy in summary["policy"]:
        outcome = table[table.policy == policy].sort_values("image")["correct"].to_numpy()
        mean, low, high = paired_difference(outcome, centre)
        diffs.append({"vs_centre": mean, "vs_centre_low": low, "vs_centre_high": high,
                      "gap_closed": mean / gap if gap > 0 else float("nan"),
                      "mean_saccades": table[table.policy == policy]["saccades"].clip(lower=0).mean()})
    return pd.concat([summary, pd.DataFrame(diffs)], axis=1)
