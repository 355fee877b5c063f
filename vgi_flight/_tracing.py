"""Optional OpenTelemetry tracing and metrics (the ``otel`` extra).

Server side: :class:`TraceMiddlewareFactory` (middleware key ``vgi-trace``) keeps the call's trace
context headers (W3C ``traceparent``/``tracestate`` with the default propagator), since handlers
cannot read headers; :class:`ServerTracing` then wraps every call tracked by the dispatcher in a
SERVER span, child of the caller's context, and counts calls and their duration through the global
MeterProvider. Client side: :class:`ClientTracing` makes a CLIENT span per unary call and stream
open, and injects the trace context into every call's headers.

OpenTelemetry is imported only when tracing is turned on, so vgi-flight works without it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow.flight as flight

from vgi_flight._observe import CallRecord

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, TracerProvider

MIDDLEWARE_KEY = "vgi-trace"
SYSTEM = "vgi-flight"
INSTRUMENTATION_NAME = "vgi_flight"
_MISSING = "tracing needs OpenTelemetry: pip install 'vgi-flight[otel]' (opentelemetry-api and opentelemetry-sdk)"


def _require() -> None:
    """Import OpenTelemetry or explain how to install it.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed.
    """
    try:
        import opentelemetry.propagate
        import opentelemetry.trace  # noqa: F401
    except ImportError as exc:
        raise ImportError(_MISSING) from exc


def _provider(tracing: bool | TracerProvider) -> TracerProvider | None:
    """The explicit TracerProvider in a ``tracing=`` argument (``None``: the global one)."""
    return None if isinstance(tracing, bool) else tracing


def _span_name(rpc: str, method: str) -> str:
    return f"{SYSTEM} {rpc} {method}" if method else f"{SYSTEM} {rpc}"


# --- server -------------------------------------------------------------------------------------


class _TraceMiddleware(flight.ServerMiddleware):  # type: ignore[misc]  # pyarrow ships no type stubs
    def __init__(self, carrier: dict[str, str]) -> None:
        super().__init__()
        self.carrier = carrier


class TraceMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Keeps each call's trace context headers (those the global propagator uses) on the call."""

    def __init__(self) -> None:
        """Create the factory; the header names come from the global propagator."""
        super().__init__()
        from opentelemetry import propagate

        self._fields = sorted(propagate.get_global_textmap().fields) or ["traceparent", "tracestate"]

    def start_call(self, info: Any, headers: Mapping[str, list[str]]) -> _TraceMiddleware:
        """Copy the trace context headers of the call (first value of each)."""
        carrier = {name: values[0] for name in self._fields if (values := headers.get(name))}
        return _TraceMiddleware(carrier)


class ServerTracing:
    """Spans and OpenTelemetry metrics for the calls of one server."""

    def __init__(self, service: str, provider: TracerProvider | None = None) -> None:
        """Get the tracer and create the instruments.

        Args:
            service: The service name (the ``rpc.service`` attribute).
            provider: The TracerProvider to use; ``None`` uses the global one.

        Raises:
            ImportError: OpenTelemetry is not installed.
        """
        _require()
        from opentelemetry import metrics, trace

        self._service = service
        self._tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=provider)
        meter = metrics.get_meter(INSTRUMENTATION_NAME)
        self._calls = meter.create_counter("vgi_flight.server.calls", unit="{call}", description="Calls served")
        self._duration = meter.create_histogram("vgi_flight.server.duration", unit="s", description="Call duration")

    def middleware_factory(self) -> TraceMiddlewareFactory:
        """The middleware to install under :data:`MIDDLEWARE_KEY`."""
        return TraceMiddlewareFactory()

    def start(self, record: CallRecord, context: flight.ServerCallContext) -> Span:
        """Start the SERVER span of a call, child of the trace context in its headers."""
        from opentelemetry import propagate, trace

        middleware = context.get_middleware(MIDDLEWARE_KEY)
        parent = propagate.extract(middleware.carrier) if middleware is not None else None
        return self._tracer.start_span(
            _span_name(record.rpc, record.method),
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": SYSTEM, "rpc.service": self._service, "vgi_flight.rpc": record.rpc},
        )

    @contextlib.contextmanager
    def activate(self, span: Span) -> Iterator[None]:
        """Make ``span`` the current span (so spans the service starts are its children)."""
        from opentelemetry import trace

        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield

    def finish(self, span: Span, record: CallRecord, exc: BaseException | None) -> None:
        """Name the span after the method, set what the call did and its status, end it; count the call."""
        from opentelemetry.trace import Status, StatusCode

        seconds = time.perf_counter() - record.started
        span.update_name(_span_name(record.rpc, record.method))
        attributes: dict[str, str | int] = {
            "rpc.method": record.method,
            "vgi_flight.kind": record.kind,
            "vgi_flight.status": record.status,
            "vgi_flight.batches_in": record.batches_in,
            "vgi_flight.rows_in": record.rows_in,
            "vgi_flight.bytes_in": record.bytes_in,
            "vgi_flight.batches_out": record.batches_out,
            "vgi_flight.rows_out": record.rows_out,
            "vgi_flight.bytes_out": record.bytes_out,
        }
        if record.principal:
            attributes["enduser.id"] = record.principal
        span.set_attributes(attributes)
        if record.status != "OK":
            if exc is not None and not isinstance(exc, GeneratorExit):
                span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, record.status))
        span.end()
        labels = {"rpc.system": SYSTEM, "rpc.method": record.method or "-", "vgi_flight.rpc": record.rpc}
        self._calls.add(1, {**labels, "vgi_flight.status": record.status})
        self._duration.record(seconds, labels)


def server_tracing(tracing: bool | TracerProvider, service: str) -> ServerTracing | None:
    """The server's tracing for an ``RpcServer(tracing=...)`` argument (``None`` when off).

    Raises:
        ImportError: Tracing is on and OpenTelemetry is not installed.
    """
    if tracing is False:
        return None
    return ServerTracing(service, _provider(tracing))


# --- client -------------------------------------------------------------------------------------


class ClientTracing:
    """CLIENT spans and trace context headers for the calls of one connection."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        """Get the tracer.

        Args:
            provider: The TracerProvider to use; ``None`` uses the global one.

        Raises:
            ImportError: OpenTelemetry is not installed.
        """
        _require()
        from opentelemetry import trace

        self._tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=provider)

    @contextlib.contextmanager
    def span(self, rpc: str, method: str) -> Iterator[Context]:
        """Run a call in a current CLIENT span; yield the context holding it (for later calls of a stream)."""
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        from vgi_flight._errors import RpcError

        attributes = {"rpc.system": SYSTEM, "rpc.method": method, "vgi_flight.rpc": rpc}
        with self._tracer.start_as_current_span(
            _span_name(rpc, method),
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield otel_context.get_current()
            except RpcError as exc:
                span.set_attribute("vgi_flight.status", exc.code.value)
                span.set_status(Status(StatusCode.ERROR, exc.code.value))
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    def headers(self, trace_context: Context | None = None) -> list[tuple[bytes, bytes]]:
        """The trace context headers of ``trace_context`` (default: the current context)."""
        from opentelemetry import propagate

        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace_context)
        return [(name.encode(), value.encode()) for name, value in carrier.items()]


def client_tracing(tracing: bool | TracerProvider) -> ClientTracing | None:
    """The connection's tracing for a ``connect(tracing=...)`` argument (``None`` when off).

    Raises:
        ImportError: Tracing is on and OpenTelemetry is not installed.
    """
    if tracing is False:
        return None
    return ClientTracing(_provider(tracing))
