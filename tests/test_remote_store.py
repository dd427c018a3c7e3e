"""Stores at fsspec URLs, against a real S3 server (moto's server mode) started here on localhost.

Extraction into ``s3://`` is killed with SIGKILL while it writes, resumed by the same command, and
must then equal an uninterrupted local run bit for bit (decoded arrays, image table, attributes);
a store made another way is refused untouched; the report reads it like a local store.
"""
from __future__ import annotations

import logging
import random
import time

import numpy as np
import pandas as pd
import pytest
from helpers_robustness import assert_stores_equal, cli, one_line_error, sample_with_bad, store_arrays
from test_resume import BAD_AT, CHUNK, assert_done_chunks_match, extract_args, kill_when, start

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

BUCKET = "neuroprobe-test"


@pytest.fixture(scope="module")
def s3(monkeypatch_module):
    """A moto S3 server on a free local port, its bucket, and the environment that points at it."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    for key, value in env.items():
        monkeypatch_module.setenv(key, value)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    yield fs, env
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


N_ROWS = 19  # the first rows of test_resume's data: both broken files, five chunks of 4 (the last of 3)
N_CHUNKS = -(-N_ROWS // CHUNK)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    csv, bad_rows = sample_with_bad(tmp_path_factory.mktemp("remote-data"), BAD_AT)
    pd.read_csv(csv).iloc[:N_ROWS].to_csv(csv, index=False)
    assert bad_rows == [5, 18]
    return csv, bad_rows


@pytest.fixture(scope="module")
def local_reference(dataset, tmp_path_factory):
    """One uninterrupted run on the local disk."""
    store = tmp_path_factory.mktemp("remote-reference") / "local.zarr"
    result = cli(extract_args(dataset[0], store))
    assert result.returncode == 0, result.stderr
    return store


def journal_objects(fs, url: str) -> int:
    """Chunks marked done, as objects on the server (one per journal entry); polled gently, since the
    server answers from a thread of this process."""
    time.sleep(0.03)
    try:
        return sum(1 for p in fs.ls(url.removeprefix("s3://") + "/journal/c", refresh=True)
                   if p.rsplit("/", 1)[-1].isdigit())
    except FileNotFoundError:
        return 0


def run_main(args, capsys) -> tuple[int, str, str]:
    """``python -m neuroprobe ARGS`` in this process (cheaper than a fresh interpreter): code, out, err."""
    from neuroprobe.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(args, capsys) -> str:
    code, _, err = run_main(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("neuroprobe: error:"), (code, err)
    return lines[0]


@pytest.fixture(autouse=True)
def _no_mallopt(monkeypatch):
    monkeypatch.setenv("NEUROPROBE_NO_MALLOPT", "1")  # leave this process's malloc alone


def test_extract_killed_on_s3_resumes_to_the_local_store(s3, dataset, local_reference, tmp_path, capsys):
    fs, env = s3
    csv, bad_rows = dataset
    url = f"s3://{BUCKET}/run.zarr"
    args = extract_args(csv, url)
    rng = random.Random()
    target = rng.randint(1, 3)
    proc = start(args, tmp_path / "run.log")
    assert kill_when(proc, lambda: journal_objects(fs, url) >= target, linger=rng.uniform(0.0, 0.08)), \
        (tmp_path / "run.log").read_text()
    done = assert_done_chunks_match(url, local_reference)
    assert target <= done.sum() < N_CHUNKS  # killed in the middle, data before journal on S3 too

    code, out, _ = run_main(["info", url], capsys)
    assert code == 0
    assert f"store    {url}" in out and f"({int(done.sum())}/{N_CHUNKS} chunks written)" in out and "incomplete" in out

    result = cli(args)  # the same command to the end
    assert result.returncode == 0, result.stderr
    assert f"images   {N_ROWS}: 17 done, 2 skipped (unreadable), 0 missing" in result.stdout
    assert_stores_equal(url, local_reference)
    from neuroprobe import read_images
    pd.testing.assert_frame_equal(read_images(url), read_images(local_reference))

    # the report reads the remote store exactly as the local one
    from neuroprobe.analysis import analyze
    remote, local = (analyze(s, "dog", k=3, n=5, permutations=20) for s in (url, local_reference))
    for part in local:
        pd.testing.assert_frame_equal(remote[part], local[part])
    code, out, err = run_main(["report", url, "--k", 2, "--n", 3, "--permutations", 10, "--out", tmp_path / "report"],
                              capsys)
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "report" / "topk.csv")) > 0

    # another model's run into it is refused, and the store is left as it was
    before = store_arrays(url)
    line = error_line([*args, "--weights", "none"], capsys)
    assert "other settings" in line and "weights: store has" in line and "--overwrite" in line, line
    after = store_arrays(url)
    assert sorted(after) == sorted(before)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], strict=True)


def test_a_killed_upload_is_replaced_and_a_foreign_prefix_refused(s3, dataset, capsys):
    fs, _ = s3
    csv, _ = dataset
    fs.pipe(f"{BUCKET}/partial.zarr/.neuroprobe-partial", b"")           # a creation killed mid-upload
    fs.pipe(f"{BUCKET}/partial.zarr/images/zarr.json", b"{}")
    fs.pipe(f"{BUCKET}/foreign/notes.txt", b"not a store")
    line = error_line(extract_args(csv, f"s3://{BUCKET}/foreign", "stats", ["bn2"]), capsys)
    assert "non-empty folder that is not a store" in line, line
    assert fs.cat(f"{BUCKET}/foreign/notes.txt") == b"not a store"
    small = csv.parent / "first8.csv"
    pd.read_csv(csv).iloc[:8].to_csv(small, index=False)
    code, out, err = run_main(extract_args(small, f"s3://{BUCKET}/partial.zarr", "stats", ["bn2"]), capsys)
    assert code == 0, err
    assert not fs.exists(f"{BUCKET}/partial.zarr/.neuroprobe-partial")
    assert "images   8: 7 done, 1 skipped (unreadable), 0 missing" in out, out


def test_urls_name_what_is_missing(s3, dataset, local_reference, capsys):
    csv, _ = dataset
    line = error_line(extract_args(csv, "s3://no-such-bucket/run.zarr"), capsys)
    assert "bucket 'no-such-bucket' does not exist" in line, line
    line = error_line(["info", "abfs://container/run.zarr"], capsys)
    assert "pip install adlfs" in line, line
    line = error_line(["info", f"s3://{BUCKET}/nothing.zarr"], capsys)
    assert "is not a neuroprobe store" in line, line
    code, out, err = run_main(["info", f"file://{local_reference}"], capsys)
    assert code == 0 and f"{N_ROWS}: 17 done" in out, err


def test_map_stores_at_a_url_equal_local_ones(s3, dataset, tmp_path):
    """``occlude`` (and every map store: the same open/resume code) writes to S3 what it writes locally."""
    from helpers_robustness import store_attrs

    from neuroprobe.maps.occlusion_store import occlude
    from neuroprobe.models.loading import load_model

    csv, _ = dataset
    few = tmp_path / "few.csv"
    pd.read_csv(csv).iloc[4:6].to_csv(few, index=False)  # a photo and an unreadable image
    model = load_model("efficientnet_lite0")
    options = {"units": [0, 1], "window": 112, "stride": 112, "device": "cpu"}
    local = occlude(model, few, "blocks.3", tmp_path / "occ.zarr", **options)
    url = occlude(model, few, "blocks.3", f"s3://{BUCKET}/occ.zarr", **options)
    assert url == f"s3://{BUCKET}/occ.zarr"
    got, want = store_arrays(url), store_arrays(local)
    assert sorted(got) == sorted(want) and list(want["images/status"]) == ["ok", "error"]
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key, strict=True)
    assert store_attrs(url) == store_attrs(local)
    assert occlude(model, few, "blocks.3", url, **options) == url  # reopened with the same settings: nothing to do
