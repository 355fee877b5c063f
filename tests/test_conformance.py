"""Conformance: typed echo, streams, headers, errors, logs and cancellation through the public API."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID

import pyarrow as pa
import pytest

from tests import conformance_service as svc
from tests.conformance_service import Color, Conformance, ConformanceImpl, Header, Inner, Rich
from vgi_flight import AnnotatedBatch, ErrorCode, Level, Message, RpcError, RpcServer, connect, serve_pipe


class LogSink:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, msg: Message) -> None:
        self.messages.append(msg)


@pytest.fixture
def logs() -> LogSink:
    return LogSink()


@pytest.fixture(params=["pipe", "process"])
def proxy(request: pytest.FixtureRequest, logs: LogSink, spawn_server: Callable[..., Any]) -> Iterator[Conformance]:
    if request.param == "pipe":
        with serve_pipe(Conformance, ConformanceImpl(), on_log=logs) as p:
            yield p
    else:
        server = spawn_server("tests.conformance_service:Conformance", "tests.conformance_service:ConformanceImpl")
        with connect(Conformance, server.location, on_log=logs) as p:
            yield p


@pytest.fixture
def local(logs: LogSink) -> Iterator[Conformance]:
    """In-process only: for tests that inspect server-side effects."""
    with serve_pipe(Conformance, ConformanceImpl(), on_log=logs) as p:
        yield p


RICH = Rich(
    n=7,
    tags=["a", "b\x00c"],
    color=Color.GREEN,
    inner=Inner("in", 2.5),
    maybe=None,
    counts={"x": 1, "y": -2},
    colors=frozenset({Color.RED, Color.GREEN}),
)


@pytest.mark.parametrize(
    ("method", "value"),
    [
        ("echo_int", 2**63 - 1),
        ("echo_int", -(2**63)),
        ("echo_str", "nul\x00inside ünïcode"),
        ("echo_bytes", b"\x00\xff\x00"),
        ("echo_float", -0.0),
        ("echo_float", math.inf),
        ("echo_bool", True),
        ("echo_optional", None),
        ("echo_optional", "set"),
        ("echo_rich", RICH),
        ("echo_list", [1, 2, 3]),
        ("echo_dict", {"a": 1.5}),
        ("echo_enum", Color.RED),
        ("echo_datetime", dt.datetime(2024, 2, 29, 12, 30, 1, 123456)),
        ("echo_decimal", Decimal("12345.6789")),
        ("echo_uuid", UUID("12345678-1234-5678-1234-567812345678")),
        ("echo_uint64", 2**64 - 1),
    ],
)
def test_typed_echo(proxy: Conformance, method: str, value: object) -> None:
    result = getattr(proxy, method)(value=value)
    assert result == value
    assert type(result) is type(value)
    if isinstance(value, float) and value == 0:
        assert math.copysign(1, result) == math.copysign(1, value)


def test_defaults_merge_client_side(proxy: Conformance) -> None:
    assert proxy.add(a=1) == 11
    assert proxy.add(a=1, b=2) == 3


def test_void(proxy: Conformance) -> None:
    assert proxy.nothing() is None


def test_keyword_only(proxy: Conformance) -> None:
    with pytest.raises(TypeError, match="keyword"):
        proxy.add(1, 2)  # type: ignore[misc]


def test_none_for_required_is_type_error(proxy: Conformance) -> None:
    with pytest.raises(TypeError, match="parameter 'a' is not optional but got None"):
        proxy.add(a=None)  # type: ignore[arg-type]


def test_unknown_method_is_attribute_error(proxy: Conformance) -> None:
    with pytest.raises(AttributeError, match="has no RPC method 'nope'"):
        proxy.nope  # type: ignore[attr-defined]  # noqa: B018


def test_remote_exception(proxy: Conformance) -> None:
    with pytest.raises(RpcError) as info:
        proxy.fail(message="boom")
    err = info.value
    assert err.error_type == "ValueError"
    assert err.error_message == "boom"
    assert "boom" in str(err)
    assert err.remote_traceback == ""
    assert err.code is ErrorCode.UNKNOWN


def test_remote_rpc_error_keeps_code(proxy: Conformance) -> None:
    with pytest.raises(RpcError) as info:
        proxy.fail_with_code()
    assert (info.value.error_type, info.value.code) == ("QuotaExceeded", ErrorCode.RESOURCE_EXHAUSTED)


def test_server_keeps_serving_after_errors(proxy: Conformance) -> None:
    for _ in range(3):
        with pytest.raises(RpcError):
            proxy.fail(message="x")
    assert proxy.add(a=1, b=1) == 2


def test_unary_logs_in_order_before_return(proxy: Conformance, logs: LogSink) -> None:
    assert proxy.logs_then_value(count=3) == 3
    assert logs.messages == [Message(Level.INFO, f"log {i}", index=i) for i in range(3)]


def test_no_framework_logs(proxy: Conformance, logs: LogSink) -> None:
    proxy.add(a=1)
    list(proxy.count(limit=2))
    assert logs.messages == [Message(Level.INFO, "opening count")]


def test_producer(proxy: Conformance, logs: LogSink) -> None:
    session = proxy.count(limit=5, log_every=2)
    assert logs.messages == [Message(Level.INFO, "opening count")]
    values = [b.batch.column("i")[0].as_py() for b in session]
    assert values == [0, 1, 2, 3, 4]
    assert [m.message for m in logs.messages] == ["opening count", "at 0", "at 2", "at 4"]


def test_producer_header_before_iteration(proxy: Conformance) -> None:
    session = proxy.count_with_header(limit=3)
    assert session.typed_header(Header) == Header(3, "counting")
    assert sum(b.batch.num_rows for b in session) == 3


def test_empty_producer(proxy: Conformance) -> None:
    assert list(proxy.count(limit=0)) == []


def test_exchange_with_header_logs_and_metadata(proxy: Conformance, logs: LogSink) -> None:
    with proxy.echo_stream() as session:
        assert session.header == Header(0, "echo")
        for i in range(3):
            batch = AnnotatedBatch(pa.record_batch({"x": [float(i)]}), pa.KeyValueMetadata({"turn": str(i)}))
            out = session.exchange(batch)
            assert out.batch.to_pydict() == {"x": [float(i)]}
            assert out.custom_metadata is not None
            assert out.custom_metadata[b"turn"] == str(i).encode()
            assert logs.messages[-1] == Message(Level.INFO, f"turn {i + 1}")


def test_exchange_input_safe_cast(proxy: Conformance) -> None:
    with proxy.echo_stream() as session:
        for arr in (pa.array([1], pa.int32()), pa.array([2], pa.int64()), pa.array([1.5], pa.float32())):
            out = session.exchange(AnnotatedBatch(pa.record_batch({"x": arr})))
            assert out.batch.schema.field("x").type == pa.float64()


def test_exchange_wrong_column(proxy: Conformance) -> None:
    with proxy.echo_stream() as session, pytest.raises(RpcError):
        session.exchange(AnnotatedBatch.from_pydict({"y": [1.0]}))


def test_exchange_error_reaches_client(proxy: Conformance) -> None:
    with proxy.echo_stream(fail_on=2) as session:
        session.exchange(AnnotatedBatch.from_pydict({"x": [1.0]}))
        with pytest.raises(RpcError, match="turn 2 fails") as info:
            session.exchange(AnnotatedBatch.from_pydict({"x": [1.0]}))
        assert info.value.error_type == "ValueError"
    assert proxy.add(a=1) == 11


def test_zero_column_exchange(proxy: Conformance) -> None:
    empty = pa.RecordBatch.from_struct_array(pa.array([{}] * 4, pa.struct([])))
    with proxy.zero_columns() as session:
        for turn in range(1, 6):
            out = session.exchange(AnnotatedBatch(empty))
            assert out.batch.to_pydict() == {"turns": [turn], "rows": [4]}


def test_close_then_exchange_is_protocol_error(proxy: Conformance) -> None:
    session = proxy.echo_stream()
    session.exchange(AnnotatedBatch.from_pydict({"x": [1.0]}))
    session.close()
    with pytest.raises(RpcError, match="ProtocolError"):
        session.exchange(AnnotatedBatch.from_pydict({"x": [1.0]}))


def test_cancel_then_exchange_is_protocol_error(proxy: Conformance) -> None:
    session = proxy.echo_stream()
    session.cancel()
    with pytest.raises(RpcError, match="ProtocolError"):
        session.exchange(AnnotatedBatch.from_pydict({"x": [1.0]}))


def test_broken_stream_method(proxy: Conformance) -> None:
    with pytest.raises(RpcError, match="must return a Stream") as info:
        proxy.broken_stream()
    assert info.value.code is ErrorCode.INTERNAL


# --- cancellation: in-process so the server-side effect is visible ----------------------------


def _cancelled_for(tag: str) -> list[str]:
    with svc.CANCEL_LOCK:
        return [c for c in svc.CANCELLED if c.startswith(tag + "@")]


def test_cancel_exchange_runs_on_cancel_once(local: Conformance) -> None:
    session = local.echo_stream(tag="ex1")
    session.exchange(AnnotatedBatch.from_pydict({"x": [1.0]}))
    session.exchange(AnnotatedBatch.from_pydict({"x": [1.0]}))
    session.cancel()
    assert _cancelled_for("ex1") == ["ex1@2"]
    session.cancel()
    session.close()
    assert _cancelled_for("ex1") == ["ex1@2"]


def test_cancel_exchange_before_first_turn(local: Conformance) -> None:
    session = local.echo_stream(tag="ex2")
    session.cancel()
    assert _cancelled_for("ex2") == ["ex2@0"]


def test_close_then_cancel_runs_nothing(local: Conformance) -> None:
    session = local.echo_stream(tag="ex3")
    session.exchange(AnnotatedBatch.from_pydict({"x": [1.0]}))
    session.close()
    session.cancel()
    assert _cancelled_for("ex3") == []


def test_cancel_producer_mid_stream(local: Conformance) -> None:
    session = local.count(limit=1000, tag="p1")
    it = iter(session)
    for _ in range(3):
        next(it)
    session.cancel()
    assert _cancelled_for("p1") == ["p1@3"]


def test_abandoned_producer_does_not_hang(local: Conformance) -> None:
    for _ in range(3):
        for _batch in local.count(limit=10**9, tag="abandon"):
            break
    assert local.add(a=1) == 11
    assert _cancelled_for("abandon") == []


def test_abandoned_exchange_does_not_hang_shutdown(logs: LogSink) -> None:
    with serve_pipe(Conformance, ConformanceImpl(), on_log=logs) as p:
        session = p.echo_stream()
        session.exchange(AnnotatedBatch.from_pydict({"x": [1.0]}))
        # leave the session open: leaving serve_pipe must still return
    assert session is not None


def test_large_batches_arrive_whole(proxy: Conformance) -> None:
    rows = 400_000  # ~10 MiB per batch: more than gRPC's default 4 MiB receive limit
    batches = list(proxy.big(rows=rows))
    assert [b.batch.num_rows for b in batches] == [rows, rows]
    assert batches[1].batch.column("i")[rows - 1].as_py() == 2 * rows - 1
    assert batches[0].batch.column("s")[rows - 1].as_py() == f"row-{rows - 1:08d}"
    big_input = pa.record_batch({"x": pa.array([float(i) for i in range(1_000_000)])})  # 8 MB
    with proxy.echo_stream() as session:
        out = session.exchange(AnnotatedBatch(big_input))
        assert out.batch.equals(big_input)


def test_client_reassembles_sliced_batches_read_from_a_token() -> None:
    """A stream opened without asking for whole batches (e.g. by a client with gRPC's 4 MiB limit)
    arrives in data_part slices; the Python client joins them, also when it picks the stream up from a token."""
    import pyarrow.flight as flight

    from vgi_flight import _wire as wire
    from vgi_flight._client import StreamSession

    rows = 400_000
    with (
        RpcServer(Conformance, ConformanceImpl(), "grpc://127.0.0.1:0", token_key=b"t" * 32) as server,
        connect(Conformance, server.location) as proxy,
    ):
        params = pa.record_batch({"rows": pa.array([rows]), "batches": pa.array([3])})
        raw = flight.connect(server.location)
        info = raw.get_flight_info(flight.FlightDescriptor.for_command(wire.encode_call("big", params)))
        raw.close()
        transport = proxy._t  # type: ignore[attr-defined]
        session = StreamSession(
            transport,
            method="big",
            exchange=False,
            token=info.endpoints[0].ticket.ticket,
            seq=0,
            output_schema=info.schema,
            input_schema=pa.schema([]),
            header=None,
            location=server.location,
            endpoints=[],
        )
        batches = [b.batch for b in session]
        assert [b.num_rows for b in batches] == [rows] * 3
        assert batches[2].column("i")[rows - 1].as_py() == 3 * rows - 1
