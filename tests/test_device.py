"""Shared run settings: memory format choice, loader workers, one-line errors."""
from __future__ import annotations

import os

import pytest
import torch
from torchvision.models import get_model

from neuroprobe.engine.device import choose_memory_format, default_workers
from neuroprobe.errors import NeuroprobeError


@pytest.mark.parametrize("name, expected", [("resnet18", "channels_last"), ("mobilenet_v3_small", "channels_last"),
                                            ("vit_b_16", "contiguous")])
def test_auto_memory_format_follows_the_convolutions(name, expected):
    model = get_model(name)  # random init: only the architecture matters
    assert choose_memory_format(model) == expected
    assert choose_memory_format(model, "contiguous") == "contiguous"  # an explicit choice wins
    assert choose_memory_format(torch.nn.Linear(3, 2)) == "contiguous"


def test_unknown_memory_format_is_one_line_error():
    with pytest.raises(NeuroprobeError, match="use auto, channels_last or contiguous"):
        choose_memory_format(torch.nn.Linear(3, 2), "nhwc")


def test_workers_zero_on_cpu_and_a_share_of_the_cores_on_cuda():
    cores = len(os.sched_getaffinity(0))
    assert default_workers(torch.device("cpu")) == 0
    assert default_workers(torch.device("cuda", 0)) == max(1, min(16, cores - 1))
    assert default_workers(torch.device("cuda", 0), local_world_size=cores) == 1  # never none on a GPU
