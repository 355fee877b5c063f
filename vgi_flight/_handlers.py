"""Running service handlers so that a hung one cannot hold a call, or the server, forever.

By default a handler runs on the gRPC thread serving its call: the fastest path. With a handler
deadline the server runs each handler invocation (a unary method, a stream method, one
``produce``/``exchange`` turn, ``on_cancel``) on a worker thread and the gRPC thread waits for it,
ending the call when the deadline passes, when the client goes away, or when a draining server
passes its drain deadline. Python cannot stop a thread, so a handler that never returns keeps its
(daemon) worker; it is counted until it returns, and its ``ctx.cancelled`` reads ``True``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from vgi_flight._errors import ErrorCode, RequestRejectedError

T = TypeVar("T")

_POLL_SECONDS = 0.05  # how often a waiting gRPC thread looks at the client and the server's drain state
_MAX_IDLE_WORKERS = 64


class _FlightContext(Protocol):
    def is_cancelled(self) -> bool: ...


class HandlerEndedError(RequestRejectedError):
    """The call was ended while its handler was still running (its watch is ended)."""


class CallWatch:
    """Whether a call is still wanted; safe to ask from any thread, also after the call ended.

    pyarrow's call context must not be used once the Flight call has returned, yet a handler on a
    worker (or one that kept its ``ctx``) may still ask whether it was cancelled.
    """

    __slots__ = ("_context", "_lock", "_over")

    def __init__(self, context: _FlightContext) -> None:
        """Watch the call of ``context``."""
        self._context = context
        self._lock = threading.Lock()
        self._over = False

    def cancelled(self) -> bool:
        """Whether the client went away, or the call has ended."""
        with self._lock:
            return self._over or bool(self._context.is_cancelled())

    def end(self) -> None:
        """Mark the call over: from now on :meth:`cancelled` is ``True`` without touching the context."""
        with self._lock:
            self._over = True


class _Job(Generic[T]):
    __slots__ = ("abandoned", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.abandoned = False


class _Worker:
    """A daemon thread that runs one job at a time, then offers itself to the pool again."""

    def __init__(self, pool: HandlerPool) -> None:
        self._pool = pool
        self._wake = threading.Event()
        self._job: _Job[Any] | None = None
        self.thread = threading.Thread(target=self._loop, name="vgi-flight-handler", daemon=True)
        self.thread.start()

    def submit(self, job: _Job[Any]) -> None:
        self._job = job
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            job = self._job
            self._job = None
            if job is None:
                return  # retired
            try:
                job.result = job.fn()
            except BaseException as exc:  # handed to the waiting thread, which reports it
                job.error = exc
            if not self._pool.finished(self, job):
                return


class HandlerPool:
    """Run handler invocations on worker threads, waiting at most ``deadline`` seconds for each."""

    def __init__(self, deadline: float | None) -> None:
        """Create an empty pool; workers start on demand and idle ones are reused.

        Args:
            deadline: Longest wait for one invocation (``None``: no limit; the call still ends when
                the client goes away or the server passes its drain deadline).
        """
        self.deadline = deadline
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._hung = 0
        self.timed_out = 0

    @property
    def hung(self) -> int:
        """Invocations whose call was ended while they were still running and that have not returned yet."""
        return self._hung

    def run(self, fn: Callable[[], T], watch: CallWatch, ending: Callable[[], bool]) -> T:
        """Run ``fn`` on a worker and return its result (or raise its exception).

        Args:
            fn: The handler invocation.
            watch: The call it serves; ended here if the call gives up on ``fn``.
            ending: Whether the server has passed its drain deadline.

        Raises:
            HandlerEndedError: DEADLINE_EXCEEDED (the deadline passed), CANCELLED (the client went
                away) or UNAVAILABLE (the server is shutting down) while ``fn`` was still running.
        """
        job: _Job[T] = _Job(fn)
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker(self)
        worker.submit(job)
        end = None if self.deadline is None else time.monotonic() + self.deadline
        while not job.done.wait(_POLL_SECONDS if end is None else max(0.0, min(_POLL_SECONDS, end - time.monotonic()))):
            if end is not None and time.monotonic() >= end:
                self._abandon(job, watch)
                with self._lock:
                    self.timed_out += 1
                raise HandlerEndedError(
                    ErrorCode.DEADLINE_EXCEEDED,
                    f"the handler did not finish within {self.deadline} s",
                    "DeadlineExceeded",
                )
            if ending():
                self._abandon(job, watch)
                raise HandlerEndedError(
                    ErrorCode.UNAVAILABLE,
                    "server is shutting down: resume the stream on another replica",
                    "Unavailable",
                )
            if watch.cancelled():
                self._abandon(job, watch)
                raise HandlerEndedError(ErrorCode.CANCELLED, "the client went away", "Cancelled")
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]  # set when no error was raised

    def _abandon(self, job: _Job[Any], watch: CallWatch) -> None:
        watch.end()  # the handler's ctx.cancelled now reads True
        with self._lock:
            if not job.done.is_set():
                job.abandoned = True
                self._hung += 1

    def finished(self, worker: _Worker, job: _Job[Any]) -> bool:
        """A worker finished ``job``; return whether it should wait for another."""
        with self._lock:
            job.done.set()
            if job.abandoned:
                self._hung -= 1
            if len(self._idle) >= _MAX_IDLE_WORKERS:
                return False
            self._idle.append(worker)
            return True
