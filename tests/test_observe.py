"""Access log lines and Prometheus metrics for every kind of call."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request

import pytest

from tests.conformance_service import Conformance, ConformanceImpl
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
