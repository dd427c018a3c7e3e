"""The extraction loader: batches in order, equal to the per-image decoder, decoded ahead in a thread."""
from __future__ import annotations

import threading

import pytest
import torch

from neuroprobe import load_model
from neuroprobe.data import ImageDataset, read_manifest
from neuroprobe.loader import image_batches, in_background

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


def test_idle_decoding_thread_runs_at_idle_priority_and_keeps_order():
    import os

    def source():
        for i in range(4):
            yield i, os.sched_getscheduler(0)  # the producing thread's own policy

    items = list(in_background(source(), depth=2, idle=True))
    assert [i for i, _ in items] == [0, 1, 2, 3]
    assert {policy for _, policy in items} == {os.SCHED_IDLE}  # lowering one's own priority needs no privilege
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the consumer's thread is untouched
