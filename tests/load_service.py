"""The service of the load and soak tests: every answer can be checked from the question.

Unary methods are pure functions of their arguments (``add``, echoes of strings, bytes and a rich
dataclass). ``rows`` produces the rows ``start .. start + count - 1`` (with ``i * i``, a text form
and the serving process id) and announces their checksum in its header. ``running_sum`` keeps a
running total, a turn count and a row count across turns. Both streams count their
``on_cancel`` runs and the position they were cancelled at, and ``stats`` reports those counters
together with the process's own view of itself (live calls, threads, Python objects, Arrow
memory), so that a test can check that nothing was lost, duplicated or leaked.

Run a server with ``python -m tests.load_server`` (see that module).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import pyarrow as pa

from vgi_flight import (
    AnnotatedBatch,
    ArrowSerializableDataclass,
    CallContext,
    ExchangeState,
    OutputCollector,
    ProducerState,
    RpcServer,
    Stream,
    StreamState,
)


class Shade(Enum):
    LIGHT = "light"
    DARK = "dark"


@dataclass(frozen=True)
class Inner(ArrowSerializableDataclass):
    label: str
    weight: float = 1.0


@dataclass(frozen=True)
class Record(ArrowSerializableDataclass):
    id: int
    name: str
    tags: list[str]
    scores: dict[str, float]
    inner: Inner
    shade: Shade
    blob: bytes
    maybe: int | None = None


@dataclass(frozen=True)
class RowsHeader(ArrowSerializableDataclass):
    start: int
    count: int
    checksum: int  # sum of i over every row the stream will produce


@dataclass(frozen=True)
class LoadStats(ArrowSerializableDataclass):
    pid: int
    live_calls: int  # calls in progress on the server, this one included (-1: unknown)
    unary_calls: int  # add / echo_* calls served
    streams_opened: int  # rows / running_sum calls (stream opens; resumes do not count)
    exchange_turns: int
    cancels: int  # on_cancel runs
    cancelled_rows: int  # rows a cancelled producer had delivered, summed
    cancelled_turns: int  # turns a cancelled exchange had answered, summed
    slow_started: int  # slow() calls that started (they outlive their callers' deadlines)
    threads: int  # OS threads of the process
    python_objects: int
    arrow_bytes: int


ROWS_SCHEMA = pa.schema([("i", pa.int64()), ("sq", pa.int64()), ("text", pa.utf8()), ("pid", pa.int64())])
SUM_INPUT_SCHEMA = pa.schema([("x", pa.int64())])
SUM_OUTPUT_SCHEMA = pa.schema([("total", pa.int64()), ("turns", pa.int64()), ("rows", pa.int64()), ("pid", pa.int64())])


def row_text(i: int) -> str:
    return f"row-{i}"


class _Counters:
    """Per-process counters; the implementation and the stream states update them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, int] = dict.fromkeys(
            (
                "unary_calls",
                "streams_opened",
                "exchange_turns",
                "cancels",
                "cancelled_rows",
                "cancelled_turns",
                "slow_started",
            ),
            0,
        )

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                self.values[name] += delta

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.values)


COUNTERS = _Counters()


@dataclass
class RowsState(ProducerState):
    start: int
    count: int
    per_batch: int = 1
    pause_ms: int = 0
    next: int = -1  # the next row to produce; -1 before the first batch

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.next < 0:
            self.next = self.start
        end = self.start + self.count
        if self.next >= end:
            out.finish()
            return
        if self.pause_ms:
            time.sleep(self.pause_ms / 1000)
        rows = list(range(self.next, min(end, self.next + self.per_batch)))
        out.emit_pydict(
            {
                "i": rows,
                "sq": [i * i for i in rows],
                "text": [row_text(i) for i in rows],
                "pid": [os.getpid()] * len(rows),
            }
        )
        self.next = rows[-1] + 1

    def on_cancel(self, ctx: CallContext) -> None:
        delivered = 0 if self.next < 0 else self.next - self.start
        COUNTERS.add(cancels=1, cancelled_rows=delivered)


@dataclass
class SumState(ExchangeState):
    total: int = 0
    turns: int = 0
    rows: int = 0
    history: list[int] = field(default_factory=list)  # the per-turn totals: state that grows with the stream

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        values = input.batch.column("x").to_pylist()
        self.turns += 1
        self.rows += len(values)
        self.total += sum(values)
        self.history.append(self.total)
        COUNTERS.add(exchange_turns=1)
        out.emit_pydict({"total": [self.total], "turns": [self.turns], "rows": [self.rows], "pid": [os.getpid()]})

    def on_cancel(self, ctx: CallContext) -> None:
        COUNTERS.add(cancels=1, cancelled_turns=self.turns)


class Load(Protocol):
    """Checkable unary calls and streams for load and soak tests."""

    def add(self, a: int, b: int) -> int: ...
    def echo_str(self, value: str) -> str: ...
    def echo_bytes(self, value: bytes) -> bytes: ...
    def echo_record(self, value: Record) -> Record: ...
    def slow(self, seconds: float, value: int) -> int: ...
    def stats(self, collect: bool = False) -> LoadStats: ...
    def rows(
        self, start: int, count: int, per_batch: int = 1, pause_ms: int = 0
    ) -> Stream[StreamState, RowsHeader]: ...
    def running_sum(self) -> Stream[StreamState]: ...


class LoadImpl:
    """The implementation; ``server`` is set by the process that serves it (for ``live_calls``)."""

    server: RpcServer | None = None

    def add(self, a: int, b: int) -> int:
        COUNTERS.add(unary_calls=1)
        return a + b

    def echo_str(self, value: str) -> str:
        COUNTERS.add(unary_calls=1)
        return value

    def echo_bytes(self, value: bytes) -> bytes:
        COUNTERS.add(unary_calls=1)
        return value

    def echo_record(self, value: Record) -> Record:
        COUNTERS.add(unary_calls=1)
        return value

    def slow(self, seconds: float, value: int) -> int:
        COUNTERS.add(slow_started=1)
        time.sleep(seconds)
        return value

    def stats(self, collect: bool = False) -> LoadStats:
        if collect:
            gc.collect()
        counters = COUNTERS.snapshot()
        return LoadStats(
            pid=os.getpid(),
            live_calls=self.server.live_calls if self.server is not None else -1,
            threads=len(os.listdir("/proc/self/task")),
            python_objects=len(gc.get_objects()),
            arrow_bytes=pa.total_allocated_bytes(),
            **counters,
        )

    def rows(self, start: int, count: int, per_batch: int = 1, pause_ms: int = 0) -> Stream[RowsState, RowsHeader]:
        COUNTERS.add(streams_opened=1)
        header = RowsHeader(start, count, sum(range(start, start + count)))
        return Stream(
            output_schema=ROWS_SCHEMA, state=RowsState(start, count, max(1, per_batch), pause_ms), header=header
        )

    def running_sum(self) -> Stream[SumState]:
        COUNTERS.add(streams_opened=1)
        return Stream(output_schema=SUM_OUTPUT_SCHEMA, state=SumState(), input_schema=SUM_INPUT_SCHEMA)
