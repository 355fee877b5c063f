"""Keep a Python thread state on the gRPC threads that call into vgi-flight.

pyarrow's Flight server runs handlers on gRPC's own (non-Python) threads and takes the GIL with
``PyGILState_Ensure`` for every callback: every ``do_action``, every batch a ``DoGet`` generator
yields. On a thread without a Python thread state that call creates one, and the matching release
destroys it again, with its frame stack: per callback, allocation, page faults and cold caches.
Measured on a producer of one-row batches it more than doubled the per-batch cost; a HMAC
``copy()`` alone went from ~1 us to ~15 us of throughput per batch.

Taking one extra ``PyGILState_Ensure`` the first time a gRPC thread runs vgi-flight code keeps that
thread's state alive, so later callbacks on the thread reuse it. The cost is one thread state per
gRPC thread that ever served a call, which lives until the thread ends (gRPC's pool reuses its
threads).
"""

from __future__ import annotations

import ctypes
import threading

_marker = threading.local()  # lives in the thread state: present means this thread is pinned already
_ensure = ctypes.pythonapi.PyGILState_Ensure
_ensure.restype = ctypes.c_int
_ensure.argtypes = []


def pin_thread_state() -> None:
    """Keep the calling thread's Python thread state after the current callback returns (idempotent).

    Called with the GIL held, as every Python code is: ``PyGILState_Ensure`` then only raises the
    thread's nesting count, which is never lowered again.
    """
    if getattr(_marker, "pinned", False):
        return
    _ensure()
    _marker.pinned = True
