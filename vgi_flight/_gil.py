"""Keep a Python thread state on the gRPC threads that call into vgi-flight.

pyarrow's Flight server runs handlers on gRPC's own (non-Python) threads and takes the GIL with
``PyGILState_Ensure`` for every callback: every ``do_action``, every batch a ``DoGet`` generator
yields. On a thread without a Python thread state that call creates one, and the matching release
destroys it again, with its frame stack: per callback, allocation, page faults and cold caches.
Measured on a producer of one-row batches it more than doubled the per-batch cost; a HMAC
``copy()`` alone went from ~1 us to ~15 us of throughput per batch.

Taking one extra ``PyGILState_Ensure`` the first time a gRPC thread runs vgi-flight code keeps that
thread's state alive, so later callbacks on the thread reuse it. A pinned state is never freed,
not even when its thread ends, and gRPC's synchronous server starts and stops threads under
concurrent load (measured: ~12,000 states for 24,000 calls from 8 client threads, +2 KB per call).
So only the first :data:`MAX_PINNED` threads of a process are pinned: gRPC's long-lived threads
come first, and the memory this keeps is bounded by the cap (a few KiB per state).
"""

from __future__ import annotations

import ctypes
import threading

MAX_PINNED = 32
_marker = threading.local()  # lives in the thread state: present means this thread is pinned already
_lock = threading.Lock()
_pinned = 0
_ensure = ctypes.pythonapi.PyGILState_Ensure
_ensure.restype = ctypes.c_int
_ensure.argtypes = []


def pin_thread_state() -> None:
    """Keep the calling thread's Python thread state after the current callback returns (idempotent).

    Called with the GIL held, as every Python code is: ``PyGILState_Ensure`` then only raises the
    thread's nesting count, which is never lowered again.
    """
    global _pinned
    if getattr(_marker, "pinned", False):
        return
    with _lock:
        if _pinned >= MAX_PINNED:
            return
        _pinned += 1
    _ensure()
    _marker.pinned = True
