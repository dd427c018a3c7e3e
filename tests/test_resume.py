"""Resumable extraction: ``kill -9`` at random moments, then the same command again, must give the
store of one uninterrupted run; a store made another way is refused and left untouched.

Every run is a real ``python -m neuroprobe extract`` process. The 40 sample images plus two broken
files (42 rows, chunks of 4, the last one of 2) make status/reason part of what must survive.
Set NEUROPROBE_TEST_SEED to replay the kill moments of a failed run.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import zarr
from helpers_robustness import (
    PYTHON,
    ROOT,
    assert_stores_equal,
    cli,
    cli_env,
    one_line_error,
    sample_with_bad,
    store_arrays,
    tree_digest,
)

LAYERS = ["blocks.3", "bn2"]
VARIANTS = {"stats": [], "spatial": ["--spatial", "blocks.3"]}
BAD_AT = {5: "truncated.jpg", 18: "random.jpg"}
N_IMAGES, CHUNK = 42, 4
N_CHUNKS = -(-N_IMAGES // CHUNK)


def extract_args(csv, out, variant="stats", layers=LAYERS, *extra):
    return ["extract", "--data", csv, "--layers", *layers, "--out", out, "--chunk-size", CHUNK,
            "--batch-size", 2, "--device", "cpu", "--no-progress", *VARIANTS[variant], *extra]


def start(args, log):
    return subprocess.Popen([PYTHON, "-m", "neuroprobe", *map(str, args)], cwd=ROOT, env=cli_env(),
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def journal_count(store) -> int:
    """Chunks marked done, seen on the file system while the job writes (one file per entry)."""
    try:
        return sum(1 for p in (store / "journal" / "c").iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return 0


def kill_when(proc, condition, linger: float = 0.0, timeout: float = 240) -> bool:
    """SIGKILL ``proc`` ``linger`` seconds after ``condition()`` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not condition():
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("condition for the kill never came")
        time.sleep(0.005)
    time.sleep(linger)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    csv, bad_rows = sample_with_bad(tmp_path_factory.mktemp("resume-data"), BAD_AT)
    assert len(pd.read_csv(csv)) == N_IMAGES
    return csv, bad_rows


@pytest.fixture(scope="module")
def references(dataset, tmp_path_factory):
    """One uninterrupted run per variant (both at once)."""
    csv, _ = dataset
    folder = tmp_path_factory.mktemp("reference")
    stores = {v: folder / f"{v}.zarr" for v in VARIANTS}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda v: cli(extract_args(csv, stores[v], v)), VARIANTS))
    for result in results:
        assert result.returncode == 0, result.stderr
    return stores


def assert_done_chunks_match(store, reference) -> np.ndarray:
    """Every chunk the journal calls done holds exactly the reference's rows (data before journal)."""
    done = zarr.open_group(str(store), mode="r")["journal"][:].astype(bool)  # a path or an s3:// URL
    have, want = store_arrays(store), store_arrays(reference)
    n = len(want["images/status"])
    for chunk in np.flatnonzero(done):
        rows = slice(chunk * CHUNK, min((chunk + 1) * CHUNK, n))
        for key, values in want.items():
            if key != "journal" and values.ndim and len(values) == n:
                np.testing.assert_array_equal(have[key][rows], values[rows], err_msg=f"{key} chunk {chunk}")
    return done


def check_info(store, bad_rows, capsys, monkeypatch) -> None:
    """``info`` on a partial store against counts taken from the journal and the known broken rows."""
    from neuroprobe.cli import main

    done = zarr.open_array(str(store / "journal"), mode="r")[:].astype(bool)
    finished = [r for r in range(N_IMAGES) if done[r // CHUNK]]
    skipped = sum(1 for r in finished if r in bad_rows)
    status = zarr.open_array(str(store / "images" / "status"), mode="r")[:]
    assert [status[r] for r in finished] == ["error" if r in bad_rows else "ok" for r in finished]

    monkeypatch.setenv("NEUROPROBE_NO_MALLOPT", "1")  # leave this process's malloc alone
    capsys.readouterr()
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    line = re.search(r"images\s+(\d+): (\d+) done, (\d+) skipped \(unreadable\), (\d+) missing "
                     r"\((\d+)/(\d+) chunks written\)", out)
    assert line, out
    assert tuple(map(int, line.groups())) == (N_IMAGES, len(finished) - skipped, skipped, N_IMAGES - len(finished),
                                              int(done.sum()), N_CHUNKS)
    assert ("incomplete" in out) == (len(finished) < N_IMAGES)


# where each variant is killed: "start-up" (imports, model, store creation), "writing" (a random
# moment after 1-4 chunks are journaled), "resumed" (right after a resumed job wrote one more chunk)
KILLS = {"stats": ["start-up", "writing"], "spatial": ["start-up", "writing", "resumed"]}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_killed_runs_resume_to_the_uninterrupted_store(variant, dataset, references, tmp_path, capsys, monkeypatch):
    seed = int(os.environ.get("NEUROPROBE_TEST_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    csv, bad_rows = dataset
    store, log = tmp_path / "run.zarr", tmp_path / "runs.log"
    args = extract_args(csv, store, variant)
    note = f"(NEUROPROBE_TEST_SEED={seed}; log {log})"

    for moment in KILLS[variant]:
        before = journal_count(store)
        proc = start(args, log)
        if moment == "start-up":
            assert kill_when(proc, lambda: True, linger=rng.uniform(0.0, 2.5)), note
            continue
        target = before + (rng.randint(1, 4) if moment == "writing" else 1)
        assert kill_when(proc, lambda: journal_count(store) >= target, linger=rng.uniform(0.0, 0.08)), note
        done = assert_done_chunks_match(store, references[variant])
        assert before < done.sum() < N_CHUNKS, note  # the kill landed in the middle of the job
        check_info(store, bad_rows, capsys, monkeypatch)

    result = cli(args)  # the same command to the end
    assert result.returncode == 0, f"{note}\n{result.stderr}"
    assert re.search(rf"images\s+{N_IMAGES}: 40 done, 2 skipped \(unreadable\), 0 missing", result.stdout)
    assert_stores_equal(store, references[variant])
    images = zarr.open_group(str(store), mode="r")["images"]
    assert [images["status"][r] for r in bad_rows] == ["error", "error"]
    assert all(images["reason"][r] for r in bad_rows)


# -- a store made another way ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def refusals(dataset, references, tmp_path_factory):
    """Re-runs into copies of the 'stats' store with another model, weights or data (two at a time);
    other layers: see the --overwrite test."""
    csv, _ = dataset
    folder = tmp_path_factory.mktemp("refusals")
    fewer = folder / "fewer.csv"
    pd.read_csv(csv).iloc[:20].to_csv(fewer, index=False)
    cases = {
        "model": [*extract_args(csv, None, "stats", ["layer1", "layer4"]), "--model", "resnet18", "--weights", "none"],
        "weights": [*extract_args(csv, None), "--weights", "none"],
        "manifest_sha256": extract_args(fewer, None),
    }
    runs = {}
    for name, args in cases.items():
        store = folder / f"{name}.zarr"
        shutil.copytree(references["stats"], store)
        runs[name] = (store, tree_digest(store), [a if a is not None else store for a in args])
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(runs, pool.map(lambda name: cli(runs[name][2]), runs)))
    return {name: (runs[name][0], runs[name][1], results[name]) for name in runs}


@pytest.mark.parametrize("what", ["model", "weights", "manifest_sha256"])
def test_store_made_another_way_is_refused_untouched(refusals, what):
    store, digest_before, result = refusals[what]
    line = one_line_error(result)
    assert "other settings" in line and f"{what}: store has" in line and "--overwrite" in line, line
    assert tree_digest(store) == digest_before
    assert not [p for p in store.parent.iterdir() if p.name.startswith(f".{store.name}")]  # no leftovers


def test_overwrite_replaces_the_store(dataset, references, tmp_path):
    csv, _ = dataset
    store = tmp_path / "old.zarr"
    shutil.copytree(references["stats"], store)
    digest = tree_digest(store)
    line = one_line_error(cli(extract_args(csv, store, "stats", ["bn2"])))
    assert "other settings" in line and "layers: store has ['blocks.3', 'bn2']" in line and "--overwrite" in line, line
    assert tree_digest(store) == digest
    result = cli(extract_args(csv, store, "stats", ["bn2"], "--overwrite"))
    assert result.returncode == 0, result.stderr
    root = zarr.open_group(str(store), mode="r")
    assert list(root.attrs["layers"]) == ["bn2"]
    assert "blocks.3" not in root and not (store / "blocks.3").exists()
    new, old = store_arrays(store), store_arrays(references["stats"])
    assert sorted(new) == sorted(k for k in old if not k.startswith("blocks.3/"))
    for key in new:  # bn2 and the image table are those of the first run, made the same way
        np.testing.assert_array_equal(new[key], old[key], err_msg=key)
