"""One writer per store: an exclusive ``flock`` on a file inside the store while ``extract`` writes.

The kernel releases the lock when the process ends, however it ends (``kill -9`` included), so a
lock is never stale. A second ``extract`` on the same store fails at once with one line naming the
process that holds it. The lock file holds that process's id and host while it runs and is empty
afterwards, so two stores made the same way stay identical. Under ``torchrun`` the ranks share the
store by design (disjoint chunks) and take no lock. Remote stores (``s3://``, ``gs://``) cannot be
locked: object stores have no locks; see the README.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import logging
import os
import socket
from typing import Iterator

from ..errors import NeuroprobeError
from .location import Location

log = logging.getLogger(__name__)

LOCK_FILE = ".neuroprobe-lock"


@contextlib.contextmanager
def writer_lock(location: Location) -> Iterator[None]:
    """Hold the store's lock for the block; refuse with one line when another process holds it."""
    if location.remote:
        log.debug("%s: remote stores are not locked; run one extract per store", location)
        yield
        return
    path = location.path / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise NeuroprobeError(f"{location} is being written by another extract ({holder}); wait for it to "
                                  "finish or stop it, then run this command again (it resumes)") from None
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # the store may have been removed meanwhile
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


__all__ = ["LOCK_FILE", "writer_lock"]
