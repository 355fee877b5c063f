"""Observability: a structured access log line and Prometheus metrics for every call.

The access log is the logger ``vgi_flight.access`` at INFO: one JSON object per call with the RPC,
method, kind, principal, status, duration and batches, rows and Arrow buffer bytes in and out. Metrics use
``prometheus_client`` (the ``metrics`` extra) with a registry per server, so several servers in one
process keep separate counts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import pyarrow as pa

access_log = logging.getLogger("vgi_flight.access")


@dataclass(slots=True)  # counted into on every batch: slots make that cheaper
class CallRecord:
    """What one call did; filled in by the server as the call runs."""

    rpc: str
    method: str = ""
    kind: str = ""
    principal: str = ""
    status: str = "OK"
    batches_in: int = 0
    rows_in: int = 0
    bytes_in: int = 0
    batches_out: int = 0
    rows_out: int = 0
    bytes_out: int = 0
    started: float = field(default_factory=time.perf_counter, repr=False)

    def batch_in(self, batch: pa.RecordBatch) -> int:
        """Count an input batch; return its buffer size (an upper bound of ``nbytes``)."""
        size: int = batch.get_total_buffer_size()  # ~30x cheaper than nbytes, per batch on the hot path
        self.batches_in += 1
        self.rows_in += batch.num_rows
        self.bytes_in += size
        return size

    def batch_out(self, batch: pa.RecordBatch) -> int:
        """Count an output data batch; return its buffer size (an upper bound of ``nbytes``)."""
        size: int = batch.get_total_buffer_size()
        self.batches_out += 1
        self.rows_out += batch.num_rows
        self.bytes_out += size
        return size


class StreamOutcome(Enum):
    """How a stream call (``DoGet`` or ``DoExchange``) ended on this server."""

    COMPLETED = "completed"  # the producer finished, or the client ended the exchange
    CANCELLED = "cancelled"  # the client cancelled the stream: on_cancel ran (in-band or by __cancel__)
    ABANDONED = "abandoned"  # the client went away or stopped reading before the end
    HANDED_OFF = "handed_off"  # ended by a draining server; the client resumes it elsewhere
    FAILED = "failed"  # the handler or the request failed


@dataclass(frozen=True)
class ServerStats:
    """A snapshot of what a server holds and has done since it started (see ``RpcServer.stats``).

    Attributes:
        live_calls: Calls in progress, streams included.
        open_streams: Stream calls in progress.
        streams_completed: Stream calls that reached their end.
        streams_cancelled: Streams the client cancelled, so that ``on_cancel`` ran: an exchange
            cancelled in-band, or any stream cancelled with the ``__cancel__`` action (a producer's
            cancel also ends its ``DoGet`` call, counted as abandoned).
        streams_abandoned: Stream calls whose client went away or stopped reading; the server freed them.
        streams_handed_off: Stream calls a draining server ended so that the client resumes elsewhere.
        streams_failed: Stream calls that ended with an error.
        handlers_timed_out: Handler invocations ended by the handler deadline.
        hung_handlers: Handlers still running although their call was ended.
    """

    live_calls: int = 0
    open_streams: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0
    streams_abandoned: int = 0
    streams_handed_off: int = 0
    streams_failed: int = 0
    handlers_timed_out: int = 0
    hung_handlers: int = 0


class StreamCounts:
    """Counts of stream calls by outcome, kept by every server (cheap: one lock per stream call)."""

    def __init__(self) -> None:
        """Start at zero."""
        self._lock = threading.Lock()
        self.open = 0
        self.ended = dict.fromkeys(StreamOutcome, 0)

    def opened(self) -> None:
        """A stream call started."""
        with self._lock:
            self.open += 1

    def closed(self, outcome: StreamOutcome) -> None:
        """A stream call ended."""
        with self._lock:
            self.open -= 1
            self.ended[outcome] += 1

    def cancelled(self) -> None:
        """A stream was cancelled outside a stream call (a producer's ``__cancel__`` action)."""
        with self._lock:
            self.ended[StreamOutcome.CANCELLED] += 1


class Metrics:
    """Prometheus metrics of one server."""

    def __init__(self, stats: Callable[[], ServerStats] | None = None) -> None:
        """Create the metrics in a registry of their own.

        Args:
            stats: Where the stream and handler figures come from (read at each scrape).

        Raises:
            ImportError: ``prometheus_client`` is not installed (``pip install vgi-flight[metrics]``).
        """
        import prometheus_client as prom

        self.registry = prom.CollectorRegistry()
        labels = ["rpc", "method", "status"]
        self.calls = prom.Counter("vgi_flight_calls", "Calls served", labels, registry=self.registry)
        self.duration = prom.Histogram(
            "vgi_flight_call_duration_seconds", "Call duration", ["rpc", "method"], registry=self.registry
        )
        self.batches = prom.Counter(
            "vgi_flight_batches", "Data batches", ["method", "direction"], registry=self.registry
        )
        self.rows = prom.Counter("vgi_flight_rows", "Rows", ["method", "direction"], registry=self.registry)
        self.bytes = prom.Counter("vgi_flight_bytes", "Arrow bytes", ["method", "direction"], registry=self.registry)
        self.live = prom.Gauge("vgi_flight_live_calls", "Calls in progress", registry=self.registry)
        if stats is not None:
            self.registry.register(_StatsCollector(stats))

    def observe(self, record: CallRecord, seconds: float) -> None:
        """Account one finished call."""
        method = record.method or "-"
        self.calls.labels(record.rpc, method, record.status).inc()
        self.duration.labels(record.rpc, method).observe(seconds)
        for direction, batches, rows, size in (
            ("in", record.batches_in, record.rows_in, record.bytes_in),
            ("out", record.batches_out, record.rows_out, record.bytes_out),
        ):
            if batches:
                self.batches.labels(method, direction).inc(batches)
                self.rows.labels(method, direction).inc(rows)
                self.bytes.labels(method, direction).inc(size)

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        import prometheus_client as prom

        data: bytes = prom.generate_latest(self.registry)
        return data

    def serve_http(self, port: int, address: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` over HTTP for Prometheus to scrape; returns the server object."""
        import prometheus_client as prom

        return prom.start_http_server(port, addr=address, registry=self.registry)


class _StatsCollector:
    """Expose a :class:`ServerStats` snapshot as Prometheus metrics at scrape time."""

    def __init__(self, stats: Callable[[], ServerStats]) -> None:
        self._stats = stats

    def describe(self) -> list[Any]:
        return []  # unchecked collector: the families are built at collect time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshot = self._stats()
        yield GaugeMetricFamily("vgi_flight_open_streams", "Stream calls in progress", value=snapshot.open_streams)
        ended = CounterMetricFamily("vgi_flight_streams_ended", "Stream calls ended, by outcome", labels=["outcome"])
        for outcome in StreamOutcome:
            ended.add_metric([outcome.value], getattr(snapshot, f"streams_{outcome.value}"))
        yield ended
        yield CounterMetricFamily(
            "vgi_flight_handlers_timed_out",
            "Handler invocations ended by the handler deadline",
            value=snapshot.handlers_timed_out,
        )
        yield GaugeMetricFamily(
            "vgi_flight_hung_handlers", "Handlers still running after their call ended", value=snapshot.hung_handlers
        )


def finish(record: CallRecord, metrics: Metrics | None) -> None:
    """Write the access log line and update metrics for a finished call."""
    seconds = time.perf_counter() - record.started
    if metrics is not None:
        metrics.observe(record, seconds)
    if access_log.isEnabledFor(logging.INFO):
        line = asdict(record)
        del line["started"]
        line["duration_ms"] = round(seconds * 1000, 3)
        access_log.info(json.dumps(line, separators=(",", ":")))
