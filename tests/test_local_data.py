"""The local data channel: producers read over a Unix socket by clients on the server's host.

Real servers and clients throughout; the raw-wire tests speak the channel with nothing but
pyarrow and a socket, as a client in another language would (wire protocol §5.6).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from vgi_flight import (
    AnnotatedBatch,
    ArrowSerializableDataclass,
    CallContext,
    ExchangeState,
    HmacAuth,
    HmacKey,
    Level,
    OutputCollector,
    ProducerState,
    RpcError,
    RpcServer,
    ServerAuth,
    Stream,
    StreamState,
    connect,
)
from vgi_flight._wire import encode_call

KEY = b"local-data-test-key-0123456789ab"
SCHEMA = pa.schema([("i", pa.int64()), ("v", pa.float64())])
RELEASE = threading.Event()  # lets a test hold the fourth batch of `held` until it has acted


@dataclass
class CountState(ProducerState):
    limit: int
    fail_at: int = -1
    log_every: int = 0
    n: int = 0

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.n == self.fail_at:
            raise ValueError(f"no row {self.n}")
        if self.n >= self.limit:
            out.finish()
            return
        if self.log_every and self.n % self.log_every == 0:
            out.client_log(Level.INFO, f"at {self.n}")
        rows = range(self.n * 1000, (self.n + 1) * 1000)
        out.emit(
            pa.record_batch([pa.array(rows, pa.int64()), pa.array([r / 2 for r in rows])], schema=SCHEMA),
            metadata={"n": str(self.n)},
        )
        self.n += 1


@dataclass
class HeldState(ProducerState):
    limit: int
    n: int = 0

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.n == 3:
            RELEASE.wait(30)
        if self.n >= self.limit:
            out.finish()
            return
        out.emit_pydict({"i": [self.n], "v": [float(os.getpid())]})
        self.n += 1


@dataclass
class EchoState(ExchangeState):
    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        out.emit(input.batch)


@dataclass
class Header(ArrowSerializableDataclass):
    rows: int
    label: str


class LocalService(Protocol):
    def count(self, limit: int, fail_at: int = -1, log_every: int = 0) -> Stream[StreamState]: ...
    def labelled(self, limit: int) -> Stream[StreamState, Header]: ...
    def held(self, limit: int) -> Stream[StreamState]: ...
    def echo(self) -> Stream[StreamState]: ...


class LocalServiceImpl:
    def count(self, limit: int, fail_at: int = -1, log_every: int = 0) -> Stream[CountState]:
        if limit < 0:
            raise ValueError("limit must not be negative")
        return Stream(output_schema=SCHEMA, state=CountState(limit, fail_at, log_every))

    def labelled(self, limit: int, *, ctx: CallContext) -> Stream[CountState, Header]:
        ctx.client_log(Level.INFO, "opening labelled")
        return Stream(output_schema=SCHEMA, state=CountState(limit), header=Header(limit * 1000, f"{limit} batches"))

    def held(self, limit: int) -> Stream[HeldState]:
        return Stream(output_schema=SCHEMA, state=HeldState(limit))

    def echo(self) -> Stream[EchoState]:
        return Stream(output_schema=SCHEMA, state=EchoState(), input_schema=SCHEMA)


def expected_rows(limit: int) -> list[int]:
    return list(range(limit * 1000))


def rows_of(batches: Iterator[AnnotatedBatch] | Any) -> list[int]:
    return [i for b in batches for i in b.batch.column("i").to_pylist()]


@pytest.fixture
def server() -> Iterator[RpcServer]:
    with RpcServer(LocalService, LocalServiceImpl(), token_key=KEY, local_data=True) as srv:
        yield srv


@pytest.fixture
def replicas() -> Iterator[tuple[RpcServer, RpcServer]]:
    """Two replicas sharing the token key, each with a local data channel; `held` streams wait for RELEASE."""
    RELEASE.clear()
    a = RpcServer(LocalService, LocalServiceImpl(), token_key=KEY, local_data=True)
    b = RpcServer(LocalService, LocalServiceImpl(), token_key=KEY, local_data=True)
    try:
        yield a, b
    finally:
        RELEASE.set()
        a.shutdown(10)
        b.shutdown(10)


def test_producer_over_the_local_channel_matches_flight(server: RpcServer) -> None:
    logs: list[str] = []
    with connect(LocalService, server.location, local_data=True, on_log=lambda m: logs.append(m.message)) as svc:
        local = list(svc.count(limit=20, log_every=5))
    with connect(LocalService, server.location) as svc:
        over_flight = list(svc.count(limit=20, log_every=5))
    assert [b.batch for b in local] == [b.batch for b in over_flight]
    assert rows_of(local) == expected_rows(20)
    assert [dict(b.custom_metadata or {}) for b in local] == [{b"n": str(n).encode()} for n in range(20)]
    assert logs == [f"at {n}" for n in range(0, 20, 5)]
    stats = server.stats()
    assert stats.streams_completed == 2
    assert stats.open_streams == 0
    assert server.local_data_path is not None
    assert os.stat(server.local_data_path).st_mode & 0o077 == 0


def test_later_streams_open_on_the_channel_in_one_call(server: RpcServer, caplog: pytest.LogCaptureFixture) -> None:
    logs: list[str] = []
    caplog.set_level(logging.INFO, logger="vgi_flight.access")
    with connect(LocalService, server.location, local_data=True, on_log=lambda m: logs.append(m.message)) as svc:
        first = svc.labelled(limit=3)
        assert first.header == Header(3000, "3 batches")
        assert rows_of(first) == expected_rows(3)
        caplog.clear()
        second = svc.labelled(limit=4)  # the proxy knows it is a producer now
        assert second.header == Header(4000, "4 batches")
        assert rows_of(second) == expected_rows(4)

    def calls() -> list[tuple[str, str, str, int]]:
        records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "vgi_flight.access"]
        return [(c["rpc"], c["kind"], c["method"], c["rows_out"]) for c in records]

    # The server logs a stream once it has sent its end: poll (boundedly) for the second one.
    wait_for(lambda: ("DoGet", "producer-local", "labelled", 4000) in calls())
    second_calls = [c for c in calls() if c[3] != 3000]  # the first stream's record may land late
    assert second_calls == [("DoAction", "action", "__local_data__", 0), ("DoGet", "producer-local", "labelled", 4000)]
    assert logs == ["opening labelled", "opening labelled"]


def test_session_token_advances_with_local_batches(server: RpcServer) -> None:
    with connect(LocalService, server.location, local_data=True) as svc:
        session = svc.count(limit=10)
        seen = []
        for batch in session:
            seen.append(batch)
            if len(seen) == 4:
                break
        token = session.token
    # The token of the fourth batch resumes at the fifth, here over plain Flight.
    reader = flight.FlightClient(server.location).do_get(flight.Ticket(token))
    rest = [c.data for c in reader if c.data is not None and c.data.num_rows]
    assert [r for b in rest for r in b.column("i").to_pylist()] == list(range(4000, 10000))


def test_errors_opening_on_the_channel_are_typed(server: RpcServer) -> None:
    with connect(LocalService, server.location, local_data=True) as svc:
        assert rows_of(svc.count(limit=1)) == expected_rows(1)  # now known to be a producer
        with pytest.raises(RpcError) as info:
            svc.count(limit=-1)  # opens on the channel in one call; the method refuses
    assert info.value.error_type == "ValueError"
    assert info.value.error_message == "limit must not be negative"


def test_errors_reach_the_client_typed_and_without_traceback(server: RpcServer) -> None:
    with connect(LocalService, server.location, local_data=True) as svc:
        got: list[int] = []

        def read() -> None:
            for batch in svc.count(limit=10, fail_at=3):
                got.extend(batch.batch.column("i").to_pylist())

        with pytest.raises(RpcError) as info:
            read()
    assert got == list(range(3000))
    assert info.value.error_type == "ValueError"
    assert "no row 3" in info.value.error_message
    assert info.value.remote_traceback == ""
    assert server.stats().streams_failed == 1


def test_client_that_stops_reading_abandons_the_stream(server: RpcServer) -> None:
    with connect(LocalService, server.location, local_data=True) as svc:
        for n, _ in enumerate(svc.count(limit=100_000)):
            if n == 2:
                break
        assert rows_of(svc.count(limit=3)) == expected_rows(3)  # still serving
    wait_for(lambda: server.stats().streams_abandoned == 1)
    stats = server.stats()
    assert stats.streams_abandoned == 1
    assert stats.open_streams == 0


def test_server_without_channel_or_unreachable_socket_falls_back_to_flight(tmp_path: Any) -> None:
    with (
        RpcServer(LocalService, LocalServiceImpl(), token_key=KEY) as plain,
        connect(LocalService, plain.location, local_data=True) as svc,
    ):
        assert rows_of(svc.count(limit=5)) == expected_rows(5)
        assert rows_of(svc.count(limit=2)) == expected_rows(2)
    path = str(tmp_path / "data.sock")
    with RpcServer(LocalService, LocalServiceImpl(), token_key=KEY, local_data=path) as far:
        assert far.local_data_path == path
        os.unlink(path)  # as if the server ran on another host: the path is not there
        with connect(LocalService, far.location, local_data=True) as svc:
            assert rows_of(svc.count(limit=5)) == expected_rows(5)
        assert far.stats().streams_completed == 1


def test_exchanges_stay_on_flight(server: RpcServer) -> None:
    with connect(LocalService, server.location, local_data=True) as svc, svc.echo() as session:
        batch = pa.record_batch([pa.array([1, 2]), pa.array([0.5, 1.0])], schema=SCHEMA)
        assert session.exchange(AnnotatedBatch(batch)).batch == batch


def read_held(replicas: tuple[RpcServer, RpcServer], act: Callable[[RpcServer], None]) -> tuple[list[int], RpcServer]:
    """Read `held(limit=8)` over both replicas; at the third batch, while the producer is held, run
    ``act`` on the replica serving it, then release it. Returns the rows and that replica."""
    a, b = replicas
    got: list[int] = []
    serving = a
    with connect(LocalService, [a.location, b.location], local_data=True) as svc:
        for batch in svc.held(limit=8):
            got.append(batch.batch.column("i")[0].as_py())
            if len(got) == 3:
                serving = a if a.stats().open_streams else b
                act(serving)
                RELEASE.set()
    return got, serving


def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(200):  # bounded: 10 s
        if condition():
            return
        threading.Event().wait(0.05)


def test_stream_resumes_on_another_replica_when_the_channel_closes(replicas: tuple[RpcServer, RpcServer]) -> None:
    def stop(serving: RpcServer) -> None:
        threading.Thread(target=serving.shutdown, args=(10,), daemon=True).start()
        wait_for(lambda: not os.path.exists(serving.local_data_path or ""))

    got, stopped = read_held(replicas, stop)
    assert got == list(range(8))  # nothing lost, nothing twice: resumed from the third batch's token
    survivor = replicas[1] if stopped is replicas[0] else replicas[0]
    assert survivor.stats().streams_completed == 1  # the rest came from the other replica


def test_drained_replica_hands_local_streams_off(replicas: tuple[RpcServer, RpcServer]) -> None:
    # No drain deadline: the stream ends at its next turn with UNAVAILABLE and resumes elsewhere.
    def drain(serving: RpcServer) -> None:
        threading.Thread(target=serving.drain, kwargs={"deadline": 0, "grace": 10}, daemon=True).start()
        wait_for(lambda: serving._dispatcher.ending)  # past the (zero) drain deadline

    got, drained = read_held(replicas, drain)
    assert got == list(range(8))
    wait_for(lambda: drained.stats().streams_handed_off == 1)
    assert drained.stats().streams_handed_off == 1
    other = replicas[1] if drained is replicas[0] else replicas[0]
    assert other.stats().streams_completed == 1


def test_hmac_protects_the_grant() -> None:
    auth = ServerAuth(hmac_keys={"k1": HmacKey(b"s" * 32, "alice")})
    with RpcServer(LocalService, LocalServiceImpl(), token_key=KEY, local_data=True, auth=auth) as srv:
        with connect(LocalService, srv.location, local_data=True, auth=HmacAuth("k1", b"s" * 32)) as svc:
            assert rows_of(svc.count(limit=4)) == expected_rows(4)
        token = _open_token(srv.location, HmacAuth("k1", b"s" * 32))
        with pytest.raises(flight.FlightUnauthenticatedError):
            list(flight.FlightClient(srv.location).do_action(flight.Action("__local_data__", token)))
        with connect(LocalService, srv.location, local_data=True, auth=HmacAuth("k1", b"s" * 32)) as svc:
            assert rows_of(svc.count(limit=1)) == expected_rows(1)  # still serving


def _open_token(location: str, auth: HmacAuth | None = None) -> bytes:
    from vgi_flight._auth import request_payload

    request = encode_call("count", pa.record_batch({"limit": [6], "fail_at": [-1], "log_every": [0]}))
    client = flight.FlightClient(location)
    headers = list(auth.headers("GetFlightInfo", request_payload("GetFlightInfo", request))) if auth else []
    info = client.get_flight_info(
        flight.FlightDescriptor.for_command(request), flight.FlightCallOptions(headers=headers)
    )
    ticket: bytes = info.endpoints[0].ticket.ticket
    return ticket


# --- the wire, with pyarrow and a socket only ---------------------------------------------------


def _grant(location: str, token: bytes) -> tuple[str, bytes]:
    result = list(flight.FlightClient(location).do_action(flight.Action("__local_data__", token)))
    body = json.loads(result[0].body.to_pybytes())
    assert set(body) == {"path", "grant", "expires_in"}
    return body["path"], base64.b64decode(body["grant"])


def _read_raw(path: str, secret: bytes) -> list[tuple[pa.RecordBatch, dict[str, Any]]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(secret)
        reader = pa.ipc.open_stream(sock.makefile("rb"))
        messages = []
        while True:
            try:
                batch, custom = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                return messages
            messages.append((batch, json.loads(custom[b"vgi.app_metadata"])))


def test_raw_wire_grant_stream_and_end(server: RpcServer) -> None:
    token = _open_token(server.location)
    path, secret = _grant(server.location, token)
    assert path == server.local_data_path
    assert len(secret) == 32
    messages = _read_raw(path, secret)
    kinds = [m["kind"] for _, m in messages]
    assert kinds == ["ready"] + ["data"] * 6 + ["end"]
    data = [(b, m) for b, m in messages if m["kind"] == "data"]
    assert [m["seq"] for _, m in data] == list(range(1, 7))
    assert [r for b, _ in data for r in b.column("i").to_pylist()] == expected_rows(6)
    assert all(b.schema == SCHEMA for b, _ in messages)
    # The last data message's token resumes past the end: the stream is complete.
    last = base64.b64decode(data[-1][1]["token"])
    assert [m["kind"] for _, m in _read_raw(*_grant(server.location, last))] == ["ready", "end"]


def test_raw_wire_call_request_opens_the_stream_on_the_channel(server: RpcServer) -> None:
    request = encode_call("labelled", pa.record_batch({"limit": [2]}))
    messages = _read_raw(*_grant(server.location, request))
    assert [m["kind"] for _, m in messages] == ["log", "ready", "data", "data", "end"]
    ready = messages[1][1]
    assert ready["stream"] == "producer"
    assert ready["seq"] == 0
    header = pa.ipc.open_stream(base64.b64decode(ready["header"])).read_all().to_pylist()
    assert header == [{"rows": 2000, "label": "2 batches"}]
    # An exchange's call request gets a grant (its kind is known once it runs), then the refusal.
    ((_, error),) = _read_raw(*_grant(server.location, encode_call("echo", pa.record_batch({}))))
    assert (error["kind"], error["code"], error["error_type"]) == ("error", "INVALID_ARGUMENT", "WrongStreamKind")
    client = flight.FlightClient(server.location)
    unknown = encode_call("nope", pa.record_batch({}))
    with pytest.raises(flight.FlightError, match="UnknownMethod"):
        list(client.do_action(flight.Action("__local_data__", unknown)))


def test_raw_wire_grant_is_single_use_and_bad_grants_are_refused(server: RpcServer) -> None:
    token = _open_token(server.location)
    path, secret = _grant(server.location, token)
    assert [m["kind"] for _, m in _read_raw(path, secret)][-1] == "end"
    for bad in (secret, os.urandom(32)):
        ((batch, error),) = _read_raw(path, bad)
        assert batch.num_rows == 0
        assert error["kind"] == "error"
        assert error["code"] == "UNAUTHENTICATED"
        assert error["error_type"] == "LocalGrantError"
        assert "traceback" not in error
    # A connection that presents half a grant and hangs up, and one that presents nothing.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(b"x" * 10)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
    assert [m["kind"] for _, m in _read_raw(*_grant(server.location, token))][-1] == "end"  # still serving


def test_raw_wire_refusals_on_the_grant_action(server: RpcServer) -> None:
    client = flight.FlightClient(server.location)
    token = _open_token(server.location)
    tampered = token[:-1] + bytes([token[-1] ^ 1])
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(client.do_action(flight.Action("__local_data__", tampered)))
    exchange = client.get_flight_info(flight.FlightDescriptor.for_command(encode_call("echo", pa.record_batch({}))))
    with pytest.raises(flight.FlightError, match="WrongStreamKind"):
        list(client.do_action(flight.Action("__local_data__", exchange.endpoints[0].ticket.ticket)))
    with (
        RpcServer(LocalService, LocalServiceImpl(), token_key=KEY) as plain,
        pytest.raises(flight.FlightError, match="LocalDataUnavailable"),
    ):
        list(flight.FlightClient(plain.location).do_action(flight.Action("__local_data__", token)))
    assert ("__local_data__" in {a.type for a in client.list_actions()}) is True


def test_shutdown_removes_the_socket_and_its_directory() -> None:
    srv = RpcServer(LocalService, LocalServiceImpl(), token_key=KEY, local_data=True)
    path = srv.local_data_path
    assert path is not None
    assert os.path.exists(path)
    assert os.stat(os.path.dirname(path)).st_mode & 0o077 == 0
    srv.shutdown()
    assert not os.path.exists(os.path.dirname(path))
