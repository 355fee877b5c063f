"""The streaming programming model: :class:`Stream`, states, :class:`OutputCollector`, :class:`AnnotatedBatch`.

A stream method returns ``Stream(output_schema=..., state=..., input_schema=..., header=...)``. The
server then calls ``state.process(input, out, ctx)`` once per turn: for a producer once per output
batch until ``out.finish()``; for an exchange once per input batch. Nothing here knows about Flight.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self

import pyarrow as pa
from typing_extensions import TypeVar

from vgi_flight._arrow_types import ArrowSerializableDataclass
from vgi_flight._log import Level, Message

if TYPE_CHECKING:
    from vgi_flight._context import CallContext

EMPTY_SCHEMA = pa.schema([])


@dataclass(frozen=True)
class AnnotatedBatch:
    """A record batch with optional custom metadata: the unit of stream input and output.

    Attributes:
        batch: The data.
        custom_metadata: Key/value metadata that travels with the batch, or ``None``.
    """

    batch: pa.RecordBatch
    custom_metadata: pa.KeyValueMetadata | None = None

    @classmethod
    def from_pydict(cls, data: Mapping[str, Any], schema: pa.Schema | None = None) -> AnnotatedBatch:
        """Build a batch from a column-name → values mapping.

        Args:
            data: Column values.
            schema: Optional schema to build the batch with.
        """
        return cls(batch=pa.RecordBatch.from_pydict(dict(data), schema=schema))


_new_object = object.__new__


def annotated_batch(batch: pa.RecordBatch, custom_metadata: pa.KeyValueMetadata | None = None) -> AnnotatedBatch:
    """An :class:`AnnotatedBatch` built without the frozen dataclass's ``__init__``: the same instance.

    The generated ``__init__`` sets each field through ``object.__setattr__``. On a thread that has
    just woken from a network wait that costs several µs (measured: 2 to 4% of an exchange round trip
    for one batch), and the library builds up to three per turn, so it writes the fields directly.
    """
    obj: AnnotatedBatch = _new_object(AnnotatedBatch)
    fields = obj.__dict__
    fields["batch"] = batch
    fields["custom_metadata"] = custom_metadata
    return obj


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema, what: str) -> pa.RecordBatch:
    """Return ``batch`` with exactly ``schema``, selecting and safely casting columns.

    Args:
        batch: The batch to conform.
        schema: The declared schema.
        what: Names the batch in error messages ("output batch", "input batch").

    Raises:
        ValueError: The batch cannot be made to fit the schema without loss.
    """
    if batch.schema.equals(schema):
        return batch
    if batch.schema.names != schema.names:
        missing = [n for n in schema.names if n not in batch.schema.names]
        extra = [n for n in batch.schema.names if n not in schema.names]
        if missing or extra:
            raise ValueError(
                f"{what} has columns {batch.schema.names}, expected {schema.names}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unexpected {extra})" if extra else "")
            )
        batch = batch.select(schema.names)
        if batch.schema.equals(schema):
            return batch
    if len(schema) == 0:
        return batch
    try:
        return batch.cast(schema, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ValueError(
            f"{what} with schema ({_schema_str(batch.schema)}) cannot be cast to ({_schema_str(schema)}): {exc}"
        ) from None


def _schema_str(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)


class OutputCollector:
    """Collects what one ``process`` turn emits: any log messages and at most one data batch."""

    __slots__ = ("_data", "_finished", "_logs", "_output_schema", "_producer")

    def __init__(self, output_schema: pa.Schema, *, producer: bool) -> None:
        """Create a collector (done by the server).

        Args:
            output_schema: The stream's declared output schema.
            producer: Whether the stream is a producer (only producers may ``finish``).
        """
        self._output_schema = output_schema
        self._producer = producer
        self._data: AnnotatedBatch | None = None
        self._logs: list[Message] = []
        self._finished = False

    @property
    def output_schema(self) -> pa.Schema:
        """The stream's declared output schema."""
        return self._output_schema

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` was called."""
        return self._finished

    @property
    def data(self) -> AnnotatedBatch | None:
        """The data batch emitted this turn, if any."""
        return self._data

    @property
    def logs(self) -> list[Message]:
        """Log messages emitted this turn, in order."""
        return self._logs

    def emit(self, batch: pa.RecordBatch, metadata: Mapping[str, str] | None = None) -> None:
        """Emit this turn's data batch, cast to the output schema.

        Args:
            batch: The data.
            metadata: Optional custom metadata for the batch.

        Raises:
            RuntimeError: A data batch was already emitted this turn.
            ValueError: The batch does not fit the output schema.
        """
        if self._data is not None:
            raise RuntimeError("only one data batch may be emitted per turn")
        if not batch.schema.equals(self._output_schema):  # the usual case needs no conform_batch call
            batch = conform_batch(batch, self._output_schema, "emitted batch")
        self._data = annotated_batch(batch, pa.KeyValueMetadata(metadata) if metadata else None)

    def emit_arrays(self, arrays: Sequence[pa.Array], metadata: Mapping[str, str] | None = None) -> None:
        """Emit a data batch built from arrays in output-schema order."""
        self.emit(self._build("emit_arrays", pa.RecordBatch.from_arrays, list(arrays)), metadata)

    def emit_pydict(self, data: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
        """Emit a data batch built from a column-name → values mapping."""
        self.emit(self._build("emit_pydict", pa.RecordBatch.from_pydict, dict(data)), metadata)

    def _build(self, caller: str, build: Callable[..., pa.RecordBatch], data: object) -> pa.RecordBatch:
        try:
            return build(data, schema=self._output_schema)
        except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            schema = _schema_str(self._output_schema)
            raise ValueError(f"{caller}: data does not fit the output schema ({schema}): {exc}") from None

    def client_log(self, level: Level, message: str, **extra: object) -> None:
        """Send a log message to the client; it arrives before this turn's data batch."""
        self._logs.append(Message(level, message, **extra))

    def emit_client_log_message(self, msg: Message) -> None:
        """Send a prepared :class:`Message` to the client."""
        self._logs.append(msg)

    def finish(self) -> None:
        """End a producer stream after this turn.

        Raises:
            RuntimeError: Called on an exchange stream.
        """
        if not self._producer:
            raise RuntimeError("finish() is only allowed on producer streams; an exchange emits one batch per input")
        self._finished = True


class StreamState(ArrowSerializableDataclass, abc.ABC):
    """Base class of stream state.

    Subclasses are dataclasses; every field is serialized with Arrow IPC between turns so that a
    stream can resume on any replica from its last signed token.
    """

    def on_cancel(self, ctx: CallContext) -> None:
        """Release what the stream holds when the client cancels it. Runs at most once; default no-op.

        Args:
            ctx: The call context.
        """

    @abc.abstractmethod
    def process(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        """Handle one turn: read ``input``, emit into ``out``.

        Args:
            input: The client's batch (a zero-row tick for producers).
            out: Where this turn's output goes.
            ctx: The call context.
        """


class ProducerState(StreamState, abc.ABC):
    """State of a producer stream: implement :meth:`produce`; call ``out.finish()`` to end.

    Attributes:
        run_ahead: How many turns the server may run back to back before it sends their batches
            (default 1: each batch goes out as soon as its turn ends). Raise it (8 is a good value)
            when ``produce`` never waits on anything outside the state, e.g. it computes or slices
            data in memory: turns that run together cost less CPU per batch. Keep 1 when ``produce``
            can block on a source (a queue, a socket, a live feed), or a batch already made would
            wait for the turns after it. The server also ends a run at 8 MiB of output or after 1 ms.
            A class attribute, not a field: it is not part of the state or its tokens.
    """

    run_ahead: ClassVar[int] = 1

    @abc.abstractmethod
    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        """Emit the next batch, or call ``out.finish()``.

        Args:
            out: Where this turn's output goes.
            ctx: The call context.
        """

    def process(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        """Delegate to :meth:`produce`."""
        self.produce(out, ctx)


class ExchangeState(StreamState, abc.ABC):
    """State of an exchange stream: implement :meth:`exchange`, emitting one batch per input."""

    @abc.abstractmethod
    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        """Answer one input batch with exactly one output batch.

        Args:
            input: The client's batch, conformed to the input schema.
            out: Where this turn's output goes.
            ctx: The call context.
        """

    def process(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        """Delegate to :meth:`exchange`."""
        self.exchange(input, out, ctx)


S = TypeVar("S", bound=StreamState)
H = TypeVar("H", bound="ArrowSerializableDataclass | None", default=None)
HT = TypeVar("HT", bound=ArrowSerializableDataclass)


@dataclass(frozen=True)
class Stream(Generic[S, H]):
    """What a stream method returns on the server; on the client the same name types the session.

    Attributes:
        output_schema: Schema of every output batch.
        state: The initial stream state.
        input_schema: Schema of exchange input; empty or absent for a producer.
        header: A one-time header sent before the data, or ``None``.
    """

    output_schema: pa.Schema
    state: S
    input_schema: pa.Schema = field(default=EMPTY_SCHEMA)
    header: H | None = None

    @property
    def is_exchange(self) -> bool:
        """Whether this stream is an exchange (else a producer)."""
        if isinstance(self.state, ExchangeState):
            return True
        if isinstance(self.state, ProducerState):
            return False
        return len(self.input_schema) > 0

    # Client-side view: the proxy returns a StreamSession with these methods. The stubs let code
    # typed against the Protocol (``-> Stream[S, H]``) use the session with full type checking.

    def __iter__(self) -> Iterator[AnnotatedBatch]:
        """Iterate a producer's batches (client side)."""
        raise TypeError("Stream is the server-side return value; iterate the client's StreamSession")

    def __enter__(self) -> Self:
        """Enter an exchange session (client side)."""
        raise TypeError("Stream is the server-side return value; use the client's StreamSession")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close an exchange session (client side)."""
        raise TypeError("Stream is the server-side return value; use the client's StreamSession")

    def exchange(self, input: AnnotatedBatch) -> AnnotatedBatch:
        """Send one batch and receive the answer (client side)."""
        raise TypeError("Stream is the server-side return value; use the client's StreamSession")

    def close(self) -> None:
        """Finish an exchange (client side)."""
        raise TypeError("Stream is the server-side return value; use the client's StreamSession")

    def cancel(self) -> None:
        """Cancel the stream (client side)."""
        raise TypeError("Stream is the server-side return value; use the client's StreamSession")

    def typed_header(self, header_type: type[HT]) -> HT:
        """Return the header as ``header_type`` (client side)."""
        raise TypeError("Stream is the server-side return value; use the client's StreamSession")
