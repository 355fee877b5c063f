"""The benchmark workloads, written twice: as a vgi-flight service and directly on pyarrow.flight."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight

from vgi_flight import (
    AnnotatedBatch,
    CallContext,
    ExchangeState,
    HmacKey,
    OutputCollector,
    ProducerState,
    RpcServer,
    ServerAuth,
    Stream,
    StreamState,
)

BULK_ROWS = 65_536
SMALL_SCHEMA = pa.schema([("i", pa.int64())])
BULK_SCHEMA = pa.schema([("id", pa.int64()), ("value", pa.float64())])
ADD_PARAMS = pa.schema([("a", pa.int64()), ("b", pa.int64())])
ADD_RESULT = pa.schema([("result", pa.int64())])

_bulk_batch: pa.RecordBatch | None = None


def bulk_batch() -> pa.RecordBatch:
    """The 65,536-row int64+float64 batch (1 MiB) every bulk workload sends."""
    global _bulk_batch
    if _bulk_batch is None:
        ids = pa.array(range(BULK_ROWS), pa.int64())
        _bulk_batch = pa.record_batch([ids, pc.multiply(ids, 0.5)], schema=BULK_SCHEMA)
    return _bulk_batch


def small_batch(i: int) -> pa.RecordBatch:
    return pa.record_batch([pa.array([i], pa.int64())], schema=SMALL_SCHEMA)


# --- vgi-flight --------------------------------------------------------------------------------


class BenchService(Protocol):
    def noop(self) -> None: ...
    def add(self, a: int, b: int) -> int: ...
    def small_batches(self, count: int) -> Stream[StreamState]: ...
    def bulk(self, batches: int) -> Stream[StreamState]: ...
    def echo(self) -> Stream[StreamState]: ...


@dataclass
class SmallState(ProducerState):
    remaining: int
    i: int = 0

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.remaining <= 0:
            out.finish()
            return
        out.emit(small_batch(self.i))
        self.i += 1
        self.remaining -= 1


@dataclass
class BulkState(ProducerState):
    remaining: int

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.remaining <= 0:
            out.finish()
            return
        out.emit(bulk_batch())
        self.remaining -= 1


@dataclass
class EchoState(ExchangeState):
    turns: int = 0

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        self.turns += 1
        out.emit(input.batch)


class BenchServiceImpl:
    def noop(self) -> None:
        return None

    def add(self, a: int, b: int) -> int:
        return a + b

    def small_batches(self, count: int) -> Stream[SmallState]:
        return Stream(output_schema=SMALL_SCHEMA, state=SmallState(count))

    def bulk(self, batches: int) -> Stream[BulkState]:
        return Stream(output_schema=BULK_SCHEMA, state=BulkState(batches))

    def echo(self) -> Stream[EchoState]:
        return Stream(output_schema=SMALL_SCHEMA, state=EchoState(), input_schema=SMALL_SCHEMA)


# --- raw pyarrow.flight ------------------------------------------------------------------------


def ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def read_one(data: Any) -> pa.RecordBatch:
    return pa.ipc.open_stream(data).read_next_batch()


class RawServer(flight.FlightServerBase):  # type: ignore[misc]
    """The same workloads hand-written on pyarrow.flight: the floor vgi-flight is measured against."""

    def do_action(self, context: Any, action: flight.Action) -> Iterator[bytes]:
        if action.type == "noop":
            return iter([b""])
        if action.type == "add":
            batch = read_one(action.body)
            total = batch.column(0)[0].as_py() + batch.column(1)[0].as_py()
            return iter([ipc(pa.record_batch([pa.array([total], pa.int64())], schema=ADD_RESULT))])
        raise flight.FlightServerError("unknown action")

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.FlightDataStream:
        kind, _, count = ticket.ticket.decode().partition(":")
        n = int(count)
        if kind == "small":
            return flight.GeneratorStream(SMALL_SCHEMA, (small_batch(i) for i in range(n)))
        batch = bulk_batch()
        return flight.GeneratorStream(BULK_SCHEMA, (batch for _ in range(n)))

    def do_exchange(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
        writer.begin(SMALL_SCHEMA)
        for chunk in reader:
            writer.write_batch(chunk.data)


HMAC_KEY_ID = "bench"
HMAC_SECRET = b"h" * 32


def main() -> None:
    """``python -m benchmarks.services vgi|raw [--tls DIR] [--hmac]``: serve on loopback, print the location.

    ``--tls DIR`` serves mTLS with DIR/server.pem, DIR/server.key and client certificates verified
    against DIR/ca.pem. ``--hmac`` (vgi only) requires HMAC-signed requests.
    """
    args = sys.argv[1:]
    which = args[0]
    tls: dict[str, Any] = {}
    scheme = "grpc"
    if "--tls" in args:
        directory = Path(args[args.index("--tls") + 1])
        cert, key = (directory / "server.pem").read_bytes(), (directory / "server.key").read_bytes()
        tls = {
            "tls_certificates": [(cert, key)],
            "verify_client": True,
            "root_certificates": (directory / "ca.pem").read_bytes(),
        }
        scheme = "grpc+tls"
    if which == "raw":
        server = RawServer(f"{scheme}://127.0.0.1:0", **tls)
        print(f"{scheme}://127.0.0.1:{server.port}", flush=True)
        server.serve()
    else:
        auth = ServerAuth(hmac_keys={HMAC_KEY_ID: HmacKey(HMAC_SECRET, "bench")}) if "--hmac" in args else None
        rpc = RpcServer(
            BenchService, BenchServiceImpl(), f"{scheme}://127.0.0.1:0", token_key=b"b" * 32, auth=auth, **tls
        )
        print(rpc.location, flush=True)
        rpc.serve()


if __name__ == "__main__":
    main()
