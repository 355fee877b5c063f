"""The Flight wire mapping: the only module that knows vgi-flight's byte layouts.

See ``docs/wire-protocol.md`` for the normative description. In short:

* a *call request* is an Arrow IPC stream whose schema metadata names the method
  (``vgi.method``) and whose single row holds the parameters;
* a *state token* (see :mod:`vgi_flight._tokens`) starts with ``VGT1``; commands and tickets
  are told apart by their first bytes;
* every stream message's ``app_metadata`` is a UTF-8 JSON object whose ``kind`` says what the
  message is (``ready``, ``data``, ``log``); the client's ``cancel`` is a metadata-only message;
* errors travel as a Flight status whose message is a JSON object (``code``, ``error_type``,
  ``error_message``, ``traceback``).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.flight as flight

from vgi_flight._errors import ErrorCode, RpcError
from vgi_flight._log import Level, Message
from vgi_flight._tokens import MAGIC as TOKEN_MAGIC

PROTOCOL_VERSION = "1"
METHOD_KEY = b"vgi.method"
VERSION_KEY = b"vgi.version"
WHOLE_BATCHES_KEY = b"vgi.whole_batches"
DESCRIBE_ACTION = "__describe__"
CANCEL_ACTION = "__cancel__"
HEALTH_ACTION = "__health__"
LOCAL_DATA_ACTION = "__local_data__"
RESERVED_ACTIONS = (DESCRIBE_ACTION, CANCEL_ACTION, HEALTH_ACTION, LOCAL_DATA_ACTION)
ERROR_MARKER = '{"vgi_error"'
# error_type of the UNAVAILABLE a draining server answers before running anything: safe to retry elsewhere.
DRAINING_ERROR = "ServerDraining"
# error_type of the INVALID_ARGUMENT for a stream opened with the RPC of the other kind (DoGet vs DoExchange).
WRONG_STREAM_KIND_ERROR = "WrongStreamKind"
# error_type of the UNIMPLEMENTED a server without a local data channel answers to __local_data__.
LOCAL_DATA_UNAVAILABLE_ERROR = "LocalDataUnavailable"

KIND_READY = "ready"
KIND_DATA = "data"
KIND_LOG = "log"
KIND_CANCEL = "cancel"
KIND_DATA_PART = "data_part"
KIND_ERROR = "error"
# gRPC's default receive limit is 4 MiB per message (Go, Rust, Java clients keep it); leave room for
# the IPC header, app_metadata and protobuf framing.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024 - 64 * 1024
CANCEL_METADATA = b'{"kind":"cancel"}'


class WireError(ValueError):
    """Bytes from a peer do not follow the vgi-flight wire protocol."""


# --- Arrow IPC helpers --------------------------------------------------------------------------


def ipc_bytes(batch: pa.RecordBatch) -> bytes:
    """Serialize one batch as a complete Arrow IPC stream (schema + batch + end marker)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data: bytes = sink.getvalue().to_pybytes()
    return data


IPC_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def _has_dictionary(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return True
    if isinstance(t, pa.BaseExtensionType):
        return _has_dictionary(t.storage_type)
    return any(_has_dictionary(t.field(i).type) for i in range(getattr(t, "num_fields", 0)))


class BatchFraming:
    """Single-batch IPC streams of one known schema, with a fast path for the layout vgi-flight writes.

    The fast path (schema message + one record batch message + end marker, exactly as
    ``pa.ipc.new_stream`` writes them for dictionary-free schemas) skips the stream reader; any
    other valid IPC stream, e.g. from another language's writer, takes the general path.
    """

    __slots__ = ("_plain", "prefix", "schema")

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.prefix = schema_bytes(schema)
        self._plain = not any(_has_dictionary(f.type) for f in schema)

    def encode(self, batch: pa.RecordBatch) -> bytes:
        """Serialize ``batch`` (which must have this schema) as a complete IPC stream."""
        if not self._plain:
            return ipc_bytes(batch)
        return b"".join((self.prefix, batch.serialize().to_pybytes(), IPC_EOS))

    def decode(self, data: bytes | pa.Buffer, what: str) -> pa.RecordBatch:
        """Read a single-batch IPC stream.

        Raises:
            WireError: Malformed IPC or not exactly one batch.
        """
        if self._plain:
            buf = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
            start, end = len(self.prefix), buf.size - len(IPC_EOS)
            if end > start and buf.slice(0, start) == self.prefix and buf.slice(end) == IPC_EOS:
                try:
                    message = pa.ipc.read_message(buf.slice(start, end - start))
                    if message.type == "record batch" and 8 + message.metadata.size + message.body.size == end - start:
                        batch = pa.ipc.read_record_batch(message, self.schema)
                        batch.validate(full=True)  # untrusted bytes: buffer sizes, offsets, UTF-8
                        return batch
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError):
                    pass  # the general reader below reports the problem
        return read_single_batch(data, what)


def read_single_batch(data: bytes | pa.Buffer, what: str) -> pa.RecordBatch:
    """Read an IPC stream that must hold exactly one batch.

    Raises:
        WireError: Malformed IPC or not exactly one batch.
    """
    try:
        reader = pa.ipc.open_stream(data)
        batches = list(reader)
        for batch in batches:
            batch.validate(full=True)  # untrusted bytes: buffer sizes, offsets, UTF-8
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as exc:
        raise WireError(f"{what} is not a valid Arrow IPC stream: {_short(exc)}") from None
    if len(batches) != 1:
        raise WireError(f"{what} must hold exactly one record batch, found {len(batches)}")
    batch = batches[0]
    if reader.schema.metadata:
        batch = batch.replace_schema_metadata(reader.schema.metadata)
    return batch


# Every stream open and resume serializes or parses its schemas; a service has few distinct ones.
_SCHEMA_CACHE_SIZE = 256
# Keyed by object identity (schemas are immutable; the cache holds each one, so its id stays its
# own): pa.Schema equality ignores metadata, so equal-looking schemas may serialize differently.
_schema_bytes_cache: dict[int, tuple[pa.Schema, bytes]] = {}
_read_schema_cache: dict[bytes, pa.Schema] = {}


def schema_bytes(schema: pa.Schema) -> bytes:
    """Serialize a schema as an IPC schema message (the encoding Flight uses in FlightInfo)."""
    cached = _schema_bytes_cache.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    data: bytes = schema.serialize().to_pybytes()
    if len(_schema_bytes_cache) >= _SCHEMA_CACHE_SIZE:
        _schema_bytes_cache.clear()
    _schema_bytes_cache[id(schema)] = (schema, data)
    return data


def read_schema(data: bytes, what: str) -> pa.Schema:
    """Parse an IPC schema message.

    Raises:
        WireError: The bytes are not a schema.
    """
    schema = _read_schema_cache.get(data)
    if schema is not None:
        return schema
    try:
        schema = pa.ipc.read_schema(pa.py_buffer(data))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as exc:
        raise WireError(f"{what} is not a valid Arrow IPC schema: {_short(exc)}") from None
    if len(_read_schema_cache) >= _SCHEMA_CACHE_SIZE:
        _read_schema_cache.clear()
    _read_schema_cache[data] = schema
    return schema


def _short(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0][:300]


def b64(data: bytes) -> str:
    """Standard base64 with padding, as every language's stock decoder reads it."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, what: str) -> bytes:
    """Decode standard base64.

    Raises:
        WireError: Not a base64 string.
    """
    if not isinstance(text, str | bytes):
        raise WireError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise WireError(f"{what} is not valid base64") from None


# --- Call requests ------------------------------------------------------------------------------


def encode_call(method: str, params: pa.RecordBatch, *, whole_batches: bool = False) -> bytes:
    """Encode a call request (a stream command or single-call ticket).

    Args:
        method: The stream method.
        params: Its one-row parameter batch.
        whole_batches: Ask for every data batch in one message, however large (the client's gRPC
            receive limit is lifted), instead of ``data_part`` slices.
    """
    meta = {METHOD_KEY: method.encode(), VERSION_KEY: PROTOCOL_VERSION.encode()}
    if whole_batches:
        meta[WHOLE_BATCHES_KEY] = b"1"
    return ipc_bytes(params.replace_schema_metadata(meta))


class CallRequest(NamedTuple):
    """A decoded call request."""

    method: str
    params: pa.RecordBatch  # without schema metadata
    whole_batches: bool  # the client reads data batches of any size as one message


def is_token(data: bytes) -> bool:
    """Whether command/ticket bytes are a state token rather than a call request."""
    return data[:4] == TOKEN_MAGIC


def decode_call(data: bytes) -> tuple[str, pa.RecordBatch]:
    """Decode a call request into (method, params batch without schema metadata).

    Raises:
        WireError: Malformed request or no method named.
    """
    request = decode_request(data)
    return request.method, request.params


def decode_request(data: bytes) -> CallRequest:
    """Decode a call request with its options.

    Raises:
        WireError: Malformed request or no method named.
    """
    batch = read_single_batch(data, "call request")
    meta = batch.schema.metadata or {}
    method = meta.get(METHOD_KEY)
    if not method:
        raise WireError("call request schema metadata lacks 'vgi.method'")
    try:
        name = method.decode()
    except UnicodeDecodeError:
        raise WireError("'vgi.method' is not UTF-8") from None
    return CallRequest(name, batch.replace_schema_metadata(None), meta.get(WHOLE_BATCHES_KEY) == b"1")


# --- Messages and app_metadata ------------------------------------------------------------------


def json_bytes(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def log_json(msg: Message) -> bytes:
    """The JSON object that carries a log message (stream app_metadata and unary log results)."""
    obj: dict[str, Any] = {"kind": KIND_LOG, "level": msg.level.value, "message": msg.message}
    if msg.extra:
        obj["extra"] = msg.extra
    return json_bytes(obj)


# The head of what data_metadata writes for a batch without custom metadata: what nearly every
# data message carries, so readers take it with plain_data instead of the JSON parser.
_PLAIN_DATA_HEAD = re.compile(rb'\{"kind":"data","seq":([0-9]{1,19}),"token":"')


def plain_data(raw: bytes | pa.Buffer) -> tuple[int, bytes] | None:
    """``(seq, base64 token)`` of a data message without custom metadata, else ``None`` (parse it as JSON).

    The usual message is ``{"kind":"data","seq":N,"token":"..."}``: the head is matched, and the
    token runs to the closing quote, which must be the last quote of the message, followed by
    ``}`` alone, with no escapes and only ASCII in between. Whether the token is valid base64 is
    checked where it is decoded (:func:`unb64`).
    """
    if not isinstance(raw, bytes):
        raw = raw.to_pybytes()
    head = _PLAIN_DATA_HEAD.match(raw)
    if head is None:
        return None
    start, end = head.end(), len(raw) - 2
    if raw[end:] != b'"}' or raw.find(b'"', start) != end or raw.find(b"\\", start) != -1 or not raw.isascii():
        return None
    return int(head[1]), raw[start:end]


def data_metadata(token_b64: bytes, seq: int, custom: pa.KeyValueMetadata | None) -> bytes:
    """app_metadata of a data message; ``token_b64`` is the token in standard base64 (ASCII bytes)."""
    if not custom:  # the per-batch hot path: base64 needs no JSON escaping
        return b'{"kind":"data","seq":%d,"token":"%s"}' % (seq, token_b64)
    metadata = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in custom.items()}
    return json_bytes({"kind": KIND_DATA, "seq": seq, "token": token_b64.decode("ascii"), "metadata": metadata})


def part_metadata(seq: int) -> bytes:
    """app_metadata of a leading slice of a data batch that was split across messages."""
    return b'{"kind":"data_part","seq":%d}' % seq


def ready_metadata(
    token: bytes, seq: int, header: bytes | None, *, exchange: bool | None = None, input_schema: bytes | None = None
) -> bytes:
    """app_metadata of the ``ready`` message that opens every DoGet/DoExchange response.

    On the single-call path it also says what the stream is (``stream``: producer or exchange) and,
    for an exchange, its input schema: what ``GetFlightInfo`` would have reported.
    """
    obj: dict[str, Any] = {"kind": KIND_READY, "seq": seq, "token": b64(token)}
    if header is not None:
        obj["header"] = b64(header)
    if exchange is not None:
        obj["stream"] = "exchange" if exchange else "producer"
    if input_schema is not None:
        obj["input_schema"] = b64(input_schema)
    return json_bytes(obj)


def custom_metadata(meta: dict[str, Any]) -> pa.KeyValueMetadata | None:
    """The custom metadata a parsed data message carries (its ``metadata`` object), if any."""
    custom = meta.get("metadata")
    return pa.KeyValueMetadata(custom) if isinstance(custom, dict) and custom else None


def parse_metadata(raw: bytes | pa.Buffer | None) -> dict[str, Any]:
    """Parse a message's app_metadata JSON (empty dict when absent).

    Raises:
        WireError: Not a JSON object.
    """
    if raw is None:
        return {}
    data = raw.to_pybytes() if isinstance(raw, pa.Buffer) else raw
    if not data:
        return {}
    plain = plain_data(data)
    if plain is not None:
        return {"kind": KIND_DATA, "seq": plain[0], "token": plain[1].decode("ascii")}
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise WireError("app_metadata is not a JSON object") from None
    if not isinstance(obj, dict):
        raise WireError("app_metadata is not a JSON object")
    return obj


def message_from_json(obj: Mapping[str, Any]) -> Message:
    """Rebuild a :class:`Message` from its JSON object."""
    try:
        level = Level(obj.get("level", "INFO"))
    except ValueError:
        level = Level.INFO
    extra = obj.get("extra") or {}
    return Message(level, str(obj.get("message", "")), **(extra if isinstance(extra, dict) else {"extra": extra}))


def stream_info_metadata(
    *, exchange: bool, input_schema: bytes, header: bytes | None, logs: list[Message], seq: int
) -> bytes:
    """app_metadata of the FlightInfo that answers a stream call."""
    obj: dict[str, Any] = {
        "kind": "exchange" if exchange else "producer",
        "input_schema": b64(input_schema),
        "seq": seq,
    }
    if header is not None:
        obj["header"] = b64(header)
    if logs:
        obj["logs"] = [json.loads(log_json(m)) for m in logs]
    return json_bytes(obj)


# --- Errors -------------------------------------------------------------------------------------

# pyarrow sends a clean status only for FlightError subclasses (anything else carries a Python
# traceback), so codes without a FlightError counterpart travel as UNKNOWN with the exact code in
# the JSON message.
_FLIGHT_ERROR_FOR: dict[ErrorCode, type[flight.FlightError]] = {
    ErrorCode.UNAUTHENTICATED: flight.FlightUnauthenticatedError,
    ErrorCode.PERMISSION_DENIED: flight.FlightUnauthorizedError,
    ErrorCode.UNAVAILABLE: flight.FlightUnavailableError,
    ErrorCode.CANCELLED: flight.FlightCancelledError,
    ErrorCode.DEADLINE_EXCEEDED: flight.FlightTimedOutError,
    ErrorCode.INTERNAL: flight.FlightInternalError,
}
_CODE_FOR_FLIGHT_ERROR: list[tuple[type[flight.FlightError], ErrorCode]] = [
    (cls, code) for code, cls in _FLIGHT_ERROR_FOR.items()
]


def error_status(code: ErrorCode, error_type: str, message: str, traceback: str = "") -> flight.FlightError:
    """Build the FlightError that carries a vgi-flight error to the client."""
    body: dict[str, Any] = {"vgi_error": 1, "code": code.value, "error_type": error_type, "error_message": message}
    if traceback:
        body["traceback"] = traceback
    cls = _FLIGHT_ERROR_FOR.get(code, flight.FlightServerError)
    return cls(json.dumps(body, ensure_ascii=False))


def _error_body(text: str) -> dict[str, Any] | None:
    """The first vgi-flight error object in a status message (clients and proxies may add text around it)."""
    start = text.find(ERROR_MARKER)
    if start < 0:
        return None
    try:
        body, _ = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def error_metadata(error: flight.FlightError) -> bytes:
    """The ``error`` message of a local data stream: ``error``'s JSON body with ``kind`` first."""
    text = str(error)
    body = _error_body(text)
    if body is None:
        body = {"vgi_error": 1, "code": "UNKNOWN", "error_type": type(error).__name__, "error_message": text}
    return json.dumps({"kind": KIND_ERROR, **body}, ensure_ascii=False, separators=(",", ":")).encode()


def error_from_metadata(metadata: bytes) -> flight.FlightError:
    """The FlightError a DoGet would have raised for a local data stream's ``error`` message."""
    try:
        body = json.loads(metadata)
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        return error_status(ErrorCode.INTERNAL, "ProtocolError", "malformed error message on the local data channel")
    body.pop("kind", None)
    code = ErrorCode.parse(body.get("code"))
    return _FLIGHT_ERROR_FOR.get(code, flight.FlightServerError)(json.dumps(body, ensure_ascii=False))


def rpc_error_from_flight(exc: BaseException) -> RpcError:
    """Turn any exception raised by a pyarrow Flight client call into :class:`RpcError`."""
    text = str(exc)
    body = _error_body(text)
    if body is not None:
        return RpcError(
            str(body.get("error_type", "RpcError")),
            str(body.get("error_message", "")),
            str(body.get("traceback", "")),
            code=ErrorCode.parse(body.get("code")),
        )
    code = ErrorCode.UNKNOWN
    for cls, mapped in _CODE_FOR_FLIGHT_ERROR:
        if isinstance(exc, cls):
            code = mapped
            break
    # Not produced by a vgi-flight server: keep the transport's words (first line only).
    return RpcError(type(exc).__name__, text.split("\n", 1)[0], "", code=code)
