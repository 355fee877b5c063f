"""The interop service every cross-language client calls (see README.md beside this file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from vgi_flight import (
    AnnotatedBatch,
    ArrowSerializableDataclass,
    CallContext,
    ExchangeState,
    Level,
    OutputCollector,
    ProducerState,
    Stream,
    StreamState,
)


@dataclass(frozen=True)
class Point(ArrowSerializableDataclass):
    """A nested dataclass parameter and result: an Arrow struct {x: float64, y: float64, tags: list<utf8>}."""

    x: float
    y: float
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GenerateHeader(ArrowSerializableDataclass):
    """Header of `generate`."""

    count: int
    label: str


@dataclass(frozen=True)
class AccumulateHeader(ArrowSerializableDataclass):
    """Header of `accumulate`."""

    start: float


class Interop(Protocol):
    """The cross-language interop service."""

    def add(self, a: int, b: int) -> int:
        """a + b."""
        ...

    def describe_point(self, p: Point, label: str | None = None) -> str:
        """'<label or point>:<x>,<y>:<number of tags>'."""
        ...

    def scale(self, p: Point, factor: float) -> Point:
        """The point with x and y multiplied by factor; tags kept."""
        ...

    def noop(self) -> None:
        """Returns nothing."""
        ...

    def fail(self, message: str) -> int:
        """Always raises ValueError(message)."""
        ...

    def whoami(self) -> str:
        """The caller's principal."""
        ...

    def generate(self, count: int, big_rows: int = 0) -> Stream[StreamState, GenerateHeader]:
        """Producer of `count` batches {i: int64, text: utf8}; batch k holds i = 10k .. 10k+9, except
        batch 1 (when count > 1 and big_rows > 0) which holds i = 0 .. big_rows-1 (larger than 4 MiB for
        big_rows >= 300000). text = "row-<i>"."""
        ...

    def accumulate(self, start: float = 0.0) -> Stream[StreamState, AccumulateHeader]:
        """Exchange: input {value: float64}; answers each batch with {total: float64, turns: int64}
        (running total of all values, starting at `start`) and logs "turn <n>" (INFO) before it."""
        ...


@dataclass
class GenerateState(ProducerState):
    count: int
    big_rows: int
    produced: int = 0

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.produced >= self.count:
            out.finish()
            return
        k = self.produced
        values = range(self.big_rows) if (k == 1 and self.big_rows > 0) else range(10 * k, 10 * k + 10)
        out.emit_pydict({"i": list(values), "text": [f"row-{i}" for i in values]})
        self.produced += 1


@dataclass
class AccumulateState(ExchangeState):
    total: float
    turns: int = 0

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        self.turns += 1
        self.total += sum(v for v in input.batch.column("value").to_pylist() if v is not None)
        out.client_log(Level.INFO, f"turn {self.turns}")
        out.emit_pydict({"total": [self.total], "turns": [self.turns]})


class InteropImpl:
    def add(self, a: int, b: int) -> int:
        return a + b

    def describe_point(self, p: Point, label: str | None = None) -> str:
        return f"{label or 'point'}:{p.x:g},{p.y:g}:{len(p.tags)}"

    def scale(self, p: Point, factor: float) -> Point:
        return Point(p.x * factor, p.y * factor, p.tags)

    def noop(self) -> None:
        return None

    def fail(self, message: str) -> int:
        raise ValueError(message)

    def whoami(self, ctx: CallContext) -> str:
        return ctx.auth.principal or "anonymous"

    def generate(self, count: int, big_rows: int = 0) -> Stream[GenerateState, GenerateHeader]:
        return Stream(
            output_schema=pa.schema([("i", pa.int64()), ("text", pa.utf8())]),
            state=GenerateState(count, big_rows),
            header=GenerateHeader(count, f"generate {count}"),
        )

    def accumulate(self, start: float = 0.0) -> Stream[AccumulateState, AccumulateHeader]:
        return Stream(
            output_schema=pa.schema([("total", pa.float64()), ("turns", pa.int64())]),
            state=AccumulateState(start),
            input_schema=pa.schema([("value", pa.float64())]),
            header=AccumulateHeader(start),
        )
