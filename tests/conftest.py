"""Shared fixtures: the embedded sample, seeded random state-dict files, independent preprocessing."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per xdist worker: with as many workers as cores, more threads only spin
    # against each other (small-op loops such as NMF ran 100x slower oversubscribed).
    torch.set_num_threads(1)
SAMPLE_CSV = ROOT / "data" / "sample" / "labels.csv"
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "imagenet-sample" / "labels.csv"


def pytest_addoption(parser):
    parser.addoption("--full-matrix", action="store_true",
                     help="test_families.py: every torchvision classification model and timm family (minutes)")


@pytest.fixture(scope="session")
def sample_csv() -> Path:
    return SAMPLE_CSV


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory) -> Path:
    """The first 6 sample images (with a dog among them), as a CSV beside copies of the files."""
    table = pd.read_csv(SAMPLE_CSV)
    table = pd.concat([table.iloc[:4], table[table.class_index.between(151, 268)].iloc[:2]])
    folder = tmp_path_factory.mktemp("small")
    for path in table.path:
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((SAMPLE_CSV.parent / path).read_bytes())
    table.to_csv(folder / "labels.csv", index=False)
    return folder / "labels.csv"


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory):
    """Factory: torchvision model name -> path of a seeded random state-dict file (cached per session)."""
    from torchvision.models import get_model

    folder = tmp_path_factory.mktemp("weights")
    cache: dict[str, Path] = {}

    def make(name: str, seed: int = 1234) -> Path:
        if name not in cache:
            torch.manual_seed(seed)
            model = get_model(name)
            cache[name] = folder / f"{name}-seed{seed}.pt"
            torch.save(model.state_dict(), cache[name])
        return cache[name]

    return make


def reference_batch(csv: Path, preprocessing) -> torch.Tensor:
    """Images of ``csv`` through torchvision's own Compose (float ToTensor path), not neuroprobe's."""
    from PIL import Image
    from torchvision import transforms as T

    transform = T.Compose([
        T.Resize(preprocessing.resize, interpolation=T.InterpolationMode(preprocessing.interpolation)),
        T.CenterCrop(preprocessing.crop), T.ToTensor(), T.Normalize(preprocessing.mean, preprocessing.std)])
    table = pd.read_csv(csv)
    return torch.stack([transform(Image.open(csv.parent / p).convert("RGB")) for p in table.path])
