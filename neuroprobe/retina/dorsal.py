"""The dorsal pathway: from one coarse glimpse of the whole image, where will the ventral network be right?

Input: a coarse view of the whole image (:class:`Glimpse`: radius 1 around the centre, ``size`` px; a
Cartesian colour picture by default in ``saccade``, or the seed's grayscale log-polar view), encoded by a
frozen pretrained backbone (:class:`GlimpseEncoder`: the post-activation of its last spatial layer, the
classifier's input). This module holds the glimpse, the encoder, the linear head on the pooled features
(:class:`DorsalNetwork`, the original baseline), saving and loading heads, the folds and the live loop
(:class:`ActiveVision`); the convolutional head is in :mod:`.dorsal_conv`, the untrained saliency map in
:mod:`.saliency`. Target: whether the ventral network's prediction at that fixation is the label (binary
cross-entropy, as Daucé et al. 2020 train their accuracy map; ``target="probability"`` uses p(label | view)).

Why a frozen backbone and small heads: 800 images are far too few to learn visual features, but enough
to learn which of a backbone's signals predict where the object is; the heads train in seconds to minutes
on the CPU, so k-fold cross-validation (every image scored by a head that never saw it) is cheap.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NeuroprobeError
from ..maps.methods import last_spatial_layer
from ..models.capture import Capture
from ..models.loading import LoadedModel
from ..training import train
from .views import retinotopic_views

log = logging.getLogger(__name__)
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Glimpse:
    """The dorsal input: a coarse view of ``size`` px of the whole image (radius 1) around the image centre.

    ``kind`` "logpolar" (the seed's glimpse) or "crop" (a low-resolution Cartesian picture); ``color``
    False gives the seed's grayscale. A glimpse can be taken around another ``center`` (the small shifts
    that train a convolutional head) and of the left-right flipped image."""

    size: int = 64
    rs_min: float = 0.0
    rs_max: float = -5.0
    kind: str = "logpolar"
    color: bool = False

    def __call__(self, images: torch.Tensor, center=(0.0, 0.0), flip: bool = False) -> torch.Tensor:
        """uint8 or [0, 1] (B, 3, H, W) images -> (B, 1 or 3, size, size) glimpses in [0, 1]."""
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        x = x.flip(-1) if flip else x
        if not self.color:
            x = sum(w * x[:, c:c + 1] for c, w in enumerate(LUMA))
        where = torch.tensor([center], dtype=x.dtype, device=x.device)
        return retinotopic_views(x, where, 1.0, self.size, self.kind, "zeros", self.rs_min, self.rs_max)[:, 0]


class GlimpseEncoder:
    """Frozen backbone features of glimpses: gray replicated to RGB, resized to the backbone's input,
    normalized as the backbone expects; the post-activation map of ``layer`` (default: the last spatial one),
    pooled over space for the linear head or kept (B, C, h, w) for the convolutional one."""

    def __init__(self, backbone: LoadedModel, glimpse: Glimpse = Glimpse(), layer: str | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.module = backbone.module.to(self.device).eval()
        self.preprocessing = backbone.preprocessing
        self.glimpse = glimpse
        crop = self.preprocessing.crop
        self.layer = layer or last_spatial_layer(self.module, torch.zeros(1, 3, crop, crop, device=self.device))

    def inputs(self, images: torch.Tensor, center=(0.0, 0.0), flip: bool = False) -> torch.Tensor:
        """The backbone's normalized input for the glimpses of ``images``."""
        g = self.glimpse(images.to(self.device), center, flip)
        crop = self.preprocessing.crop
        x = F.interpolate(g.expand(-1, 3, -1, -1), size=(crop, crop), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.preprocessing.mean, device=x.device)[:, None, None]
        std = torch.tensor(self.preprocessing.std, device=x.device)[:, None, None]
        return (x - mean) / std

    @torch.no_grad()
    def maps(self, images: torch.Tensor, center=(0.0, 0.0), flip: bool = False) -> torch.Tensor:
        """(B, C, h, w) post-activation feature maps of the glimpses."""
        values: dict[str, torch.Tensor] = {}
        with Capture(self.module, [self.layer], values.__setitem__, post_activation=True) as capture:
            capture.run(self.inputs(images, center, flip))
        return values[self.layer].float()

    def evidence(self, images: torch.Tensor, center=(0.0, 0.0), flip: bool = False) -> torch.Tensor:
        """(B, 6, h, w) class evidence per cell of the glimpses (the convolutional head's input)."""
        return self.to_evidence(self.maps(images, center, flip))

    def to_evidence(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, 6, h, w) class evidence of feature maps from :meth:`maps` (the model's classifier on every cell)."""
        from .dorsal_conv import cell_classifier, evidence_maps

        if not hasattr(self, "_classifier"):
            self._classifier = cell_classifier(self.module, maps.shape[1])
            if self._classifier is None:
                log.warning("no linear classifier takes the %d channels of %s: the conv head sees the feature norm "
                            "only", maps.shape[1], self.layer)
        return evidence_maps(maps, self._classifier)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C) pooled features of the centred, unflipped glimpses (the linear head's input)."""
        return self.maps(images).flatten(2).mean(2)


class DorsalNetwork(nn.Module):
    """Standardized glimpse features -> (B, rows, cols) logits that the ventral view there is right."""

    def __init__(self, features: int, shape: tuple[int, int]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))
        self.head = nn.Linear(features, shape[0] * shape[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head((features - self.mean) / self.scale).unflatten(1, self.shape)


@dataclass(frozen=True)
class DorsalTraining:
    """How a head is trained: epochs of full-batch AdamW, learning rate, decoupled weight decay, target,
    seed, and the L2 penalty on its weights (None: chosen on a held-out split, see :func:`fit_dorsal`)."""

    epochs: int = 300
    lr: float = 1e-3
    weight_decay: float = 0.0
    target: str = "correct"
    seed: int = 0
    l2: float | None = None


def fit_dorsal(features: torch.Tensor, targets: torch.Tensor, shape: tuple[int, int],
               settings: DorsalTraining = DorsalTraining()) -> DorsalNetwork:
    """A dorsal head fitted to ``targets`` (N, rows, cols) in [0, 1] from ``features`` (N, D); or, with
    augmented copies, ``features`` (N, A, D) and ``targets`` (N, A, rows, cols) (split by image, not by copy).

    The head starts as the image-blind prior (zero weights, biases at the logit of each fixation's
    mean outcome) and its weights pay an L2 penalty ``l2``; with ``l2=None`` the penalty is chosen from
    ``L2_GRID`` by the held-out loss of a seeded 80/20 split of the training images. So a head that
    finds nothing in the glimpse falls back to the prior instead of overfitting."""
    if features.ndim == 2:
        features, targets = features[:, None], targets[:, None]
    l2 = settings.l2 if settings.l2 is not None else _choose_l2(features, targets, shape, settings)
    features, targets = features.flatten(0, 1).float(), targets.flatten(0, 1).float()
    torch.manual_seed(settings.seed)
    net = DorsalNetwork(features.shape[1], shape)
    net.mean.copy_(features.mean(0))
    net.scale.copy_(features.std(0).clamp_min(1e-6))
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.logit(targets.mean(0).reshape(-1).clamp(1e-3, 1 - 1e-3)))

    def loss(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, t) + l2 * net.head.weight.pow(2).sum()

    train(net, loss, features, targets, epochs=settings.epochs, lr=settings.lr,
          weight_decay=settings.weight_decay, seed=settings.seed, desc="saccade (dorsal head)")
    net.l2 = l2
    return net


L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)


def _choose_l2(features: torch.Tensor, targets: torch.Tensor, shape: tuple[int, int],
               settings: DorsalTraining) -> float:
    """The L2 penalty of ``L2_GRID`` with the lowest held-out BCE (plain copies) on a seeded 80/20 image split."""
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(settings.seed + 1))
    cut = max(1, len(features) // 5)
    held, kept = order[:cut], order[cut:]
    losses = {}
    for l2 in L2_GRID:
        net = fit_dorsal(features[kept], targets[kept], shape, replace(settings, l2=l2))
        with torch.no_grad():
            losses[l2] = float(F.binary_cross_entropy_with_logits(net(features[held, 0].float()),
                                                                  targets[held, 0].float()))
    best = min(losses, key=losses.get)
    log.debug("dorsal head: held-out BCE by L2 %s -> %g", losses, best)
    return best


def save_dorsal(net: nn.Module, path: str | Path, meta: dict) -> Path:
    """Weights and plain-typed metadata (layout, glimpse, backbone, training) in one file for ``weights_only``."""
    from .dorsal_conv import DorsalConv

    saved = {"state_dict": net.state_dict(), "shape": list(net.shape), "meta": meta}
    if isinstance(net, DorsalConv):
        saved |= {"head": "conv", "channels": int(net.mean.numel()), "hidden": int(net.reduce.out_channels),
                  "fields": list(net.fields.shape)}
    else:
        saved |= {"head": "linear", "features": int(net.mean.numel())}
    torch.save(saved, path)
    return Path(path)


def load_dorsal(path: str | Path) -> tuple[nn.Module, dict]:
    """A saved dorsal head (linear or conv) and its metadata, loaded with ``torch.load(weights_only=True)``."""
    from .dorsal_conv import DorsalConv

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("head", "linear") == "conv":
            net = DorsalConv(saved["channels"], torch.zeros(saved["fields"]), tuple(saved["shape"]), saved["hidden"])
        else:
            net = DorsalNetwork(saved["features"], tuple(saved["shape"]))
        net.load_state_dict(saved["state_dict"])
    except (OSError, RuntimeError, KeyError, TypeError, AttributeError, pickle.UnpicklingError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise NeuroprobeError(f"cannot load a dorsal network from {path} ({reason}); give a file written by "
                              "save_dorsal / 'neuroprobe saccade'") from exc
    return net.eval(), saved["meta"]


def fold_of(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..folds-1) of each of n items, balanced, in a seeded random order."""
    if not 2 <= folds <= n:
        raise NeuroprobeError(f"--folds must lie in 2..{n} (the number of usable images)")
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, dtype=np.int64)
    fold[order] = np.arange(n) % folds
    return fold


def cross_validated_maps(features: torch.Tensor, targets: torch.Tensor, shape: tuple[int, int], folds: int = 5,
                         settings: DorsalTraining = DorsalTraining()) -> tuple[np.ndarray, np.ndarray,
                                                                               list[DorsalNetwork]]:
    """Dorsal logits (N, rows, cols) of every item from a head trained on the other folds; the folds and heads."""
    fold = fold_of(len(features), folds, settings.seed)
    logits = np.empty((len(features), *shape), dtype=np.float32)
    nets = []
    for k in range(folds):
        held = torch.from_numpy(fold == k)
        net = fit_dorsal(features[~held], targets[~held], shape, settings)
        with torch.no_grad():
            logits[held.numpy()] = net(features[held]).numpy()
        nets.append(net)
        log.info("dorsal fold %d/%d: trained on %d, scored %d", k + 1, folds, int((~held).sum()), int(held.sum()))
    return logits, fold, nets


def training_meta(settings: DorsalTraining, glimpse: Glimpse, layer: str, backbone: LoadedModel,
                  fixations: dict) -> dict:
    """What a saved head needs to be used again: plain types only (``weights_only`` loading)."""
    return {"training": asdict(settings), "glimpse": asdict(glimpse), "layer": layer,
            "backbone": {k: v for k, v in backbone.provenance.items() if isinstance(v, (str, int, float))},
            "fixations": fixations}


class ActiveVision:
    """The whole loop on new images: glimpse -> dorsal map -> saccade(s) -> ventral views -> class.

    ``dorsal`` is a trained head (a :class:`DorsalNetwork` on the pooled glimpse features or a
    :class:`~neuroprobe.retina.dorsal_conv.DorsalConv` on their map, both read by ``encoder``) or an
    untrained :class:`~neuroprobe.retina.saliency.SaliencyDorsal`; ``ventral`` classifies the views (a
    :class:`~neuroprobe.retina.likelihood.ViewClassifier`); :func:`~neuroprobe.retina.active.saccades` does the
    rest. The ventral network is run on every view of the layout (the likelihood map of the image), so that
    IGUB refinement and several saccades cost nothing more; the store-based evaluation reads the same
    numbers from a likelihood store.
    """

    def __init__(self, dorsal, encoder: GlimpseEncoder | None, ventral, fixations, **options) -> None:
        self.dorsal, self.encoder, self.ventral, self.fixations = dorsal, encoder, ventral, fixations
        self.options = options

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """(B, rows, cols) dorsal scores of uint8 images (higher = look there)."""
        from .dorsal_conv import DorsalConv

        if isinstance(self.dorsal, DorsalConv):
            return self.dorsal(self.encoder.evidence(images).cpu())
        if isinstance(self.dorsal, DorsalNetwork):
            return self.dorsal(self.encoder(images).cpu())
        return self.dorsal(images)[0]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, preprocessing) -> dict[str, np.ndarray]:
        """uint8 (B, 3, H, W) images at the source resolution -> prediction, path, confidence, dorsal map."""
        from .active import saccades

        scores = self.scores(images)
        device = next(self.ventral.module.parameters()).device
        logits = self.ventral(preprocessing.normalize(images.to(device)), self.fixations)
        log_probability = logits.log_softmax(-1).cpu().numpy()
        prediction, path, confidence = saccades(log_probability, scores.flatten(1).numpy(),
                                                self.fixations.center_index, **self.options)
        return {"prediction": prediction, "path": path, "confidence": confidence,
                "dorsal": torch.sigmoid(scores).numpy()}
