"""Hold glibc's malloc thresholds fixed in every benchmark process, for every side alike.

A received Flight message lands in buffers that gRPC mallocs on its event-engine threads (and,
over TLS, decrypts into). With glibc's defaults the mmap threshold adapts to what was freed last
and a heap's free top goes back to the kernel past the trim threshold, so whether a 1 MiB message
is written into fresh pages (a page fault and a zeroed page per 4 KiB) depends on the process's
allocation history. Measured on a bulk producer client: 40,000 to 110,000 faults per GiB, the
same code faster or slower by up to 25% from one process to the next, and a different draw for
each side sharing the process, so a whole run could favour either library. With both thresholds
fixed the faults are gone on every side (raw Flight's client: 2.0-2.5 -> 2.7-3.0 GB/s within an hour).

:func:`hold_thresholds` sets them in this process (``mallopt``) and, through glibc's environment
variables, in every child started afterwards: servers, vgi-rpc workers, nginx.
``python -m benchmarks --malloc-defaults`` leaves glibc's defaults, to see the effect.
"""

from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 32 * 2**20  # glibc's largest; fixing it also ends the adaptive threshold
TRIM_THRESHOLD = 256 * 2**20
ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3


def hold_thresholds() -> str:
    """Fix the thresholds here and in later children; return what the run used, for its report."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "allocator defaults (no glibc mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "allocator defaults (mallopt refused)"
    os.environ.update(ENVIRONMENT)
    return "glibc malloc thresholds held: mmap 32 MiB, trim 256 MiB (every process)"
