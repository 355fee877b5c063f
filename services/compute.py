"""Vectorized numeric transforms with ``pyarrow.compute``: no per-row Python on any data path.

Serve with ``vgi-flight serve services.compute:ComputeServiceImpl --location grpc://0.0.0.0:8815``.

* ``transform`` — an exchange: each input batch's column comes back as
  ``log1p(clip(value * scale + offset, lower, upper))`` (each step optional), computed with
  ``pc.multiply``, ``pc.add``, ``pc.max_element_wise`` / ``pc.min_element_wise`` and ``pc.log1p``.
* ``normalize`` — an exchange: min-max normalization with the running minimum and maximum over
  every batch so far (including the current one); earlier answers are not revisited. The minimum
  and maximum used travel in each answer's custom metadata (``min``, ``max``).
* ``quantiles`` — a unary call: quantiles of a list of values (``pc.quantile``, linear interpolation).

Nulls stay null and NaNs stay NaN in every output. ``normalize`` and ``quantiles`` ignore NaNs when finding the range
or the quantiles; a NaN input normalizes to NaN. ``log1p`` follows IEEE rules: ``-1`` maps to
``-inf`` and values below ``-1`` to NaN. Both stream states hold only scalars, so their tokens use
the compact codec.

Configuration (environment):

* ``VGI_COMPUTE_MAX_QUANTILES`` — most quantiles one ``quantiles`` call may ask for (default 1000).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from vgi_flight import (
    AnnotatedBatch,
    ArrowSerializableDataclass,
    CallContext,
    ExchangeState,
    OutputCollector,
    Stream,
    StreamState,
)


def _column_schema(column: str) -> pa.Schema:
    if not column:
        raise ValueError("the column name must not be empty")
    return pa.schema([pa.field(column, pa.float64())])


def _without_nan(values: pa.Array) -> pa.Array:
    """``values`` without NaNs (nulls are kept; Arrow kernels skip them)."""
    return pc.filter(values, pc.invert(pc.is_nan(values)), null_selection_behavior="emit_null")


@dataclass(frozen=True)
class TransformHeader(ArrowSerializableDataclass):
    """Sent once before a ``transform`` stream.

    Attributes:
        expression: What is computed for every value, e.g. ``log1p(clip(value * 2.0 + 1.0, 0.0, 10.0))``.
    """

    expression: str


class ComputeService(Protocol):
    """Vectorized transforms and summaries of float columns."""

    def transform(
        self,
        column: str = "value",
        scale: float = 1.0,
        offset: float = 0.0,
        lower: float | None = None,
        upper: float | None = None,
        log1p: bool = False,
    ) -> Stream[StreamState, TransformHeader]:
        """Exchange: compute ``log1p(clip(column * scale + offset, lower, upper))`` for each batch.

        Args:
            column: The input (and output) column, float64.
            scale: Multiplier applied first.
            offset: Added after scaling.
            lower: Values below become ``lower`` (``None``: no lower bound).
            upper: Values above become ``upper`` (``None``: no upper bound).
            log1p: Whether to apply ``log(1 + x)`` last.
        """
        ...

    def normalize(self, column: str = "value") -> Stream[StreamState]:
        """Exchange: min-max normalize each batch with the running minimum and maximum.

        Args:
            column: The input (and output) column, float64.
        """
        ...

    def quantiles(self, values: list[float], q: list[float]) -> list[float]:
        """Quantiles of ``values`` (linear interpolation), in the order of ``q``.

        Args:
            values: The data; NaNs are ignored, at least one other value is required.
            q: Quantile levels, each between 0 and 1.
        """
        ...


@dataclass
class TransformState(ExchangeState):
    """The parameters of a transform and the rows processed: all scalars.

    Attributes:
        column: Input and output column.
        scale: Multiplier.
        offset: Addend.
        lower: Lower clip bound, or ``None``.
        upper: Upper clip bound, or ``None``.
        log1p: Whether ``log1p`` is applied.
        rows: Rows transformed so far.
    """

    column: str
    scale: float = 1.0
    offset: float = 0.0
    lower: float | None = None
    upper: float | None = None
    log1p: bool = False
    rows: int = 0

    def apply(self, values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """Transform ``values`` (vectorized; nulls stay null).

        Args:
            values: float64 values.
        """
        if self.scale != 1.0:
            values = pc.multiply(values, self.scale)
        if self.offset != 0.0:
            values = pc.add(values, self.offset)
        if self.lower is not None or self.upper is not None:
            clipped = values
            if self.lower is not None:
                clipped = pc.max_element_wise(clipped, pa.scalar(self.lower, pa.float64()), skip_nulls=False)
            if self.upper is not None:
                clipped = pc.min_element_wise(clipped, pa.scalar(self.upper, pa.float64()), skip_nulls=False)
            values = pc.if_else(pc.is_nan(values), values, clipped)  # Arrow's min/max would replace NaN
        if self.log1p:
            values = pc.log1p(values)
        return values

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        """Answer with the transformed column."""
        out.emit_arrays([self.apply(input.batch.column(0))])
        self.rows += input.batch.num_rows


@dataclass
class NormalizeState(ExchangeState):
    """Running minimum and maximum of a column: all scalars.

    Attributes:
        column: Input and output column.
        minimum: Smallest value so far, or ``None`` before the first non-null, non-NaN value.
        maximum: Largest value so far, or ``None`` before the first.
        rows: Rows received so far.
    """

    column: str
    minimum: float | None = None
    maximum: float | None = None
    rows: int = 0

    def observe(self, values: pa.Array | pa.ChunkedArray) -> None:
        """Widen the running range with ``values`` (nulls and NaNs are ignored).

        Args:
            values: float64 values.
        """
        extremes = pc.min_max(values)
        low, high = extremes["min"].as_py(), extremes["max"].as_py()
        if low is None or high is None:
            return
        self.minimum = float(low) if self.minimum is None else min(self.minimum, float(low))
        self.maximum = float(high) if self.maximum is None else max(self.maximum, float(high))

    def scale(self, values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """Map ``values`` into [0, 1] with the running range; a zero-width range maps to 0.

        Args:
            values: float64 values.
        """
        if self.minimum is None or self.maximum is None:
            return pa.nulls(len(values), pa.float64())
        shifted = pc.subtract(values, self.minimum)
        width = self.maximum - self.minimum
        return pc.multiply(shifted, 0.0) if width == 0 else pc.divide(shifted, width)

    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        """Widen the range with the batch, then answer with the batch normalized."""
        values = input.batch.column(0)
        self.observe(values)
        self.rows += input.batch.num_rows
        metadata = {"min": repr(self.minimum), "max": repr(self.maximum)} if self.minimum is not None else None
        out.emit_arrays([self.scale(values)], metadata)


class ComputeServiceImpl:
    """The compute service; configured by ``VGI_COMPUTE_MAX_QUANTILES`` (see the module docstring)."""

    def __init__(self) -> None:
        raw = os.environ.get("VGI_COMPUTE_MAX_QUANTILES", "").strip() or "1000"
        try:
            self.max_quantiles = int(raw)
        except ValueError:
            raise ValueError(f"VGI_COMPUTE_MAX_QUANTILES must be an integer, got {raw!r}") from None
        if self.max_quantiles < 1:
            raise ValueError(f"VGI_COMPUTE_MAX_QUANTILES must be at least 1, got {raw!r}")

    def transform(
        self,
        column: str = "value",
        scale: float = 1.0,
        offset: float = 0.0,
        lower: float | None = None,
        upper: float | None = None,
        log1p: bool = False,
    ) -> Stream[TransformState, TransformHeader]:
        """Open a transform exchange.

        Raises:
            ValueError: The column name is empty or ``lower`` exceeds ``upper``.
        """
        schema = _column_schema(column)
        if lower is not None and upper is not None and lower > upper:
            raise ValueError(f"lower ({lower}) must not exceed upper ({upper})")
        state = TransformState(column, scale, offset, lower, upper, log1p)
        expression = column
        if scale != 1.0:
            expression = f"{expression} * {scale!r}"
        if offset != 0.0:
            expression = f"{expression} + {offset!r}"
        if lower is not None or upper is not None:
            expression = f"clip({expression}, {lower!r}, {upper!r})"
        if log1p:
            expression = f"log1p({expression})"
        return Stream(
            output_schema=schema, state=state, input_schema=schema, header=TransformHeader(expression=expression)
        )

    def normalize(self, column: str = "value") -> Stream[NormalizeState]:
        """Open a normalize exchange.

        Raises:
            ValueError: The column name is empty.
        """
        schema = _column_schema(column)
        return Stream(output_schema=schema, state=NormalizeState(column), input_schema=schema)

    def quantiles(self, values: list[float], q: list[float]) -> list[float]:
        """Compute quantiles.

        Raises:
            ValueError: Too many or out-of-range levels, or no value besides NaNs.
        """
        if len(q) > self.max_quantiles:
            raise ValueError(f"at most {self.max_quantiles} quantiles may be asked for, got {len(q)}")
        if not q:
            return []
        levels = pa.array(q, pa.float64())
        if not pc.all(pc.and_(pc.greater_equal(levels, 0.0), pc.less_equal(levels, 1.0))).as_py():
            raise ValueError(f"quantile levels must be between 0 and 1, got {q}")
        data = _without_nan(pa.array(values, pa.float64()))
        if pc.count(data).as_py() == 0:
            raise ValueError("quantiles need at least one value that is not NaN")
        result: list[float] = pc.quantile(data, q=list(q), interpolation="linear").to_pylist()
        return result
