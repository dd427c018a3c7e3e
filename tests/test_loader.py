"""The extraction loader: batches in order, equal to the per-image decoder, decoded ahead in a thread."""
from __future__ import annotations

import threading

import pytest
import torch

from neuroprobe import load_model
from neuroprobe.data import ImageDataset, read_manifest
from neuroprobe.engine.loader import image_batches, in_background

ROWS = [[0, 1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11]]


@pytest.fixture(scope="module")
def preprocessing():
    return load_model("resnet18", "none").preprocessing


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_equal_the_per_image_decoder(sample_csv, preprocessing, workers):
    manifest = read_manifest(sample_csv)
    dataset = ImageDataset(manifest, preprocessing)
    batches = list(image_batches(manifest, preprocessing, ROWS, torch.device("cpu"), workers=workers))
    assert [b.rows for b in batches] == ROWS
    for batch in batches:
        expected = torch.stack([dataset[i][1] for i in batch.rows])
        assert torch.equal(batch.images, expected) and batch.ok.all() and batch.reasons == [""] * len(batch.rows)
        # PIL's HWC pixels, no host copy: the batch is already laid out channels-last
        assert batch.images.is_contiguous(memory_format=torch.channels_last)


def test_background_iteration_keeps_order_and_raises_where_the_source_failed():
    def source():
        yield from range(5)
        raise ValueError("disk gone")

    got = []
    with pytest.raises(ValueError, match="disk gone"):
        for item in in_background(source(), depth=2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_background_thread_stops_when_the_consumer_leaves():
    produced = []

    def source():
        for i in range(1000):
            produced.append(i)
            yield i

    iterator = in_background(source(), depth=2)
    assert [next(iterator) for _ in range(3)] == [0, 1, 2]
    iterator.close()  # what a `for` loop left by an exception does
    assert not any(t.name == "neuroprobe-decode" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 2  # taken + queued + the one in hand (and its successor being made)


def test_device_decoding_gives_the_cpu_batches_within_the_decoder_tolerance(sample_csv, preprocessing):
    """--decode gpu on a CPU device: the same rows and records, pixels within decode.py's tolerance of PIL."""
    manifest = read_manifest(sample_csv)
    cpu = list(image_batches(manifest, preprocessing, ROWS, torch.device("cpu"), workers=0))
    dev = list(image_batches(manifest, preprocessing, ROWS, torch.device("cpu"), workers=0, decode="gpu"))
    for a, b in zip(cpu, dev, strict=True):
        assert a.rows == b.rows and a.reasons == b.reasons and (a.ok == b.ok).all()
        diff = (a.images.int() - b.images.int()).abs()
        assert diff.max() <= 2 and diff.float().mean() < 0.06


def test_idle_decoding_thread_runs_at_idle_priority_while_ahead_and_keeps_order():
    import os
    import time

    def source():
        for i in range(12):
            yield i, os.sched_getscheduler(0)  # the producing thread's own policy

    items = []
    for item in in_background(source(), depth=2, idle=True):
        items.append(item)
        time.sleep(0.02)                        # a slow consumer: the thread is soon ahead, and idle
    assert [i for i, _ in items] == list(range(12))
    # idle while ahead; raised (normal) only when the consumer found nothing, which on a loaded machine
    # happens whenever other processes take the idle thread's cycles
    assert os.SCHED_IDLE in {policy for _, policy in items[2:]}
    assert {policy for _, policy in items} <= {os.SCHED_IDLE, os.SCHED_OTHER}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the consumer's thread is untouched


def test_idle_decoding_thread_does_not_starve_when_other_processes_fill_every_core():
    """Busy processes on every core: a thread left at SCHED_IDLE would get ~0.3% of a core (measured:
    a 12-minute stall of a 20-second job); raised while the consumer waits, it finishes."""
    import subprocess
    import sys
    import time

    from neuroprobe.engine.device import available_cores

    def source():
        for i in range(10):
            total = 0
            for k in range(200_000):            # ~20 ms of pure-Python work per item
                total += k * k
            yield i

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(available_cores())]
    try:
        time.sleep(0.3)
        start = time.perf_counter()
        assert list(in_background(source(), depth=2, idle=True)) == list(range(10))
        assert time.perf_counter() - start < 15   # starved it takes minutes; fair share ~0.5 s
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
