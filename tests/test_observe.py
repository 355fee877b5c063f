"""Access log lines and Prometheus metrics for every kind of call."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request

import pytest

from tests.conformance_service import Conformance, ConformanceImpl, Header
from vgi_flight import AnnotatedBatch, RpcError, RpcServer, connect


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "vgi_flight.access"]


def test_access_log_has_one_line_per_call(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, logger="vgi_flight.access"),
        RpcServer(Conformance, ConformanceImpl(), token_key=b"k" * 32) as server,
        connect(Conformance, server.location) as proxy,
    ):
        assert proxy.add(a=1) == 11
        assert sum(b.batch.num_rows for b in proxy.count(limit=3)) == 3
        with proxy.echo_stream() as session:
            session.exchange(AnnotatedBatch.from_pydict({"x": [1.0, 2.0]}))
        with pytest.raises(RpcError):
            proxy.fail(message="x")
    lines = _lines(caplog)
    by_call = {(line["rpc"], line["method"]): line for line in lines}
    unary = by_call[("DoAction", "add")]
    assert (unary["kind"], unary["status"], unary["principal"]) == ("unary", "OK", "")
    assert isinstance(unary["duration_ms"], float)
    producer = by_call[("DoGet", "count")]
    assert (producer["kind"], producer["batches_out"], producer["rows_out"]) == ("producer", 3, 3)
    exchange = by_call[("DoExchange", "echo_stream")]
    assert (exchange["batches_in"], exchange["rows_in"], exchange["rows_out"]) == (1, 2, 2)
    assert exchange["bytes_in"] == 16
    assert by_call[("DoAction", "fail")]["status"] == "UNKNOWN"
    assert by_call[("GetFlightInfo", "count")]["kind"] == "stream-start"


def test_prometheus_metrics() -> None:
    with (
        RpcServer(Conformance, ConformanceImpl(), token_key=b"k" * 32, metrics=True) as server,
        connect(Conformance, server.location) as proxy,
    ):
        proxy.add(a=1)
        proxy.add(a=2)
        list(proxy.count(limit=4))
        with pytest.raises(RpcError):
            proxy.fail(message="x")
        text = server.metrics_text().decode()
        assert 'vgi_flight_calls_total{method="add",rpc="DoAction",status="OK"} 2.0' in text
        assert 'vgi_flight_calls_total{method="fail",rpc="DoAction",status="UNKNOWN"} 1.0' in text
        assert 'vgi_flight_rows_total{direction="out",method="count"} 4.0' in text
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server.serve_metrics(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.status == 200
            assert b"vgi_flight_call_duration_seconds_bucket" in response.read()


def test_metrics_need_opting_in() -> None:
    with RpcServer(Conformance, ConformanceImpl(), token_key=b"k" * 32) as server, pytest.raises(RuntimeError):
        server.metrics_text()


def test_later_stream_calls_open_in_one_call(caplog: pytest.LogCaptureFixture) -> None:
    """The first call of a stream method asks GetFlightInfo what it is; later calls open with the
    call request as ticket or descriptor (the single-call path), with the same header, logs and data."""
    from vgi_flight import Message

    logs: list[Message] = []
    with (
        caplog.at_level(logging.INFO, logger="vgi_flight.access"),
        RpcServer(Conformance, ConformanceImpl(), token_key=b"k" * 32) as server,
        connect(Conformance, server.location, on_log=logs.append) as proxy,
    ):
        for _ in range(2):
            session = proxy.count(limit=3)
            assert [b.batch.column("i")[0].as_py() for b in session] == [0, 1, 2]
            header_session = proxy.count_with_header(limit=2)
            assert header_session.typed_header(Header).note == "counting"
            assert sum(b.batch.num_rows for b in header_session) == 2
            with proxy.echo_stream(tag="again") as echo:
                assert echo.typed_header(Header).note == "echo"
                assert echo.exchange(AnnotatedBatch.from_pydict({"x": [4.0]})).batch.to_pydict() == {"x": [4.0]}
                token = echo.token
            assert token.startswith(b"VGT1")
    rpcs = [(line["rpc"], line["method"]) for line in _lines(caplog)]
    assert rpcs.count(("GetFlightInfo", "count")) == 1
    assert rpcs.count(("DoGet", "count")) == 2
    assert rpcs.count(("GetFlightInfo", "echo_stream")) == 1
    assert rpcs.count(("DoExchange", "echo_stream")) == 2
    assert [m.message for m in logs if m.message == "opening count"] == ["opening count"] * 2
    assert [m.message for m in logs if m.message.startswith("turn")] == ["turn 1"] * 2


def test_a_method_that_changes_stream_kind_still_opens() -> None:
    from tests import fault_service
    from tests.fault_service import FaultService, FaultServiceImpl

    fault_service.reset()
    with (
        RpcServer(FaultService, FaultServiceImpl(), token_key=b"k" * 32) as server,
        connect(FaultService, server.location) as proxy,
    ):
        assert [b.batch.column("i")[0].as_py() for b in proxy.either(key="p", exchange=False)] == [0, 1, 2]
        with proxy.either(key="x", exchange=True) as relay:  # learned "producer": refused, then asked again
            assert relay.exchange(AnnotatedBatch.from_pydict({"x": [5]})).batch.to_pydict() == {"total": [5]}
        assert [b.batch.num_rows for b in proxy.either(key="p2", exchange=False)] == [1, 1, 1]
    assert fault_service.OPENED == {"p": 1, "x": 2, "p2": 2}  # a changed kind costs one extra run
