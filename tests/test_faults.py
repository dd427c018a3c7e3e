"""Faults a long extraction meets, made real: SIGTERM/SIGINT (once and twice), a file-size limit
(``ulimit -f``, what a full disk returns), flipped and truncated chunk files, a second writer, and
an incomplete store handed to the readers. After each: the one line the user sees, the exit code,
and the same command resuming to the store of one uninterrupted run, bit for bit.

Every run is a real ``python -m neuroprobe extract`` process on the 42-row sample of test_resume
(chunks of 4). Set NEUROPROBE_TEST_SEED to replay the moments of a failed run.
"""
from __future__ import annotations

import os
import random
import re
import resource
import shutil
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import zarr
from helpers_robustness import BIN, PYTHON, ROOT, assert_stores_equal, cli, cli_env, one_line_error, tree_digest
from test_resume import CHUNK, N_CHUNKS, N_IMAGES, assert_done_chunks_match, extract_args, journal_count

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # every run: torchrun's default, so that its stores compare bit for bit
SEED = int(os.environ.get("NEUROPROBE_TEST_SEED", random.randrange(2**31)))
STOP_LINE = re.compile(r"^neuroprobe: stopped by (SIGTERM|SIGINT): (\d+) of 42 images done \((\d+) of 11 chunks "
                       r"journaled\) in (\S+); resume with: python -m neuroprobe extract .*--out (\S+) ")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from helpers_robustness import sample_with_bad
    from test_resume import BAD_AT

    csv, bad_rows = sample_with_bad(tmp_path_factory.mktemp("faults-data"), BAD_AT)
    return csv, bad_rows


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """One uninterrupted run (stats only)."""
    csv, _ = dataset
    store = tmp_path_factory.mktemp("faults-reference") / "reference.zarr"
    result = cli(extract_args(csv, store), **ONE_THREAD)
    assert result.returncode == 0, result.stderr
    return store


def start(args, folder, launcher=(PYTHON, "-m", "neuroprobe")):
    """A real extract in its own session (so SIGINT is not ignored), stdout and stderr to files."""
    out, err = (folder / "stdout.log").open("wb"), (folder / "stderr.log").open("wb")
    return subprocess.Popen([*map(str, launcher), *map(str, args)], cwd=ROOT, env=cli_env(**ONE_THREAD),
                            stdout=out, stderr=err, start_new_session=True)


def wait_for(proc, condition, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the job ended (or hung) before the fault could be made (seed {SEED})")
        time.sleep(0.005)


def last_error_line(result: subprocess.CompletedProcess) -> str:
    """Exit status 2, no traceback, and the last stderr line is the one error line (log lines come before)."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, f"exit code {result.returncode}\n{result.stderr}"
    assert lines and lines[-1].startswith("neuroprobe: error:") and "Traceback" not in result.stderr, result.stderr
    assert sum(line.startswith("neuroprobe:") for line in lines) == 1, result.stderr
    return lines[-1]


def stderr_lines(folder) -> list[str]:
    return (folder / "stderr.log").read_text().splitlines()


def resume_to_reference(csv, store, reference) -> subprocess.CompletedProcess:
    result = cli(extract_args(csv, store), **ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert re.search(rf"images\s+{N_IMAGES}: 40 done, 2 skipped \(unreadable\), 0 missing", result.stdout)
    assert_stores_equal(store, reference)
    return result


# -- preemption ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig, times", [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2)],
                         ids=["sigterm", "sigint", "sigterm-twice"])
def test_signals_stop_cleanly_and_resume(sig, times, dataset, reference, tmp_path):
    rng = random.Random(SEED + sig * 10 + times)
    csv, _ = dataset
    store = tmp_path / "run.zarr"
    proc = start(extract_args(csv, store), tmp_path)
    target = rng.randint(1, 5)
    wait_for(proc, lambda: journal_count(store) >= target)
    time.sleep(rng.uniform(0.0, 0.1))  # somewhere inside the next chunk
    proc.send_signal(sig)
    second = False
    if times == 2:  # once the first one is handled (two signals before that are one to Python)
        wait_for(proc, lambda: "stopping after the chunks being written" in (tmp_path / "stderr.log").read_text())
        second = proc.poll() is None
        proc.send_signal(sig)
    proc.wait(timeout=120)
    note = f"(NEUROPROBE_TEST_SEED={SEED})"
    assert proc.returncode == 128 + sig, f"{proc.returncode} {note}\n" + "\n".join(stderr_lines(tmp_path))
    done = assert_done_chunks_match(store, reference)  # journaled chunks hold exactly their data
    assert target <= done.sum() < N_CHUNKS, note
    lines = stderr_lines(tmp_path)
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    if times == 1:
        match = STOP_LINE.match(lines[-1])
        assert match, f"{note}\n" + "\n".join(lines)
        assert match[1] == sig.name and int(match[3]) == done.sum()
        expected_done = sum(len(range(c * CHUNK, min((c + 1) * CHUNK, N_IMAGES))) for c in np.flatnonzero(done))
        assert int(match[2]) == expected_done and match[5] == str(store)
    elif second:  # (unless the graceful stop had already ended the process)
        assert "second signal (SIGTERM): stopping at once" in lines[-1], "\n".join(lines)

    if sig == signal.SIGTERM and times == 1:  # an incomplete store is refused by the readers
        line = one_line_error(cli(["report", store, "--out", tmp_path / "report", "--permutations", 0]))
        assert f"{store} is incomplete: {expected_done} of {N_IMAGES} images done" in line, line
        assert f"finish it with: python -m neuroprobe extract" in line and "--allow-incomplete" in line, line
    resume_to_reference(csv, store, reference)


@pytest.mark.skipif(not (BIN / "torchrun").exists(), reason="torchrun is not installed beside this Python")
def test_sigterm_under_torchrun_leaves_a_consistent_store(dataset, reference, tmp_path):
    """torchrun forwards SIGTERM to both ranks; each stops on its own, every journaled chunk holds its data,
    and the same torchrun command finishes the store of one process."""
    csv, _ = dataset
    store = tmp_path / "two.zarr"
    launcher = [BIN / "torchrun", "--standalone", "--nproc-per-node", "2", "-m", "neuroprobe"]
    proc = start(extract_args(csv, store), tmp_path, launcher)
    wait_for(proc, lambda: journal_count(store) >= 2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    done = assert_done_chunks_match(store, reference)
    assert 2 <= done.sum() < N_CHUNKS
    result = subprocess.run([*map(str, launcher), *map(str, extract_args(csv, store))], cwd=ROOT,
                            env=cli_env(**ONE_THREAD), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_stores_equal(store, reference)


# -- an incomplete store, analysed on purpose ------------------------------------------------------------
def test_allow_incomplete_analyses_the_finished_images_and_says_so(dataset, reference, tmp_path):
    """A store killed with SIGKILL after some chunks: readers refuse it; with allow_incomplete the tables
    hold the finished images only (top-1 = the reference's maximum over those rows) and say so."""
    from neuroprobe import NeuroprobeError
    from neuroprobe.analysis import analyze, top_images
    from neuroprobe.maps.empirical_rf import receptive_fields_from_store

    csv, _ = dataset
    store = tmp_path / "run.zarr"
    proc = start(extract_args(csv, store), tmp_path)
    wait_for(proc, lambda: journal_count(store) >= 3)
    proc.kill()
    proc.wait()
    done = assert_done_chunks_match(store, reference)
    finished = np.repeat(done, CHUNK)[:N_IMAGES]
    n_done = int(finished.sum())

    for reader in (lambda **o: analyze(store, permutations=0, **o), lambda **o: top_images(store, **o),
                   lambda **o: receptive_fields_from_store(store, "bn2", k=1, units=[0], **o)):
        with pytest.raises(NeuroprobeError, match=rf"is incomplete: {n_done} of {N_IMAGES} images done"):
            reader()
    tables = analyze(store, permutations=0, k=1, allow_incomplete=True)
    label = f"incomplete store: {n_done} of {N_IMAGES} images"
    for name, table in tables.items():
        assert (table["completeness"] == label).all(), name
    top = tables["topk"]
    top = top[(top.criterion == "max") & (top.direction == "top") & (top.layer == "bn2")].sort_values("unit")
    values = zarr.open_array(str(reference / "bn2" / "max"), mode="r")[:]
    values[~finished] = np.nan
    np.testing.assert_array_equal(top["value"].to_numpy(np.float32), np.nanmax(values, axis=0))
    assert finished[top["image"].to_numpy()].all()

    out = tmp_path / "report"
    result = cli(["report", store, "--out", out, "--permutations", 0, "--k", 1, "--n", 5, "--allow-incomplete"])
    assert result.returncode == 0, result.stderr
    for name in ("selectivity", "topk", "opponent", "summary"):
        assert (pd.read_csv(out / f"{name}.csv")["completeness"] == label).all(), name


# -- a full disk -----------------------------------------------------------------------------------------
def test_file_size_limit_gives_one_line_and_resumes(dataset, reference, tmp_path):
    """``ulimit -f`` (EFBIG, the errno family of a full disk or a quota): chunk files above the limit fail."""
    csv, _ = dataset
    store = tmp_path / "run.zarr"
    largest_metadata = max(p.stat().st_size for p in reference.rglob("zarr.json"))
    largest_chunk = max(p.stat().st_size for p in (reference / "bn2").rglob("c/*/*"))
    limit = (largest_metadata + largest_chunk) // 2
    assert largest_metadata < limit < largest_chunk  # the store is made, its first bn2 chunk is refused
    result = subprocess.run([PYTHON, "-m", "neuroprobe", *map(str, extract_args(csv, store))], cwd=ROOT,
                            env=cli_env(**ONE_THREAD), capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    line = last_error_line(result)
    assert re.match(rf"neuroprobe: error: cannot write chunk \d+ \(images \d+-\d+\) of {re.escape(str(store))}: "
                    r"File too large \[EFBIG\]; raise the file-size limit \(ulimit -f\) or choose another --out, "
                    r"then run the same command again to resume", line), line
    assert journal_count(store) == 0  # nothing journaled that was not written
    resume_to_reference(csv, store, reference)


# -- corrupted chunk files -------------------------------------------------------------------------------
def test_corrupted_chunks_are_named_and_recomputed(dataset, reference, tmp_path):
    csv, _ = dataset
    store = tmp_path / "run.zarr"
    shutil.copytree(reference, store)
    flipped, truncated, table, entry = (store / "bn2/mean/c/3/0", store / "blocks.3/max/c/7/0",
                                        store / "images/path/c/5", store / "journal/c/9")
    for path in (flipped, table):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    for path in (truncated, entry):
        path.write_bytes(path.read_bytes()[:-3])
    before = tree_digest(store)

    result = cli(["info", store, "--check"])
    assert result.returncode == 1, result.stdout + result.stderr
    listed = re.findall(r"^bad chunk  (\S+) chunk ([\d.]+) ", result.stdout, re.M)
    assert sorted(listed) == sorted([("bn2/mean", "3.0"), ("blocks.3/max", "7.0"), ("images/path", "5"),
                                     ("journal", "9")]), result.stdout
    line = one_line_error(cli(["report", store, "--out", tmp_path / "report", "--permutations", 0]))
    assert line.startswith(f"neuroprobe: error: {store}: corrupted chunk ") and "and 3 more chunk(s)" in line, line
    assert "python -m neuroprobe extract" in line, line

    result = cli(extract_args(csv, store), **ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert "recomputing 4 chunk(s) whose files were corrupted: [3, 5, 7, 9]" in result.stderr, result.stderr
    assert_stores_equal(store, reference)
    after = tree_digest(store)
    redone = [k for k in before if before[k] != after.get(k)]
    assert redone and all(re.search(r"/c/(3|5|7|9)(/0)?$", k) for k in redone), redone  # only those chunks
    assert cli(["info", store, "--check"]).returncode == 0


# -- two writers -----------------------------------------------------------------------------------------
def test_second_writer_is_refused_and_the_lock_dies_with_its_holder(dataset, reference, tmp_path):
    """A second extract on a store being written fails naming the first; after ``kill -9`` of the first,
    no lock is left behind and the same command finishes the store."""
    csv, _ = dataset
    store = tmp_path / "run.zarr"
    first = start(extract_args(csv, store), tmp_path)
    wait_for(first, lambda: journal_count(store) >= 1)
    first.send_signal(signal.SIGSTOP)  # the first writer holds the lock for as long as the second needs
    try:
        line = last_error_line(cli(extract_args(csv, store), **ONE_THREAD))
    finally:
        first.kill()
        first.wait()
    assert f"{store} is being written by another extract (pid {first.pid} on " in line, line
    assert "wait for it to finish or stop it" in line, line
    resume_to_reference(csv, store, reference)
    assert (store / ".neuroprobe-lock").read_text() == ""
