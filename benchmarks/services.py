"""The benchmark workloads as servers: a vgi-flight service and the same written directly on pyarrow.flight.

``python -m benchmarks.services vgi|raw [--tls DIR] [--hmac]`` serves one of them on loopback and
prints its location. The vgi-rpc version of the service is ``benchmarks.vgirpc_workloads``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Protocol

import pyarrow as pa
import pyarrow.flight as flight

from benchmarks.common import BULK_ROWS, BULK_SCHEMA, SMALL_SCHEMA, bulk_batch, small_batch
from benchmarks.raw_hmac import MIDDLEWARE_KEY, HmacMiddleware, HmacVerifier
from vgi_flight import (
    AnnotatedBatch,
    ArrowSerializableDataclass,
    ArrowType,
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

__all__ = [
    "BULK_ROWS",
    "BULK_SCHEMA",
    "SMALL_SCHEMA",
    "BenchService",
    "bulk_batch",
    "small_batch",
]

ADD_PARAMS = pa.schema([("a", pa.int64()), ("b", pa.int64())])
ADD_RESULT = pa.schema([("result", pa.int64())])
HMAC_KEY_ID = "bench"
HMAC_SECRET = b"h" * 32


# --- the rich dataclass --------------------------------------------------------------------------


class Priority(Enum):
    LOW = "low"
    HIGH = "high"


@dataclass(frozen=True)
class Point(ArrowSerializableDataclass):
    x: float
    y: float


@dataclass(frozen=True)
class Order(ArrowSerializableDataclass):
    """Nested dataclass, lists, a map, an enum, a timestamp, an Optional: 10 fields, ~2.4 KB as IPC."""

    order_id: int
    customer: str
    priority: Priority
    placed: Annotated[datetime, ArrowType(pa.timestamp("us", tz="UTC"))]
    total: float
    location: Point
    items: list[str]
    quantities: dict[str, int]
    path: list[Point]
    note: str | None = None


# --- vgi-flight ----------------------------------------------------------------------------------


class BenchService(Protocol):
    def noop(self) -> None: ...
    def add(self, a: int, b: int) -> int: ...
    def rich(self, order: Order) -> Order: ...
    def small_batches(self, count: int) -> Stream[StreamState]: ...
    def bulk(self, batches: int) -> Stream[StreamState]: ...
    def echo(self) -> Stream[StreamState]: ...
    def bulk_echo(self) -> Stream[StreamState]: ...
    def one(self, mib: int) -> Stream[StreamState]: ...


def one_batch(mib: int) -> pa.RecordBatch:
    """A single contiguous bulk batch of ``mib`` MiB, built anew (not cached: it may be large)."""
    return pa.concat_batches([bulk_batch()] * mib)


@dataclass
class SmallState(ProducerState):
    run_ahead = 8  # produce() computes in memory and never waits: the server may run turns ahead
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
    run_ahead = 8  # produce() computes in memory and never waits: the server may run turns ahead
    remaining: int

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.remaining <= 0:
            out.finish()
            return
        out.emit(bulk_batch())
        self.remaining -= 1


@dataclass
class OneState(ProducerState):
    """Builds one batch of ``mib`` MiB, sends it, and finishes."""

    mib: int
    sent: bool = False

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.sent:
            out.finish()
            return
        self.sent = True
        out.emit(one_batch(self.mib))


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

    def rich(self, order: Order) -> Order:
        return order

    def small_batches(self, count: int) -> Stream[SmallState]:
        return Stream(output_schema=SMALL_SCHEMA, state=SmallState(count))

    def bulk(self, batches: int) -> Stream[BulkState]:
        return Stream(output_schema=BULK_SCHEMA, state=BulkState(batches))

    def echo(self) -> Stream[EchoState]:
        return Stream(output_schema=SMALL_SCHEMA, state=EchoState(), input_schema=SMALL_SCHEMA)

    def bulk_echo(self) -> Stream[EchoState]:
        return Stream(output_schema=BULK_SCHEMA, state=EchoState(), input_schema=BULK_SCHEMA)

    def one(self, mib: int) -> Stream[OneState]:
        return Stream(output_schema=BULK_SCHEMA, state=OneState(mib))


# --- raw pyarrow.flight --------------------------------------------------------------------------

_POINT = pa.struct([pa.field("x", pa.float64(), nullable=False), pa.field("y", pa.float64(), nullable=False)])
ORDER_SCHEMA = pa.schema(
    [
        pa.field("order_id", pa.int64(), nullable=False),
        pa.field("customer", pa.string(), nullable=False),
        pa.field("priority", pa.dictionary(pa.int16(), pa.string()), nullable=False),
        pa.field("placed", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("total", pa.float64(), nullable=False),
        pa.field("location", _POINT, nullable=False),
        pa.field("items", pa.list_(pa.string()), nullable=False),
        pa.field("quantities", pa.map_(pa.string(), pa.int64()), nullable=False),
        pa.field("path", pa.list_(_POINT), nullable=False),
        pa.field("note", pa.string()),
    ]
)


def order_to_row(order: Order) -> dict[str, Any]:
    """What a hand-written client does to send an ``Order`` as a row of ``ORDER_SCHEMA``."""
    return {
        "order_id": order.order_id,
        "customer": order.customer,
        "priority": order.priority.value,
        "placed": order.placed,
        "total": order.total,
        "location": {"x": order.location.x, "y": order.location.y},
        "items": order.items,
        "quantities": order.quantities,
        "path": [{"x": p.x, "y": p.y} for p in order.path],
        "note": order.note,
    }


def order_from_row(row: dict[str, Any]) -> Order:
    """The inverse of :func:`order_to_row`, from ``to_pylist(maps_as_pydicts="strict")``."""
    return Order(
        order_id=row["order_id"],
        customer=row["customer"],
        priority=Priority(row["priority"]),
        placed=row["placed"],
        total=row["total"],
        location=Point(**row["location"]),
        items=row["items"],
        quantities=row["quantities"],
        path=[Point(**p) for p in row["path"]],
        note=row["note"],
    )


def order_ipc(order: Order) -> bytes:
    return ipc(pa.RecordBatch.from_pylist([order_to_row(order)], schema=ORDER_SCHEMA))


def order_from_ipc(data: Any) -> Order:
    return order_from_row(read_one(data).to_pylist(maps_as_pydicts="strict")[0])


def ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def read_one(data: Any) -> pa.RecordBatch:
    return pa.ipc.open_stream(data).read_next_batch()


def add_ipc(a: int, b: int) -> bytes:
    return ipc(pa.record_batch([pa.array([a], pa.int64()), pa.array([b], pa.int64())], schema=ADD_PARAMS))


class RawServer(flight.FlightServerBase):  # type: ignore[misc]
    """The same workloads hand-written on pyarrow.flight: the floor vgi-flight is measured against.

    With ``hmac`` it requires signed requests like vgi-flight's ``--hmac`` server (see ``raw_hmac``).
    """

    def __init__(self, location: str, *, hmac: HmacVerifier | None = None, **options: Any) -> None:
        if hmac is not None:
            options["middleware"] = {MIDDLEWARE_KEY: HmacMiddleware()}
        super().__init__(location, **options)
        self._hmac = hmac

    def do_action(self, context: Any, action: flight.Action) -> Iterator[bytes]:
        if self._hmac is not None:
            self._hmac.verify(context, "DoAction", action.type.encode() + b"\n" + action.body.to_pybytes())
        if action.type == "noop":
            return iter([b""])
        if action.type == "add":
            batch = read_one(action.body)
            total = batch.column(0)[0].as_py() + batch.column(1)[0].as_py()
            return iter([ipc(pa.record_batch([pa.array([total], pa.int64())], schema=ADD_RESULT))])
        if action.type == "rich":  # decode to the dataclass and encode it again, as the vgi-flight handler does
            return iter([order_ipc(order_from_ipc(action.body))])
        raise flight.FlightServerError("unknown action")

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.FlightDataStream:
        if self._hmac is not None:
            self._hmac.verify(context, "DoGet", ticket.ticket)
        kind, _, count = ticket.ticket.decode().partition(":")
        n = int(count)
        if kind == "small":
            return flight.GeneratorStream(SMALL_SCHEMA, (small_batch(i) for i in range(n)))
        if kind == "one":
            return flight.RecordBatchStream(pa.Table.from_batches([one_batch(n)]))
        batch = bulk_batch()
        return flight.GeneratorStream(BULK_SCHEMA, (batch for _ in range(n)))

    def do_exchange(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
        if self._hmac is not None:
            self._hmac.verify(context, "DoExchange", descriptor.command)
        writer.begin(BULK_SCHEMA if descriptor.command == b"bulk_echo" else SMALL_SCHEMA)
        for chunk in reader:
            writer.write_batch(chunk.data)


class ServerChild:
    """A ``python -m benchmarks.services which options...`` server in a child process on loopback."""

    def __init__(self, which: str, *options: str) -> None:
        """Start it and read the location(s) it prints.

        Raises:
            RuntimeError: The server exited before printing its location.
        """
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.services", which, *options],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=root,
        )
        assert self.proc.stdout is not None
        self.locations = self.proc.stdout.readline().split()  # a ``pair``: raw Flight's, then vgi-flight's
        self.location = self.locations[0] if self.locations else ""
        self.pid = self.proc.pid
        if not self.location:
            code = self.proc.wait()
            self.proc.stdout.close()
            raise RuntimeError(f"benchmarks.services {which} exited with {code}")

    @property
    def port(self) -> int:
        """The TCP port of its location."""
        return int(self.location.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL: no draining, no goodbye; the way a machine or a container dies."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def server_process(which: str, *options: str) -> Iterator[ServerChild]:
    """A :class:`ServerChild` for the ``with`` block; killed on exit."""
    child = ServerChild(which, *options)
    try:
        yield child
    finally:
        child.kill()


def main() -> None:
    """``python -m benchmarks.services vgi|raw|pair [--tls DIR] [--hmac] [--raw-hmac] [--local-data]``: serve.

    Prints the location; ``pair`` serves raw Flight and vgi-flight side by side in one process and
    prints both locations (raw first), so that the two share whatever makes one process faster
    than another (see benchmarks.run.LocalSide).

    ``--tls DIR`` serves mTLS with DIR/server.pem, DIR/server.key and client certificates verified
    against DIR/ca.pem. ``--hmac`` requires HMAC-signed requests (of the ``pair``'s vgi-flight
    server; ``--raw-hmac`` of its raw Flight one). ``--local-data`` (vgi-flight only) also serves
    producers over a local data channel.
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
    locations: list[str] = []
    raw: RawServer | None = None
    rpc: RpcServer | None = None
    if which in ("raw", "pair"):
        raw_hmac = "--raw-hmac" in args if which == "pair" else "--hmac" in args
        verifier = HmacVerifier({HMAC_KEY_ID: HMAC_SECRET}) if raw_hmac else None
        raw = RawServer(f"{scheme}://127.0.0.1:0", hmac=verifier, **tls)
        locations.append(f"{scheme}://127.0.0.1:{raw.port}")
    if which in ("vgi", "pair"):
        auth = ServerAuth(hmac_keys={HMAC_KEY_ID: HmacKey(HMAC_SECRET, "bench")}) if "--hmac" in args else None
        rpc = RpcServer(
            BenchService,
            BenchServiceImpl(),
            f"{scheme}://127.0.0.1:0",
            token_key=b"b" * 32,
            auth=auth,
            local_data="--local-data" in args,
            **tls,
        )
        locations.append(rpc.location)
    print(" ".join(locations), flush=True)
    if rpc is not None:
        rpc.serve()  # until killed; a raw server beside it serves on its own gRPC threads
    elif raw is not None:
        raw.serve()


if __name__ == "__main__":
    main()
