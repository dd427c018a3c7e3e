"""Keep glibc from handing large blocks back to the OS after every forward pass (CPU speed).

On Linux/glibc each forward pass mmaps and unmaps its large activation buffers, and the page
faults that follow dominate CPU inference (measured: EfficientNet-Lite0 24 -> 85 img/s on 2
cores). The CLI calls :func:`keep_freed_memory` at start-up, and the library before any CPU run
(extraction, occlusion, attribution); set NEUROPROBE_NO_MALLOPT=1 to opt out. The heap is trimmed only above 2 GiB (mallopt takes
an int), so a CPU run whose freed buffers exceed that still returns the excess to the OS.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


@functools.cache
def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and never trim it; True when applied (once per process)."""
    if not sys.platform.startswith("linux") or os.environ.get("NEUROPROBE_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    log.debug("glibc malloc: mmap off, trim off (%s)", applied)
    return applied


def keep_freed_memory_on_cpu(device) -> None:
    """:func:`keep_freed_memory` when ``device`` is the CPU (GPU runs leave host malloc alone)."""
    if getattr(device, "type", str(device)).startswith("cpu"):
        keep_freed_memory()
