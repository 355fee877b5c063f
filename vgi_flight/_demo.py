"""The demo service behind ``vgi-flight demo``: one method of every kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from vgi_flight._arrow_types import ArrowSerializableDataclass
from vgi_flight._context import CallContext
from vgi_flight._log import Level
from vgi_flight._streams import AnnotatedBatch, ExchangeState, OutputCollector, ProducerState, Stream, StreamState


@dataclass(frozen=True)
class Point(ArrowSerializableDataclass):
    """A point in the plane."""

    x: float
    y: float


@dataclass(frozen=True)
class Caller(ArrowSerializableDataclass):
    """Who the server thinks is calling, and how it knows.

    Attributes:
        principal: ``ctx.auth.principal`` ("" when anonymous).
        domain: The scheme that authenticated the call (``hmac``, ``mtls``, ...).
        key_id: The HMAC key that signed the call ("" when unsigned).
        certificate: The client certificate's identity ("" without mTLS).
    """

    principal: str
    domain: str
    key_id: str
    certificate: str


@dataclass(frozen=True)
class CountdownHeader(ArrowSerializableDataclass):
    """Sent once before a countdown's batches."""

    total: int
    label: str


class DemoService(Protocol):
    """A small service showing every method kind."""

    def add(self, a: int, b: int) -> int:
        """Add two integers."""
        ...

    def midpoint(self, p: Point, q: Point) -> Point:
        """The midpoint of two points (dataclasses travel as Arrow structs)."""
        ...

    def greet(self, name: str, excited: bool = False) -> str:
        """Greet someone, logging to the caller."""
        ...

    def divide(self, a: float, b: float) -> float:
        """Divide; dividing by zero raises on the server and reaches the caller as RpcError."""
        ...

    def whoami(self) -> Caller:
        """The caller's principal as the server authenticated it (HMAC key id, client certificate)."""
        ...

    def countdown(self, start: int) -> Stream[StreamState, CountdownHeader]:
        """Producer: one batch per number from ``start`` down to 1."""
        ...

    def running_sum(self) -> Stream[StreamState]:
        """Exchange: answers each batch with the running total so far."""
        ...


@dataclass
class CountdownState(ProducerState):
    """Counts down to one."""

    next_value: int

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        """Emit the next number or finish."""
        if self.next_value < 1:
            out.finish()
            return
        out.emit_pydict({"n": [self.next_value]})
        self.next_value -= 1


@dataclass
class RunningSumState(ExchangeState):
    """Keeps the total of every value seen."""

    total: float = 0.0
    batches: int = 0

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        """Add the batch's values to the total."""
        self.total += sum(input.batch.column("value").to_pylist())
        self.batches += 1
        if self.batches % 2 == 0:
            out.client_log(Level.INFO, f"{self.batches} batches so far")
        out.emit_pydict({"total": [self.total]})


class DemoServiceImpl:
    """The demo implementation."""

    def add(self, a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    def midpoint(self, p: Point, q: Point) -> Point:
        """The midpoint of two points."""
        return Point((p.x + q.x) / 2, (p.y + q.y) / 2)

    def greet(self, name: str, excited: bool = False, *, ctx: CallContext) -> str:
        """Greet someone."""
        ctx.client_log(Level.INFO, f"greeting {name}", caller=ctx.auth.principal or "anonymous")
        return f"Hello, {name}{'!' if excited else '.'}"

    def divide(self, a: float, b: float) -> float:
        """Divide."""
        if b == 0:
            raise ZeroDivisionError("division by zero")
        return a / b

    def whoami(self, *, ctx: CallContext) -> Caller:
        """Report ``ctx.auth``."""
        auth = ctx.auth
        return Caller(
            principal=auth.principal or "",
            domain=auth.domain or "anonymous",
            key_id=str(auth.claims.get("key_id", "")),
            certificate=str(auth.claims.get("mtls_identity", auth.principal if auth.domain == "mtls" else "") or ""),
        )

    def countdown(self, start: int) -> Stream[CountdownState, CountdownHeader]:
        """Producer with a header."""
        return Stream(
            output_schema=pa.schema([("n", pa.int64())]),
            state=CountdownState(start),
            header=CountdownHeader(total=max(start, 0), label=f"countdown from {start}"),
        )

    def running_sum(self) -> Stream[RunningSumState]:
        """Exchange."""
        return Stream(
            output_schema=pa.schema([("total", pa.float64())]),
            state=RunningSumState(),
            input_schema=pa.schema([("value", pa.float64())]),
        )
