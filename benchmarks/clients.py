"""The client side of vgi-flight and of raw pyarrow.flight: one sampler per workload (see ``benchmarks.common``)."""

from __future__ import annotations

import pyarrow.flight as flight

from benchmarks.common import (
    BULK_ROWS,
    BULK_SCHEMA,
    SMALL_SCHEMA,
    Sampler,
    Sizes,
    bulk_batch,
    expect,
    rpc_samplers,
    sample_order,
    small_batch,
    threaded_calls,
    timed,
)
from benchmarks.raw_hmac import signed_options
from benchmarks.services import BenchService, Order, Point, Priority, add_ipc, order_from_ipc, order_ipc, read_one
from vgi_flight import AnnotatedBatch


def vgi_flight_samplers(svc: BenchService, sizes: Sizes) -> dict[str, Sampler]:
    """The workloads through a vgi-flight proxy; the threaded workload shares it (one connection)."""
    return rpc_samplers(svc, AnnotatedBatch, sample_order(Order, Point, Priority), sizes)


def chunk_rows(reader: flight.FlightStreamReader) -> int:
    return sum(chunk.data.num_rows for chunk in reader)


def raw_samplers(
    client: flight.FlightClient, sizes: Sizes, *, hmac_key: tuple[str, bytes] | None = None
) -> dict[str, Sampler]:
    """The same workloads hand-written on a pyarrow.flight client; the threaded workload shares it.

    With ``hmac_key`` (key id, secret) every call is signed (``benchmarks.raw_hmac``).
    """
    order = sample_order(Order, Point, Priority)
    small = small_batch(1)
    big = bulk_batch(sizes.bulk_exchange_rows)
    plain = flight.FlightCallOptions()

    def options(rpc: str, payload: bytes) -> flight.FlightCallOptions:
        return plain if hmac_key is None else signed_options(*hmac_key, rpc, payload)

    def action(kind: str, body: bytes) -> list[flight.Result]:
        return list(client.do_action(flight.Action(kind, body), options("DoAction", kind.encode() + b"\n" + body)))

    def noop() -> None:
        action("noop", b"")

    def add() -> int:
        return int(read_one(action("add", add_ipc(2, 40))[-1].body).column(0)[0].as_py())

    def rich() -> Order:
        return order_from_ipc(action("rich", order_ipc(order))[-1].body)

    expect(add() == 42, "add")
    expect(rich() == order, "rich round trip")

    def small_producer() -> None:
        ticket = f"small:{sizes.small_batches}".encode()
        rows = chunk_rows(client.do_get(flight.Ticket(ticket), options("DoGet", ticket)))
        expect(rows == sizes.small_batches, "small batches")

    def open_exchange(command: bytes) -> tuple[flight.FlightStreamWriter, flight.FlightStreamReader]:
        writer, reader = client.do_exchange(
            flight.FlightDescriptor.for_command(command), options("DoExchange", command)
        )
        writer.begin(BULK_SCHEMA if command == b"bulk_echo" else SMALL_SCHEMA)
        return writer, reader

    def close_exchange(writer: flight.FlightStreamWriter, reader: flight.FlightStreamReader) -> None:
        writer.done_writing()
        for _ in reader:
            pass
        writer.close()

    def exchange() -> None:
        writer, reader = open_exchange(b"echo")
        for _ in range(sizes.exchange_rounds):
            writer.write_batch(small)
            reader.read_chunk()
        close_exchange(writer, reader)

    def turn(count: int, warmup: int) -> list[float]:
        writer, reader = open_exchange(b"echo")

        def one() -> None:
            writer.write_batch(small)
            reader.read_chunk()

        samples = timed(one, count, warmup)
        close_exchange(writer, reader)
        return samples

    def bulk_of(batches: int) -> None:
        ticket = f"bulk:{batches}".encode()
        expect(
            chunk_rows(client.do_get(flight.Ticket(ticket), options("DoGet", ticket))) == batches * BULK_ROWS, "bulk"
        )

    def bulk(count: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            bulk_of(16)
        return timed(lambda: bulk_of(sizes.bulk_batches), count, 0)

    def bulk_exchange_of(turns: int) -> None:
        writer, reader = open_exchange(b"bulk_echo")
        rows = 0
        for _ in range(turns):
            writer.write_batch(big)
            rows += reader.read_chunk().data.num_rows
        close_exchange(writer, reader)
        expect(rows == turns * sizes.bulk_exchange_rows, "bulk exchange")

    def bulk_exchange(count: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            bulk_exchange_of(2)
        return timed(lambda: bulk_exchange_of(sizes.bulk_exchange_turns), count, 0)

    def threads(count: int, warmup: int) -> list[float]:
        def call(_i: int) -> None:
            expect(add() == 42, "add")

        for _ in range(warmup):
            threaded_calls(call, 10 * sizes.threads, sizes.threads)
        return [threaded_calls(call, sizes.thread_calls, sizes.threads) for _ in range(count)]

    return {
        "noop": lambda count, warmup: timed(noop, count, warmup),
        "add": lambda count, warmup: timed(add, count, warmup),
        "rich": lambda count, warmup: timed(rich, count, warmup),
        "small": lambda count, warmup: timed(small_producer, count, warmup),
        "exchange20": lambda count, warmup: timed(exchange, count, warmup),
        "turn": turn,
        "bulk": bulk,
        "bulk_exchange": bulk_exchange,
        "threads": threads,
    }
