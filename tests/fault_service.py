"""A service whose handlers can be made to hang, run forever or count what they produced: for fault tests.

Bookkeeping is module-level so that tests running the server in-process can see it. Gates are
keyed by a name the test chooses; a handler waiting on a gate hangs until the test opens it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from vgi_flight import (
    AnnotatedBatch,
    CallContext,
    ExchangeState,
    OutputCollector,
    ProducerState,
    Stream,
    StreamState,
)

_LOCK = threading.Lock()
GATES: dict[str, threading.Event] = {}
PRODUCED: Counter[str] = Counter()  # batches produced per stream key
CANCELLED: Counter[str] = Counter()  # on_cancel runs per stream key
SAW_CANCELLED: set[str] = set()  # gates whose cooperative handler saw ctx.cancelled turn True
HUNG_ONCE: set[str] = set()  # hang points already used (hang_once hangs the first time only)
OPENED: Counter[str] = Counter()  # stream method runs per key

ENDLESS_SCHEMA = pa.schema([("i", pa.int64())])
RELAY_INPUT = pa.schema([("x", pa.int64())])
RELAY_OUTPUT = pa.schema([("total", pa.int64())])


def gate(name: str) -> threading.Event:
    """The gate called ``name`` (created closed)."""
    with _LOCK:
        return GATES.setdefault(name, threading.Event())


def reset() -> None:
    """Forget every gate and count (open the old gates first so no handler stays stuck)."""
    with _LOCK:
        for event in GATES.values():
            event.set()
        GATES.clear()
        PRODUCED.clear()
        CANCELLED.clear()
        SAW_CANCELLED.clear()
        HUNG_ONCE.clear()
        OPENED.clear()


def _hang(name: str, ctx: CallContext | None, cooperative: bool) -> None:
    event = gate(name)
    while not event.wait(0.01):
        if cooperative and ctx is not None and ctx.cancelled:
            with _LOCK:
                SAW_CANCELLED.add(name)
            return


@dataclass
class EndlessState(ProducerState):
    """Batches of ``rows`` consecutive integers, forever or ``limit`` of them; may hang once at ``hang_at``."""

    key: str
    rows: int = 1
    n: int = 0
    hang_at: int = -1
    limit: int = -1

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.n == self.limit:
            out.finish()
            return
        if self.n == self.hang_at:
            point = f"{self.key}@{self.n}"
            with _LOCK:
                first = point not in HUNG_ONCE
                HUNG_ONCE.add(point)
            if first:
                _hang(self.key, ctx, cooperative=False)
        start = self.n * self.rows
        out.emit(pa.record_batch([pa.array(range(start, start + self.rows), pa.int64())], schema=ENDLESS_SCHEMA))
        self.n += 1
        with _LOCK:
            PRODUCED[self.key] += 1

    def on_cancel(self, ctx: CallContext) -> None:
        with _LOCK:
            CANCELLED[self.key] += 1


@dataclass
class RelayState(ExchangeState):
    """Answers every input batch with the running total of its ``x`` values."""

    key: str
    total: int = 0

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        self.total += sum(v for v in input.batch.column("x").to_pylist() if v is not None)
        out.emit(pa.record_batch([pa.array([self.total], pa.int64())], schema=RELAY_OUTPUT))
        with _LOCK:
            PRODUCED[self.key] += 1

    def on_cancel(self, ctx: CallContext) -> None:
        with _LOCK:
            CANCELLED[self.key] += 1


class FaultService(Protocol):
    """Handlers that hang, never end, or keep state, for fault tests."""

    def ping(self) -> int:
        """Answer 1: proves the server still serves."""
        ...

    def hang(self, gate: str, cooperative: bool = False) -> int:
        """Wait until the gate opens (or, if cooperative, until ctx.cancelled); answer 1."""
        ...

    def sleep(self, seconds: float) -> float:
        """Sleep, then answer the seconds slept."""
        ...

    def endless(self, key: str, rows: int = 1, hang_at: int = -1) -> Stream[StreamState]:
        """Produce batches of consecutive integers without end."""
        ...

    def relay(self, key: str) -> Stream[StreamState]:
        """Exchange: the running total of the inputs."""
        ...

    def either(self, key: str, exchange: bool) -> Stream[StreamState]:
        """A relay exchange, or a producer of three batches: the kind depends on the call."""
        ...


class FaultServiceImpl:
    def ping(self) -> int:
        return 1

    def hang(self, gate: str, cooperative: bool = False, ctx: CallContext | None = None) -> int:
        _hang(gate, ctx, cooperative)
        return 1

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def endless(self, key: str, rows: int = 1, hang_at: int = -1) -> Stream[StreamState]:
        return Stream(output_schema=ENDLESS_SCHEMA, state=EndlessState(key=key, rows=rows, hang_at=hang_at))

    def relay(self, key: str) -> Stream[StreamState]:
        return Stream(output_schema=RELAY_OUTPUT, state=RelayState(key=key), input_schema=RELAY_INPUT)

    def either(self, key: str, exchange: bool) -> Stream[StreamState]:
        with _LOCK:
            OPENED[key] += 1
        if exchange:
            return self.relay(key)
        return Stream(output_schema=ENDLESS_SCHEMA, state=EndlessState(key=key, limit=3))
