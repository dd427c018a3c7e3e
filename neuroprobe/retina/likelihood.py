"""Likelihood maps: the model's class probabilities for every retinotopic view of every image, in a map store.

Layout (a map store, :mod:`neuroprobe.store.map_store`; resumable, one chunk per batch of images):

* ``log_probability`` (image, fy, fx, class) float16: log-softmax of every view. Stored as logs so that
  no probability underflows (float16 keeps 1e-3 relative precision of p, and p down to 1e-30 and
  below); ``exp`` gives the softmax. Summed logits over views rank classes as summed log-probabilities.
* ``top1`` (image, fy, fx) int64, ``top1_probability``, ``top1_logit``, ``logsumexp`` float32: each view's
  prediction in full precision (logit_k = log p_k + logsumexp).
* ``target`` (image) int64: the label column (-1 without one); ``images/`` and ``done`` as every map store.

The fixation geometry is in the group's ``fixations`` attribute (see :class:`Fixations`). Images are
decoded at ``source_scale`` x the model's resolution (the model's own resize/crop ratio), so that
small views are not upsampled from the 224 px crop; each view is ``view_size`` px (the model's input).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from ..data import MAX_PIXELS, Manifest, read_manifest
from ..engine.device import AMP_DTYPES, MEMORY_FORMATS, autocast, choose_memory_format, default_workers, resolve_device
from ..engine.distributed import Distributed
from ..engine.loader import image_batches
from ..engine.malloc import keep_freed_memory_on_cpu
from ..engine.map_jobs import start_map_job
from ..errors import NeuroprobeError
from ..models.loading import LoadedModel, Preprocessing, load_model
from ..progress import Progress
from ..store.map_store import ArraySpec, as_json, mark_done
from .layouts import Fixations, make_layout
from .views import KINDS, PADDINGS, RS_MAX, RS_MIN, retinotopic_views

log = logging.getLogger(__name__)
KIND = "likelihood"


@dataclass(frozen=True)
class ViewSettings:
    """How views are made: kind, padding, size (px), log-polar range and the source resolution."""

    kind: str = "logpolar"
    padding: str = "zeros"
    size: int = 224
    rs_min: float = RS_MIN
    rs_max: float = RS_MAX
    source_scale: float = 2.0

    def check(self) -> "ViewSettings":
        if self.kind not in KINDS:
            raise NeuroprobeError(f"unknown --view '{self.kind}'; use {' or '.join(KINDS)}")
        if self.padding not in PADDINGS:
            raise NeuroprobeError(f"unknown --padding '{self.padding}'; use {', '.join(PADDINGS)}")
        if self.size < 8 or self.source_scale <= 0:
            raise NeuroprobeError("--view-size must be at least 8 px and --source-scale positive")
        return self

    def source(self, preprocessing: Preprocessing) -> Preprocessing:
        """The model's preprocessing at ``source_scale`` x its resolution (same resize/crop ratio)."""
        return Preprocessing(resize=round(preprocessing.resize * self.source_scale),
                             crop=round(preprocessing.crop * self.source_scale),
                             interpolation=preprocessing.interpolation, mean=preprocessing.mean,
                             std=preprocessing.std, source=preprocessing.source)

    def views(self, images: torch.Tensor, fixations: Fixations | tuple) -> torch.Tensor:
        """(B, F, C, size, size) views of normalized ``images`` at ``fixations`` (a layout or (centres, radii))."""
        centers, radii = fixations.flat(images.device) if isinstance(fixations, Fixations) else fixations
        return retinotopic_views(images, centers, radii, self.size, self.kind, self.padding, self.rs_min, self.rs_max)


def labels_of(manifest: Manifest, column: str | None) -> np.ndarray:
    """Class index per image from ``column`` (None: ``class_index`` when present), -1 where there is none."""
    if column is None:
        column = "class_index" if "class_index" in manifest.table.columns else None
    if column is None:
        return np.full(len(manifest), -1, dtype=np.int64)
    if column not in manifest.table.columns:
        raise NeuroprobeError(f"the image table has no column '{column}' (columns: "
                              f"{', '.join(map(str, manifest.table.columns))}); pass --label-column with class indices")
    values = manifest.table[column].to_numpy()
    try:
        return np.where(np.isnan(values.astype(np.float64)), -1, values).astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise NeuroprobeError(f"column '{column}' must hold class indices; pass another --label-column") from exc


class ViewClassifier:
    """The model over views: (B, C, H, W) normalized images -> (B, F, classes) log-probabilities and logits."""

    def __init__(self, module: torch.nn.Module, settings: ViewSettings, memory_format: str = "auto",
                 views_per_pass: int = 64, amp: str | None = None) -> None:
        self.format = MEMORY_FORMATS[choose_memory_format(module, memory_format)]
        self.module = module.eval().to(memory_format=self.format)
        self.settings = settings
        self.views_per_pass = views_per_pass
        self.amp = None if amp in (None, "none") else amp
        if self.amp not in (None, *AMP_DTYPES):
            raise NeuroprobeError(f"unknown --amp '{amp}'; use bf16, fp16 or none")

    def logits(self, views: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) views -> (N, classes) float32 logits, in equal passes of at most ``views_per_pass``
        (no small leftover pass), under the classifier's autocast."""
        passes = -(-len(views) // self.views_per_pass)
        step = -(-len(views) // passes)
        with autocast(views.device, self.amp):
            outs = [self.module(views[i:i + step].contiguous(memory_format=self.format))
                    for i in range(0, len(views), step)]
        return torch.cat(outs).float()

    def __call__(self, images: torch.Tensor, fixations) -> torch.Tensor:
        views = self.settings.views(images, fixations)
        return self.logits(views.flatten(0, 1)).unflatten(0, views.shape[:2])


def likelihood_maps(model: str | LoadedModel, data: str | Path | Manifest, out: str | Path, *,
                    weights: str | None = None, layout: str = "grid", n: int | None = None,
                    radius: float | None = None, view: str = "logpolar", padding: str = "zeros",
                    view_size: int | None = None, source_scale: float = 2.0, rs_min: float = RS_MIN,
                    rs_max: float = RS_MAX, label_column: str | None = None, batch_size: int = 4,
                    views_per_pass: int = 64, device: str | None = None, memory_format: str = "auto",
                    amp: str | None = None, workers: int | None = None, overwrite: bool = False,
                    max_pixels: int = MAX_PIXELS) -> Path:
    """Class probabilities of every view of every image of ``data`` into the likelihood store ``out``.

    ``layout`` grid (n=7, radius 0.5) or rings (n=11, outer radius 0.1); ``view`` logpolar or crop.
    Rerunning the same call resumes; other settings are refused unless ``overwrite``. ``amp`` (bf16,
    fp16) autocasts the forward pass; ``workers`` None decodes as :func:`~neuroprobe.extract` does.
    """
    if batch_size < 1 or views_per_pass < 1:
        raise NeuroprobeError("--batch-size and --views-per-pass must be at least 1")
    fixations = make_layout(layout, n, radius)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights)
    manifest = data if isinstance(data, Manifest) else read_manifest(data)
    settings = ViewSettings(view, padding, view_size or loaded.preprocessing.crop, rs_min, rs_max, source_scale).check()
    labels = labels_of(manifest, label_column)
    dev = resolve_device(device, Distributed.from_environment().local_rank)
    keep_freed_memory_on_cpu(dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    classifier = ViewClassifier(loaded.module.to(dev), settings, memory_format, views_per_pass, amp)
    with torch.no_grad():
        classes = classifier.logits(torch.zeros(1, 3, settings.size, settings.size, device=dev)).shape[1]
    rows, cols = fixations.shape
    arrays = {"log_probability": ArraySpec((rows, cols, classes), ("fy", "fx", "class"), "float16"),
              "top1": ArraySpec((rows, cols), ("fy", "fx"), "int64", -1),
              "top1_probability": ArraySpec((rows, cols), ("fy", "fx")),
              "top1_logit": ArraySpec((rows, cols), ("fy", "fx")),
              "logsumexp": ArraySpec((rows, cols), ("fy", "fx")),
              "target": ArraySpec((), (), "int64", -1)}
    identity = {"model": loaded.name, "provenance": loaded.provenance, "fixations": fixations.to_attrs(),
                "view": settings.__dict__, "preprocessing": loaded.preprocessing.to_dict(),
                "label_column": label_column, "data": manifest.fingerprint(),
                **({"amp": classifier.amp} if classifier.amp else {})}
    root_attrs = {"fixations": fixations.to_attrs(), "provenance": as_json(loaded.provenance),
                  "preprocessing": loaded.preprocessing.to_dict()}   # what model_of() reads
    job = start_map_job(Path(out), KIND, identity, manifest, arrays, overwrite, rows_per_chunk=batch_size,
                        setup=lambda group: group.attrs.update(root_attrs))
    if job.dist.rank == 0:
        log.info("likelihood maps: %d of %d images to do, %d %s views each, over %d process(es)", job.pending,
                 len(manifest), len(fixations), settings.kind, job.dist.world_size)
    source = settings.source(loaded.preprocessing)
    with torch.no_grad(), Progress(job.rows, "search (likelihood maps)", "img", rank=job.dist.rank) as meter:
        workers = default_workers(dev, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if workers is None else workers
        for batch in image_batches(manifest, source, job.batches, dev, workers=workers, max_pixels=max_pixels):
            rows_done = np.asarray(batch.rows)
            ok = batch.ok
            if ok.any():
                images = source.normalize(batch.images[torch.from_numpy(ok)].to(dev))
                _write(job.group, rows_done[ok], classifier(images, fixations))
            job.group["target"].oindex[rows_done] = labels[rows_done]
            mark_done(job.group, rows_done, ok, batch.reasons)
            meter.update(len(rows_done))
    return Path(job.finish())


def _write(group: zarr.Group, rows: np.ndarray, logits: torch.Tensor) -> None:
    """Per view: log-softmax (float16) and the top-1 class, probability, logit and normalizer (float32)."""
    rows_, cols = group["top1"].shape[1:]
    logits = logits.unflatten(1, (rows_, cols))
    lse = logits.logsumexp(-1)
    top_logit, top = logits.max(-1)
    values = {"log_probability": (logits - lse[..., None]).to(torch.float16), "top1": top,
              "top1_probability": (top_logit - lse).exp(), "top1_logit": top_logit, "logsumexp": lse}
    for name, value in values.items():
        group[name].oindex[rows] = value.cpu().numpy()


@dataclass
class LikelihoodStore:
    """A likelihood store opened for reading: its group, fixations and image table."""

    group: zarr.Group
    fixations: Fixations
    path: Path

    @classmethod
    def open(cls, path: str | Path) -> "LikelihoodStore":
        try:
            group = zarr.open_group(str(path), mode="r")
            attrs = dict(group.attrs)
        except Exception as exc:  # noqa: BLE001 - anything unreadable
            raise NeuroprobeError(f"cannot open {path} as a likelihood store ({exc}); give the --out of 'search'") \
                from exc
        if KIND not in attrs:
            raise NeuroprobeError(f"{path} is not a likelihood store (made by 'python -m neuroprobe search')")
        return cls(group, Fixations.from_attrs(attrs["fixations"]), Path(path))

    @property
    def settings(self) -> dict:
        return dict(self.group.attrs[KIND])

    @property
    def data_root(self) -> Path:
        return Path(self.group.attrs["data_root"])

    def images(self):
        """The image table: path, status, reason, target and whether the row is done."""
        import pandas as pd

        return pd.DataFrame({"path": self.group["images/path"][:], "status": self.group["images/status"][:],
                             "reason": self.group["images/reason"][:], "target": self.group["target"][:],
                             "done": self.group["done"][:]})
