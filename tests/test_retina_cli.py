"""``python -m neuroprobe search`` and ``saccade`` end to end on six sample images, and their one-line errors."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import zarr
from resnet_cli_fixtures import run_main

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture(scope="module")
def six(tmp_path_factory) -> Path:
    table = pd.read_csv(SAMPLE / "labels.csv").iloc[:6]
    table["path"] = [str(SAMPLE / p) for p in table["path"]]
    path = tmp_path_factory.mktemp("data") / "six.csv"
    table.to_csv(path, index=False)
    return path


def test_search_then_saccade(six, tmp_path):
    out = tmp_path / "search"
    code, stdout, _ = run_main(["search", "--data", six, "--grid", "2", "--view", "crop", "--batch-size", "3",
                                "--examples", "2", "--out", out])
    assert code == 0
    for name in ("search.csv", "summary.csv", "accuracy.png", "likelihood_maps.png", "views.png"):
        assert (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.policy) == ["centre", "label", "uncued", "igub", "vote", "sum_logits", "oracle"]
    assert (summary.n == 6).all()
    centre = summary.set_index("policy").loc["centre"]
    assert f"centre      {centre.accuracy:.3f}" in stdout
    group = zarr.open_group(str(out / "likelihood.zarr"), mode="r")
    assert group["log_probability"].shape == (6, 2, 2, 1000) and group["done"][:].all()
    table = pd.read_csv(out / "search.csv")
    centre_rows = table[table.policy == "centre"].sort_values("image")
    assert (centre_rows.prediction.to_numpy() == group["top1"][:, 0, 0]).all()   # 2 x 2: the first view is nearest

    # resuming a finished store recomputes nothing and gives the same tables
    assert run_main(["search", "--data", six, "--grid", "2", "--view", "crop", "--batch-size", "3",
                     "--examples", "2", "--out", out])[0] == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), summary)

    code, stdout, _ = run_main(["saccade", "--likelihood", out, "--data", six, "--folds", "2", "--epochs", "20",
                                "--glimpse", "32", "--saliency-size", "32", "--out", tmp_path / "saccade"])
    assert code == 0 and "gap closed" in stdout and "3 training images per fold (x10 for the conv head: flips and 4 shifted glimpses)" in stdout
    for name in ("dorsal_conv_fold0.pt", "dorsal_linear_fold1.pt", "active_vision.csv", "summary.csv",
                 "dorsal_scores.csv", "active_vision.png", "dorsal_maps.png"):
        assert (tmp_path / "saccade" / name).stat().st_size > 0, name
    summary = pd.read_csv(tmp_path / "saccade" / "summary.csv").set_index("policy")
    row = summary.loc["saliency+evidence"]
    assert (f"saliency+evidence  {row.accuracy:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]  vs centre "
            f"{row.vs_centre:+.3f} [{row.vs_centre_low:+.3f}, {row.vs_centre_high:+.3f}]  vs prior "
            f"{row.vs_prior:+.3f} [{row.vs_prior_low:+.3f}, {row.vs_prior_high:+.3f}]") in stdout

    # the saliency map alone: nothing trained; the same store twice is refused (an image would see itself)
    code, stdout, _ = run_main(["saccade", "--likelihood", out, "--data", six, "--dorsal", "saliency",
                                "--folds", "3", "--saliency-size", "32", "--no-flip", "--out", tmp_path / "alone"])
    assert code == 0 and "6 images, 4 training images per fold\n" in stdout
    summary = pd.read_csv(tmp_path / "alone" / "summary.csv")
    assert not any(p.startswith(("conv", "linear")) for p in summary.policy) and (summary.n == 6).all()
    assert not list((tmp_path / "alone").glob("*.pt"))
    code, _, err = run_main(["saccade", "--likelihood", out, out, "--data", six, six, "--dorsal", "saliency",
                             "--out", tmp_path / "twice"])
    assert code == 2 and "combine likelihood stores of different images" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--layout", "rings", "--grid", "4"], "odd n"),
    (["--grid", "0"], "--grid must be at least 1"),
    (["--radius", "1.5"], "radius"),
    (["--label-column", "nope"], "--label-column"),
])
def test_search_errors_are_one_line(six, tmp_path, args, message):
    code, _, err = run_main(["search", "--data", six, "--out", tmp_path / "x", *args])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_wrong_choices_and_stores_are_refused(six, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_main(["search", "--data", six, "--view", "fisheye", "--out", tmp_path / "x"])
    assert exit_.value.code == 2
    code, _, err = run_main(["saccade", "--likelihood", tmp_path / "missing", "--data", six, "--out", tmp_path / "y"])
    assert code == 2 and "likelihood store" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:
        run_main(["saccade", "--likelihood", tmp_path / "missing", "--data", six, "--dorsal", "fovea",
                  "--out", tmp_path / "y"])
    assert exit_.value.code == 2
