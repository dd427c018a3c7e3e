"""One progress meter for every long job: a tqdm bar (rate, ETA) on a terminal or in Jupyter, a log
line every 30 s otherwise (batch logs, pipes, schedulers), nothing at all when asked to be quiet.

Library code creates ``Progress(total, "occlude", unit="img")`` and calls ``update(n)``; how it shows
is the caller's choice, made once for a block of code with ``progress_mode("bar" | "log" | "off")``
(the CLI's ``--no-progress`` and ``--quiet``) or per meter with ``mode=``. ``auto`` (the default)
picks ``bar`` when stderr is a terminal or the code runs in a Jupyter kernel, ``log`` otherwise.
``NEUROPROBE_PROGRESS_INTERVAL`` sets the seconds between log lines (default 30).
"""
from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)
MODES = ("auto", "bar", "log", "off")
_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("neuroprobe_progress_mode", default="auto")
_open = 0  # meters open now: one opened inside another one's job draws below it, vanishes when done, and
#           says its total only at DEBUG, so the outer job's lines stay readable
T = TypeVar("T")


@contextmanager
def progress_mode(mode: str) -> Iterator[None]:
    """Show every meter opened inside the block as ``mode``: ``auto``, ``bar``, ``log`` or ``off``."""
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}, not {mode!r}")
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


def _resolve(mode: str | None) -> str:
    mode = mode or _MODE.get()
    if mode != "auto":
        return mode
    return "bar" if sys.stderr.isatty() or _in_jupyter() else "log"


def _in_jupyter() -> bool:
    """Whether this code runs in a Jupyter kernel (not merely in a process that imported ipykernel)."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def _interval() -> float:
    try:
        return float(os.environ.get("NEUROPROBE_PROGRESS_INTERVAL", "30"))
    except ValueError:
        return 30.0


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts work done out of ``total`` (None: unknown) and shows it as the mode says.

    ``rank``: under torchrun only rank 0 draws a bar; every rank may log. Use as a context manager, or
    call ``close()``, which logs the total and the rate (at DEBUG when quiet).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "img", *, mode: str | None = None,
                 rank: int = 0) -> None:
        global _open
        self.total, self.desc, self.unit = total, desc, unit
        self.mode = _resolve(mode)
        if self.mode == "bar" and rank != 0:
            self.mode = "log"
        if self.mode == "bar" and _open > 0 and not sys.stderr.isatty() and _in_jupyter():
            self.mode = "off"   # a notebook keeps every redraw of a text bar in its saved outputs: inner ones stay quiet
        self.count, self.start = 0, time.monotonic()
        self.last, self.interval, self.closed = self.start, _interval(), False
        self.bar, self.redirect, self.outermost = None, None, _open == 0
        _open += 1
        if self.mode == "bar":
            from tqdm.auto import tqdm

            if self.outermost:  # log lines go above the bar instead of through it
                from tqdm.contrib.logging import logging_redirect_tqdm

                self.redirect = logging_redirect_tqdm()
                self.redirect.__enter__()
            self.bar = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, smoothing=0.1,
                            leave=self.outermost)

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "log" and time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            log.info("%s", self.line())

    def line(self) -> str:
        """``occlude: 12/40 img (30%), 0.4 img/s, ETA 0:01:10`` (what a log line says)."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.count / elapsed
        if not self.total:
            return f"{self.desc}: {self.count} {self.unit}, {rate:.3g} {self.unit}/s, {_clock(elapsed)} elapsed"
        eta = (self.total - self.count) / rate if rate > 0 else float("nan")
        return (f"{self.desc}: {self.count}/{self.total} {self.unit} ({self.count / self.total:.0%}), "
                f"{rate:.3g} {self.unit}/s, ETA {_clock(eta) if eta == eta else '?'}")

    def close(self, failed: bool = False) -> None:
        """End the meter; its total and rate are logged (at DEBUG when quiet, nested or ``failed``)."""
        global _open
        if self.closed:
            return
        self.closed = True
        _open -= 1
        if self.bar is not None:
            self.bar.close()
        if self.redirect is not None:
            self.redirect.__exit__(None, None, None)
        elapsed = time.monotonic() - self.start
        quiet = self.mode == "off" or not self.outermost or failed
        log.log(logging.DEBUG if quiet else logging.INFO, "%s: %d %s in %s (%.3g %s/s)", self.desc,
                self.count, self.unit, _clock(elapsed), self.count / max(elapsed, 1e-9), self.unit)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind, *exc) -> None:
        self.close(failed=kind is not None)   # a job that raised did not finish: its error is the last word


def track(items: Iterable[T], desc: str, unit: str = "it", total: int | None = None, *,
          mode: str | None = None) -> Iterator[T]:
    """Iterate over ``items`` with a :class:`Progress` meter (one unit per item)."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, desc, unit, mode=mode) as meter:
        for item in items:
            yield item
            meter.update(1)
