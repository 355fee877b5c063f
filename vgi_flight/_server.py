"""``RpcServer``: serves a Protocol implementation over Arrow Flight.

Flight mapping: unary methods are ``DoAction`` (action type = method name); a stream call starts
with ``GetFlightInfo`` (or a single-call ``DoGet``/``DoExchange``); producers stream over
``DoGet``; exchanges over ``DoExchange``. Every exception is converted to a Flight status at this
boundary: nothing reaches pyarrow unconverted, so no server traceback leaks unless enabled.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.flight as flight

from vgi_flight import _wire as wire
from vgi_flight._arrow_types import ArrowSerializableDataclass, arrow_array
from vgi_flight._auth import (
    MIDDLEWARE_KEY,
    AuthenticationError,
    AuthMiddlewareFactory,
    ServerAuth,
    request_payload,
    resolve_identity,
)
from vgi_flight._compact import state_encoder, state_from_bytes
from vgi_flight._context import AuthContext, CallContext
from vgi_flight._errors import ErrorCode, RequestRejectedError, RpcError
from vgi_flight._gil import pin_thread_state
from vgi_flight._handlers import CallWatch, HandlerEndedError, HandlerPool
from vgi_flight._local import LocalCall, LocalDataChannel, LocalStreamWriter
from vgi_flight._log import Message
from vgi_flight._observe import CallRecord, Metrics, ServerStats, StreamCounts, StreamOutcome, finish
from vgi_flight._service import BoundMethod, MethodDescription, MethodKind, bind_implementation, describe_protocol
from vgi_flight._streams import (
    EMPTY_SCHEMA,
    AnnotatedBatch,
    ExchangeState,
    OutputCollector,
    ProducerState,
    Stream,
    StreamState,
    annotated_batch,
    conform_batch,
)
from vgi_flight._tokens import (
    DEFAULT_MAX_TOKEN_BYTES,
    KeyRing,
    StreamBinding,
    StreamSigner,
    TokenError,
    new_stream_id,
    verify_token,
)
from vgi_flight._tracing import MIDDLEWARE_KEY as TRACE_MIDDLEWARE_KEY
from vgi_flight._tracing import server_tracing

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = logging.getLogger("vgi_flight.server")
T = TypeVar("T")

_TICK = AnnotatedBatch(pa.RecordBatch.from_pydict({}))
# Bounds of a producer's run of turns ahead of sending (ProducerState.run_ahead): the bytes held
# back, and how long a batch already made may wait for the turns after it.
RUN_AHEAD_BYTES = 8 << 20
RUN_AHEAD_SECONDS = 0.001
# The result of every void method: the empty schema and one batch without columns.
_VOID_RESULT = wire.ipc_bytes(pa.RecordBatch.from_pydict({}))


# Exceptions a service raises that map to a specific code rather than UNKNOWN.
_CODE_FOR_EXCEPTION: tuple[tuple[type[BaseException], ErrorCode], ...] = (
    (PermissionError, ErrorCode.PERMISSION_DENIED),
    (NotImplementedError, ErrorCode.UNIMPLEMENTED),
    (TimeoutError, ErrorCode.DEADLINE_EXCEEDED),
)


_ENDED_HANDLER_OUTCOME = {ErrorCode.CANCELLED: StreamOutcome.ABANDONED, ErrorCode.UNAVAILABLE: StreamOutcome.HANDED_OFF}


def _state_class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


@dataclass
class _LiveStream:
    """A stream open on this server: its state lives here between turns."""

    state: StreamState
    output_schema: pa.Schema
    input_schema: pa.Schema
    exchange: bool
    signer: StreamSigner
    ctx: CallContext
    watch: CallWatch
    seq: int = 0
    header: bytes | None = None
    init_logs: list[Message] = field(default_factory=list)
    cancelled: bool = False
    _empty: pa.RecordBatch | None = None
    # Looked up once per stream, used every turn.
    whole_batches: bool = field(init=False)  # data batches go out whole (the opening client asked), never sliced
    _encode_state: Callable[[Any], bytes] = field(init=False, repr=False)
    _process: Callable[[AnnotatedBatch, OutputCollector, CallContext], None] = field(init=False, repr=False)
    _produce: Callable[[OutputCollector, CallContext], None] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.whole_batches = self.signer.binding.whole_batches
        self._encode_state = state_encoder(type(self.state))
        state = self.state
        self._produce = None
        # process() of the base classes only calls exchange() or produce(): call those directly
        # unless process() is overridden (one Python frame less per turn).
        if isinstance(state, ExchangeState) and type(state).process is ExchangeState.process:
            self._process = state.exchange
        else:
            self._process = state.process
            if isinstance(state, ProducerState) and type(state).process is ProducerState.process:
                self._produce = state.produce

    @property
    def empty_batch(self) -> pa.RecordBatch:
        """Zero-row batch of the output schema, used to carry metadata-only messages."""
        if self._empty is None:
            self._empty = pa.RecordBatch.from_pylist([], schema=self.output_schema)
        return self._empty

    def token(self) -> bytes:
        """Mint a token for the current position."""
        return self.signer.mint(self.seq, self._encode_state(self.state))

    def token_b64(self) -> bytes:
        """Mint a token for the current position, in base64 as a data message carries it."""
        return self.signer.mint_b64(self.seq, self._encode_state(self.state))

    def turn(self, input: AnnotatedBatch, invoke: _Invoke | None) -> OutputCollector:
        """Run one ``process`` call (through ``invoke``, or inline) and check it kept the stream's rules."""
        out = OutputCollector(self.output_schema, producer=not self.exchange)
        ctx = self.ctx
        ctx._log_sink = out.emit_client_log_message
        if invoke is not None:
            invoke(self.watch, lambda: self._process(input, out, ctx))
        elif self._produce is not None:
            self._produce(out, ctx)
        else:
            self._process(input, out, ctx)
        if out._data is not None:  # the collector's fields, not its properties: read on every turn
            self.seq += 1
        elif self.exchange:
            raise RequestRejectedError(
                ErrorCode.INTERNAL, "exchange() must emit exactly one batch per input", "ProtocolError"
            )
        elif not out._finished:
            raise RequestRejectedError(
                ErrorCode.INTERNAL, "produce() must emit a batch or call out.finish()", "ProtocolError"
            )
        return out

    def cancel(self, invoke: _Invoke) -> list[Message]:
        """Run ``on_cancel`` once (through ``invoke``); return the logs it emitted."""
        logs: list[Message] = []
        if not self.cancelled:
            self.cancelled = True
            self.ctx._log_sink = logs.append
            invoke(self.watch, lambda: self.state.on_cancel(self.ctx))
        return logs


_Invoke = Callable[[CallWatch, Callable[[], Any]], Any]


class _Dispatcher:
    """Request handling shared by every Flight method, independent of pyarrow's server class."""

    def __init__(
        self,
        protocol: type,
        implementation: object,
        *,
        keys: KeyRing,
        token_ttl: float | None,
        max_token_bytes: int,
        send_tracebacks: bool,
        auth: ServerAuth | None,
        encrypt_state: bool,
        max_request_bytes: int,
        max_message_bytes: int,
        advertise: Sequence[str],
        metrics: bool,
        handler_deadline: float | None = None,
        tracing: bool | TracerProvider = False,
    ) -> None:
        self.metrics = Metrics(self.stats) if metrics else None
        self.streams = StreamCounts()
        self.handlers = HandlerPool(handler_deadline) if handler_deadline is not None else None
        self.advertise = [flight.Location(uri) for uri in advertise]
        self.live_calls = 0
        self.draining = False  # refuse new calls
        self.ending = False  # end open streams at their next turn so clients resume elsewhere
        self._calls_lock = threading.Lock()
        self.auth = auth
        self.max_message_bytes = max_message_bytes
        self.max_request_bytes = max_request_bytes
        self.encrypt_state = encrypt_state
        self.service = describe_protocol(protocol)
        self.methods: dict[str, BoundMethod] = bind_implementation(self.service, implementation)
        self.tracing = server_tracing(tracing, self.service.name)
        self.implementation = implementation
        self.keys = keys
        self.token_ttl = token_ttl
        self.max_token_bytes = max_token_bytes
        self.send_tracebacks = send_tracebacks
        self._state_classes: dict[str, type[StreamState]] = {}
        # Per-method IPC framings, built once: (params, result).
        self._framing = {
            name: (wire.BatchFraming(b.description.params_schema), wire.BatchFraming(b.description.result_schema))
            for name, b in self.methods.items()
        }
        self._describe_bytes: bytes | None = None
        self.local: LocalDataChannel | None = None  # set by RpcServer when it serves a local data channel

    def stats(self) -> ServerStats:
        """What the server holds and has done (see :class:`ServerStats`)."""
        streams = self.streams
        return ServerStats(
            live_calls=self.live_calls,
            open_streams=streams.open,
            streams_completed=streams.ended[StreamOutcome.COMPLETED],
            streams_cancelled=streams.ended[StreamOutcome.CANCELLED],
            streams_abandoned=streams.ended[StreamOutcome.ABANDONED],
            streams_handed_off=streams.ended[StreamOutcome.HANDED_OFF],
            streams_failed=streams.ended[StreamOutcome.FAILED],
            handlers_timed_out=self.handlers.timed_out if self.handlers is not None else 0,
            hung_handlers=self.handlers.hung if self.handlers is not None else 0,
        )

    @property
    def turn_invoke(self) -> _Invoke | None:
        """How stream turns run: ``None`` inline (no handler deadline), else :meth:`invoke`."""
        return None if self.handlers is None else self.invoke

    def invoke(self, watch: CallWatch, fn: Callable[[], T]) -> T:
        """Run one handler invocation: inline, or on a worker under the handler deadline."""
        if self.handlers is None:
            return fn()
        return self.handlers.run(fn, watch, lambda: self.ending)

    @contextlib.contextmanager
    def stream_call(self, live: _LiveStream) -> Iterator[None]:
        """Count a stream call by how it ends, and end its watch so late handlers see it cancelled."""
        self.streams.opened()
        outcome = StreamOutcome.FAILED
        try:
            yield
            if live.cancelled:
                outcome = StreamOutcome.CANCELLED
            elif live.watch.cancelled():  # a vanished client's exchange input just ends
                outcome = StreamOutcome.ABANDONED
            else:
                outcome = StreamOutcome.COMPLETED
        except GeneratorExit:
            outcome = StreamOutcome.ABANDONED  # pyarrow closed the producer: the client stopped reading
            raise
        except BaseException as exc:
            if isinstance(exc, HandlerEndedError):  # its watch is ended: the reason is in the code
                outcome = _ENDED_HANDLER_OUTCOME.get(exc.code, StreamOutcome.FAILED)
            elif live.watch.cancelled():
                outcome = StreamOutcome.ABANDONED
            elif _error_code(exc) is ErrorCode.UNAVAILABLE and self.ending:
                outcome = StreamOutcome.HANDED_OFF
            raise
        finally:
            live.watch.end()
            self.streams.closed(outcome)

    # --- errors -------------------------------------------------------------------------------

    def to_flight_error(self, exc: BaseException, where: str) -> flight.FlightError:
        """Convert any exception into the FlightError that reports it."""
        if isinstance(exc, flight.FlightError) and str(exc).startswith(wire.ERROR_MARKER):
            return exc  # already converted further down the stack
        tb = "".join(traceback.format_exception(exc)) if self.send_tracebacks else ""
        code = _error_code(exc)
        if isinstance(exc, RequestRejectedError):
            log.info("%s refused: %s %s", where, code.value, exc.message)
            return wire.error_status(code, exc.error_type, exc.message, tb)
        if isinstance(exc, RpcError):
            return wire.error_status(code, exc.error_type, exc.error_message, tb or exc.remote_traceback)
        if isinstance(exc, TokenError | wire.WireError):
            return wire.error_status(code, type(exc).__name__, str(exc), tb)
        if isinstance(exc, flight.FlightError):
            return wire.error_status(code, type(exc).__name__, str(exc).split(". Detail:")[0], tb)
        log.info("%s raised %s: %s", where, type(exc).__name__, exc, exc_info=exc)
        return wire.error_status(code, type(exc).__name__, str(exc), tb)

    # --- calls --------------------------------------------------------------------------------

    def authenticate(
        self, context: flight.ServerCallContext, rpc: str, payload: bytes, method: str = ""
    ) -> AuthContext:
        """Identify the caller of a Flight call (see :func:`vgi_flight._auth.resolve_identity`).

        Raises:
            RequestRejectedError: UNAUTHENTICATED, with one message whatever the reason.
        """
        # The auth middleware's instance is the call's CallCredential; a call without one presented none.
        credential = context.get_middleware(MIDDLEWARE_KEY) if self.auth is not None else None
        try:
            return resolve_identity(
                self.auth,
                credential,
                context.peer_identity().decode("utf-8", "replace"),
                rpc=rpc,
                payload=payload,
                method=method,
            )
        except AuthenticationError:
            raise RequestRejectedError(ErrorCode.UNAUTHENTICATED, "authentication failed") from None

    def data_messages(
        self, live: _LiveStream, data: AnnotatedBatch, record: CallRecord
    ) -> list[tuple[pa.RecordBatch, bytes]]:
        """The messages that carry one data batch: the batch, or its slices when it is too large.

        Slicing at ``max_message_bytes`` lets clients with gRPC's 4 MiB receive limit read any batch.
        """
        metadata = wire.data_metadata(live.token_b64(), live.seq, data.custom_metadata)
        batch = data.batch
        # The buffer total is cheap and never below nbytes; only a large batch pays for the exact size.
        if record.batch_out(batch) <= self.max_message_bytes or live.whole_batches or batch.num_rows <= 1:
            return [(batch, metadata)]
        if batch.nbytes <= self.max_message_bytes:
            return [(batch, metadata)]
        rows = max(1, batch.num_rows * self.max_message_bytes // batch.nbytes)
        pieces = [batch.slice(start, rows) for start in range(0, batch.num_rows, rows)]
        part = wire.part_metadata(live.seq)
        return [(piece, part) for piece in pieces[:-1]] + [(pieces[-1], metadata)]

    @contextlib.contextmanager
    def call(self, rpc: str, context: flight.ServerCallContext, *, activate: bool = True) -> Iterator[CallRecord]:
        """Track one call: draining, access log, metrics, trace span. Refused with UNAVAILABLE while draining.

        Args:
            rpc: The Flight RPC name.
            context: The call's context.
            activate: Make the call's span current while the body runs (not for generators, whose
                body runs in pieces, possibly on other threads).
        """
        self.check_not_draining()
        record = CallRecord(rpc)
        span = self.tracing.start(record, context) if self.tracing is not None else None
        failure: BaseException | None = None
        with self._calls_lock:
            self.live_calls += 1
        if self.metrics is not None:
            self.metrics.live.inc()
        try:
            if span is not None and activate:
                assert self.tracing is not None
                with self.tracing.activate(span):
                    yield record
            else:
                yield record
        except BaseException as exc:
            failure = exc
            record.status = "CANCELLED" if context.is_cancelled() else _error_code(exc).value
            raise
        finally:
            with self._calls_lock:
                self.live_calls -= 1
            if self.metrics is not None:
                self.metrics.live.dec()
            finish(record, self.metrics)
            if span is not None:
                assert self.tracing is not None
                self.tracing.finish(span, record, failure)

    def check_not_draining(self) -> None:
        """Refuse a new call while draining, before anything runs (clients may retry it elsewhere)."""
        if self.draining:
            raise RequestRejectedError(
                ErrorCode.UNAVAILABLE, "server is draining: retry on another replica", wire.DRAINING_ERROR
            )

    def check_not_ending(self) -> None:
        """Between turns: past the drain deadline, end the stream so the client resumes elsewhere."""
        if self.ending:
            raise RequestRejectedError(
                ErrorCode.UNAVAILABLE, "server is shutting down: resume the stream on another replica"
            )

    def check_size(self, size: int, what: str) -> None:
        """Refuse a request part larger than ``max_request_bytes``.

        Raises:
            RequestRejectedError: RESOURCE_EXHAUSTED.
        """
        if size > self.max_request_bytes:
            raise RequestRejectedError(
                ErrorCode.RESOURCE_EXHAUSTED, f"{what} of {size} bytes exceeds the {self.max_request_bytes}-byte limit"
            )

    def command_of(self, descriptor: flight.FlightDescriptor) -> bytes:
        """The command of a descriptor (vgi-flight uses only command descriptors)."""
        if descriptor.descriptor_type != flight.DescriptorType.CMD:
            raise RequestRejectedError(
                ErrorCode.INVALID_ARGUMENT, "vgi-flight descriptors are commands (call requests or tokens)"
            )
        command: bytes = descriptor.command
        self.check_size(len(command), "command")
        return command

    def authorize(self, auth: AuthContext, method: str) -> None:
        """Apply the authorization policy.

        Raises:
            RequestRejectedError: PERMISSION_DENIED.
        """
        if self.auth is not None and not self.auth.allows(auth, method):
            who = auth.principal or "anonymous"
            raise RequestRejectedError(ErrorCode.PERMISSION_DENIED, f"'{who}' is not allowed to call '{method}'")

    def new_context(
        self,
        context: flight.ServerCallContext,
        watch: CallWatch,
        auth: AuthContext,
        method: str,
        sink: Callable[[Message], None],
    ) -> CallContext:
        """Build the CallContext for one call."""
        return CallContext(
            auth=auth,
            method=method,
            request_id=os.urandom(8).hex(),
            log_sink=sink,
            cancelled=watch.cancelled,
            transport_metadata={"peer": context.peer()},
        )

    def lookup(self, name: str, kind: MethodKind) -> BoundMethod:
        """Find a method of the expected kind."""
        bound = self.methods.get(name)
        if bound is None:
            raise RequestRejectedError(ErrorCode.UNIMPLEMENTED, f"{self.service.name} has no RPC method '{name}'")
        if bound.description.kind is not kind:
            hint = (
                "call it with DoAction" if bound.description.kind is MethodKind.UNARY else "start it with GetFlightInfo"
            )
            raise RequestRejectedError(
                ErrorCode.INVALID_ARGUMENT, f"'{name}' is a {bound.description.kind.value} method: {hint}"
            )
        return bound

    def decode_params(self, desc: MethodDescription, batch: pa.RecordBatch | None) -> dict[str, Any]:
        """Turn a one-row parameter batch into keyword arguments, applying defaults."""
        kwargs: dict[str, Any] = {}
        names: list[str] = batch.schema.names if batch is not None else []
        unknown = [n for n in names if n not in desc.param_by_name]
        if unknown:
            raise RequestRejectedError(
                ErrorCode.INVALID_ARGUMENT, f"{desc.name}() got unexpected parameter(s) {unknown}"
            )
        if batch is not None and names and batch.num_rows != 1:
            raise RequestRejectedError(
                ErrorCode.INVALID_ARGUMENT, f"parameter batch must have one row, got {batch.num_rows}"
            )
        for param in desc.params:
            if param.name not in names:
                if param.required:
                    raise RequestRejectedError(
                        ErrorCode.INVALID_ARGUMENT, f"{desc.name}() missing parameter '{param.name}'"
                    )
                kwargs[param.name] = param.default
                continue
            assert batch is not None
            column = batch.column(param.name)
            if column.type != param.codec.arrow_type:
                try:
                    column = column.cast(param.codec.arrow_type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    raise RequestRejectedError(
                        ErrorCode.INVALID_ARGUMENT,
                        f"parameter '{param.name}' has type {column.type}, expected {param.codec.arrow_type}",
                    ) from None
            try:
                value = param.codec.from_arrow(column[0].as_py())
            except (ValueError, TypeError, KeyError) as exc:
                raise RequestRejectedError(ErrorCode.INVALID_ARGUMENT, f"parameter '{param.name}': {exc}") from None
            if value is None and not param.codec.nullable:
                raise RequestRejectedError(
                    ErrorCode.INVALID_ARGUMENT, f"parameter '{param.name}' is not optional but got None", "TypeError"
                )
            kwargs[param.name] = value
        return kwargs

    def call_unary(self, context: flight.ServerCallContext, auth: AuthContext, name: str, body: bytes) -> list[bytes]:
        """Serve a unary DoAction; return the Result bodies (log JSON objects, then the value)."""
        bound = self.lookup(name, MethodKind.UNARY)
        self.authorize(auth, name)
        desc = bound.description
        params_framing, result_framing = self._framing[name]
        batch = params_framing.decode(body, "action body") if body else None
        kwargs = self.decode_params(desc, batch)
        logs: list[Message] = []
        watch = CallWatch(context)
        if bound.takes_ctx:
            kwargs["ctx"] = self.new_context(context, watch, auth, name, logs.append)
        try:
            result = self.invoke(watch, lambda: bound.call(**kwargs))
        finally:
            watch.end()
        out = [wire.log_json(m) for m in logs]
        out.append(
            _VOID_RESULT if desc.result_codec is None else result_framing.encode(self.encode_result(desc, result))
        )
        return out

    def encode_result(self, desc: MethodDescription, result: object) -> pa.RecordBatch:
        """Build the ``{result: T}`` batch of a method that returns a value."""
        codec = desc.result_codec
        assert codec is not None
        if result is None and not codec.nullable:
            raise RequestRejectedError(
                ErrorCode.INTERNAL, f"{desc.name}() returned None but its result is not Optional"
            )
        try:
            array = arrow_array([codec.to_arrow(result)], codec.arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            raise RequestRejectedError(
                ErrorCode.INTERNAL, f"{desc.name}() returned a value that does not fit its type: {exc}"
            ) from None
        return pa.RecordBatch.from_arrays([array], schema=desc.result_schema)

    # --- streams ------------------------------------------------------------------------------

    def open_stream(self, context: flight.ServerCallContext, auth: AuthContext, request: bytes) -> _LiveStream:
        """Run a stream method from a call request and hold its state."""
        name, params, whole_batches = wire.decode_request(request)
        bound = self.lookup(name, MethodKind.STREAM)
        self.authorize(auth, name)
        kwargs = self.decode_params(bound.description, params)
        logs: list[Message] = []
        watch = CallWatch(context)
        ctx = self.new_context(context, watch, auth, name, logs.append)
        if bound.takes_ctx:
            kwargs["ctx"] = ctx
        try:
            stream = self.invoke(watch, lambda: bound.call(**kwargs))
        except BaseException:
            watch.end()
            raise
        if not isinstance(stream, Stream):
            raise RequestRejectedError(
                ErrorCode.INTERNAL, f"{name}() must return a Stream, returned {type(stream).__name__}"
            )
        state = stream.state
        if not isinstance(state, StreamState):
            raise RequestRejectedError(
                ErrorCode.INTERNAL, f"{name}() returned a Stream whose state is not a StreamState"
            )
        header = stream.header
        if header is not None and not isinstance(header, ArrowSerializableDataclass):
            raise RequestRejectedError(
                ErrorCode.INTERNAL, f"{name}() returned a header that is not an ArrowSerializableDataclass"
            )
        cls_path = _state_class_path(type(state))
        self._state_classes[cls_path] = type(state)
        input_schema = stream.input_schema if stream.is_exchange else EMPTY_SCHEMA
        binding = StreamBinding(
            stream_id=new_stream_id(),
            method=name,
            principal=ctx.auth.principal or "",
            state_class=cls_path,
            output_schema=wire.schema_bytes(stream.output_schema),
            input_schema=wire.schema_bytes(input_schema),
            whole_batches=whole_batches,
        )
        return _LiveStream(
            state=state,
            output_schema=stream.output_schema,
            input_schema=input_schema,
            exchange=stream.is_exchange,
            signer=StreamSigner(self.keys, binding, self.token_ttl, encrypt=self.encrypt_state),
            ctx=ctx,
            watch=watch,
            header=header.serialize_to_bytes() if header is not None else None,
            init_logs=logs,
        )

    def resume_stream(self, context: flight.ServerCallContext, auth: AuthContext, token: bytes) -> _LiveStream:
        """Rebuild a stream from a signed token minted by any replica sharing the key."""
        verified = verify_token(self.keys, token, max_bytes=self.max_token_bytes)
        binding = verified.binding
        bound = self.lookup(binding.method, MethodKind.STREAM)
        if binding.principal != (auth.principal or ""):
            raise RequestRejectedError(ErrorCode.PERMISSION_DENIED, "this stream token belongs to another principal")
        self.authorize(auth, binding.method)
        watch = CallWatch(context)
        ctx = self.new_context(context, watch, auth, bound.description.name, lambda _m: None)
        cls = self._resolve_state_class(binding.state_class)
        try:
            state = state_from_bytes(cls, verified.state)
        except ValueError as exc:
            raise RequestRejectedError(
                ErrorCode.INVALID_ARGUMENT, f"stream state could not be restored: {exc}"
            ) from None
        input_schema = wire.read_schema(binding.input_schema, "token input schema")
        return _LiveStream(
            state=state,
            output_schema=wire.read_schema(binding.output_schema, "token output schema"),
            input_schema=input_schema,
            exchange=len(input_schema) > 0 or _is_exchange_class(cls),
            signer=StreamSigner(self.keys, binding, self.token_ttl, encrypt=self.encrypt_state),
            ctx=ctx,
            watch=watch,
            seq=verified.seq,
        )

    def _resolve_state_class(self, path: str) -> type[StreamState]:
        cls = self._state_classes.get(path)
        if cls is not None:
            return cls
        module_name, _, qualname = path.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            raise RequestRejectedError(
                ErrorCode.FAILED_PRECONDITION, f"state class {path} is not importable on this server", "ResumeError"
            ) from None
        if not (isinstance(obj, type) and issubclass(obj, StreamState)):
            raise RequestRejectedError(ErrorCode.INVALID_ARGUMENT, f"{path} is not a StreamState class")
        self._state_classes[path] = obj
        return obj

    def stream_from(
        self, context: flight.ServerCallContext, auth: AuthContext, data: bytes, *, exchange: bool
    ) -> tuple[_LiveStream, list[bytes]]:
        """Open (call request) or resume (token) a stream; return it and its opening messages' metadata."""
        if wire.is_token(data):
            live = self.resume_stream(context, auth, data)
            prelude = [wire.ready_metadata(live.token(), live.seq, None)]
        else:
            live = self.open_stream(context, auth, data)
            prelude = [wire.log_json(m) for m in live.init_logs]
            input_schema = wire.schema_bytes(live.input_schema) if live.exchange else None
            prelude.append(
                wire.ready_metadata(
                    live.token(), live.seq, live.header, exchange=live.exchange, input_schema=input_schema
                )
            )
        check_kind(live, exchange)
        return live, prelude

    def grant_local(self, context: flight.ServerCallContext, auth: AuthContext, request: bytes) -> bytes:
        """Serve the ``__local_data__`` action: a grant to read a producer over the local socket.

        ``request`` is what a ``DoGet`` ticket may be: a state token (checked now: signature,
        expiry, principal, policy) or a call request (method and policy checked now; the method
        runs when the grant is used, as a single-call ``DoGet`` runs it), so that a bad one fails
        this authenticated call rather than the socket connection.
        """
        if self.local is None:
            raise RequestRejectedError(
                ErrorCode.UNIMPLEMENTED, "this server has no local data channel", wire.LOCAL_DATA_UNAVAILABLE_ERROR
            )
        if wire.is_token(request):
            live = self.resume_stream(context, auth, request)
            live.watch.end()
            check_kind(live, exchange=False)  # the channel carries producers only
        else:
            name, _ = wire.decode_call(request)
            self.lookup(name, MethodKind.STREAM)
            self.authorize(auth, name)
        try:
            return self.local.grant(request, auth)
        except RuntimeError as exc:
            raise RequestRejectedError(ErrorCode.RESOURCE_EXHAUSTED, str(exc)) from None

    def cancel_from_token(self, context: flight.ServerCallContext, auth: AuthContext, token: bytes) -> list[bytes]:
        """Serve the ``__cancel__`` action: run ``on_cancel`` on the state a token carries."""
        live = self.resume_stream(context, auth, token)
        try:
            logs = [wire.log_json(m) for m in live.cancel(self.invoke)]
        finally:
            live.watch.end()
        self.streams.cancelled()
        return logs

    def describe_bytes(self) -> bytes:
        """The ``__describe__`` result: one row per method (see the wire protocol)."""
        if self._describe_bytes is None:
            rows: dict[str, list[Any]] = {
                k: []
                for k in (
                    "name",
                    "kind",
                    "doc",
                    "params_schema",
                    "result_schema",
                    "has_header",
                    "header_schema",
                    "defaults",
                )
            }
            for desc in self.service.methods.values():
                rows["name"].append(desc.name)
                rows["kind"].append(desc.kind.value)
                rows["doc"].append(desc.doc)
                rows["params_schema"].append(wire.schema_bytes(desc.params_schema))
                rows["result_schema"].append(wire.schema_bytes(desc.result_schema))
                rows["has_header"].append(desc.has_header)
                rows["header_schema"].append(wire.schema_bytes(desc.header_schema) if desc.header_schema else None)
                defaults = [p for p in desc.params if not p.required]
                rows["defaults"].append(
                    wire.ipc_bytes(
                        pa.RecordBatch.from_arrays(
                            [arrow_array([p.codec.to_arrow(p.default)], p.codec.arrow_type) for p in defaults],
                            schema=pa.schema([p.codec.field(p.name) for p in defaults]),
                        )
                    )
                    if defaults
                    else None
                )
            schema = pa.schema(
                [
                    ("name", pa.utf8()),
                    ("kind", pa.utf8()),
                    ("doc", pa.utf8()),
                    ("params_schema", pa.binary()),
                    ("result_schema", pa.binary()),
                    ("has_header", pa.bool_()),
                    ("header_schema", pa.binary()),
                    ("defaults", pa.binary()),
                ],
                metadata={
                    b"vgi.protocol": self.service.name.encode(),
                    b"vgi.doc": self.service.doc.encode(),
                    wire.VERSION_KEY: wire.PROTOCOL_VERSION.encode(),
                },
            )
            self._describe_bytes = wire.ipc_bytes(pa.RecordBatch.from_pydict(rows, schema=schema))
        return self._describe_bytes


def check_kind(live: _LiveStream, exchange: bool) -> None:
    """Refuse a stream opened or resumed with the RPC of the other kind.

    Raises:
        RequestRejectedError: INVALID_ARGUMENT, ``error_type`` ``WrongStreamKind``.
    """
    if live.exchange != exchange:
        use = "an exchange stream: use DoExchange" if live.exchange else "a producer stream: use DoGet"
        raise RequestRejectedError(
            ErrorCode.INVALID_ARGUMENT, f"'{live.ctx.method}' is {use}", wire.WRONG_STREAM_KIND_ERROR
        )


def _is_exchange_class(cls: type) -> bool:
    return issubclass(cls, ExchangeState)


class _FlightService(flight.FlightServerBase):  # type: ignore[misc]  # pyarrow ships no type stubs
    """pyarrow's server class, delegating to the dispatcher and converting every error."""

    def __init__(self, dispatcher: _Dispatcher, location: str, **kwargs: Any) -> None:
        super().__init__(location, **kwargs)
        self._d = dispatcher

    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> Iterator[flight.FlightInfo]:
        return iter(())

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        pin_thread_state()
        try:
            self._d.authenticate(context, "ListActions", b"")
        except Exception as exc:
            raise self._d.to_flight_error(exc, "ListActions") from None
        actions = []
        for name, bound in self._d.methods.items():
            desc = bound.description
            summary = desc.doc.split("\n", 1)[0]
            how = "DoAction" if desc.kind is MethodKind.UNARY else "GetFlightInfo/DoGet/DoExchange"
            actions.append((name, f"{desc.kind.value} ({how}): {summary}".rstrip(": ")))
        actions.append((wire.DESCRIBE_ACTION, "Describe the service: methods, kinds and schemas (Arrow IPC)"))
        actions.append((wire.CANCEL_ACTION, "Cancel a stream: body is its latest state token"))
        actions.append((wire.HEALTH_ACTION, "Report serving status"))
        if self._d.local is not None:
            grant = "Grant to read a producer over the local socket: body is a token or a call request"
            actions.append((wire.LOCAL_DATA_ACTION, grant))
        return actions

    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> Iterator[bytes]:
        pin_thread_state()
        name = action.type
        try:
            with self._d.call("DoAction", context) as record:
                record.method = name
                record.kind = "action" if name in wire.RESERVED_ACTIONS else "unary"
                self._d.check_size(action.body.size if action.body is not None else 0, "action body")
                body = action.body.to_pybytes() if action.body is not None else b""
                record.bytes_in = len(body)
                auth = self._d.authenticate(context, "DoAction", request_payload("DoAction", body, name), name)
                record.principal = auth.principal or ""
                if name == wire.HEALTH_ACTION:
                    return iter([b'{"status":"SERVING"}'])
                if name == wire.DESCRIBE_ACTION:
                    self._d.authorize(auth, name)
                    return iter([self._d.describe_bytes()])
                if name == wire.CANCEL_ACTION:
                    return iter(self._d.cancel_from_token(context, auth, body))
                if name == wire.LOCAL_DATA_ACTION:
                    return iter([self._d.grant_local(context, auth, body)])
                return iter(self._d.call_unary(context, auth, name, body))
        except Exception as exc:
            raise self._d.to_flight_error(exc, f"DoAction {name}") from None

    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        pin_thread_state()
        try:
            with self._d.call("GetFlightInfo", context) as record:
                record.kind = "stream-start"
                request = self._d.command_of(descriptor)
                auth = self._d.authenticate(context, "GetFlightInfo", request)
                record.principal = auth.principal or ""
                if wire.is_token(request):
                    raise RequestRejectedError(
                        ErrorCode.INVALID_ARGUMENT, "GetFlightInfo takes a call request, not a token"
                    )
                live = self._d.open_stream(context, auth, request)
                record.method = live.ctx.method
                metadata = wire.stream_info_metadata(
                    exchange=live.exchange,
                    input_schema=wire.schema_bytes(live.input_schema),
                    header=live.header,
                    logs=live.init_logs,
                    seq=live.seq,
                )
                live.watch.end()  # the state travels on in the token; this call is over
                endpoint = flight.FlightEndpoint(live.token(), self._d.advertise)
                return flight.FlightInfo(live.output_schema, descriptor, [endpoint], -1, -1, app_metadata=metadata)
        except Exception as exc:
            raise self._d.to_flight_error(exc, "GetFlightInfo") from None

    def get_schema(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor) -> flight.SchemaResult:
        pin_thread_state()
        try:
            request = self._d.command_of(descriptor)
            auth = self._d.authenticate(context, "GetSchema", request)
            name, _ = wire.decode_call(request)
            bound = self._d.methods.get(name)
            if bound is not None and bound.description.kind is MethodKind.UNARY:
                self._d.authorize(auth, name)
                return flight.SchemaResult(bound.description.result_schema)
            live = self._d.open_stream(context, auth, request)
            live.watch.end()
            return flight.SchemaResult(live.output_schema)
        except Exception as exc:
            raise self._d.to_flight_error(exc, "GetSchema") from None

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.GeneratorStream:
        pin_thread_state()
        try:
            self._d.check_not_draining()  # before any work: DoGet's call tracking starts in the generator
            self._d.check_size(len(ticket.ticket), "ticket")
            auth = self._d.authenticate(context, "DoGet", ticket.ticket)
            live, prelude = self._d.stream_from(context, auth, ticket.ticket, exchange=False)
        except Exception as exc:
            raise self._d.to_flight_error(exc, "DoGet") from None
        return flight.GeneratorStream(live.output_schema, self._produce(context, live, prelude))

    def _produce(
        self, context: flight.ServerCallContext, live: _LiveStream, prelude: list[bytes]
    ) -> Iterator[tuple[pa.RecordBatch, bytes]]:
        pin_thread_state()  # pyarrow may pull the batches on another gRPC thread than do_get ran on
        empty = live.empty_batch
        try:
            with self._d.call("DoGet", context, activate=False) as record, self._d.stream_call(live):
                record.method, record.kind = live.ctx.method, "producer"
                record.principal = live.ctx.auth.principal or ""
                yield from self._stream_output(live, prelude, empty, record)
        except Exception as exc:
            raise self._d.to_flight_error(exc, f"DoGet {live.ctx.method}") from None

    def serve_local(self, call: LocalCall, request: bytes, auth: AuthContext, out: LocalStreamWriter) -> None:
        """Serve one granted producer stream over the local data channel (on the channel's thread).

        ``request`` is the granted token or call request: the stream resumes or opens as ``DoGet``
        would, and its messages go out as Arrow IPC instead of Flight data.
        """
        where = "local DoGet"
        try:
            with self._d.call("DoGet", call, activate=False) as record:
                record.kind = "producer-local"
                record.principal = auth.principal or ""
                live, prelude = self._d.stream_from(call, auth, request, exchange=False)
                record.method = live.ctx.method
                where = f"local DoGet {live.ctx.method}"
                empty = live.empty_batch
                out.begin(live.output_schema)
                with self._d.stream_call(live):
                    for batch, metadata in self._stream_output(live, prelude, empty, record):
                        out.write(batch, metadata)  # raises once the client closed its end: abandoned
                out.end(empty)
        except Exception as exc:
            if call.gone:
                log.debug("%s: client went away", where)
                return
            out.fail(self._d.to_flight_error(exc, where))

    def _stream_output(
        self,
        live: _LiveStream,
        prelude: list[bytes],
        empty: pa.RecordBatch,
        record: CallRecord,
    ) -> Iterator[tuple[pa.RecordBatch, bytes]]:
        for metadata in prelude:
            yield empty, metadata
        # No context.is_cancelled() per batch: it costs ~80 us inside a streaming call, and a client
        # that goes away makes pyarrow close this generator (GeneratorExit) at the next yield anyway.
        run_ahead = max(1, int(getattr(live.state, "run_ahead", 1)))
        d, invoke = self._d, self._d.turn_invoke
        finished = False
        while not finished:
            # One run: up to run_ahead turns, then their messages. Turns that run together keep the
            # interpreter's working set warm, where a send of a large batch between them left it cold.
            pending: list[tuple[pa.RecordBatch, bytes]] = []
            started, bytes_before = time.perf_counter(), record.bytes_out
            try:
                for turn in range(1, run_ahead + 1):
                    if d.ending:
                        d.check_not_ending()
                    out = live.turn(_TICK, invoke)
                    if out._logs:
                        pending += [(empty, wire.log_json(msg)) for msg in out._logs]
                    data = out._data
                    if data is not None:
                        pending += d.data_messages(live, data, record)
                    finished = out._finished
                    if (
                        finished
                        or turn == run_ahead
                        or record.bytes_out - bytes_before >= RUN_AHEAD_BYTES
                        or time.perf_counter() - started >= RUN_AHEAD_SECONDS
                    ):
                        break
            except Exception:
                yield from pending  # what the run's earlier turns made goes out before the failure
                raise
            yield from pending

    def do_exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
    ) -> None:
        pin_thread_state()
        where = "DoExchange"
        try:
            with self._d.call("DoExchange", context) as record:
                record.kind = "exchange"
                self._exchange(context, descriptor, reader, writer, record)
        except Exception as exc:
            if context.is_cancelled():
                log.debug("%s: client went away", where)
                return
            raise self._d.to_flight_error(exc, where) from None

    def _exchange(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
        record: CallRecord,
    ) -> None:
        command = self._d.command_of(descriptor)
        auth = self._d.authenticate(context, "DoExchange", command)
        record.principal = auth.principal or ""
        live, prelude = self._d.stream_from(context, auth, command, exchange=True)
        record.method = live.ctx.method
        with self._d.stream_call(live):
            self._exchange_turns(live, prelude, reader, writer, record)

    def _exchange_turns(
        self,
        live: _LiveStream,
        prelude: list[bytes],
        reader: flight.MetadataRecordBatchReader,
        writer: flight.MetadataRecordBatchWriter,
        record: CallRecord,
    ) -> None:
        d = self._d
        empty = live.empty_batch
        read, write = reader.read_chunk, writer.write_with_metadata
        writer.begin(live.output_schema)
        for metadata in prelude:
            write(empty, metadata)
        input_schema, max_request_bytes, invoke = live.input_schema, d.max_request_bytes, d.turn_invoke
        # Every batch of an IPC stream has the stream's schema: whether it needs conforming is decided once.
        conform: bool | None = None
        while True:
            try:
                chunk = read()
            except StopIteration:
                return
            if d.ending:
                d.check_not_ending()  # before consuming the batch: the client re-sends it elsewhere
            batch = chunk.data
            if batch is None:
                control = wire.parse_metadata(chunk.app_metadata)
                if control.get("kind") == wire.KIND_CANCEL:
                    for msg in live.cancel(d.invoke):
                        write(empty, wire.log_json(msg))
                    return
                raise RequestRejectedError(
                    ErrorCode.INVALID_ARGUMENT, f"unexpected control message {control.get('kind')!r}"
                )
            if record.batch_in(batch) > max_request_bytes:  # the buffer total: a cheap upper bound
                d.check_size(batch.nbytes, "input batch")
            try:
                batch.validate(full=True)
            except pa.ArrowInvalid as exc:
                raise RequestRejectedError(ErrorCode.INVALID_ARGUMENT, f"malformed input batch: {exc}") from None
            if conform is None:
                conform = not batch.schema.equals(input_schema)
            if conform:
                try:
                    batch = conform_batch(batch, input_schema, "input batch")
                except ValueError as exc:
                    raise RequestRejectedError(ErrorCode.INVALID_ARGUMENT, str(exc)) from None
            app_metadata = chunk.app_metadata
            meta = wire.custom_metadata(wire.parse_metadata(app_metadata)) if app_metadata is not None else None
            out = live.turn(annotated_batch(batch, meta), invoke)
            for msg in out._logs:  # the collector's fields, as the producer loop reads them
                write(empty, wire.log_json(msg))
            data = out._data
            assert data is not None
            for batch, metadata in d.data_messages(live, data, record):
                write(batch, metadata)


class RpcServer:
    """Serve a Protocol implementation over Arrow Flight.

    Example:
        >>> server = RpcServer(Calculator, CalculatorImpl(), location="grpc://127.0.0.1:0")  # doctest: +SKIP
        >>> server.location  # doctest: +SKIP
        'grpc://127.0.0.1:40123'
    """

    def __init__(
        self,
        protocol: type,
        implementation: object,
        location: str = "grpc://127.0.0.1:0",
        *,
        token_key: bytes | KeyRing | None = None,
        token_ttl: float | None = None,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        send_tracebacks: bool = False,
        tls_certificates: list[tuple[bytes, bytes]] | None = None,
        verify_client: bool = False,
        root_certificates: bytes | None = None,
        auth: ServerAuth | None = None,
        encrypt_state: bool = False,
        max_request_bytes: int = 64 * 1024 * 1024,
        max_message_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES,
        advertise: Sequence[str] = (),
        metrics: bool = False,
        tracing: bool | TracerProvider = False,
        handler_deadline: float | None = None,
        local_data: bool | str = False,
    ) -> None:
        """Build (and bind) the server; call :meth:`serve` to block or use it as a context manager.

        Args:
            protocol: The service Protocol class.
            implementation: An object implementing every Protocol method.
            location: ``grpc://host:port`` (port 0 picks a free port), ``grpc+tls://…`` or ``grpc+unix://path``.
            token_key: Secret (or :class:`KeyRing`) for signing stream state tokens. Replicas that
                resume each other's streams must share it. Without one a random key is used and
                tokens do not survive the process.
            token_ttl: Lifetime of state tokens in seconds (``None``: no expiry).
            max_token_bytes: Largest token accepted.
            send_tracebacks: Send server tracebacks to clients (development only).
            tls_certificates: ``[(cert_pem, key_pem)]`` to serve TLS.
            verify_client: Require client certificates signed by ``root_certificates`` (mTLS).
            root_certificates: PEM CA bundle for verifying client certificates.
            auth: Authentication and authorization of callers (HMAC, bearer, hook, mTLS
                requirements, per-method policy). ``None`` accepts every caller, identified by
                its client certificate when there is one.
            encrypt_state: Encrypt stream state inside tokens (AES-GCM) so clients cannot read
                it; tokens are signed either way.
            max_request_bytes: Largest action body, command, ticket or exchange input batch
                accepted; larger ones are refused with RESOURCE_EXHAUSTED.
            max_message_bytes: Output data batches larger than this are sent as several
                messages (``data_part`` slices then the ``data`` message) so that clients with
                gRPC's default 4 MiB receive limit can read them; every client reassembles them.
            advertise: Locations of the replicas that can serve this service's streams, listed in
                every FlightInfo endpoint so clients can read streams from any of them.
            metrics: Keep Prometheus metrics (needs ``prometheus_client``, the ``metrics`` extra);
                read them with :meth:`metrics_text` or serve them with :meth:`serve_metrics`.
            tracing: Trace every call with OpenTelemetry (needs the ``otel`` extra): a SERVER span
                per call, child of the W3C trace context the client sent, and call count and
                duration metrics through the global MeterProvider. ``True`` uses the global
                TracerProvider; pass a ``TracerProvider`` to use that one instead.
            handler_deadline: Longest time, in seconds, one handler invocation may run: a unary
                method, a stream method, one ``produce``/``exchange`` turn, ``on_cancel``. When it
                passes the call fails with DEADLINE_EXCEEDED and the handler's ``ctx.cancelled``
                turns ``True``. Setting it runs handlers on worker threads (a thread hand-off per
                invocation), which also lets the server end a call whose client went away, and a
                drain end a hung handler, without waiting for the handler to return. ``None`` (the
                default) runs handlers on the gRPC thread: fastest, but a hung handler holds its
                call until it returns.
            local_data: Serve producer streams to clients on this host over a Unix socket as well
                (the local data channel: several times gRPC's throughput). ``True`` puts the socket
                in a new private directory; a string is the socket path (e.g. on a volume shared
                with a sidecar). Clients opt in with ``connect(..., local_data=True)``; Flight calls
                still authenticate every stream.

        Raises:
            TypeError: The implementation does not fit the Protocol.
            ImportError: ``tracing`` is on and OpenTelemetry is not installed.
        """
        if token_key is None:
            log.warning("no token key given: using a random per-process key; streams cannot resume on other replicas")
            keys = KeyRing.random()
        elif isinstance(token_key, KeyRing):
            keys = token_key
        else:
            keys = KeyRing.single(token_key)
        self._dispatcher = _Dispatcher(
            protocol,
            implementation,
            keys=keys,
            token_ttl=token_ttl,
            max_token_bytes=max_token_bytes,
            send_tracebacks=send_tracebacks,
            auth=auth,
            encrypt_state=encrypt_state,
            max_request_bytes=max_request_bytes,
            max_message_bytes=max_message_bytes,
            advertise=advertise,
            metrics=metrics,
            handler_deadline=handler_deadline,
            tracing=tracing,
        )
        kwargs: dict[str, Any] = {}
        middleware: dict[str, flight.ServerMiddlewareFactory] = {}
        if auth is not None:
            middleware[MIDDLEWARE_KEY] = AuthMiddlewareFactory(auth)
        if self._dispatcher.tracing is not None:
            middleware[TRACE_MIDDLEWARE_KEY] = self._dispatcher.tracing.middleware_factory()
        if middleware:
            kwargs["middleware"] = middleware
        if tls_certificates:
            kwargs["tls_certificates"] = tls_certificates
            kwargs["verify_client"] = verify_client
            if root_certificates is not None:
                kwargs["root_certificates"] = root_certificates
        self._server = _FlightService(self._dispatcher, location, **kwargs)
        self._location = _bound_location(location, self._server.port)
        if local_data:
            path = local_data if isinstance(local_data, str) else None
            self._dispatcher.local = LocalDataChannel(path, self._server.serve_local)
        self._stop = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._stopper: threading.Thread | None = None

    @property
    def location(self) -> str:
        """The location clients connect to (with the real port when 0 was asked for)."""
        return self._location

    @property
    def local_data_path(self) -> str | None:
        """The local data channel's socket path, or ``None`` without one."""
        return self._dispatcher.local.path if self._dispatcher.local is not None else None

    @property
    def port(self) -> int:
        """The bound TCP port (non-positive for Unix sockets)."""
        port: int = self._server.port
        return port

    def serve(self, drain_deadline: float = 30.0) -> bool:
        """Block until :meth:`shutdown`, or until SIGTERM/SIGINT arrives and the server has drained.

        The server accepts calls from construction on; ``serve`` only waits. Signal handlers are
        installed when called from the main thread.

        Args:
            drain_deadline: Seconds open streams may run after a signal (see :meth:`drain`).

        Returns:
            Whether the server stopped cleanly.
        """
        signalled = threading.Event()
        if threading.current_thread() is threading.main_thread():

            def on_signal(_signum: int, _frame: object) -> None:
                signalled.set()
                self._stop.set()

            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, on_signal)
        while not self._stop.wait(3600):
            pass
        if signalled.is_set():
            return self.drain(deadline=drain_deadline)
        return self.shutdown()

    def start(self) -> RpcServer:
        """Return ``self``: the server already accepts calls (kept for ``with``-style use)."""
        return self

    def metrics_text(self) -> bytes:
        """The server's metrics in the Prometheus text format.

        Raises:
            RuntimeError: The server was built without ``metrics=True``.
        """
        if self._dispatcher.metrics is None:
            raise RuntimeError("build the server with metrics=True")
        return self._dispatcher.metrics.exposition()

    def serve_metrics(self, port: int, address: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` over HTTP on ``address:port`` for Prometheus to scrape."""
        if self._dispatcher.metrics is None:
            raise RuntimeError("build the server with metrics=True")
        self._dispatcher.metrics.serve_http(port, address)

    @property
    def live_calls(self) -> int:
        """Calls in progress (streams count until they end)."""
        return self._dispatcher.live_calls

    def stats(self) -> ServerStats:
        """Open streams, how stream calls ended, and handlers past their deadline, since the server started."""
        return self._dispatcher.stats()

    def drain(self, deadline: float = 30.0, grace: float = 5.0) -> bool:
        """Stop gracefully: what a rolling update needs.

        New calls are refused with UNAVAILABLE at once (clients retry on another replica). Open
        calls may finish for up to ``deadline`` seconds; then every open stream ends at its next
        turn with UNAVAILABLE, and clients resume it elsewhere from their last token. With a
        ``handler_deadline``, a handler still running then is abandoned too: its call ends with
        UNAVAILABLE (the handler keeps its worker thread until it returns). Finally the server
        stops, waiting at most ``grace`` seconds in all for calls stuck on a stalled client or in
        a handler running on the gRPC thread.

        Returns:
            Whether the server stopped (``False``: a call is still stuck).
        """
        dispatcher = self._dispatcher
        dispatcher.draining = True
        if dispatcher.live_calls:  # say at once why the stop may take up to the deadline
            log.warning("drain: %d call(s) open; they may run for up to %s s", dispatcher.live_calls, deadline)
        self._wait_for_calls(deadline)
        if dispatcher.live_calls:
            log.warning(
                "drain: %d call(s) still open after %s s; ending their streams", dispatcher.live_calls, deadline
            )
        dispatcher.ending = True  # past the deadline: end open streams at their next turn
        stop_by = time.monotonic() + grace
        self._wait_for_calls(grace)
        return self.shutdown(timeout=max(0.1, stop_by - time.monotonic()))

    def _wait_for_calls(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while self._dispatcher.live_calls and time.monotonic() < end:
            time.sleep(0.02)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop accepting calls and wait for in-flight calls to finish.

        Args:
            timeout: Give up waiting after this many seconds (pyarrow's own shutdown has no
                deadline, and a call blocked on a stalled client would otherwise hold it forever).

        Returns:
            Whether the server stopped within ``timeout``.
        """
        self._stop.set()
        with self._shutdown_lock:
            if self._stopper is None:
                self._dispatcher.draining = True
                self._stopper = threading.Thread(target=self._server.shutdown, name="vgi-flight-shutdown", daemon=True)
                self._stopper.start()
        if self._dispatcher.local is not None:
            self._dispatcher.local.close()
        self._stopper.join(timeout)
        if self._stopper.is_alive():
            log.warning("shutdown: %d call(s) still open after %s s; leaving them", self.live_calls, timeout)
            return False
        return True

    def __enter__(self) -> RpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _error_code(exc: BaseException) -> ErrorCode:
    """The code a failed call reports to its client (also what the access log and metrics record)."""
    if isinstance(exc, RequestRejectedError | RpcError):
        return exc.code
    if isinstance(exc, TokenError):
        return ErrorCode.UNAUTHENTICATED
    if isinstance(exc, wire.WireError):
        return ErrorCode.INVALID_ARGUMENT
    if isinstance(exc, flight.FlightError):
        # Converted further down the stack: its JSON body holds the code; any other FlightError is UNKNOWN.
        return wire.rpc_error_from_flight(exc).code if str(exc).startswith(wire.ERROR_MARKER) else ErrorCode.UNKNOWN
    return next((c for t, c in _CODE_FOR_EXCEPTION if isinstance(exc, t)), ErrorCode.UNKNOWN)


def _bound_location(location: str, port: int) -> str:
    scheme, sep, rest = location.partition("://")
    if not sep or scheme == "grpc+unix" or port <= 0:
        return location
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return f"{scheme}://{host}:{port}"
