"""Running statistics over streamed values: the seed's exchanges, made deployable.

Serve with ``vgi-flight serve services.stats:StatsServiceImpl --location grpc://0.0.0.0:8815``.

* ``running_stats`` — an exchange: send batches of ``value`` (float64); each answer holds the count,
  mean, min, max, variance and standard deviation of every value sent so far. The state is a handful
  of scalars (Welford's algorithm, merged batch-wise with Chan et al.'s formula), so its token stays
  a few dozen bytes however many values have been seen, and the stream can resume on any replica.
* ``pipeline`` — the seed's stateful pipeline: buffers values in the ``COLLECTING`` phase and
  switches to ``PROCESSING`` once their sum reaches a threshold (an Enum and a list in the state).
* ``describe_column`` — a unary summary of one list of values.

Nulls and NaNs are skipped everywhere, as in pandas' ``skipna``.

Configuration (environment):

* ``VGI_STATS_MAX_BUFFER`` — most values ``pipeline`` buffers (they travel in every token); default
  100000.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from vgi_flight import (
    AnnotatedBatch,
    ArrowSerializableDataclass,
    CallContext,
    ExchangeState,
    Level,
    OutputCollector,
    Stream,
    StreamState,
)

VALUE_SCHEMA = pa.schema([pa.field("value", pa.float64())])
"""Input schema of both exchanges: one float64 column named ``value``."""

RUNNING_STATS_SCHEMA = pa.schema(
    [
        pa.field("count", pa.int64(), nullable=False),
        pa.field("mean", pa.float64()),
        pa.field("min", pa.float64()),
        pa.field("max", pa.float64()),
        pa.field("variance", pa.float64()),
        pa.field("stddev", pa.float64()),
    ]
)
"""Output schema of ``running_stats``: one row per input batch (statistics are null until defined)."""

PIPELINE_SCHEMA = pa.schema([("phase", pa.utf8()), ("buffer_size", pa.int64()), ("total", pa.float64())])
"""Output schema of ``pipeline``: one row per input batch."""


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def clean_values(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Return ``column`` as float64 without nulls and NaNs (vectorized).

    Args:
        column: A numeric Arrow array.

    Returns:
        The remaining values, as one float64 array.
    """
    values = pc.drop_null(pc.cast(column, pa.float64()))
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return values
    return pc.filter(values, pc.invert(pc.is_nan(values)))


@dataclass(frozen=True)
class StatsHeader(ArrowSerializableDataclass):
    """Sent once before a ``running_stats`` stream: what its answers mean.

    Attributes:
        label: The caller's label for the stream.
        statistics: The output columns, in order.
        ddof: Delta degrees of freedom of ``variance`` and ``stddev`` (1: sample, 0: population).
        description: A human-readable explanation.
    """

    label: str
    statistics: list[str]
    ddof: int
    description: str


@dataclass(frozen=True)
class Summary(ArrowSerializableDataclass):
    """Descriptive statistics of one column of values.

    Attributes:
        count: Number of values (nulls and NaNs excluded).
        mean: Arithmetic mean.
        minimum: Smallest value.
        maximum: Largest value.
        median: The median (linear interpolation between the two middle values).
        variance: Sample variance (``None`` for fewer than two values).
        stdev: Sample standard deviation (``None`` for fewer than two values).
    """

    count: int
    mean: float
    minimum: float
    maximum: float
    median: float
    variance: float | None
    stdev: float | None


class Phase(Enum):
    """Processing phase of :class:`StatefulPipeline`."""

    COLLECTING = "collecting"
    PROCESSING = "processing"


class StatsService(Protocol):
    """Running and one-shot statistics over float values."""

    def running_stats(self, label: str = "", ddof: int = 1) -> Stream[StreamState, StatsHeader]:
        """Exchange: send batches of ``value``; each answer holds the statistics of every value so far.

        Args:
            label: A name for the stream, echoed in the header.
            ddof: Delta degrees of freedom of the variance (1: sample, 0: population).
        """
        ...

    def pipeline(self, threshold: float = 100.0) -> Stream[StreamState]:
        """Exchange: buffer values until their sum reaches ``threshold``, then switch to processing.

        Args:
            threshold: The sum at which the phase changes from collecting to processing.
        """
        ...

    def describe_column(self, values: list[float]) -> Summary:
        """Summarize one column of values.

        Args:
            values: The values (NaNs are skipped); at least one is required.
        """
        ...


@dataclass
class RunningStatsState(ExchangeState):
    """Welford's running statistics; every field is a scalar, so tokens use the compact codec.

    Attributes:
        label: The caller's label.
        ddof: Delta degrees of freedom of the reported variance.
        count: Number of values seen.
        mean: Mean of the values seen.
        m2: Sum of squared deviations from the mean.
        minimum: Smallest value seen, or ``None`` before the first.
        maximum: Largest value seen, or ``None`` before the first.
    """

    label: str = ""
    ddof: int = 1
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float | None = None
    maximum: float | None = None

    def update(self, values: pa.Array) -> None:
        """Merge a batch of clean values into the running statistics (Chan et al.'s pairwise update).

        Args:
            values: float64 values without nulls or NaNs.
        """
        n_b = len(values)
        if n_b == 0:
            return
        mean_b = float(pc.mean(values).as_py())
        m2_b = float(pc.variance(values, ddof=0).as_py()) * n_b
        extremes = pc.min_max(values)
        low, high = float(extremes["min"].as_py()), float(extremes["max"].as_py())
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * n_a * n_b / n
        self.count = n
        self.minimum = low if self.minimum is None else min(self.minimum, low)
        self.maximum = high if self.maximum is None else max(self.maximum, high)

    @property
    def variance(self) -> float | None:
        """The variance with ``ddof`` degrees of freedom removed, or ``None`` while undefined."""
        if self.count - self.ddof <= 0:
            return None
        return self.m2 / (self.count - self.ddof)

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        """Fold the batch's values in and answer with the statistics so far."""
        self.update(clean_values(input.batch.column("value")))
        variance = self.variance
        out.emit_pydict(
            {
                "count": [self.count],
                "mean": [self.mean if self.count else None],
                "min": [self.minimum],
                "max": [self.maximum],
                "variance": [variance],
                "stddev": [math.sqrt(variance) if variance is not None else None],
            }
        )


@dataclass
class StatefulPipeline(ExchangeState):
    """The seed's pipeline: an Enum phase and a value buffer, serialized between turns.

    Attributes:
        phase: ``COLLECTING`` until the buffered values sum to ``threshold``, then ``PROCESSING``.
        buffer: Every value received (nulls and NaNs skipped).
        threshold: The sum that ends the collecting phase.
        total: Sum of ``buffer``, kept so that no turn re-sums it.
        max_buffer: Most values the buffer may hold (it travels in every token).
    """

    phase: Phase = Phase.COLLECTING
    buffer: list[float] = field(default_factory=list)
    threshold: float = 100.0
    total: float = 0.0
    max_buffer: int = 100_000

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        """Accumulate values, switch phase when the threshold is reached.

        Raises:
            ValueError: The buffer would exceed ``max_buffer`` values.
        """
        values = clean_values(input.batch.column("value"))
        if len(self.buffer) + len(values) > self.max_buffer:
            raise ValueError(
                f"pipeline buffer would hold {len(self.buffer) + len(values)} values, more than {self.max_buffer}"
            )
        self.buffer.extend(values.to_pylist())
        if len(values):
            self.total += float(pc.sum(values).as_py())
        if self.phase is Phase.COLLECTING and self.total >= self.threshold:
            self.phase = Phase.PROCESSING
            out.client_log(Level.INFO, "threshold reached: processing", total=self.total, threshold=self.threshold)
        out.emit_pydict({"phase": [self.phase.value], "buffer_size": [len(self.buffer)], "total": [self.total]})


class StatsServiceImpl:
    """The statistics service. Configured by ``VGI_STATS_MAX_BUFFER`` (see the module docstring)."""

    def __init__(self) -> None:
        self.max_buffer = _env_int("VGI_STATS_MAX_BUFFER", 100_000)

    def running_stats(self, label: str = "", ddof: int = 1) -> Stream[RunningStatsState, StatsHeader]:
        """Open a running-statistics exchange.

        Raises:
            ValueError: ``ddof`` is negative.
        """
        if ddof < 0:
            raise ValueError(f"ddof must be 0 or more, got {ddof}")
        header = StatsHeader(
            label=label,
            statistics=RUNNING_STATS_SCHEMA.names,
            ddof=ddof,
            description=(
                "one row per input batch: count, mean, min, max, variance and stddev of every value sent so far "
                f"(variance divides by count - {ddof}; nulls and NaNs are skipped; a statistic is null until defined)"
            ),
        )
        return Stream(
            output_schema=RUNNING_STATS_SCHEMA,
            state=RunningStatsState(label=label, ddof=ddof),
            input_schema=VALUE_SCHEMA,
            header=header,
        )

    def pipeline(self, threshold: float = 100.0) -> Stream[StatefulPipeline]:
        """Open a pipeline exchange."""
        return Stream(
            output_schema=PIPELINE_SCHEMA,
            state=StatefulPipeline(threshold=threshold, max_buffer=self.max_buffer),
            input_schema=VALUE_SCHEMA,
        )

    def describe_column(self, values: list[float]) -> Summary:
        """Summarize ``values``.

        Raises:
            ValueError: No value remains once NaNs are skipped.
        """
        clean = clean_values(pa.array(values, pa.float64()))
        n = len(clean)
        if n == 0:
            raise ValueError("describe_column needs at least one value that is not NaN")
        extremes = pc.min_max(clean)
        variance = float(pc.variance(clean, ddof=1).as_py()) if n > 1 else None
        return Summary(
            count=n,
            mean=float(pc.mean(clean).as_py()),
            minimum=float(extremes["min"].as_py()),
            maximum=float(extremes["max"].as_py()),
            median=float(pc.quantile(clean, q=0.5, interpolation="linear")[0].as_py()),
            variance=variance,
            stdev=math.sqrt(variance) if variance is not None else None,
        )
