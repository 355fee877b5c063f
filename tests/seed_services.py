"""The seed document's examples, with only the import changed, wired into Protocols.

Every class body below is the seed's code; the Protocols and implementations around them are
what a user would add to serve them.
"""

from __future__ import annotations

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
    Stream,
    StreamState,
)


@dataclass
class RunningStatsState(ExchangeState):
    """All fields are automatically serialized between calls."""

    count: int = 0  # simple counter
    total: float = 0.0  # running accumulator
    history: list[float] = field(default_factory=list)  # grows each call
    label: str = ""  # set once at init

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        """Each call sees the updated state from the previous call."""
        values = input.batch.column("value").to_pylist()
        self.count += len(values)
        self.total += sum(values)
        self.history.extend(values)
        out.emit_pydict({"count": [self.count], "mean": [self.total / self.count]})


@dataclass
class PaginatedQueryState(ProducerState):
    """Produces pages of results, tracking the current offset."""

    query: str
    page_size: int = 100
    offset: int = 0  # persisted — increments each call
    exhausted: bool = False  # persisted — signals completion

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        """Emit one page per call."""
        if self.exhausted:
            out.finish()
            return
        # ... fetch results from offset ...
        results = list(range(self.offset, self.offset + self.page_size))
        if len(results) < self.page_size:
            self.exhausted = True
        self.offset += self.page_size
        out.emit_pydict({"value": results})


class Phase(Enum):
    """Processing phase."""

    COLLECTING = "collecting"
    PROCESSING = "processing"


@dataclass
class StatefulPipeline(ExchangeState):
    """Exchange state with enum and list fields — all serialized automatically."""

    phase: Phase = Phase.COLLECTING
    buffer: list[float] = field(default_factory=list)
    threshold: float = 100.0

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        """Accumulate values, switch phase when threshold is reached."""
        values = input.batch.column("value").to_pylist()
        self.buffer.extend(values)

        if sum(self.buffer) >= self.threshold and self.phase == Phase.COLLECTING:
            self.phase = Phase.PROCESSING

        out.emit_pydict(
            {
                "phase": [self.phase.value],
                "buffer_size": [len(self.buffer)],
                "total": [sum(self.buffer)],
            }
        )


@dataclass(frozen=True)
class JobHeader(ArrowSerializableDataclass):
    """One-time metadata sent before the stream begins."""

    total_rows: int
    description: str


class DataService(Protocol):
    """Service with a header-bearing producer stream."""

    def fetch_rows(self, query: str) -> Stream[StreamState, JobHeader]: ...

    def transform_rows(self, factor: float) -> Stream[StreamState, JobHeader]: ...

    def search(self, query: str, page_size: int = 100) -> Stream[StreamState]: ...

    def pipeline(self, threshold: float = 100.0) -> Stream[StreamState]: ...

    def running_stats(self, label: str = "") -> Stream[StreamState]: ...


@dataclass
class FetchState(ProducerState):
    """Produces query results."""

    remaining: int

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        """Emit one batch per call."""
        if self.remaining <= 0:
            out.finish()
            return
        out.emit_pydict({"value": [self.remaining]})
        self.remaining -= 1


@dataclass
class TransformState(ExchangeState):
    """Multiplies every value by a factor."""

    factor: float

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        """Scale the input column."""
        out.emit_pydict({"value": [v * self.factor for v in input.batch.column("value").to_pylist()]})


class DataServiceImpl:
    """Implementation with stream headers."""

    def fetch_rows(self, query: str) -> Stream[FetchState, JobHeader]:
        """Return a stream with a header."""
        schema = pa.schema([pa.field("value", pa.int64())])
        header = JobHeader(total_rows=100, description=f"Results for: {query}")
        return Stream(output_schema=schema, state=FetchState(remaining=100), header=header)

    def transform_rows(self, factor: float) -> Stream[TransformState, JobHeader]:
        """An exchange with a header."""
        schema = pa.schema([pa.field("value", pa.float64())])
        header = JobHeader(total_rows=0, description=f"scale by {factor}")
        return Stream(output_schema=schema, state=TransformState(factor), input_schema=schema, header=header)

    def search(self, query: str, page_size: int = 100) -> Stream[PaginatedQueryState]:
        """Paginated producer."""
        schema = pa.schema([pa.field("value", pa.int64())])
        return Stream(output_schema=schema, state=PaginatedQueryState(query=query, page_size=page_size))

    def pipeline(self, threshold: float = 100.0) -> Stream[StatefulPipeline]:
        """The seed's stateful pipeline exchange."""
        output = pa.schema([("phase", pa.utf8()), ("buffer_size", pa.int64()), ("total", pa.float64())])
        return Stream(
            output_schema=output,
            state=StatefulPipeline(threshold=threshold),
            input_schema=pa.schema([("value", pa.float64())]),
        )

    def running_stats(self, label: str = "") -> Stream[RunningStatsState]:
        """The seed's running statistics exchange."""
        return Stream(
            output_schema=pa.schema([("count", pa.int64()), ("mean", pa.float64())]),
            state=RunningStatsState(label=label),
            input_schema=pa.schema([("value", pa.float64())]),
        )
