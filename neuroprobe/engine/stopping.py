"""Preemption: the first SIGTERM or SIGINT asks the engine to stop at the next batch; a second stops at once.

Cluster schedulers send SIGTERM before they preempt a job, and Ctrl-C sends SIGINT. The first one
sets :attr:`StopRequest.signum`; the engine then abandons the chunk it is filling (nothing of it is
journaled), waits until the chunks already handed to the writer are written and journaled, and
raises :class:`Stopped`. A second signal ends the process at once with 128 + the signal's number:
the store stays resumable, as after ``kill -9``, because each journal entry is written after its data.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Iterator

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """Raised by ``extract`` after a graceful stop; the CLI exits with :attr:`exit_code` (143, 130)."""

    def __init__(self, signum: int, store: str) -> None:
        self.signum, self.store = signum, store
        super().__init__(f"stopped by {self.name} ({store} is resumable)")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class StopRequest:
    """The signal that asked for a stop (None while none came)."""

    signum: int | None = None


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = SIGNALS) -> Iterator[StopRequest]:
    """Catch ``signals`` while the block runs (in the main thread only; elsewhere nothing is installed)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if request.signum is not None:
            log.warning("second signal (%s): stopping at once; the chunk in flight is lost, the store stays resumable",
                        name)
            logging.shutdown()
            os._exit(128 + signum)
        request.signum = signum
        log.warning("%s: stopping after the chunks being written are journaled (send it again to stop at once)", name)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield request
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


__all__ = ["SIGNALS", "StopRequest", "Stopped", "stop_on_signals"]
