"""OpenTelemetry tracing: trace context crosses the wire, server spans describe the call, metrics count it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.conformance_service import Conformance, ConformanceImpl
from vgi_flight import AnnotatedBatch, HmacAuth, HmacKey, RpcError, RpcServer, ServerAuth, connect

TOKEN_KEY = b"t" * 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Otel:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader


@pytest.fixture(scope="module")
def otel_globals() -> Otel:
    """The process-wide providers (settable once per process): reuse SDK ones already set, else set ours."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return Otel(exporter, reader)


@pytest.fixture
def otel(otel_globals: Otel) -> Iterator[Otel]:
    otel_globals.spans.clear()
    yield otel_globals
    otel_globals.spans.clear()


def wait_for(spans: InMemorySpanExporter, predicate: Callable[[ReadableSpan], bool]) -> ReadableSpan:
    """The first finished span matching ``predicate`` (server spans end on the server's threads)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [s for s in spans.get_finished_spans() if predicate(s)]
        if found:
            return found[0]
        time.sleep(0.01)
    names = [s.name for s in spans.get_finished_spans()]
    raise AssertionError(f"no matching span among {names}")


def named(name: str, kind: SpanKind) -> Callable[[ReadableSpan], bool]:
    return lambda s: s.name == name and s.kind is kind


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def assert_child(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.parent is not None
    assert parent.context is not None
    assert child.parent.trace_id == parent.context.trace_id
    assert child.parent.span_id == parent.context.span_id
    assert child.parent.is_remote


@pytest.fixture
def server(otel: Otel) -> Iterator[RpcServer]:
    with RpcServer(Conformance, ConformanceImpl(), token_key=TOKEN_KEY, tracing=True) as s:
        yield s


def test_unary_call_joins_the_client_trace(otel: Otel, server: RpcServer) -> None:
    with connect(Conformance, server.location, tracing=True) as proxy:
        assert proxy.add(a=1) == 11
    client = wait_for(otel.spans, named("vgi-flight DoAction add", SpanKind.CLIENT))
    served = wait_for(otel.spans, named("vgi-flight DoAction add", SpanKind.SERVER))
    assert trace_id(client) == trace_id(served)
    assert_child(served, client)
    attributes = dict(served.attributes or {})
    assert attributes["rpc.system"] == "vgi-flight"
    assert attributes["rpc.service"] == "Conformance"
    assert attributes["rpc.method"] == "add"
    assert attributes["vgi_flight.kind"] == "unary"
    assert attributes["vgi_flight.status"] == "OK"
    assert served.status.status_code is not StatusCode.ERROR
    assert "enduser.id" not in attributes  # anonymous
    assert dict(client.attributes or {})["rpc.method"] == "add"


def test_caller_span_is_the_parent_of_the_client_span(otel: Otel, server: RpcServer) -> None:
    with (
        connect(Conformance, server.location, tracing=True) as proxy,
        trace.get_tracer("test").start_as_current_span("job"),
    ):
        proxy.nothing()
    job = wait_for(otel.spans, lambda s: s.name == "job")
    client = wait_for(otel.spans, named("vgi-flight DoAction nothing", SpanKind.CLIENT))
    served = wait_for(otel.spans, named("vgi-flight DoAction nothing", SpanKind.SERVER))
    assert trace_id(job) == trace_id(client) == trace_id(served)
    assert client.parent is not None
    assert job.context is not None
    assert client.parent.span_id == job.context.span_id


def test_producer_spans_share_the_stream_open_trace(otel: Otel, server: RpcServer) -> None:
    with connect(Conformance, server.location, tracing=True) as proxy:
        assert sum(b.batch.num_rows for b in proxy.count(limit=3)) == 3
    client = wait_for(otel.spans, named("vgi-flight GetFlightInfo count", SpanKind.CLIENT))
    start = wait_for(otel.spans, named("vgi-flight GetFlightInfo count", SpanKind.SERVER))
    produce = wait_for(otel.spans, named("vgi-flight DoGet count", SpanKind.SERVER))
    assert trace_id(client) == trace_id(start) == trace_id(produce)
    assert_child(start, client)
    assert_child(produce, client)  # DoGet runs later, outside the open span, yet joins its trace
    attributes = dict(produce.attributes or {})
    assert (attributes["rpc.method"], attributes["vgi_flight.kind"]) == ("count", "producer")
    assert (attributes["vgi_flight.batches_out"], attributes["vgi_flight.rows_out"]) == (3, 3)
    assert dict(start.attributes or {})["vgi_flight.kind"] == "stream-start"


def test_exchange_spans_share_the_stream_open_trace(otel: Otel, server: RpcServer) -> None:
    with connect(Conformance, server.location, tracing=True) as proxy, proxy.echo_stream() as session:
        session.exchange(AnnotatedBatch.from_pydict({"x": [1.0, 2.0]}))
        session.exchange(AnnotatedBatch.from_pydict({"x": [3.0]}))
    client = wait_for(otel.spans, named("vgi-flight GetFlightInfo echo_stream", SpanKind.CLIENT))
    exchange = wait_for(otel.spans, named("vgi-flight DoExchange echo_stream", SpanKind.SERVER))
    assert trace_id(client) == trace_id(exchange)
    assert_child(exchange, client)
    attributes = dict(exchange.attributes or {})
    assert attributes["vgi_flight.kind"] == "exchange"
    assert (attributes["vgi_flight.batches_in"], attributes["vgi_flight.rows_in"]) == (2, 3)
    assert attributes["vgi_flight.rows_out"] == 3
    assert attributes["vgi_flight.bytes_in"] == 24


def test_failing_call_has_an_error_status(otel: Otel, server: RpcServer) -> None:
    with connect(Conformance, server.location, tracing=True) as proxy:
        with pytest.raises(RpcError):
            proxy.fail(message="boom")
        with pytest.raises(RpcError):
            proxy.fail_with_code()
    served = wait_for(otel.spans, named("vgi-flight DoAction fail", SpanKind.SERVER))
    assert served.status.status_code is StatusCode.ERROR
    assert served.status.description == "UNKNOWN"
    assert dict(served.attributes or {})["vgi_flight.status"] == "UNKNOWN"
    assert any(event.name == "exception" for event in served.events)
    client = wait_for(otel.spans, named("vgi-flight DoAction fail", SpanKind.CLIENT))
    assert client.status.status_code is StatusCode.ERROR
    assert trace_id(client) == trace_id(served)
    coded = wait_for(otel.spans, named("vgi-flight DoAction fail_with_code", SpanKind.SERVER))
    assert coded.status.description == "RESOURCE_EXHAUSTED"


def test_spans_the_service_starts_are_children_of_the_server_span(otel: Otel) -> None:
    class Traced(ConformanceImpl):
        def add(self, a: int, b: int = 10) -> int:
            with trace.get_tracer("service").start_as_current_span("inside add"):
                return a + b

    with (
        RpcServer(Conformance, Traced(), token_key=TOKEN_KEY, tracing=True) as server,
        connect(Conformance, server.location) as proxy,  # untraced client: the server span is a root
    ):
        proxy.add(a=2)
    served = wait_for(otel.spans, named("vgi-flight DoAction add", SpanKind.SERVER))
    inside = wait_for(otel.spans, lambda s: s.name == "inside add")
    assert served.parent is None
    assert inside.parent is not None
    assert served.context is not None
    assert inside.parent.span_id == served.context.span_id


def test_tracing_with_hmac_auth(otel: Otel) -> None:
    auth = ServerAuth(hmac_keys={"k-alice": HmacKey(b"a" * 32, "alice")})
    with RpcServer(Conformance, ConformanceImpl(), token_key=TOKEN_KEY, auth=auth, tracing=True) as server:
        with connect(Conformance, server.location, auth=HmacAuth("k-alice", b"a" * 32), tracing=True) as proxy:
            assert proxy.whoami() == "alice"
            assert sum(b.batch.num_rows for b in proxy.count(limit=2)) == 2
        with connect(Conformance, server.location, tracing=True) as anonymous, pytest.raises(RpcError):
            anonymous.add(a=1)
    client = wait_for(otel.spans, named("vgi-flight DoAction whoami", SpanKind.CLIENT))
    served = wait_for(otel.spans, named("vgi-flight DoAction whoami", SpanKind.SERVER))
    assert trace_id(client) == trace_id(served)
    assert dict(served.attributes or {})["enduser.id"] == "alice"
    opened = wait_for(otel.spans, named("vgi-flight GetFlightInfo count", SpanKind.CLIENT))
    produce = wait_for(otel.spans, named("vgi-flight DoGet count", SpanKind.SERVER))
    assert trace_id(opened) == trace_id(produce)
    assert dict(produce.attributes or {})["enduser.id"] == "alice"
    refused = wait_for(otel.spans, named("vgi-flight DoAction add", SpanKind.SERVER))
    assert refused.status.status_code is StatusCode.ERROR
    assert refused.status.description == "UNAUTHENTICATED"


def test_explicit_tracer_provider(otel: Otel) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with (
        RpcServer(Conformance, ConformanceImpl(), token_key=TOKEN_KEY, tracing=provider) as server,
        connect(Conformance, server.location, tracing=provider) as proxy,
    ):
        proxy.add(a=5)
    client = wait_for(exporter, named("vgi-flight DoAction add", SpanKind.CLIENT))
    served = wait_for(exporter, named("vgi-flight DoAction add", SpanKind.SERVER))
    assert trace_id(client) == trace_id(served)
    assert not [s for s in otel.spans.get_finished_spans() if s.name.startswith("vgi-flight")]


def test_metrics_count_calls(otel: Otel, server: RpcServer) -> None:
    with connect(Conformance, server.location) as proxy:
        proxy.add(a=1)
        proxy.add(a=2)
    points: dict[str, list[object]] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = otel.metrics.get_metrics_data()
        points = {
            metric.name: list(metric.data.data_points)
            for resource in (data.resource_metrics if data else [])
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        if "vgi_flight.server.calls" in points:
            break
        time.sleep(0.01)
    calls = [
        p
        for p in points["vgi_flight.server.calls"]
        if dict(p.attributes or {}).get("rpc.method") == "add"  # type: ignore[attr-defined]
    ]
    assert sum(p.value for p in calls) >= 2  # type: ignore[attr-defined]
    assert "vgi_flight.server.duration" in points


def test_missing_opentelemetry_is_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("opentelemetry.trace", "opentelemetry.propagate"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"vgi-flight\[otel\]"):
        RpcServer(Conformance, ConformanceImpl(), token_key=TOKEN_KEY, tracing=True)
    with pytest.raises(ImportError, match=r"vgi-flight\[otel\]"):
        connect(Conformance, "grpc://127.0.0.1:1", tracing=True)


def test_vgi_flight_works_without_opentelemetry() -> None:
    script = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        from tests.conformance_service import Conformance, ConformanceImpl
        from vgi_flight import RpcServer, connect

        with RpcServer(Conformance, ConformanceImpl(), token_key=b"t" * 32) as server:
            with connect(Conformance, server.location) as proxy:
                assert proxy.add(a=1) == 11
                assert sum(b.batch.num_rows for b in proxy.count(limit=2)) == 2
        assert not [m for m in sys.modules if m.startswith("opentelemetry")]
        try:
            RpcServer(Conformance, ConformanceImpl(), token_key=b"t" * 32, tracing=True)
        except ImportError as exc:
            assert "vgi-flight[otel]" in str(exc)
        else:
            raise AssertionError("tracing=True without OpenTelemetry must fail")
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
