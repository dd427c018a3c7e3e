"""Progress on every long job: the meter itself, then every long command as a user runs it.

Log lines are made every NEUROPROBE_PROGRESS_INTERVAL seconds (0 here: every update), so a job of a few
images shows its periodic lines; a pseudo-terminal shows the tqdm bar; --quiet shows neither.
"""
from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuroprobe.progress import Progress, progress_mode, track

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture
def every_update(monkeypatch):
    monkeypatch.setenv("NEUROPROBE_PROGRESS_INTERVAL", "0")


def _lines(caplog, desc: str) -> list[str]:
    """Periodic lines of the meter ``desc`` (``desc...: 3/8 img (38%), ...``), not its closing line."""
    pattern = re.compile(re.escape(desc) + r"[^:]*: \d+/\d+ \S+ \(\d+%\), \S+ \S+/s, ETA ")
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and pattern.match(r.getMessage())]


def test_log_lines_count_rate_and_eta(every_update, caplog):
    caplog.set_level(logging.INFO)
    with Progress(4, "job", "img", mode="log") as meter:
        for _ in range(4):
            meter.update(1)
    lines = _lines(caplog, "job")
    assert [line.split(",")[0] for line in lines] == ["job: 1/4 img (25%)", "job: 2/4 img (50%)",
                                                      "job: 3/4 img (75%)", "job: 4/4 img (100%)"]
    assert lines[-1].endswith("ETA 0:00:00")
    assert re.match(r"job: 4 img in 0:00:\d\d \(", caplog.records[-1].getMessage())


def test_log_lines_wait_for_the_interval(monkeypatch, caplog):
    monkeypatch.setenv("NEUROPROBE_PROGRESS_INTERVAL", "3600")
    caplog.set_level(logging.INFO)
    with Progress(100, "slow", mode="log") as meter:
        meter.update(50)
    assert not _lines(caplog, "slow")
    assert len([r for r in caplog.records if r.getMessage().startswith("slow: 50 img in")]) == 1


def test_quiet_shows_nothing_and_the_mode_reaches_inner_meters(every_update, caplog, capsys):
    caplog.set_level(logging.INFO)
    with progress_mode("off"):
        for _ in track(iter(range(3)), "inner", "item"):  # no len(): total unknown
            pass
        with Progress(2, "outer") as meter:
            meter.update(2)
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    assert capsys.readouterr().err == ""


def test_a_bar_with_rate_and_total_on_stderr(capsys):
    with Progress(3, "drawn", "img", mode="bar") as meter:
        for _ in range(3):
            meter.update(1)
    err = capsys.readouterr().err
    assert "drawn" in err and "3/3" in err and "img/s" in err


def test_only_rank_0_draws_a_bar(every_update, caplog, capsys):
    caplog.set_level(logging.INFO)
    with Progress(2, "rank1", mode="bar", rank=1) as meter:
        meter.update(2)
    assert capsys.readouterr().err == ""
    assert len(_lines(caplog, "rank1")) == 1


def test_unknown_modes_are_refused():
    with pytest.raises(ValueError, match="auto, bar, log, off"):
        with progress_mode("loud"):
            pass


# --- every long command, as a user runs it -------------------------------------------------------------

@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Six sample images (two dogs), human maps for four of them, a store of one layer, a likelihood store."""
    from neuroprobe import extract

    folder = tmp_path_factory.mktemp("progress")
    table = pd.read_csv(SAMPLE / "labels.csv")
    table = pd.concat([table.iloc[:4], table[table.class_index.between(151, 268)].iloc[:2]]).reset_index(drop=True)
    table["path"] = [str((SAMPLE / p).resolve()) for p in table.path]
    table["kind"] = np.where(table.class_index.between(151, 268), "dog", "other")
    table.to_csv(folder / "six.csv", index=False)
    rng = np.random.default_rng(0)
    for path in table.path[:4]:
        target = folder / "maps" / Path(path).relative_to("/").with_suffix(".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, rng.random((64, 64)).astype(np.float32))
    extract("efficientnet_lite0", folder / "six.csv", ["blocks.1"], folder / "six.zarr", chunk_size=2,
            progress=False)
    return folder


COMMANDS = {  # command: (arguments after it, the meter that must show)
    "extract": (["--data", "{d}/six.csv", "--layers", "blocks.1", "--out", "{o}/x.zarr", "--chunk-size", "2"],
                "extract"),
    "report": (["{d}/six.zarr", "--permutations", "0", "--k", "1", "--n", "2", "--out", "{o}"], "analyze"),
    "export": (["{d}/six.zarr", "{o}/six.nc", "--to", "netcdf"], "export"),
    "occlude": (["--layer", "blocks.1", "--units", "0-1", "--window", "56", "--stride", "56", "--data",
                 "{d}/six.csv", "--out", "{o}/occ.zarr"], "occlude"),
    "rf": (["{d}/six.zarr", "--layers", "blocks.1", "--units", "0", "--k", "2", "--window", "56", "--stride", "56",
            "--out", "{o}"], "receptive fields"),
    "saliency": (["--method", "gradient", "--data", "{d}/six.csv", "--batch-size", "2", "--out", "{o}/s.zarr"],
                 "saliency"),
    "localize": (["--data", "{d}/six.csv", "--methods", "gradient", "--grid", "2", "--n", "1", "--cell-size", "112",
                  "--out", "{o}"], "localize"),
    "search": (["--data", "{d}/six.csv", "--grid", "2", "--view", "crop", "--batch-size", "2", "--view-size", "64",
                "--examples", "1", "--out", "{o}"], "search"),
    "align": (["--data", "{d}/six.csv", "--maps", "{d}/maps", "--batch-size", "2", "--out", "{o}"], "align"),
    "train-attention": (["--gala", "blocks.5.0", "--loss", "gala", "--data", "{d}/six.csv", "--maps", "{d}/maps",
                         "--steps", "2", "--batch-size", "2", "--out", "{o}"], "train-attention"),
    "visualize": (["--layer", "blocks.1", "--units", "0", "--direction", "max", "--steps", "3", "--size", "64",
                   "--out", "{o}"], "visualize"),
    "finetune": (["--data", "{d}/six.csv", "--label-column", "kind", "--epochs", "2", "--val-fraction", "0.5",
                  "--out", "{o}"], "finetune"),
    "atlas": (["{d}/six.zarr", "--permutations", "0", "--k", "1", "--n", "2", "--out", "{o}/site"], "atlas blocks.1"),
}


def _run(command: str, job: Path, out: Path, *extra: str) -> int:
    from neuroprobe.cli import main

    args, _ = COMMANDS[command]
    return main([command, *[a.format(d=job, o=out) for a in args], "--device", "cpu", *extra]
                if command in ("occlude", "rf", "saliency", "localize", "search", "align", "train-attention",
                               "visualize", "finetune", "extract", "atlas") else
                [command, *[a.format(d=job, o=out) for a in args], *extra])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_long_command_logs_its_progress(command, job, tmp_path, every_update, caplog):
    caplog.set_level(logging.INFO)
    assert _run(command, job, tmp_path) == 0
    desc = COMMANDS[command][1]
    assert _lines(caplog, desc), f"{command} logged no progress line of '{desc}'"


def test_saccade_and_rdm_log_their_progress(job, tmp_path, every_update, caplog):
    from neuroprobe.analysis import rdm
    from neuroprobe.cli import main

    caplog.set_level(logging.INFO)
    assert _run("search", job, tmp_path / "search") == 0
    assert main(["saccade", "--likelihood", str(tmp_path / "search"), "--data", str(job / "six.csv"), "--folds", "2",
                 "--epochs", "3", "--glimpse", "32", "--device", "cpu", "--out", str(tmp_path / "saccade")]) == 0
    assert _lines(caplog, "saccade (glimpse features)") and _lines(caplog, "saccade (saliency maps)")
    assert _lines(caplog, "saccade (linear head)") and _lines(caplog, "saccade (conv head)")
    rdm(job / "six.zarr", "blocks.1")
    assert _lines(caplog, "rdm (blocks.1)")


def test_quiet_silences_a_command(job, tmp_path, every_update, caplog):
    caplog.set_level(logging.INFO)
    assert _run("occlude", job, tmp_path, "--quiet") == 0
    assert not _lines(caplog, "occlude") and not _lines(caplog, "occlusion")


def _subprocess_args(job: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "neuroprobe", "occlude", "--layer", "blocks.1", "--units", "0", "--window", "56",
            "--stride", "56", "--device", "cpu", "--data", str(job / "six.csv"), "--out", str(out / "occ.zarr")]


def test_a_pipe_gets_log_lines(job, tmp_path):
    env = {**os.environ, "NEUROPROBE_PROGRESS_INTERVAL": "0"}
    piped = subprocess.run(_subprocess_args(job, tmp_path / "piped"), capture_output=True, text=True, env=env,
                           timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert re.search(r"INFO occlude: 6/6 img \(100%\), \S+ img/s, ETA 0:00:00", piped.stderr), piped.stderr
    assert "\r" not in piped.stderr  # no bar redrawn into a log file


TERMINAL_JOB = """
import logging, time
from neuroprobe.progress import Progress
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
with Progress(6, "occlude", "img") as meter:              # mode auto: stderr is the terminal
    for _ in range(6):
        with Progress(4, "occlusion (blocks.1)", "copy") as inner:
            inner.update(4)
        logging.getLogger("neuroprobe.maps").info("a log line while the bar is drawn")
        meter.update(1)
"""


def test_a_terminal_gets_a_bar_with_log_lines_above_it():
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal's size, as tmux's
    process = subprocess.Popen([sys.executable, "-c", TERMINAL_JOB], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=follower, cwd=ROOT)
    os.close(follower)
    seen = b""
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        seen += data
    assert process.wait(timeout=60) == 0
    text = seen.decode(errors="replace")
    assert re.search(r"occlude: +100%\|.*\| 6/6 ", text), text[-2000:]
    assert "\r" in text and "img/s" in text
    assert text.count("INFO a log line while the bar is drawn") == 6
    final = text.rstrip().splitlines()[-1]
    assert final.startswith("INFO occlude: 6 img in"), final   # inner meters say their totals only at DEBUG


def test_auto_is_log_when_piped_even_if_ipykernel_was_imported(every_update, caplog):
    """A test run or script that merely imported ipykernel (nbclient does) is not a Jupyter kernel."""
    import ipykernel  # noqa: F401

    caplog.set_level(logging.INFO)
    with Progress(2, "piped") as meter:
        assert meter.mode == "log"
        meter.update(2)
    assert len(_lines(caplog, "piped")) == 1


def test_in_a_notebook_only_the_outermost_meter_draws(tmp_path):
    """A real kernel: the outer bar is in the saved outputs, the inner meters' redraws are not."""
    import nbformat
    from nbclient import NotebookClient

    code = ("from neuroprobe.progress import Progress\n"
            "with Progress(3, 'outer job', 'fold') as outer:\n"
            "    for _ in range(3):\n"
            "        with Progress(50, 'inner epochs', 'epoch') as inner:\n"
            "            for _ in range(50):\n"
            "                inner.update(1)\n"
            "        outer.update(1)\n")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    text = "".join(o.get("text", "") for o in notebook.cells[0].outputs)
    assert "outer job" in text and "3/3" in text, text
    assert "inner epochs" not in text, text
