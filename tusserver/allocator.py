"""glibc malloc tuning for streaming bodies, applied in every process that serves uploads.

uvicorn hands the app body chunks of up to ~256 KiB as fresh `bytes`. With glibc's default thresholds
such buffers are mmapped and unmapped, or the heap is trimmed and regrown, for every chunk: page
faults that halve throughput (DESIGN.md, measured with ../shared/bench). `tune_malloc` sets the
thresholds in this process (`mallopt`); `MALLOC_ENV` carries them to processes started later (uvicorn
workers), whose glibc reads them at start-up. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 128 * 1024 * 1024
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_malloc() -> bool:
    """Pin the thresholds in this process (unless the environment already chose); True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError):
        return False
    mmap = int(os.environ.get("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD))
    trim = int(os.environ.get("MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD))
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))


def export_to_children() -> None:
    """Make processes started from here on (uvicorn workers) begin with the same tuning."""
    for name, value in MALLOC_ENV.items():
        os.environ.setdefault(name, value)
