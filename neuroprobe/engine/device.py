"""Device choice, autocast, memory format and loader workers: the settings every tool that runs a model shares."""
from __future__ import annotations

import contextlib
import logging
import os

import torch
from torch import nn

from ..errors import NeuroprobeError

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``None``/"auto" -> this process's GPU if there is one, else the CPU; refuses a CUDA device that is absent."""
    if device in (None, "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NeuroprobeError("--device cuda requested but no CUDA GPU is visible; use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def autocast(dev: torch.device, amp: str | None):
    """Autocast to the --amp dtype on ``dev``, or nothing."""
    return torch.autocast(dev.type, dtype=AMP_DTYPES[amp]) if amp in AMP_DTYPES else contextlib.nullcontext()


def choose_memory_format(module: nn.Module, requested: str = "auto") -> str:
    """The memory format to run ``module`` in: "channels_last" or "contiguous".

    "auto" is a measured default (benchmarks/RESULTS.md): channels_last for convolutional networks
    (more than one 2-D convolution; on the CPU the bare forward pass of EfficientNet-Lite0, ResNets,
    MobileNets and ConvNeXt ran 1.1-2x faster in it, and it is the layout of cuDNN's tensor-core
    kernels under amp); contiguous for the rest, transformers with a convolutional patch embedding included.
    """
    if requested not in ("auto", *MEMORY_FORMATS):
        raise NeuroprobeError(f"unknown --memory-format '{requested}'; use auto, channels_last or contiguous")
    if requested != "auto":
        return requested
    convolutions = sum(isinstance(m, nn.Conv2d) for m in module.modules())
    return "channels_last" if convolutions > 1 else "contiguous"


def default_workers(dev: torch.device, local_world_size: int = 1) -> int:
    """DataLoader decoding processes when the user gives none: 0 on the CPU, the cores' share on a GPU.

    On the CPU the model needs every core and decoding is ~30x cheaper than the forward pass, so it
    runs in a background thread instead (measured: workers slowed 2-core extraction down). On a GPU,
    each process of the machine gets its share of the cores, one left for the main thread, at most 16.
    """
    if dev.type != "cuda":
        return 0
    return max(1, min(16, available_cores() // max(local_world_size, 1) - 1))


def available_cores() -> int:
    """Cores this process may run on (its affinity mask on Linux, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
