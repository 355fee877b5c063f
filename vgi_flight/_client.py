"""The Python client: a proxy typed as the Protocol, and :class:`StreamSession`.

``connect(Protocol, location)`` returns an :class:`RpcConnection`; entering it yields an object
whose methods are the Protocol's. Unary calls are one ``DoAction``; stream calls start with
``GetFlightInfo`` and continue over ``DoGet`` (producers) or ``DoExchange`` (exchanges).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import pyarrow as pa
import pyarrow.flight as flight

from vgi_flight import _wire as wire
from vgi_flight._arrow_types import ArrowSerializableDataclass, arrow_array
from vgi_flight._auth import ClientCredential, request_payload
from vgi_flight._balance import LocationPool
from vgi_flight._errors import ErrorCode, RpcError
from vgi_flight._local import LocalStreamReader
from vgi_flight._log import Message
from vgi_flight._service import MethodDescription, MethodKind, ServiceDescription, describe_protocol
from vgi_flight._streams import AnnotatedBatch, Stream, annotated_batch, conform_batch
from vgi_flight._tracing import ClientTracing, client_tracing

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import TracerProvider

P = TypeVar("P")
HT = TypeVar("HT", bound=ArrowSerializableDataclass)
OnLog = Callable[[Message], None]

_remote_log = logging.getLogger("vgi_flight.remote")
log = logging.getLogger("vgi_flight.client")


def _default_on_log(msg: Message) -> None:
    _remote_log.info("%s: %s", msg.level.value, msg.message, extra={"vgi_extra": msg.extra})


def _protocol_error(message: str) -> RpcError:
    return RpcError("ProtocolError", message, code=ErrorCode.FAILED_PRECONDITION)


_BREAK_TYPES = (flight.FlightUnavailableError, flight.FlightInternalError, flight.FlightCancelledError, OSError)
T = TypeVar("T")


def _is_broken(exc: BaseException) -> bool:
    """Whether a failed call broke in transport (resume or retry elsewhere) rather than being refused.

    A replica that dies shows up as UNAVAILABLE, INTERNAL or CANCELLED depending on the path (direct
    or through a proxy). An error a vgi-flight server reported itself is final, except UNAVAILABLE,
    which a draining server sends so that the client moves on.
    """
    if wire.ERROR_MARKER in str(exc):
        return wire.rpc_error_from_flight(exc).code is ErrorCode.UNAVAILABLE
    return isinstance(exc, _BREAK_TYPES)


# gRPC status texts of a call whose connection could not be made: the request never left the client.
_NOT_CONNECTED = ("failed to connect", "connection refused", "dns resolution failed", "name resolution")


def _refused_unprocessed(exc: BaseException) -> bool:
    """Whether a unary call certainly did not run (safe to send to another replica).

    Only two failures say so: a draining server's refusal, and no connection at all. A connection
    lost mid-call is UNAVAILABLE too, but the call may have run: it is not sent again.
    """
    text = str(exc)
    if wire.ERROR_MARKER in text:
        error = wire.rpc_error_from_flight(exc)
        return error.code is ErrorCode.UNAVAILABLE and error.error_type == wire.DRAINING_ERROR
    if isinstance(exc, flight.FlightUnavailableError):
        lowered = text.lower()
        return any(reason in lowered for reason in _NOT_CONNECTED)
    return False


class _BrokenError(Exception):
    """A stream's call broke in transport; the session resumes it from its last token."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _backoff(failures: int) -> float:
    """Seconds to wait before resume attempt ``failures``: none for the first, which goes to another replica."""
    if failures <= 1:
        return 0.0
    return float(min(1.0, 0.05 * 2 ** (failures - 2)) * (0.5 + random.random() / 2))


class _Transport:
    """The location pool plus the per-call options every request uses."""

    def __init__(
        self,
        pool: LocationPool,
        timeout: float | None,
        credential: ClientCredential | None,
        on_log: OnLog,
        resume_attempts: int = 5,
        tracing: ClientTracing | None = None,
        local_data: bool = False,
    ) -> None:
        self.pool = pool
        self.local_data = local_data
        self.no_local_data: set[str] = set()  # locations whose local data channel is absent or unreachable
        self.timeout = timeout
        self.credential = credential
        self.on_log = on_log
        self.resume_attempts = resume_attempts
        self.tracing = tracing
        self._plain_options = flight.FlightCallOptions(timeout=timeout)
        self.sessions: weakref.WeakSet[StreamSession] = weakref.WeakSet()

    def first_available(self, call: Callable[[flight.FlightClient], T]) -> tuple[str, T]:
        """Run ``call`` on a location; move to the next when one refuses without processing it."""
        tried: list[str] = []
        while True:
            location = self.pool.pick(avoid=tried)
            try:
                return location, call(self.pool.client(location))
            except (flight.FlightError, pa.ArrowException) as exc:
                tried.append(location)
                if not _refused_unprocessed(exc) or len(tried) >= len(self.pool.locations):
                    raise
                self.pool.eject(location)

    def options(self, rpc: str, payload: bytes, trace_context: Context | None = None) -> flight.FlightCallOptions:
        """Call options for one call: the deadline, credential headers signed over ``payload``, trace context.

        Args:
            rpc: The Flight RPC name.
            payload: What the credential signs (:func:`request_payload`).
            trace_context: The OpenTelemetry context to propagate (default: the current one).
        """
        if self.credential is None and self.tracing is None:
            return self._plain_options
        headers = list(self.credential.headers(rpc, payload)) if self.credential is not None else []
        if self.tracing is not None:
            headers.extend(self.tracing.headers(trace_context))
        return flight.FlightCallOptions(timeout=self.timeout, headers=headers)

    def span(self, rpc: str, method: str) -> contextlib.AbstractContextManager[Context | None]:
        """A CLIENT span around one call when tracing is on; yields its context (``None`` when off)."""
        if self.tracing is None:
            return contextlib.nullcontext()
        return self.tracing.span(rpc, method)

    def abort_streams(self) -> None:
        """Tear down every open stream of this transport (no ``on_cancel``)."""
        for session in list(self.sessions):
            session._abort()

    def close(self) -> None:
        # Tear down calls still open so closing the client (and the server's shutdown) never waits on them.
        self.abort_streams()
        self.pool.close()


def _handle_metadata(meta: dict[str, Any], on_log: OnLog) -> None:
    """Deliver a log message; other non-data kinds are ignored by design (forward compatible)."""
    if meta.get("kind") == wire.KIND_LOG:
        on_log(wire.message_from_json(meta))


def _read_ready(reader: flight.FlightStreamReader, on_log: OnLog) -> dict[str, Any]:
    """Read a stream's opening messages up to ``ready``, delivering logs; return ``ready``'s metadata."""
    while True:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            raise _protocol_error("server ended the stream before its 'ready' message") from None
        meta = wire.parse_metadata(chunk.app_metadata)
        if meta.get("kind") == wire.KIND_READY:
            return meta
        _handle_metadata(meta, on_log)


def _read_ready_or_cancel(reader: flight.FlightStreamReader | LocalStreamReader, on_log: OnLog) -> dict[str, Any]:
    """:func:`_read_ready`, cancelling the call when it fails so that neither side waits on it."""
    try:
        return _read_ready(reader, on_log)
    except BaseException:
        with contextlib.suppress(flight.FlightError, pa.ArrowException):
            reader.cancel()
        raise


def _decode_header(desc: MethodDescription, meta: dict[str, Any]) -> ArrowSerializableDataclass | None:
    """The stream header in ``meta`` (FlightInfo or ``ready`` metadata), if the method has one."""
    if "header" not in meta or desc.header_type is None:
        return None
    header: ArrowSerializableDataclass = desc.header_type.deserialize_from_bytes(wire.unb64(meta["header"], "header"))
    return header


def _input_schema(meta: dict[str, Any]) -> pa.Schema:
    """An exchange's input schema from FlightInfo or ``ready`` metadata."""
    return wire.read_schema(wire.unb64(meta.get("input_schema"), "input_schema"), "input schema")


def _assemble(parts: list[pa.RecordBatch], last: pa.RecordBatch) -> pa.RecordBatch:
    """Rejoin a data batch the server sent as several messages (``data_part`` slices, then ``data``)."""
    if not parts:
        return last
    pieces = [*parts, last]
    parts.clear()
    if hasattr(pa, "concat_batches"):
        joined: pa.RecordBatch = pa.concat_batches(pieces)
        return joined
    return pa.Table.from_batches(pieces).combine_chunks().to_batches()[0]


def _local_reader(
    t: _Transport, location: str, request: bytes, trace_context: Context | None
) -> LocalStreamReader | None:
    """Ask ``location`` for a local data grant for ``request`` (a token or a call request) and connect.

    Returns ``None``, and remembers it for the location, when the server has no local data channel
    or its socket cannot be reached from here.

    Raises:
        flight.FlightError: The grant call failed otherwise (refused, or broke in transport).
        RpcError: The grant is malformed.
    """
    payload = request_payload("DoAction", request, wire.LOCAL_DATA_ACTION)
    try:
        results = list(
            t.pool.client(location).do_action(
                flight.Action(wire.LOCAL_DATA_ACTION, request), t.options("DoAction", payload, trace_context)
            )
        )
    except (flight.FlightError, pa.ArrowException) as exc:
        # UNIMPLEMENTED: no channel (LocalDataUnavailable), or a server that predates the action.
        if wire.rpc_error_from_flight(exc).code is ErrorCode.UNIMPLEMENTED:
            t.no_local_data.add(location)
            return None
        raise
    try:
        grant = wire.parse_metadata(results[0].body) if results else {}
        path, secret = str(grant["path"]), wire.unb64(grant.get("grant"), "grant")
    except (KeyError, wire.WireError):
        raise _protocol_error("malformed __local_data__ result") from None
    try:
        return LocalStreamReader(path, secret, t.timeout)
    except OSError as exc:  # not on this host, or not allowed to use the socket: read over Flight
        log.info("local data channel %s of %s unreachable (%s); reading over Flight", path, location, exc)
        t.no_local_data.add(location)
        return None


class StreamSession:
    """The client side of one stream.

    Iterate a producer; use ``exchange()`` (ideally inside ``with``) for an exchange. ``close()``
    ends an exchange normally; ``cancel()`` tells the server to run the state's ``on_cancel``.
    """

    def __init__(
        self,
        transport: _Transport,
        *,
        method: str,
        exchange: bool,
        token: bytes,
        seq: int,
        output_schema: pa.Schema,
        input_schema: pa.Schema,
        header: ArrowSerializableDataclass | None,
        location: str,
        endpoints: list[str],
        trace_context: Context | None = None,
    ) -> None:
        """Create a session (done by the proxy)."""
        self._t = transport
        self._trace_context = trace_context  # the stream-open span: later calls of the stream join its trace
        self._location = location
        self._endpoints = endpoints
        self._method = method
        self._exchange = exchange
        self._token_bytes = token
        self._token_b64: object = None  # latest token as received; decoded only when needed
        self._seq = seq
        self.output_schema = output_schema
        self.input_schema = input_schema
        self._header = header
        self._closed = False
        self._iterated = False
        self._writer: flight.FlightStreamWriter | None = None
        self._reader: flight.FlightStreamReader | None = None
        self._get_reader: flight.FlightStreamReader | LocalStreamReader | None = None
        self._opened_reader: flight.FlightStreamReader | None = None  # a single-call DoGet, read up to `ready`
        self._last_meta: dict[str, Any] = {}
        transport.sessions.add(self)

    def _abort(self) -> None:
        """Cancel the open Flight call, if any, without running ``on_cancel`` (connection shutdown)."""
        self._closed = True
        self._discard_call()

    @property
    def header(self) -> ArrowSerializableDataclass | None:
        """The stream header, or ``None`` for a stream without one."""
        return self._header

    def typed_header(self, header_type: type[HT]) -> HT:
        """Return the header as ``header_type``.

        Raises:
            TypeError: The stream has no header, or one of another type.
        """
        if self._header is None:
            raise TypeError(f"stream '{self._method}' has no header")
        if not isinstance(self._header, header_type):
            raise TypeError(f"stream header is {type(self._header).__name__}, not {header_type.__name__}")
        return self._header

    @property
    def is_exchange(self) -> bool:
        """Whether this is an exchange stream (else a producer)."""
        return self._exchange

    @property
    def token(self) -> bytes:
        """The latest signed state token: the point this stream can resume from."""
        if self._token_b64 is not None:
            self._token_bytes = wire.unb64(self._token_b64, "token")
            self._token_b64 = None
        return self._token_bytes

    @property
    def seq(self) -> int:
        """Number of data batches received so far."""
        return self._seq

    # --- producer -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[AnnotatedBatch]:
        """Iterate a producer's batches."""
        if self._exchange:
            raise TypeError(f"'{self._method}' is an exchange stream: use exchange() instead of iterating")
        if self._iterated:
            raise _protocol_error("a producer stream can only be iterated once")
        self._iterated = True
        return self._produce()

    def _produce(self) -> Iterator[AnnotatedBatch]:
        if self._closed:
            return
        failures = 0
        completed = False
        try:
            while True:
                try:
                    yield from self._read_producer()
                    completed = True
                    return
                except _BrokenError as broken:
                    failures = self._recover(failures, broken.cause)
        finally:
            self._closed = True
            reader, self._get_reader = self._get_reader, None
            if reader is not None and not completed:
                # Abandoned mid-stream: tear down the call so neither side waits on it.
                reader.cancel()

    def _adopt(self, writer: flight.FlightStreamWriter | None, reader: flight.FlightStreamReader) -> None:
        """Continue on a call the proxy opened with the call request itself (single-call path)."""
        if self._exchange:
            assert writer is not None
            self._writer, self._reader = writer, reader
            writer.begin(self.input_schema)
        else:
            self._get_reader = self._opened_reader = reader

    def _open_local(self, token: bytes) -> LocalStreamReader | None:
        """Resume the stream at ``token`` on the server's local data channel; ``None`` when it has none here.

        Raises:
            _BrokenError: The grant call broke in transport.
            RpcError: The server refused the grant for another reason (e.g. an expired token).
        """
        try:
            return _local_reader(self._t, self._location, token, self._trace_context)
        except (flight.FlightError, pa.ArrowException) as exc:
            raise self._classify(exc) from None

    def _took_plain_data(self, raw: pa.Buffer | bytes | None) -> bool:
        """Take the usual data message (seq and token only, next in sequence) in one step; else ``False``.

        Anything else (logs, slices, custom metadata, a replay after a resume) is left to the caller.
        """
        plain = wire.plain_data(raw) if raw is not None else None
        if plain is None or plain[0] <= self._seq:
            return False
        self._seq, self._token_b64 = plain
        return True

    def _read_producer(self) -> Iterator[AnnotatedBatch]:
        """Read the producer from the current position; raise :class:`_BrokenError` when the call breaks."""
        reader: flight.FlightStreamReader | LocalStreamReader | None = self._opened_reader
        self._opened_reader = None
        if reader is None and self._t.local_data and self._location not in self._t.no_local_data:
            reader = self._open_local(self.token)
        if reader is None:
            token = self.token
            try:
                reader = self._t.pool.client(self._location).do_get(
                    flight.Ticket(token), self._t.options("DoGet", token, self._trace_context)
                )
            except (flight.FlightError, pa.ArrowException) as exc:
                raise self._classify(exc) from None
        self._get_reader = reader
        parts: list[pa.RecordBatch] = []
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                return
            except (flight.FlightError, pa.ArrowException) as exc:
                raise self._classify(exc) from None
            if self._took_plain_data(chunk.app_metadata):
                yield annotated_batch(_assemble(parts, chunk.data))
                continue
            meta = wire.parse_metadata(chunk.app_metadata)
            kind = meta.get("kind")
            if kind == wire.KIND_DATA:
                batch = _assemble(parts, chunk.data)
                seq = int(meta.get("seq", self._seq + 1))
                if seq <= self._seq:
                    continue  # replayed after a resume: delivered already
                self._token_b64 = meta.get("token")
                self._seq = seq
                yield annotated_batch(batch, wire.custom_metadata(meta))
            elif kind == wire.KIND_DATA_PART:
                parts.append(chunk.data)
            else:
                _handle_metadata(meta, self._t.on_log)

    def _classify(self, exc: BaseException) -> BaseException:
        """The exception to raise for a failed stream call: resumable, or final."""
        if _is_broken(exc) and not self._closed:
            return _BrokenError(exc)
        return wire.rpc_error_from_flight(exc)

    def _recover(self, failures: int, cause: BaseException) -> int:
        """After a broken call: pick another location and wait before the stream is reopened from its token.

        Raises:
            RpcError: The stream broke more often than the connection's resume budget allows.
        """
        self._discard_call()
        failures += 1
        if failures > self._t.resume_attempts:
            self._closed = True
            raise RpcError(
                "ResumeError",
                f"stream '{self._method}' broke and could not be resumed after {self._t.resume_attempts} "
                f"attempts: {wire.rpc_error_from_flight(cause)}",
                code=ErrorCode.UNAVAILABLE,
            ) from None
        log.info("stream '%s' broke at %s (seq %d); resuming elsewhere", self._method, self._location, self._seq)
        self._t.pool.eject(self._location)
        self._location = self._t.pool.pick(avoid=[self._location], among=self._endpoints or None)
        time.sleep(_backoff(failures))
        return failures

    def _discard_call(self) -> None:
        """Drop a broken call's reader and writer without waiting on them."""
        for reader in (self._reader, self._get_reader):
            if reader is not None:
                with contextlib.suppress(flight.FlightError, pa.ArrowException):
                    reader.cancel()
        self._get_reader = None
        self._finish_call()

    # --- exchange -----------------------------------------------------------------------------

    def _open_exchange(self) -> None:
        token = self.token
        descriptor = flight.FlightDescriptor.for_command(token)
        client = self._t.pool.client(self._location)
        writer, reader = client.do_exchange(descriptor, self._t.options("DoExchange", token, self._trace_context))
        self._writer, self._reader = writer, reader
        self._read_until(wire.KIND_READY)
        writer.begin(self.input_schema)

    def _read_until(self, kind: str, chunk: flight.FlightStreamChunk | None = None) -> pa.RecordBatch:
        """Read messages (from ``chunk``, when one was read already) up to the next one of ``kind``."""
        assert self._reader is not None
        parts: list[pa.RecordBatch] = []
        while True:
            if chunk is None:
                try:
                    chunk = self._reader.read_chunk()
                except StopIteration:
                    raise _protocol_error(f"server ended the stream while a '{kind}' message was expected") from None
            meta = wire.parse_metadata(chunk.app_metadata)
            data, chunk = chunk.data, None
            got = meta.get("kind")
            if got == kind:
                if got == wire.KIND_DATA and int(meta.get("seq", self._seq + 1)) <= self._seq:
                    parts.clear()
                    continue  # replayed after a resume: delivered already
                if "token" in meta:
                    self._token_b64 = meta["token"]
                    self._seq = int(meta.get("seq", self._seq))
                self._last_meta = meta
                return _assemble(parts, data)
            if got == wire.KIND_DATA_PART:
                parts.append(data)
                continue
            _handle_metadata(meta, self._t.on_log)

    def exchange(self, input: AnnotatedBatch) -> AnnotatedBatch:
        """Send one batch and return the server's answer.

        Raises:
            RpcError: The server failed the turn, or the session is closed (``ProtocolError``).
        """
        if not self._exchange:
            raise TypeError(f"'{self._method}' is a producer stream: iterate it instead")
        if self._closed:
            raise _protocol_error("exchange() called on a closed or cancelled stream")
        batch = input.batch
        if not batch.schema.equals(self.input_schema):
            try:
                batch = conform_batch(batch, self.input_schema, "input batch")
            except ValueError as exc:
                raise RpcError("ValueError", str(exc), code=ErrorCode.INVALID_ARGUMENT) from None
        custom = None
        if input.custom_metadata:
            custom = {k.decode(): v.decode() for k, v in input.custom_metadata.items()}
        failures = 0
        while True:
            try:
                return self._turn(batch, custom)
            except _BrokenError as broken:
                # The in-flight batch is sent again from the last completed turn's token.
                failures = self._recover(failures, broken.cause)

    def _turn(self, batch: pa.RecordBatch, custom: dict[str, str] | None) -> AnnotatedBatch:
        try:
            if self._writer is None:
                self._open_exchange()
            assert self._writer is not None
            assert self._reader is not None
            if custom:
                self._writer.write_with_metadata(batch, wire.json_bytes({"kind": wire.KIND_DATA, "metadata": custom}))
            else:
                self._writer.write_batch(batch)
            chunk = self._reader.read_chunk()
            if self._took_plain_data(chunk.app_metadata):  # the usual answer: one batch, seq and token only
                return annotated_batch(chunk.data)
            data = self._read_until(wire.KIND_DATA, chunk)  # logs, slices, custom metadata, replays
        except StopIteration:
            self._fail()
            raise _protocol_error("server ended the stream while a 'data' message was expected") from None
        except (flight.FlightError, pa.ArrowException) as exc:
            failure = self._classify(exc)
            if not isinstance(failure, _BrokenError):
                self._fail()
            raise failure from None
        except RpcError:
            self._fail()
            raise
        return annotated_batch(data, wire.custom_metadata(self._last_meta))

    def _drain(self) -> None:
        """Read the rest of the response (logs) until the server ends the call."""
        assert self._reader is not None
        while True:
            try:
                chunk = self._reader.read_chunk()
            except StopIteration:
                return
            _handle_metadata(wire.parse_metadata(chunk.app_metadata), self._t.on_log)

    def _fail(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
        self._finish_call()

    def _finish_call(self) -> None:
        if self._writer is not None:
            # The call already failed or was cancelled; its error was reported.
            with contextlib.suppress(flight.FlightError, pa.ArrowException):
                self._writer.close()
        self._writer = self._reader = None

    def close(self) -> None:
        """Finish the stream normally (an exchange's half-close). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            try:
                self._writer.done_writing()
                self._drain()
            except (flight.FlightError, pa.ArrowException) as exc:
                if not _is_broken(exc):  # a broken call at the end loses nothing: no turn was pending
                    raise wire.rpc_error_from_flight(exc) from None
            finally:
                self._discard_call()
        elif self._get_reader is not None:
            self._get_reader.cancel()

    def cancel(self) -> None:
        """Cancel the stream; when this returns the server has run ``on_cancel``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            try:
                self._writer.write_metadata(wire.CANCEL_METADATA)
                self._writer.done_writing()
                self._drain()
                self._finish_call()
                return
            except (flight.FlightError, pa.ArrowException) as exc:
                self._discard_call()
                if not _is_broken(exc):
                    raise wire.rpc_error_from_flight(exc) from None
                # The replica went away: cancel from the last token through any other one.
        if self._get_reader is not None:
            self._get_reader.cancel()
        token = self.token
        action = flight.Action(wire.CANCEL_ACTION, token)

        def cancel_call(client: flight.FlightClient) -> None:
            options = self._t.options(
                "DoAction", request_payload("DoAction", token, wire.CANCEL_ACTION), self._trace_context
            )
            for result in client.do_action(action, options):
                _handle_metadata(wire.parse_metadata(result.body.to_pybytes()), self._t.on_log)

        try:
            self._t.first_available(cancel_call)
        except (flight.FlightError, pa.ArrowException) as exc:
            raise wire.rpc_error_from_flight(exc) from None

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(RpcError):  # the exception already propagating is the one that matters
            self.close()


class _Proxy:
    """Dynamic proxy whose attributes are the Protocol's methods."""

    def __init__(self, service: ServiceDescription, transport: _Transport) -> None:
        self._service = service
        self._t = transport
        self._callers: dict[str, Callable[..., Any]] = {}
        # Whether each stream method is an exchange, learned from its first GetFlightInfo: later
        # calls open with the call request itself, one round trip fewer (a Protocol says only Stream).
        self._exchange_kind: dict[str, bool] = {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("__"):
            raise AttributeError(name)
        caller = self._callers.get(name)
        if caller is not None:
            return caller
        desc = self._service.methods.get(name)
        if desc is None:
            raise AttributeError(f"{self._service.name} has no RPC method '{name}'")
        caller = self._unary_caller(desc) if desc.kind is MethodKind.UNARY else self._stream_caller(desc)
        caller.__name__ = name
        caller.__doc__ = desc.doc
        self._callers[name] = caller
        return caller

    def __dir__(self) -> list[str]:
        return sorted(self._service.methods)

    def __repr__(self) -> str:
        return f"<{self._service.name} proxy>"

    def _unary_caller(self, desc: MethodDescription) -> Callable[..., Any]:
        t = self._t
        params_framing = wire.BatchFraming(desc.params_schema)
        result_framing = wire.BatchFraming(desc.result_schema)
        codec = desc.result_codec

        def call(*args: Any, **kwargs: Any) -> Any:
            if args:
                raise TypeError(f"{desc.name}() takes keyword arguments only")
            body = params_framing.encode(encode_params(desc, kwargs)) if desc.params else b""
            action = flight.Action(desc.name, body)
            payload = request_payload("DoAction", body, desc.name)

            def do_action(client: flight.FlightClient) -> pa.Buffer | None:
                result: pa.Buffer | None = None
                for item in client.do_action(action, t.options("DoAction", payload)):
                    if item.body.size and item.body[0] == 0x7B:  # "{": a log record precedes the result
                        _handle_metadata(wire.parse_metadata(item.body), t.on_log)
                    else:
                        result = item.body
                return result

            with t.span("DoAction", desc.name):
                try:
                    _, result = t.first_available(do_action)
                except (flight.FlightError, pa.ArrowException) as exc:
                    raise wire.rpc_error_from_flight(exc) from None
                if result is None:
                    raise _protocol_error(f"{desc.name}() returned no result message")
                if codec is None:
                    return None
                return codec.from_arrow(result_framing.decode(result, "result").column(0)[0].as_py())

        return call

    def _stream_caller(self, desc: MethodDescription) -> Callable[..., StreamSession]:
        def call(*args: Any, **kwargs: Any) -> StreamSession:
            if args:
                raise TypeError(f"{desc.name}() takes keyword arguments only")
            # pyarrow clients lift gRPC's 4 MiB receive limit: large batches need no slicing and re-joining.
            request = wire.encode_call(desc.name, encode_params(desc, kwargs), whole_batches=True)
            exchange = self._exchange_kind.get(desc.name)
            if exchange is False and self._t.local_data:
                session = self._open_local_single_call(desc, request)
                if session is not None:
                    return session
            if exchange is not None:
                try:
                    return self._open_single_call(desc, request, exchange)
                except RpcError as exc:
                    if exc.error_type != wire.WRONG_STREAM_KIND_ERROR:
                        raise
                    del self._exchange_kind[desc.name]  # the method changed kind: ask again
            session = self._open_with_flight_info(desc, request)
            self._exchange_kind[desc.name] = session.is_exchange
            return session

        return call

    def _open_single_call(self, desc: MethodDescription, request: bytes, exchange: bool) -> StreamSession:
        """Open a stream with the call request as its ticket or descriptor and read up to ``ready``."""
        t = self._t
        rpc = "DoExchange" if exchange else "DoGet"
        with t.span(rpc, desc.name) as trace_context:

            def open_call(
                client: flight.FlightClient,
            ) -> tuple[flight.FlightStreamWriter | None, flight.FlightStreamReader, dict[str, Any]]:
                options = t.options(rpc, request, trace_context)
                writer: flight.FlightStreamWriter | None = None
                if exchange:
                    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(request), options)
                else:
                    reader = client.do_get(flight.Ticket(request), options)
                return writer, reader, _read_ready_or_cancel(reader, t.on_log)

            try:
                location, (writer, reader, ready) = t.first_available(open_call)
            except (flight.FlightError, pa.ArrowException) as exc:
                raise wire.rpc_error_from_flight(exc) from None
        return self._adopting_session(desc, exchange, location, writer, reader, ready, trace_context)

    def _adopting_session(
        self,
        desc: MethodDescription,
        exchange: bool,
        location: str,
        writer: flight.FlightStreamWriter | None,
        reader: flight.FlightStreamReader | LocalStreamReader,
        ready: dict[str, Any],
        trace_context: Context | None,
    ) -> StreamSession:
        """The session of a stream opened with its call request, continuing on the call that opened it."""
        if (ready.get("stream") == "exchange") != exchange:
            with contextlib.suppress(flight.FlightError, pa.ArrowException):
                reader.cancel()
            raise _protocol_error(f"'{desc.name}' opened as the wrong kind of stream")
        session = StreamSession(
            self._t,
            method=desc.name,
            exchange=exchange,
            token=wire.unb64(ready.get("token"), "token"),
            seq=int(ready.get("seq", 0)),
            output_schema=reader.schema,
            input_schema=_input_schema(ready) if exchange else pa.schema([]),
            header=_decode_header(desc, ready),
            location=location,
            endpoints=[],
            trace_context=trace_context,
        )
        session._adopt(writer, reader)
        return session

    def _open_local_single_call(self, desc: MethodDescription, request: bytes) -> StreamSession | None:
        """Open a producer on the server's local data channel with its call request; read up to ``ready``.

        Returns ``None`` when the channel is not there for the chosen location (no channel, or its
        socket is not reachable from here): the caller opens the stream over Flight instead.
        """
        t = self._t
        location = t.pool.pick()
        if location in t.no_local_data:
            return None
        with t.span("DoAction", desc.name) as trace_context:
            try:
                reader = _local_reader(t, location, request, trace_context)
                if reader is None:
                    return None
                ready = _read_ready_or_cancel(reader, t.on_log)  # a Flight-shaped reader
            except (flight.FlightError, pa.ArrowException) as exc:
                raise wire.rpc_error_from_flight(exc) from None
        return self._adopting_session(desc, False, location, None, reader, ready, trace_context)

    def _open_with_flight_info(self, desc: MethodDescription, request: bytes) -> StreamSession:
        """Open a stream with ``GetFlightInfo``, which reports its kind, schemas, header and first token."""
        t = self._t
        descriptor = flight.FlightDescriptor.for_command(request)
        with t.span("GetFlightInfo", desc.name) as trace_context:
            try:
                location, info = t.first_available(
                    lambda client: client.get_flight_info(descriptor, t.options("GetFlightInfo", request))
                )
            except (flight.FlightError, pa.ArrowException) as exc:
                raise wire.rpc_error_from_flight(exc) from None
        endpoint = info.endpoints[0]
        meta = wire.parse_metadata(info.app_metadata)
        for entry in meta.get("logs", ()):
            t.on_log(wire.message_from_json(entry))
        return StreamSession(
            t,
            method=desc.name,
            exchange=meta.get("kind") == "exchange",
            token=endpoint.ticket.ticket,
            seq=int(meta.get("seq", 0)),
            output_schema=info.schema,
            input_schema=_input_schema(meta),
            header=_decode_header(desc, meta),
            location=location,
            endpoints=[loc.uri.decode() if isinstance(loc.uri, bytes) else str(loc.uri) for loc in endpoint.locations],
            trace_context=trace_context,
        )


def encode_params(desc: MethodDescription, kwargs: dict[str, Any]) -> pa.RecordBatch:
    """Build the one-row parameter batch, merging defaults and checking arguments client-side.

    Raises:
        TypeError: Unknown or missing parameter, ``None`` for a non-Optional one, or a value of the wrong type.
    """
    unknown = [k for k in kwargs if k not in desc.param_by_name]
    if unknown:
        raise TypeError(f"{desc.name}() got unexpected keyword argument(s) {unknown}")
    arrays = []
    for param in desc.params:
        if param.name in kwargs:
            value = kwargs[param.name]
        elif not param.required:
            value = param.default
        else:
            raise TypeError(f"{desc.name}() missing required keyword argument '{param.name}'")
        if value is None and not param.codec.nullable:
            raise TypeError(f"parameter '{param.name}' is not optional but got None")
        try:
            arrays.append(arrow_array([param.codec.to_arrow(value)], param.codec.arrow_type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"parameter '{param.name}' of {desc.name}(): {exc}") from None
    if not arrays:
        return pa.RecordBatch.from_pydict({})
    return pa.RecordBatch.from_arrays(arrays, schema=desc.params_schema)


class RpcConnection(Generic[P]):
    """A connection to a vgi-flight server; entering it yields the typed proxy."""

    def __init__(
        self,
        protocol: Callable[..., P],
        pool: LocationPool,
        *,
        timeout: float | None,
        auth: ClientCredential | None,
        on_log: OnLog,
        resume_attempts: int,
        tracing: ClientTracing | None = None,
        local_data: bool = False,
    ) -> None:
        """Wrap a pool of Flight clients (use :func:`connect`)."""
        self._transport = _Transport(pool, timeout, auth, on_log, resume_attempts, tracing, local_data)
        self._service = describe_protocol(cast(type, protocol))
        self._proxy = cast(P, _Proxy(self._service, self._transport))

    @property
    def proxy(self) -> P:
        """The object whose methods are the Protocol's."""
        return self._proxy

    def close(self) -> None:
        """Close the connection; open streams are torn down."""
        self._transport.close()

    def _pinned_proxies(self, count: int, deadline: float | None) -> tuple[list[P], list[_Transport]]:
        """``count`` proxies, the i-th preferring replica ``i % replicas`` (each can still fail over)."""
        t = self._transport
        locations = t.pool.locations
        timeout = deadline if deadline is not None else t.timeout
        transports = [
            _Transport(
                t.pool.prefer(locations[i % len(locations)]),
                timeout,
                t.credential,
                t.on_log,
                t.resume_attempts,
                t.tracing,
                t.local_data,
            )
            for i in range(count)
        ]
        return [cast(P, _Proxy(self._service, tr)) for tr in transports], transports

    def fan_out(
        self, call: Callable[[P, int], T], count: int | None = None, *, deadline: float | None = None
    ) -> list[T]:
        """Run ``call(proxy, i)`` for ``i`` in ``range(count)`` concurrently, spread over the replicas.

        ``count`` defaults to the number of locations, so each replica gets one call; with more
        partitions than replicas they are dealt round robin. Results come back in order of ``i``.
        When a call fails, or ``deadline`` (seconds, also each call's gRPC deadline) passes, the
        other calls' open streams are torn down and the error is raised.

        Raises:
            RpcError: A call failed (its error), or the deadline passed (``DEADLINE_EXCEEDED``).
        """
        n = len(self._transport.pool.locations) if count is None else count
        proxies, transports = self._pinned_proxies(n, deadline)
        executor = ThreadPoolExecutor(max_workers=max(1, min(n, 32)), thread_name_prefix="vgi-fan-out")
        try:
            futures = [executor.submit(call, proxies[i], i) for i in range(n)]
            done, pending = wait(futures, timeout=deadline, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            if failed is not None or pending:
                for transport in transports:
                    transport.abort_streams()
                for future in pending:
                    future.cancel()
                if failed is not None:
                    raise cast(BaseException, failed.exception())
                raise RpcError(
                    "DeadlineExceeded", f"fan-out did not finish within {deadline} s", code=ErrorCode.DEADLINE_EXCEEDED
                )
            return [f.result() for f in futures]
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    def merge(
        self,
        open_stream: Callable[[P, int], StreamSession | Stream[Any, Any]],
        count: int | None = None,
        *,
        deadline: float | None = None,
    ) -> Iterator[tuple[int, AnnotatedBatch]]:
        """Read ``count`` producer streams concurrently and yield ``(i, batch)`` as batches arrive.

        ``open_stream(proxy, i)`` opens partition ``i`` (e.g. ``lambda p, i: p.scan(part=i, parts=n)``);
        partitions are spread over the replicas as in :meth:`fan_out`, and each stream resumes on
        another replica if its own fails. Leaving the loop early, an error in any partition, or the
        deadline tears every stream down.

        Raises:
            RpcError: A partition failed, or the deadline passed (``DEADLINE_EXCEEDED``).
        """
        n = len(self._transport.pool.locations) if count is None else count
        proxies, transports = self._pinned_proxies(n, deadline)
        results: queue.Queue[tuple[int, AnnotatedBatch | BaseException | None]] = queue.Queue(maxsize=4 * n)
        stop = threading.Event()

        def deliver(item: tuple[int, AnnotatedBatch | BaseException | None]) -> bool:
            while not stop.is_set():  # bounded queue: back-pressure on fast partitions
                try:
                    results.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read(i: int) -> None:
            try:
                for batch in cast(Iterator[AnnotatedBatch], open_stream(proxies[i], i)):
                    if not deliver((i, batch)):
                        return
                deliver((i, None))
            except BaseException as exc:  # handed to the consumer, which re-raises it
                deliver((i, exc))

        threads = [threading.Thread(target=read, args=(i,), daemon=True, name=f"vgi-merge-{i}") for i in range(n)]
        for thread in threads:
            thread.start()
        end = time.monotonic() + deadline if deadline is not None else None
        try:
            remaining = n
            while remaining:
                timeout = None if end is None else max(0.0, end - time.monotonic())
                try:
                    i, item = results.get(timeout=timeout)
                except queue.Empty:
                    raise RpcError(
                        "DeadlineExceeded",
                        f"merge did not finish within {deadline} s",
                        code=ErrorCode.DEADLINE_EXCEEDED,
                    ) from None
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield i, item
        finally:
            stop.set()
            for transport in transports:
                transport.abort_streams()
            for thread in threads:
                thread.join(timeout=5)

    def __enter__(self) -> P:
        return self._proxy

    def __exit__(self, *exc: object) -> None:
        self.close()


def _flight_client(
    location: str,
    *,
    tls_root_certs: bytes | None,
    cert_chain: bytes | None,
    private_key: bytes | None,
    override_hostname: str | None,
) -> flight.FlightClient:
    kwargs: dict[str, Any] = {}
    if tls_root_certs is not None:
        kwargs["tls_root_certs"] = tls_root_certs
    if cert_chain is not None:
        kwargs["cert_chain"] = cert_chain
        kwargs["private_key"] = private_key
    if override_hostname is not None:
        kwargs["override_hostname"] = override_hostname
    return flight.FlightClient(location, **kwargs)


def connect(
    protocol: Callable[..., P],
    location: str | Sequence[str],
    *,
    on_log: OnLog | None = None,
    timeout: float | None = None,
    tls_root_certs: bytes | None = None,
    cert_chain: bytes | None = None,
    private_key: bytes | None = None,
    override_hostname: str | None = None,
    auth: ClientCredential | None = None,
    resume_attempts: int = 5,
    eject_seconds: float = 5.0,
    tracing: bool | TracerProvider = False,
    local_data: bool = False,
) -> RpcConnection[P]:
    """Connect to a vgi-flight server.

    Use as ``with connect(Calculator, "grpc://127.0.0.1:8815") as calc: calc.add(a=1, b=2)``.

    Args:
        protocol: The service Protocol class (typed as a callable so that mypy accepts a Protocol
            class here and infers the proxy's type from it).
        location: ``grpc://host:port``, ``grpc+tls://host:port`` or ``grpc+unix:///path``; or
            several replicas of the same service, which calls are balanced over round robin. A
            replica whose call fails in transport is avoided for ``eject_seconds``.
        on_log: Receives every log message the service emits, in order.
        timeout: Per-call deadline in seconds.
        tls_root_certs: PEM CA bundle to verify the server.
        cert_chain: PEM client certificate (mTLS).
        private_key: PEM key of the client certificate.
        override_hostname: Name to verify the server certificate against.
        auth: How to authenticate every call: :class:`HmacAuth` (request signing) or
            :class:`BearerAuth`. Client certificates (mTLS) are given with ``cert_chain``.
        resume_attempts: How often a broken stream is reopened from its last token (on another
            replica when there is one) before the call fails with ``ResumeError``.
        eject_seconds: How long a replica whose call failed in transport is avoided.
        tracing: Trace calls with OpenTelemetry (needs the ``otel`` extra): a CLIENT span per
            unary call and stream open, and the trace context (``traceparent``/``tracestate``
            through the global propagator) sent with every call. ``True`` uses the global
            TracerProvider; pass a ``TracerProvider`` to use that one instead.
        local_data: Read producer streams over the server's local data channel (a Unix socket,
            several times gRPC's throughput) when the server has one and it is reachable from
            this host; otherwise, and for exchanges, calls go over Flight as usual.

    Returns:
        A connection; entering it yields the typed proxy.

    Raises:
        ImportError: ``tracing`` is on and OpenTelemetry is not installed.
    """
    tracer = client_tracing(tracing)
    locations = [location] if isinstance(location, str) else list(location)
    pool = LocationPool(
        locations,
        lambda loc: _flight_client(
            loc,
            tls_root_certs=tls_root_certs,
            cert_chain=cert_chain,
            private_key=private_key,
            override_hostname=override_hostname,
        ),
        eject_seconds,
    )
    return RpcConnection(
        protocol,
        pool,
        timeout=timeout,
        auth=auth,
        on_log=on_log or _default_on_log,
        resume_attempts=resume_attempts,
        tracing=tracer,
        local_data=local_data,
    )


def introspect(
    location: str,
    *,
    timeout: float | None = None,
    tls_root_certs: bytes | None = None,
    cert_chain: bytes | None = None,
    private_key: bytes | None = None,
    override_hostname: str | None = None,
    auth: ClientCredential | None = None,
) -> ServiceDescription:
    """Ask a server to describe its service (the ``__describe__`` action).

    Remote descriptions carry names, kinds, docs, schemas and defaults; not Python type hints.
    The keyword arguments mean what they mean for :func:`connect`.
    """
    client = _flight_client(
        location,
        tls_root_certs=tls_root_certs,
        cert_chain=cert_chain,
        private_key=private_key,
        override_hostname=override_hostname,
    )
    transport = _Transport(LocationPool([location], lambda _loc: client), timeout, auth, _default_on_log)
    options = transport.options("DoAction", request_payload("DoAction", b"", wire.DESCRIBE_ACTION))
    try:
        results = list(client.do_action(flight.Action(wire.DESCRIBE_ACTION, b""), options))
    except (flight.FlightError, pa.ArrowException) as exc:
        raise wire.rpc_error_from_flight(exc) from None
    finally:
        client.close()
    batch = wire.read_single_batch(results[-1].body, "service description")
    meta = batch.schema.metadata or {}
    methods: dict[str, MethodDescription] = {}
    for row in batch.to_pylist():
        defaults: dict[str, Any] = {}
        if row["defaults"] is not None:
            defaults = wire.read_single_batch(row["defaults"], "defaults").to_pylist()[0]
        methods[row["name"]] = MethodDescription(
            name=row["name"],
            kind=MethodKind(row["kind"]),
            doc=row["doc"],
            params=(),
            params_schema=wire.read_schema(row["params_schema"], "params schema"),
            result_hint=None,
            result_schema=wire.read_schema(row["result_schema"], "result schema"),
            header_schema=wire.read_schema(row["header_schema"], "header schema") if row["header_schema"] else None,
            defaults=defaults,
        )
    return ServiceDescription(
        name=meta.get(b"vgi.protocol", b"").decode(), doc=meta.get(b"vgi.doc", b"").decode(), methods=methods
    )
