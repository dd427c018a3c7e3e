"""The convolutional dorsal head: a map over the glimpse's spatial evidence, pooled over each fixation's field.

The linear head maps the glimpse's *pooled* features to one weight vector per fixation: 1280 x 49
weights learnt from a few hundred images, and no notion that fixation (2, 3) and (2, 4) look at
neighbouring places. This head keeps the spatial map. Its input is the backbone's own class evidence
at every cell of the glimpse's last spatial layer (:func:`evidence_maps`: the classifier applied to each
cell's feature vector, summarised as the top class's logit, the largest logit, their log-sum-exp, the
entropy, the top class's log-probability and the feature norm): a few channels that the pretrained
classifier makes meaningful, where 1280 raw channels overfit a few hundred images within one epoch
(800 photos, grid-crop: held-out BCE rose from the first epoch on, at every learning rate and width tried).
Every cell is scored by the same small convolution (a 1 x 1 linear path plus 1 x 1 -> ReLU -> 3 x 3),
the cells of each fixation's field are averaged (:func:`~neuroprobe.retina.fields.field_weights`) and one
bias per fixation, starting at the image-blind prior, is added. The weights are shared over space, so
every fixation of every image trains them, and augmentations are exact: a flipped image gets the
mirrored target map, a shifted glimpse the field matrix of its shifted cells.

Training: mini-batch AdamW on the augmented training images; the number of epochs is chosen by the
held-out loss of a seeded 80/20 split of the training images (early stopping), then the head is
trained again on all of them for that many epochs, so a head that finds nothing stays at the prior.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..training import train

log = logging.getLogger(__name__)


EVIDENCE = ("top-class logit", "largest logit", "log-sum-exp", "entropy", "top-class log-probability",
            "feature norm")


def cell_classifier(module: nn.Module, channels: int) -> nn.Linear | None:
    """The model's linear classifier on the pooled last spatial map (``get_classifier()`` or the last
    ``nn.Linear`` taking ``channels`` inputs), or None when it has none (then only the feature norm is evidence)."""
    head = module.get_classifier() if hasattr(module, "get_classifier") else None
    if isinstance(head, nn.Linear) and head.in_features == channels:
        return head
    linear = [m for m in module.modules() if isinstance(m, nn.Linear) and m.in_features == channels]
    return linear[-1] if linear else None


@torch.no_grad()
def evidence_maps(maps: torch.Tensor, classifier: nn.Linear | None) -> torch.Tensor:
    """(B, C, h, w) post-activation maps -> (B, 6, h, w) class evidence per cell (:data:`EVIDENCE`); the top
    class is the glimpse's (the classifier on the pooled map). Without a classifier: the feature norm, six times."""
    norm = maps.float().norm(dim=1)
    if classifier is None:
        return norm[:, None].expand(-1, len(EVIDENCE), -1, -1).clone()
    logits = torch.einsum("bchw,kc->bkhw", maps.float(), classifier.weight.float())
    if classifier.bias is not None:
        logits = logits + classifier.bias.float()[:, None, None]
    top = logits.mean((2, 3)).argmax(1)
    top_logit = logits[torch.arange(len(maps)), top]
    lse = logits.logsumexp(1)
    p = (logits - lse[:, None]).exp()
    entropy = -(p * (logits - lse[:, None])).sum(1)
    return torch.stack([top_logit, logits.amax(1), lse, entropy, top_logit - lse, norm], 1)


class DorsalConv(nn.Module):
    """(maps (B, C, h, w), augmentation (B,)) or maps alone -> (B, rows, cols) logits that the ventral view is right."""

    def __init__(self, channels: int, fields: torch.Tensor, shape: tuple[int, int], hidden: int = 32) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("fields", fields.float())          # (augmentations, F, h * w): 0 = unshifted
        self.linear = nn.Conv2d(channels, 1, 1, bias=False)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.mix = nn.Conv2d(hidden, 1, 3, padding=1, bias=False)
        self.bias = nn.Parameter(torch.zeros(shape[0] * shape[1]))
        nn.init.zeros_(self.linear.weight)                       # starts as the prior: the bias alone
        nn.init.zeros_(self.mix.weight)

    def dense(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, h, w) logit map over the glimpse, before pooling into fields (for figures)."""
        x = (maps.float() - self.mean[:, None, None]) / self.scale[:, None, None]
        return (self.linear(x) + self.mix(F.relu(self.reduce(x))))[:, 0]

    def forward(self, batch) -> torch.Tensor:
        maps, aug = batch if isinstance(batch, tuple) else (batch, None)
        dense = self.dense(maps).flatten(1)                                          # (B, h * w)
        fields = self.fields[0].expand(len(dense), -1, -1) if aug is None else self.fields[aug]
        return (torch.einsum("bfm,bm->bf", fields, dense) + self.bias).unflatten(1, self.shape)


@dataclass(frozen=True)
class ConvTraining:
    """Mini-batch AdamW: at most ``epochs`` (chosen by held-out loss), batch size, learning rate, weight decay."""

    epochs: int = 15
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01
    hidden: int = 16
    seed: int = 0


class Augmented:
    """Training examples for :func:`train`: feature maps (N, C, h, w) with their augmentation index (N,)."""

    def __init__(self, maps: torch.Tensor, aug: torch.Tensor) -> None:
        self.maps, self.aug = maps, aug

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, index):
        return self.maps[index], self.aug[index]


def fit_conv(maps: torch.Tensor, targets: torch.Tensor, fields: torch.Tensor, shape: tuple[int, int],
             settings: ConvTraining = ConvTraining(), epochs: int | None = None) -> DorsalConv:
    """A convolutional head fitted to ``targets`` (N, A, rows, cols) from ``maps`` (N, A, C, h, w) of N images
    under A augmentations whose field matrices are ``fields`` (A, F, h * w); augmentation 0 is the plain glimpse.

    ``epochs`` None: chosen as the epoch of lowest held-out BCE (plain glimpses of a seeded fifth of the images)."""
    if epochs is None:
        epochs = _choose_epochs(maps, targets, fields, shape, settings)
    n, a = maps.shape[:2]
    torch.manual_seed(settings.seed)
    net = DorsalConv(maps.shape[2], fields, shape, settings.hidden)
    plain = maps[:, 0].float()
    net.mean.copy_(plain.mean((0, 2, 3)))
    net.scale.copy_(plain.transpose(0, 1).flatten(1).std(1).clamp_min(1e-6))
    with torch.no_grad():
        net.bias.copy_(torch.logit(targets[:, 0].float().mean(0).reshape(-1).clamp(1e-3, 1 - 1e-3)))
    net.epochs = epochs
    if epochs == 0:
        return net.eval()
    data = Augmented(maps.flatten(0, 1), torch.arange(a).repeat(n))

    def loss(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, t.float())

    train(net, loss, data, targets.flatten(0, 1), epochs=epochs, lr=settings.lr, weight_decay=settings.weight_decay,
          batch_size=settings.batch_size, seed=settings.seed, desc="saccade (conv head)")
    return net.eval()


def _choose_epochs(maps: torch.Tensor, targets: torch.Tensor, fields: torch.Tensor, shape: tuple[int, int],
                   settings: ConvTraining) -> int:
    """The epoch (0..settings.epochs) with the lowest held-out BCE on a seeded 80/20 split of the images."""
    order = torch.randperm(len(maps), generator=torch.Generator().manual_seed(settings.seed + 1))
    cut = max(1, len(maps) // 5)
    held, kept = order[:cut], order[cut:]
    held_maps, held_targets = maps[held, 0].float(), targets[held, 0].float()
    losses = []

    def held_out_loss(net: DorsalConv) -> float:
        with torch.no_grad():
            return float(F.binary_cross_entropy_with_logits(net(held_maps), held_targets))

    net = fit_conv(maps[kept], targets[kept], fields, shape, settings, epochs=0)
    losses.append(held_out_loss(net))
    data = Augmented(maps[kept].flatten(0, 1), torch.arange(maps.shape[1]).repeat(len(kept)))
    net.train()

    def loss(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, t.float())

    train(net, loss, data, targets[kept].flatten(0, 1), epochs=settings.epochs, lr=settings.lr,
          weight_decay=settings.weight_decay, batch_size=settings.batch_size, seed=settings.seed,
          on_epoch=lambda epoch: {"held_out": losses.append(held_out_loss(net))}, desc="saccade (conv head, epochs)")
    best = int(torch.tensor(losses).argmin())
    log.debug("conv head: held-out BCE by epoch %s -> %d", [round(v, 4) for v in losses], best)
    return best
