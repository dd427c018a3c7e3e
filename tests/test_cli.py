"""The command line as a user meets it: real ``python -m neuroprobe`` processes.

Mistakes give one line on stderr ("neuroprobe: error: ...", naming the fix) and exit code 2;
``layers``, ``info`` and ``export`` are checked against references computed without the CLI.
The processes start two at a time from one fixture (each costs a Python + torch start-up).
"""
from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from helpers_robustness import (
    PYTHON,
    ROOT,
    SAMPLE_CSV,
    cli,
    cli_env,
    make_bad_files,
    one_line_error,
    sample_table,
    store_arrays,
)

import neuroprobe

SAMPLE = str(SAMPLE_CSV)
EXTRACT = ["extract", "--layers", "bn2", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs of the error cases, and a small finished store with two unreadable images."""
    folder = tmp_path_factory.mktemp("cli")
    (folder / "empty").mkdir()
    (folder / "header-only.csv").write_text("path,label\n")
    (folder / "zero-bytes.csv").write_bytes(b"")
    (folder / "no-path.csv").write_text("file,label\na.jpg,1\n")
    (folder / "reserved.csv").write_text(f"path,reason\n{sample_table().path[0]},liked it\n")
    (folder / "somefile.txt").write_text("a file, not a folder")
    bad = make_bad_files(folder / "bad")
    table = sample_table().iloc[:5]
    rows = list(table.path[:2]) + [str(bad["truncated.jpg"][0])] + list(table.path[2:]) + [str(bad["empty.jpg"][0])]
    pd.DataFrame({"path": rows, "group": ["a", "b", "c", "d", "e", "f", "g"]}).to_csv(folder / "small.csv", index=False)
    store = neuroprobe.extract("efficientnet_lite0", folder / "small.csv", ["blocks.3", "bn2"], folder / "small.zarr",
                               spatial=["blocks.3"], chunk_size=4, batch_size=4, device="cpu", progress=False,
                               extra_attrs={"command": "python -m neuroprobe extract (test)"})
    return folder, store


ERRORS = {  # case -> (arguments after the data/out defaults are filled in, words the message must hold)
    "unknown model": (["--model", "resnet181", "--weights", "none", "--layers", "layer1"], ["resnet181", "resnet18"]),
    "unknown layer": (["--layers", "blocks.33"], ["blocks.33", "blocks.3", "layers --model"]),
    "missing data": (["--data", "{f}/nowhere"], ["data not found", "nowhere"]),
    "empty folder": (["--data", "{f}/empty"], ["no images", "empty"]),
    "header-only csv": (["--data", "{f}/header-only.csv"], ["no images", "header-only.csv"]),
    "zero-byte csv": (["--data", "{f}/zero-bytes.csv"], ["cannot read", "zero-bytes.csv"]),
    "csv without path": (["--data", "{f}/no-path.csv"], ["no 'path' column", "file, label"]),
    "csv with reserved column": (["--data", "{f}/reserved.csv"], ["reason", "rename"]),
    "out under a file": (["--out", "{f}/somefile.txt/run.zarr"], ["cannot write", "somefile.txt"]),
    "out in /proc": (["--out", "/proc/neuroprobe-test.zarr"], ["cannot write", "/proc"]),
    "out is a file": (["--out", "{f}/somefile.txt"], ["not a store", "--out"]),
    "spatial not in layers": (["--spatial", "blocks.3"], ["--spatial blocks.3", "--layers"]),
}


def _extract_args(case: str, folder) -> list[str]:
    args, _ = ERRORS[case]
    args = [a.format(f=folder) for a in args]
    defaults = []
    if "--data" not in args:
        defaults += ["--data", SAMPLE]
    if "--out" not in args:
        defaults += ["--out", str(folder / f"{case.replace(' ', '-')}.zarr")]
    command = EXTRACT + defaults + args
    if "--layers" in args:  # the case names its own layers
        command = command[:1] + command[3:]
    return command


@pytest.fixture(scope="module")
def runs(files):
    folder, store = files
    commands = {case: _extract_args(case, folder) for case in ERRORS}
    commands["layers"] = ["layers", "--model", "efficientnet_lite0"]
    commands["info"] = ["info", str(store)]
    commands["export"] = ["export", str(store), str(folder / "small.h5")]
    commands["export to /proc"] = ["export", str(store), "/proc/neuroprobe-test.h5"]
    commands["export brainscore"] = ["export", str(store), str(folder / "small.nc"), "--to", "brainscore"]
    commands["info of no store"] = ["info", str(folder / "empty")]
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(commands, pool.map(cli, commands.values())))
    return results


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_mistakes_give_one_line_and_exit_2(runs, files, case):
    line = one_line_error(runs[case])
    for word in ERRORS[case][1]:
        assert word in line, (word, line)
    assert "Traceback" not in runs[case].stdout
    folder, _ = files
    assert not (folder / f"{case.replace(' ', '-')}.zarr").exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".partial")]


def test_unknown_model_closest_names_first(runs):
    line = one_line_error(runs["unknown model"])
    closest = line.split("closest:")[1].split("(")[0]
    assert closest.split(",")[0].strip() == "resnet18"


def test_other_mistakes(runs):
    assert "not a neuroprobe store" in one_line_error(runs["info of no store"])
    assert "cannot write" in one_line_error(runs["export to /proc"])


def test_layers_lists_shapes(runs):
    result = runs["layers"]
    assert result.returncode == 0, result.stderr
    table, footer = result.stdout.split("\n\n")
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    # reference: the same architecture run with forward hooks, without neuroprobe
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    shapes = {}  # every module that runs in a forward pass (drop_path of blocks without a residual does not)
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, "x".join(map(str, o.shape[1:]))))
             for name, module in model.named_modules() if name]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    assert shapes["blocks.3"] == "80x14x14" and shapes["bn2"] == "1280x7x7"
    assert {name: row[2] for name, row in rows.items()} == shapes
    assert footer.strip() == f"{len(shapes)} layers; input 224x224"


def test_output_into_a_closed_pipe_is_quiet():
    """``python -m neuroprobe layers | head -1``: the reader leaves early; no traceback on stderr."""
    proc = subprocess.Popen([PYTHON, "-m", "neuroprobe", "layers", "--filter", "blocks.3"], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before anything is written: the first write meets EPIPE
    stderr = proc.communicate(timeout=300)[1].decode()
    assert proc.returncode == 1, stderr
    assert stderr == ""


def test_info_prints_the_counts(runs, files):
    result = runs["info"]
    assert result.returncode == 0, result.stderr
    _, store = files
    status = zarr.open_array(str(store / "images" / "status"), mode="r")[:]
    ok, bad = int((status == "ok").sum()), int((status == "error").sum())
    assert (ok, bad) == (5, 2)
    assert f"images   7: {ok} done, {bad} skipped (unreadable), 0 missing (2/2 chunks written)" in result.stdout
    assert re.search(r"^model\s+efficientnet_lite0\s+weights .*efficientnet-lite0.*\.pth", result.stdout, re.M)
    assert re.search(r"^\s+blocks\.3\s+80 units\s+map 80x14x14 .*spatial maps$", result.stdout, re.M)
    assert re.search(r"^\s+bn2\s+1280 units\s+map 1280x7x7 ", result.stdout, re.M)
    assert "incomplete" not in result.stdout


def test_export_hdf5_equals_zarr(runs, files):
    result = runs["export"]
    assert result.returncode == 0, result.stderr
    folder, store = files
    target = folder / "small.h5"
    assert result.stdout.strip().endswith("small.h5")
    arrays = store_arrays(store)
    assert {"bn2/mean", "blocks.3/spatial", "images/status", "images/group", "journal"} <= set(arrays)
    with h5py.File(target, "r") as h5:
        names = []
        h5.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        assert sorted(names) == sorted(arrays)
        for key, values in arrays.items():
            exported = h5[key][()]
            if values.dtype.kind in "OUT":
                exported = np.array([v.decode() if isinstance(v, bytes) else v for v in exported], dtype=object)
                np.testing.assert_array_equal(exported, values.astype(object), err_msg=key)
            else:
                assert exported.dtype == values.dtype, key
                np.testing.assert_array_equal(exported, values, err_msg=key)  # NaN rows included
        attrs = dict(zarr.open_group(str(store), mode="r").attrs)
        provenance = json.loads(h5.attrs["provenance"])
        assert provenance == attrs["provenance"]
        assert provenance["model"] == "efficientnet_lite0" and len(provenance["weights_sha256"]) == 64
        assert json.loads(h5.attrs["preprocessing"]) == attrs["preprocessing"]
        for key in ("neuroprobe_version", "command", "created", "capture", "manifest_sha256"):
            assert h5.attrs[key] == attrs[key], key
        assert json.loads(h5["bn2"].attrs["feature_map_shape"]) == [1280, 7, 7]
        assert json.loads(h5["bn2/mean"].attrs["dimension_names"]) == ["image", "unit"]
    assert not (folder / "small.h5.partial").exists()


def test_export_brainscore_of_a_real_store(runs, files):
    """blocks.3 was stored with --spatial: one neuroid per (channel, y, x); bn2: its pooled mean per channel."""
    import xarray as xr

    result = runs["export brainscore"]
    assert result.returncode == 0, result.stderr
    folder, store = files
    root = zarr.open_group(str(store), mode="r")
    ok = root["images/status"][:] == "ok"
    assembly = xr.open_dataarray(folder / "small.nc")
    assert assembly.sizes == {"presentation": 5, "neuroid": 80 * 14 * 14 + 1280}
    maps = root["blocks.3/spatial"][:][ok]
    spatial = assembly.isel(neuroid=np.flatnonzero(assembly.layer.values == "blocks.3"))
    picks = [0, 1, 14, 196, 15679]  # (c, y, x) = (0,0,0), (0,0,1), (0,1,0), (1,0,0), (79,13,13)
    for k in picks:
        c, y, x = (int(spatial[name].values[k]) for name in ("channel", "channel_y", "channel_x"))
        np.testing.assert_array_equal(spatial.values[:, k], maps[:, c, y, x].astype(np.float32))
    assert [(int(spatial.channel[k]), int(spatial.channel_y[k]), int(spatial.channel_x[k])) for k in picks] == \
        [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (79, 13, 13)]
    pooled = assembly.isel(neuroid=np.flatnonzero(assembly.layer.values == "bn2"))
    np.testing.assert_array_equal(pooled.values, root["bn2/mean"][:][ok])
    assert list(assembly.group.values) == list(np.array(["a", "b", "c", "d", "e", "f", "g"])[ok])
    assert (assembly.model.values == "efficientnet_lite0").all()
