"""A service exercising every feature the conformance suite checks."""

from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Annotated, ClassVar, Protocol
from uuid import UUID

import pyarrow as pa

from vgi_flight import (
    AnnotatedBatch,
    ArrowSerializableDataclass,
    ArrowType,
    CallContext,
    ExchangeState,
    Level,
    OutputCollector,
    ProducerState,
    RpcError,
    Stream,
    StreamState,
)
from vgi_flight._errors import ErrorCode


class Color(Enum):
    RED = "red"
    GREEN = "green"


@dataclass(frozen=True)
class Inner(ArrowSerializableDataclass):
    label: str
    weight: float = 1.0


@dataclass(frozen=True)
class Rich(ArrowSerializableDataclass):
    n: int
    tags: list[str]
    color: Color
    inner: Inner
    maybe: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    colors: frozenset[Color] = frozenset()


@dataclass(frozen=True)
class Header(ArrowSerializableDataclass):
    rows: int
    note: str


# Cancellation bookkeeping visible to tests that run the server in-process.
CANCELLED: list[str] = []
CANCEL_LOCK = threading.Lock()


@dataclass
class CountState(ProducerState):
    limit: int
    tag: str = ""
    n: int = 0
    log_every: int = 0

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.n >= self.limit:
            out.finish()
            return
        if self.log_every and self.n % self.log_every == 0:
            out.client_log(Level.DEBUG, f"at {self.n}")
        out.emit_pydict({"i": [self.n]})
        self.n += 1

    def on_cancel(self, ctx: CallContext) -> None:
        with CANCEL_LOCK:
            CANCELLED.append(f"{self.tag}@{self.n}")


@dataclass
class EchoState(ExchangeState):
    tag: str = ""
    turns: int = 0
    fail_on: int = -1

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        self.turns += 1
        if self.turns == self.fail_on:
            raise ValueError(f"turn {self.turns} fails")
        ctx.client_log(Level.INFO, f"turn {self.turns}")
        meta = dict(input.custom_metadata or {})
        out.emit(input.batch, metadata={k.decode(): v.decode() for k, v in meta.items()} or None)

    def on_cancel(self, ctx: CallContext) -> None:
        with CANCEL_LOCK:
            CANCELLED.append(f"{self.tag}@{self.turns}")


@dataclass
class ZeroColumnState(ExchangeState):
    turns: int = 0

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        self.turns += 1
        out.emit_pydict({"turns": [self.turns], "rows": [input.batch.num_rows]})


@dataclass
class BigState(ProducerState):
    rows: int
    batches: int = 2
    sent: int = 0

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.sent >= self.batches:
            out.finish()
            return
        start = self.sent * self.rows
        out.emit_pydict({"i": list(range(start, start + self.rows)), "s": [f"row-{n:08d}" for n in range(self.rows)]})
        self.sent += 1


@dataclass
class PidState(ProducerState):
    """Tags every row with the serving process, so tests can see which replica produced it."""

    limit: int
    n: int = 0

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.n >= self.limit:
            out.finish()
            return
        out.emit_pydict({"i": [self.n], "pid": [os.getpid()]})
        self.n += 1


@dataclass
class SumState(ExchangeState):
    total: float = 0.0
    turns: int = 0

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        self.turns += 1
        self.total += sum(input.batch.column("x").to_pylist())
        out.emit_pydict({"total": [self.total], "turns": [self.turns], "pid": [os.getpid()]})


class Conformance(Protocol):
    """Conformance service."""

    protocol_version: ClassVar[str] = "1"

    def echo_int(self, value: int) -> int: ...
    def echo_str(self, value: str) -> str: ...
    def echo_bytes(self, value: bytes) -> bytes: ...
    def echo_float(self, value: float) -> float: ...
    def echo_bool(self, value: bool) -> bool: ...
    def echo_optional(self, value: str | None = None) -> str | None: ...
    def echo_rich(self, value: Rich) -> Rich: ...
    def echo_list(self, value: list[int]) -> list[int]: ...
    def echo_dict(self, value: dict[str, float]) -> dict[str, float]: ...
    def echo_enum(self, value: Color) -> Color: ...
    def echo_datetime(self, value: dt.datetime) -> dt.datetime: ...
    def echo_decimal(self, value: Annotated[Decimal, ArrowType(pa.decimal128(20, 4))]) -> Decimal: ...
    def echo_uuid(self, value: UUID) -> UUID: ...
    def echo_uint64(self, value: Annotated[int, ArrowType(pa.uint64())]) -> Annotated[int, ArrowType(pa.uint64())]: ...
    def add(self, a: int, b: int = 10) -> int: ...
    def nothing(self) -> None: ...
    def fail(self, message: str) -> int: ...
    def fail_with_code(self) -> int: ...
    def logs_then_value(self, count: int) -> int: ...
    def whoami(self) -> str: ...
    def count(self, limit: int, tag: str = "", log_every: int = 0) -> Stream[StreamState]: ...
    def count_with_header(self, limit: int) -> Stream[StreamState, Header]: ...
    def echo_stream(self, tag: str = "", fail_on: int = -1) -> Stream[StreamState, Header]: ...
    def zero_columns(self) -> Stream[StreamState]: ...
    def broken_stream(self) -> Stream[StreamState]: ...
    def big(self, rows: int, batches: int = 2) -> Stream[StreamState]: ...
    def server_pid(self) -> int: ...
    def pids(self, limit: int) -> Stream[StreamState]: ...
    def summing(self) -> Stream[StreamState]: ...


class ConformanceImpl:
    def echo_int(self, value: int) -> int:
        return value

    def echo_str(self, value: str) -> str:
        return value

    def echo_bytes(self, value: bytes) -> bytes:
        return value

    def echo_float(self, value: float) -> float:
        return value

    def echo_bool(self, value: bool) -> bool:
        return value

    def echo_optional(self, value: str | None = None) -> str | None:
        return value

    def echo_rich(self, value: Rich) -> Rich:
        return value

    def echo_list(self, value: list[int]) -> list[int]:
        return value

    def echo_dict(self, value: dict[str, float]) -> dict[str, float]:
        return value

    def echo_enum(self, value: Color) -> Color:
        return value

    def echo_datetime(self, value: dt.datetime) -> dt.datetime:
        return value

    def echo_decimal(self, value: Decimal) -> Decimal:
        return value

    def echo_uuid(self, value: UUID) -> UUID:
        return value

    def echo_uint64(self, value: int) -> int:
        return value

    def add(self, a: int, b: int = 10) -> int:
        return a + b

    def nothing(self) -> None:
        return None

    def fail(self, message: str) -> int:
        raise ValueError(message)

    def fail_with_code(self) -> int:
        raise RpcError("QuotaExceeded", "too many calls", code=ErrorCode.RESOURCE_EXHAUSTED)

    def logs_then_value(self, count: int, ctx: CallContext) -> int:
        for i in range(count):
            ctx.client_log(Level.INFO, f"log {i}", index=i)
        return count

    def whoami(self, ctx: CallContext) -> str:
        return ctx.auth.principal or "anonymous"

    def extra_method_not_in_protocol(self) -> int:
        return 1

    def count(self, limit: int, tag: str = "", log_every: int = 0, *, ctx: CallContext) -> Stream[CountState]:
        ctx.client_log(Level.INFO, "opening count")
        return Stream(output_schema=pa.schema([("i", pa.int64())]), state=CountState(limit, tag, 0, log_every))

    def count_with_header(self, limit: int) -> Stream[CountState, Header]:
        return Stream(
            output_schema=pa.schema([("i", pa.int64())]), state=CountState(limit), header=Header(limit, "counting")
        )

    def echo_stream(self, tag: str = "", fail_on: int = -1) -> Stream[EchoState, Header]:
        schema = pa.schema([("x", pa.float64())])
        return Stream(
            output_schema=schema, state=EchoState(tag, 0, fail_on), input_schema=schema, header=Header(0, "echo")
        )

    def zero_columns(self) -> Stream[ZeroColumnState]:
        return Stream(
            output_schema=pa.schema([("turns", pa.int64()), ("rows", pa.int64())]),
            state=ZeroColumnState(),
            input_schema=pa.schema([]),
        )

    def big(self, rows: int, batches: int = 2) -> Stream[BigState]:
        return Stream(output_schema=pa.schema([("i", pa.int64()), ("s", pa.utf8())]), state=BigState(rows, batches))

    def server_pid(self) -> int:
        return os.getpid()

    def pids(self, limit: int) -> Stream[PidState]:
        return Stream(output_schema=pa.schema([("i", pa.int64()), ("pid", pa.int64())]), state=PidState(limit))

    def summing(self) -> Stream[SumState]:
        return Stream(
            output_schema=pa.schema([("total", pa.float64()), ("turns", pa.int64()), ("pid", pa.int64())]),
            state=SumState(),
            input_schema=pa.schema([("x", pa.float64())]),
        )

    def broken_stream(self) -> Stream[CountState]:
        return "not a stream"  # type: ignore[return-value]
