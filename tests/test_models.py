"""Models by name, weights files, and preprocessing equal to the libraries' own transforms."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import SAMPLE_CSV
from PIL import Image

from neuroprobe import NeuroprobeError, load_model


def test_offline_preprocessing_equals_timm_transform():
    import timm.data

    model = load_model("efficientnet_lite0")
    p = model.preprocessing
    assert (p.resize, p.crop, p.interpolation, p.mean, p.std) == (256, 224, "bicubic", (0.5,) * 3, (0.5,) * 3)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model.module))
    image = Image.open(SAMPLE_CSV.parent / pd.read_csv(SAMPLE_CSV).path[0]).convert("RGB")
    ours = p.normalize(p.to_uint8(image)[None])[0]
    torch.testing.assert_close(ours, transform(image), rtol=0, atol=1e-5)


def test_torchvision_weights_preprocessing_equals_weights_transforms():
    """Preprocessing read from a weights enum reproduces ``weights.transforms()`` (no download needed)."""
    from torchvision.models import ResNet50_Weights

    from neuroprobe.models.loading import Preprocessing

    weights = ResNet50_Weights.IMAGENET1K_V2
    t = weights.transforms()
    p = Preprocessing(resize=t.resize_size[0], crop=t.crop_size[0], interpolation=t.interpolation.value,
                      mean=tuple(t.mean), std=tuple(t.std))
    image = Image.open(SAMPLE_CSV.parent / pd.read_csv(SAMPLE_CSV).path[3]).convert("RGB")
    torch.testing.assert_close(p.normalize(p.to_uint8(image)[None])[0], t(image), rtol=0, atol=1e-5)


def test_offline_model_classifies_the_sample():
    """The offline weights are really pretrained: most of the 40 embedded images are classified right."""
    from conftest import reference_batch

    model = load_model("efficientnet_lite0")
    labels = pd.read_csv(SAMPLE_CSV).class_index.to_numpy()
    with torch.no_grad():
        predicted = model.module(reference_batch(SAMPLE_CSV, model.preprocessing)).argmax(1).numpy()
    assert (predicted == labels).mean() >= 0.75


def test_state_dict_file_round_trip(tmp_path, random_weights):
    path = random_weights("resnet18")
    model = load_model("resnet18", str(path))
    saved = torch.load(path, weights_only=True)
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, saved[key])
    assert model.provenance["weights_sha256"] and model.preprocessing.interpolation == "bilinear"


def test_wrong_architecture_file_is_a_clear_error(random_weights):
    with pytest.raises(NeuroprobeError, match="does not fit"):
        load_model("resnet34", str(random_weights("resnet18")))


def test_no_weights_is_seeded():
    a, b = load_model("resnet18", "none"), load_model("resnet18", "none")
    assert torch.equal(a.module.conv1.weight, b.module.conv1.weight)


def test_timm_names(tmp_path):
    model = load_model("timm:resnet18", "none")
    assert model.provenance["model"] == "timm:resnet18" and model.preprocessing.crop == 224
    with pytest.raises(NeuroprobeError, match="resnet18"):
        load_model("timm:resnet18x")


def test_unknown_model_names_the_closest():
    with pytest.raises(NeuroprobeError, match="resnet18"):
        load_model("resnet181")
