"""``python -m neuroprobe saliency``: stores checked against Captum on the same images, resume, bad input.

ResNet-18 with seeded random weights from a file, three images of which one is corrupt.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from resnet_cli_fixtures import BAD_ROW, data3, loaded, run_main, weights  # noqa: F401 (fixtures)


def saliency_args(weights, csv, out, *extra) -> list:
    return ["saliency", "--model", "resnet18", "--weights", weights, "--data", csv, "--device", "cpu",
            "--batch-size", 2, "--out", out, *extra]


def inputs(loaded, csv) -> torch.Tensor:
    from neuroprobe.data import ImageDataset, read_manifest

    dataset = ImageDataset(read_manifest(csv), loaded.preprocessing)
    return loaded.preprocessing.normalize(torch.stack([dataset[i][1] for i in range(len(dataset))]))


def test_gradcam_store_equals_captum(weights, loaded, data3, tmp_path):
    from captum.attr import LayerAttribution, LayerGradCam

    out = tmp_path / "cam.zarr"
    code, stdout, _ = run_main(saliency_args(weights, data3, out, "--method", "gradcam"))
    assert code == 0 and "3 done, 1 skipped" in stdout
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["saliency"]["layer"] == "layer4", "default layer: the last spatial one"
    maps, status = group["map"][:], group["images/status"][:]
    assert list(status) == ["ok", "error", "ok"] and group["done"][:].all()
    assert np.isnan(maps[BAD_ROW]).all() and "Error" in str(group["images/reason"][BAD_ROW])
    x = inputs(loaded, data3)
    labels = pd.read_csv(data3).class_index.to_numpy()
    module = loaded.module.eval()
    for row in (0, 2):
        cam = LayerGradCam(module, module.layer4).attribute(x[row:row + 1], target=int(labels[row]),
                                                           relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, (224, 224), "bilinear")[0, 0].detach().numpy()
        np.testing.assert_allclose(maps[row], cam, rtol=1e-4, atol=1e-6 * np.abs(cam).max())
        with torch.no_grad():
            logits = module(x[row:row + 1])[0]
        assert group["target"][row] == labels[row] and group["predicted"][row] == int(logits.argmax())
        assert group["score"][row] == pytest.approx(float(logits[labels[row]]), rel=1e-5)
        assert group["probability"][row] == pytest.approx(float(logits.softmax(0)[labels[row]]), rel=1e-4)


def test_resume_recomputes_only_unfinished_rows(weights, data3, tmp_path):
    out = tmp_path / "grad.zarr"
    args = saliency_args(weights, data3, out, "--method", "gradient", "--target", "prediction", "--raw")
    assert run_main(args)[0] == 0
    group = zarr.open_group(str(out), mode="r+")
    first = group["map"][:]
    raw = group["raw"][:]
    assert raw.shape == (3, 3, 224, 224)
    np.testing.assert_allclose(first[[0, 2]], np.abs(raw[[0, 2]]).max(axis=1), rtol=1e-6)
    assert (group["target"][:] == group["predicted"][:])[[0, 2]].all()
    group["done"][2] = False
    group["map"][2] = np.nan
    group["map"][0] = -1.0          # a finished row: must not be recomputed
    assert run_main(args)[0] == 0
    again = zarr.open_group(str(out), mode="r")["map"][:]
    np.testing.assert_allclose(again[2], first[2], rtol=1e-6)
    assert (again[0] == -1.0).all()


def test_gradient_raw_equals_captum_saliency(weights, loaded, data3, tmp_path):
    from captum.attr import Saliency

    out = tmp_path / "g.zarr"
    assert run_main(saliency_args(weights, data3, out, "--method", "gradient", "--raw"))[0] == 0
    group = zarr.open_group(str(out), mode="r")
    x = inputs(loaded, data3)[[0, 2]]
    labels = torch.as_tensor(pd.read_csv(data3).class_index.to_numpy()[[0, 2]])
    theirs = Saliency(loaded.module.eval()).attribute(x, target=labels, abs=False).numpy()
    np.testing.assert_allclose(group["raw"][:][[0, 2]], theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


@pytest.mark.parametrize("extra, expected", [
    (["--method", "gradient", "--layer", "layer4"], "--layer is for gradcam and dff"),
    (["--method", "gradcam", "--target", "class_name"], "must hold class indices"),
    (["--method", "gradcam", "--target", "nope"], "no column 'nope'"),
    (["--method", "gradcam", "--layer", "layer44"], "unknown layer 'layer44'"),
])
def test_mistakes_give_one_line_errors(weights, data3, tmp_path, extra, expected):
    code, _, err = run_main(saliency_args(weights, data3, tmp_path / "x.zarr", *extra))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert not (tmp_path / "x.zarr").exists(), "nothing is written before the input is checked"


def test_other_settings_are_refused(weights, data3, tmp_path):
    out = tmp_path / "s.zarr"
    assert run_main(saliency_args(weights, data3, out, "--method", "gradcam"))[0] == 0
    code, _, err = run_main(saliency_args(weights, data3, out, "--method", "gradient"))
    assert code == 2 and "other settings" in err and "--overwrite" in err
