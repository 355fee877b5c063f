"""Faults from outside: clients that vanish, deadlines on either side, cancels, slow readers, hung handlers.

Each test ends by proving the server still serves and that it holds no stream it no longer needs.
Waits are bounded polls for a condition, never assertions about how long something took.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyarrow as pa
import pytest

from tests import fault_service
from tests.conftest import ROOT, Served
from tests.fault_service import FaultService, FaultServiceImpl
from vgi_flight import AnnotatedBatch, ErrorCode, RpcError, RpcServer, ServerStats, connect

KEY = b"fault tests share this token key"


@pytest.fixture(autouse=True)
def _fresh_bookkeeping() -> Iterator[None]:
    fault_service.reset()
    yield
    fault_service.reset()  # opens every gate: no handler thread outlives its test


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def settle(server: RpcServer) -> ServerStats:
    """Wait until the server holds no call, then return its stats."""
    wait_for(lambda: server.stats().live_calls == 0 and server.stats().open_streams == 0, "the server to go idle")
    return server.stats()


def assert_serving(location: str) -> None:
    with connect(FaultService, location) as svc:
        assert svc.ping() == 1


def start_server(**options: object) -> RpcServer:
    return RpcServer(FaultService, FaultServiceImpl(), "grpc://127.0.0.1:0", token_key=KEY, **options)  # type: ignore[arg-type]


@contextmanager
def serving(**options: object) -> Iterator[RpcServer]:
    """A server for one test; on the way out every gate opens first, so no hung handler holds the shutdown."""
    server = start_server(**options)
    try:
        yield server
    finally:
        fault_service.reset()
        assert server.shutdown(timeout=30)


# --- a client that disappears -------------------------------------------------------------------

_KILLED_CLIENT = """
import sys, time
from vgi_flight import AnnotatedBatch, connect
from tests.fault_service import FaultService
import pyarrow as pa
location, kind = sys.argv[1], sys.argv[2]
svc = connect(FaultService, location).__enter__()
if kind == "producer":
    for n, _ in enumerate(svc.endless(key="victim", rows=1000)):
        if n == 5:
            print("reading", flush=True)
            time.sleep(3600)
else:
    session = svc.relay(key="victim")
    for n in range(5):
        session.exchange(AnnotatedBatch(pa.record_batch([pa.array([n], pa.int64())], names=["x"])))
    print("reading", flush=True)
    time.sleep(3600)
"""


@pytest.mark.parametrize("kind", ["producer", "exchange"])
@pytest.mark.parametrize("handler_deadline", [None, 30.0], ids=["inline", "workers"])
def test_killed_client_frees_its_stream(kind: str, handler_deadline: float | None) -> None:
    with serving(handler_deadline=handler_deadline) as server:
        env = dict(os.environ, PYTHONPATH=ROOT)
        client = subprocess.Popen(
            [sys.executable, "-c", _KILLED_CLIENT, server.location, kind], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "reading"
            assert server.stats().open_streams == 1
            client.send_signal(signal.SIGKILL)
            client.wait(timeout=30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
            if client.stdout is not None:
                client.stdout.close()
        stats = settle(server)
        assert stats.streams_abandoned == 1
        assert stats.streams_completed == stats.streams_failed == stats.streams_cancelled == 0
        assert fault_service.CANCELLED["victim"] == 0  # a vanished client may resume: no on_cancel
        produced = fault_service.PRODUCED["victim"]
        assert_serving(server.location)
        assert fault_service.PRODUCED["victim"] == produced  # nothing runs for the dead stream


def test_client_leaving_streams_early_frees_them() -> None:
    with serving() as server, connect(FaultService, server.location) as svc:
        for n, _ in enumerate(svc.endless(key="left")):
            if n == 3:
                break  # stop reading a producer: its DoGet is torn down
        with svc.relay(key="closed") as session:
            assert session.exchange(AnnotatedBatch.from_pydict({"x": [4]})).batch.to_pydict() == {"total": [4]}
        stats = settle(server)
        assert (stats.streams_abandoned, stats.streams_completed) == (1, 1)
        assert svc.ping() == 1


# --- cancel while the server is producing -------------------------------------------------------


@pytest.mark.parametrize("handler_deadline", [None, 30.0], ids=["inline", "workers"])
def test_cancel_while_producing(handler_deadline: float | None) -> None:
    with serving(handler_deadline=handler_deadline) as server, connect(FaultService, server.location) as svc:
        session = svc.endless(key="cancelled", rows=10_000)
        rows = 0
        for batch in session:
            rows += batch.batch.num_rows
            if rows == 50_000:
                session.cancel()  # returns once on_cancel has run on the server
                break
        assert fault_service.CANCELLED["cancelled"] == 1
        stats = settle(server)
        assert stats.streams_cancelled == 1
        assert stats.streams_abandoned == 1  # the DoGet the cancel tore down
        produced = fault_service.PRODUCED["cancelled"]
        assert svc.ping() == 1
        assert fault_service.PRODUCED["cancelled"] == produced

        with svc.relay(key="relay-cancelled") as relay:
            relay.exchange(AnnotatedBatch.from_pydict({"x": [1]}))
            relay.cancel()
        assert fault_service.CANCELLED["relay-cancelled"] == 1
        assert settle(server).streams_cancelled == 2


# --- a slow consumer ------------------------------------------------------------------------------


def test_slow_consumer_gets_back_pressure_not_buffering() -> None:
    """A reader that stops reading stalls the producer: what is in flight stays bounded on both sides."""
    rows = 131_072  # 1 MiB batches
    with serving() as server, connect(FaultService, server.location) as svc:
        session = svc.endless(key="slow", rows=rows)
        batches = iter(session)
        read = 0
        expected = 0
        for _ in range(2):
            batch = next(batches).batch
            assert batch.column("i")[0].as_py() == expected
            expected += rows
            read += 1

        def stable() -> bool:
            before = fault_service.PRODUCED["slow"]
            time.sleep(0.5)
            return fault_service.PRODUCED["slow"] == before

        wait_for(stable, "the stalled producer to stop producing")
        in_flight = fault_service.PRODUCED["slow"] - read
        # gRPC flow control windows (a few MiB per side) plus the batch being written; an unbounded
        # buffer would have produced the whole wait's worth (hundreds of batches).
        assert in_flight <= 32, f"{in_flight} MiB produced ahead of a stalled reader"
        for _ in range(64):  # reading again drains what was in flight, in order, then production resumes
            batch = next(batches).batch
            assert batch.column("i")[0].as_py() == expected
            expected += rows
            read += 1
        assert fault_service.PRODUCED["slow"] >= read
        session.close()
        assert settle(server).streams_abandoned == 1


# --- deadlines ------------------------------------------------------------------------------------


@pytest.mark.parametrize("handler_deadline", [None, 30.0], ids=["inline", "workers"])
def test_client_deadline_exceeded(handler_deadline: float | None) -> None:
    with (
        serving(handler_deadline=handler_deadline) as server,
        connect(FaultService, server.location, timeout=0.5) as svc,
    ):
        with pytest.raises(RpcError) as unary:
            svc.hang(gate="unary")
        assert unary.value.code is ErrorCode.DEADLINE_EXCEEDED
        with pytest.raises(RpcError) as stream:
            for _ in svc.endless(key="stream", hang_at=3):
                pass
        assert stream.value.code is ErrorCode.DEADLINE_EXCEEDED
        if handler_deadline is not None:
            # Handlers on workers: the server lets go of both calls while the handlers still hang.
            wait_for(lambda: server.stats().hung_handlers == 2, "both handlers to be left hanging")
            assert server.stats().open_streams == 0
            assert server.stats().streams_abandoned == 1
        fault_service.gate("unary").set()
        fault_service.gate("stream").set()
        wait_for(lambda: server.stats().hung_handlers == 0, "the released handlers to return")
        assert settle(server).streams_abandoned == 1
        assert svc.ping() == 1


def test_handler_deadline_ends_a_hung_unary_call() -> None:
    with serving(handler_deadline=0.3) as server, connect(FaultService, server.location) as svc:
        with pytest.raises(RpcError) as failure:
            svc.hang(gate="stuck")
        assert failure.value.code is ErrorCode.DEADLINE_EXCEEDED
        assert failure.value.error_type == "DeadlineExceeded"
        stats = server.stats()
        assert (stats.handlers_timed_out, stats.hung_handlers) == (1, 1)
        assert svc.ping() == 1  # another worker serves while the hung one holds its thread
        fault_service.gate("stuck").set()
        wait_for(lambda: server.stats().hung_handlers == 0, "the hung handler to return")

        # A handler that watches ctx.cancelled sees the deadline and stops by itself.
        with pytest.raises(RpcError) as cooperative:
            svc.hang(gate="polite", cooperative=True)
        assert cooperative.value.code is ErrorCode.DEADLINE_EXCEEDED
        wait_for(lambda: "polite" in fault_service.SAW_CANCELLED, "the handler to see ctx.cancelled")
        wait_for(lambda: server.stats().hung_handlers == 0, "the handler to return")
        assert svc.sleep(seconds=0.01) == 0.01


def test_handler_deadline_ends_a_hung_stream_turn() -> None:
    with serving(handler_deadline=0.3) as server, connect(FaultService, server.location) as svc:
        seen: list[int] = []

        def read_all() -> None:
            for batch in svc.endless(key="turn", hang_at=3):
                seen.append(batch.batch.column("i")[0].as_py())

        with pytest.raises(RpcError) as failure:
            read_all()
        assert failure.value.code is ErrorCode.DEADLINE_EXCEEDED
        assert seen == [0, 1, 2]
        stats = settle(server)
        assert (stats.streams_failed, stats.handlers_timed_out) == (1, 1)
        fault_service.gate("turn").set()
        wait_for(lambda: server.stats().hung_handlers == 0, "the hung turn to return")
        assert svc.ping() == 1


# --- a hung handler at shutdown --------------------------------------------------------------------


def test_drain_deadline_ends_a_hung_handler_and_its_stream_resumes_elsewhere(caplog: pytest.LogCaptureFixture) -> None:
    """A replica drains while a produce turn hangs: past the drain deadline the turn is abandoned,
    the server stops, and the stream continues on the other replica without loss or duplication.
    The log says at once why the stop waits, and again when the deadline passes."""
    with (
        serving(handler_deadline=600.0) as draining,
        serving() as other,
        connect(FaultService, [draining.location, other.location]) as svc,
    ):
        unary_error: list[RpcError] = []

        def hung_call() -> None:
            with connect(FaultService, draining.location) as pinned:
                try:
                    pinned.hang(gate="unary-at-drain")
                except RpcError as exc:
                    unary_error.append(exc)

        session = svc.endless(key="moving", hang_at=5)  # the pool starts with the draining replica
        values: list[int] = []

        def read() -> None:
            for batch in session:
                values.append(batch.batch.column("i")[0].as_py())
                if len(values) == 50:
                    return

        reader = threading.Thread(target=read)
        reader.start()
        wait_for(lambda: fault_service.PRODUCED["moving"] == 5, "the stream to reach its hang")
        caller = threading.Thread(target=hung_call)
        caller.start()
        wait_for(lambda: draining.stats().live_calls == 2, "the hung unary call to arrive")
        with caplog.at_level(logging.WARNING, logger="vgi_flight"):
            assert draining.drain(deadline=0.3, grace=10) is True  # stopped although both handlers hang
        drain_logs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("drain:")]
        assert drain_logs == [
            "drain: 2 call(s) open; they may run for up to 0.3 s",
            "drain: 2 call(s) still open after 0.3 s; ending their streams",
        ]
        caller.join(timeout=30)
        assert [e.code for e in unary_error] == [ErrorCode.UNAVAILABLE]
        assert draining.stats().streams_handed_off == 1
        assert draining.stats().hung_handlers == 2
        reader.join(timeout=60)
        assert values == list(range(50))  # nothing lost, nothing repeated across the hand-off
        assert svc.ping() == 1


def test_serve_process_exits_after_drain_despite_a_hung_handler(serve: Callable[..., Served]) -> None:
    """Handlers on the gRPC thread cannot be abandoned: the process leaves them after the drain deadline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = serve("tests.fault_service:FaultServiceImpl", "--drain-deadline", "0.3", "--metrics-port", str(port))
    errors: list[RpcError] = []

    def hung_call() -> None:
        with connect(FaultService, server.location, resume_attempts=0) as svc:
            try:
                svc.hang(gate="never opened")
            except RpcError as exc:
                errors.append(exc)

    caller = threading.Thread(target=hung_call)
    caller.start()

    def call_arrived() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return b"vgi_flight_live_calls 1.0" in response.read()

    wait_for(call_arrived, "the call to reach its handler")
    assert server.terminate() == 1  # SIGTERM, drain, grace, then exit with the call still open
    caller.join(timeout=30)
    assert len(errors) == 1
    assert errors[0].code in (ErrorCode.UNAVAILABLE, ErrorCode.CANCELLED, ErrorCode.INTERNAL)


def test_stats_count_batches_and_outcomes_in_metrics() -> None:
    with serving(metrics=True, handler_deadline=5.0) as server, connect(FaultService, server.location) as svc:
        for n, _ in enumerate(svc.endless(key="m")):
            if n == 2:
                break
        with svc.relay(key="r") as relay:
            relay.exchange(AnnotatedBatch(pa.record_batch([pa.array([1], pa.int64())], names=["x"])))
        settle(server)
        text = server.metrics_text().decode()
        assert 'vgi_flight_streams_ended_total{outcome="abandoned"} 1.0' in text
        assert 'vgi_flight_streams_ended_total{outcome="completed"} 1.0' in text
        assert "vgi_flight_open_streams 0.0" in text
        assert "vgi_flight_hung_handlers 0.0" in text
