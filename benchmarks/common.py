"""What every side of the benchmark shares: the data, the workload sizes and the client loops.

This module imports only the standard library and pyarrow, because it is loaded by two interpreters:
the one running vgi-flight and raw pyarrow.flight (``benchmarks.run``) and the Python 3.13 venv
running vgi-rpc (``benchmarks.vgirpc_workloads``). The client APIs of vgi-flight and vgi-rpc are the
same for these workloads (``svc.add(a=2, b=40)``, ``with svc.echo() as s: s.exchange(...)``, iterate a
producer), so :func:`rpc_samplers` is the one client of both; raw pyarrow.flight has its own
(``benchmarks.clients.raw_samplers``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

T = TypeVar("T")

BULK_ROWS = 65_536  # rows per bulk producer batch: int64 + float64 = 1 MiB
SMALL_SCHEMA = pa.schema([("i", pa.int64())])
BULK_SCHEMA = pa.schema([("id", pa.int64()), ("value", pa.float64())])

# A sampler takes (count, warmup) and returns ``count`` samples in seconds: per call, per transfer or
# per batch of threaded calls, depending on the workload. Warm-up calls are made first, not returned.
Sampler = Callable[[int, int], list[float]]


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; the same on every side. ``--quick`` shrinks the bulk ones."""

    small_batches: int = 50
    exchange_rounds: int = 20
    bulk_batches: int = 1024  # x 1 MiB = 1 GiB
    bulk_exchange_turns: int = 32  # x 8 MiB = 256 MiB each way
    bulk_exchange_rows: int = 524_288  # int64 + float64 = 8 MiB per batch
    thread_calls: int = 1000
    threads: int = 8

    def to_json(self) -> dict[str, int]:
        return asdict(self)


_batches: dict[int, pa.RecordBatch] = {}


def bulk_batch(rows: int = BULK_ROWS) -> pa.RecordBatch:
    """An int64 + float64 batch of ``rows`` rows (16 bytes a row), built once per process and size."""
    batch = _batches.get(rows)
    if batch is None:
        ids = pa.array(range(rows), pa.int64())
        batch = _batches[rows] = pa.record_batch([ids, pc.multiply(ids, 0.5)], schema=BULK_SCHEMA)
    return batch


def small_batch(i: int) -> pa.RecordBatch:
    return pa.record_batch([pa.array([i], pa.int64())], schema=SMALL_SCHEMA)


def sample_order(order: Callable[..., T], point: Callable[..., Any], priority: type[Enum]) -> T:
    """The rich dataclass every side sends and gets back, built with that side's own classes.

    ``order`` and ``point`` are the side's ``Order`` and ``Point`` dataclasses (fields: see
    ``benchmarks.services.Order``) and ``priority`` its ``Priority`` enum.
    """
    return order(
        order_id=1_234_567,
        customer="ACME Industrial Supplies, Ltd.",
        priority=priority("high"),
        placed=datetime(2026, 3, 14, 15, 9, 26, 535_897, tzinfo=UTC),
        total=12_345.67,
        location=point(x=52.5200, y=13.4050),
        items=[f"SKU-{i:05d}" for i in range(10)],
        quantities={f"SKU-{i:05d}": i + 1 for i in range(10)},
        path=[point(x=float(i), y=float(i) / 2) for i in range(8)],
        note="leave at the loading dock",
    )


# --- timing --------------------------------------------------------------------------------------


def latency_samples(fn: Callable[[], object], count: int) -> list[float]:
    """Seconds per call of ``fn``, ``count`` times."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def timed(fn: Callable[[], object], count: int, warmup: int) -> list[float]:
    latency_samples(fn, warmup)
    return latency_samples(fn, count)


def concurrently(threads: int, work: Callable[[int], object]) -> float:
    """Run ``work(i)`` on ``threads`` threads released together; return the wall time in seconds.

    The threads are started first and released together, so thread start-up is not timed.
    """
    errors: list[BaseException] = []
    gate = threading.Barrier(threads + 1)

    def run(index: int) -> None:
        gate.wait()
        try:
            work(index)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    gate.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def threaded_calls(call: Callable[[int], object], calls: int, threads: int) -> float:
    """Wall seconds for ``calls`` calls spread evenly over ``threads`` threads (``call`` gets the thread index)."""
    shares = [calls // threads + (1 if i < calls % threads else 0) for i in range(threads)]

    def work(index: int) -> None:
        for _ in range(shares[index]):
            call(index)

    return concurrently(threads, work)


def count_rows(batches: Iterable[Any]) -> int:
    """Rows of a stream of record batches or AnnotatedBatches (anything with ``num_rows`` or ``.batch``)."""
    rows = 0
    for item in batches:
        rows += (item.batch if hasattr(item, "batch") else item).num_rows
    return rows


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"wrong result: {what}")


# --- the client loops of vgi-flight and vgi-rpc (the same API) -----------------------------------


def rpc_samplers(
    svc: Any,
    annotated: Callable[[pa.RecordBatch], Any],
    order: Any,
    sizes: Sizes,
    for_thread: Callable[[int], Any] | None = None,
) -> dict[str, Sampler]:
    """One sampler per workload for a vgi-flight or vgi-rpc proxy ``svc`` of the benchmark service.

    ``annotated`` is that library's ``AnnotatedBatch``; ``order`` the sample order in its dataclasses;
    ``for_thread(i)`` the proxy thread ``i`` of the threaded workload calls (``svc`` when omitted,
    i.e. all threads share one connection).
    """
    small = annotated(small_batch(1))
    big = annotated(bulk_batch(sizes.bulk_exchange_rows))
    proxy_of = for_thread or (lambda _i: svc)
    expect(svc.add(a=2, b=40) == 42, "add")
    expect(svc.rich(order=order) == order, "rich round trip")

    def small_producer() -> None:
        expect(count_rows(svc.small_batches(count=sizes.small_batches)) == sizes.small_batches, "small batches")

    def exchange() -> None:
        with svc.echo() as session:
            for _ in range(sizes.exchange_rounds):
                session.exchange(small)

    def turn(count: int, warmup: int) -> list[float]:
        # one exchange round trip inside a stream that stays open for the whole round
        with svc.echo() as session:
            return timed(lambda: session.exchange(small), count, warmup)

    def bulk(count: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            expect(count_rows(svc.bulk(batches=16)) == 16 * BULK_ROWS, "bulk warm-up")
        rows = sizes.bulk_batches * BULK_ROWS
        return timed(lambda: expect(count_rows(svc.bulk(batches=sizes.bulk_batches)) == rows, "bulk"), count, 0)

    def bulk_exchange_of(turns: int) -> None:
        rows = 0
        with svc.bulk_echo() as session:
            for _ in range(turns):
                rows += session.exchange(big).batch.num_rows
        expect(rows == turns * sizes.bulk_exchange_rows, "bulk exchange")

    def bulk_exchange(count: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            bulk_exchange_of(2)
        return timed(lambda: bulk_exchange_of(sizes.bulk_exchange_turns), count, 0)

    def threads(count: int, warmup: int) -> list[float]:
        proxies = [proxy_of(i) for i in range(sizes.threads)]  # connect (if per thread) before timing

        def call(i: int) -> None:
            expect(proxies[i].add(a=2, b=40) == 42, "add")

        for _ in range(warmup):
            threaded_calls(call, 10 * sizes.threads, sizes.threads)
        return [threaded_calls(call, sizes.thread_calls, sizes.threads) for _ in range(count)]

    return {
        "noop": lambda count, warmup: timed(svc.noop, count, warmup),
        "add": lambda count, warmup: timed(lambda: svc.add(a=2, b=40), count, warmup),
        "rich": lambda count, warmup: timed(lambda: svc.rich(order=order), count, warmup),
        "small": lambda count, warmup: timed(small_producer, count, warmup),
        "exchange20": lambda count, warmup: timed(exchange, count, warmup),
        "turn": turn,
        "bulk": bulk,
        "bulk_exchange": bulk_exchange,
        "threads": threads,
    }
