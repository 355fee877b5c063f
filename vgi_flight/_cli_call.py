"""``vgi-flight describe``, ``call`` and ``health``: a generic client that needs no Protocol class.

Everything here is built from what the server says about itself (the ``__describe__`` action) and
speaks the wire protocol (docs/wire-protocol.md) directly with ``pyarrow.flight``: the typed proxy
of :func:`vgi_flight.connect` needs the Protocol's Python types, which a command line does not
have.

Output conventions: results go to stdout (JSON, JSON lines or a table); service logs, stream
headers, progress and errors go to stderr. A failure prints ``ERROR <code> <type>: <message>`` to
stderr and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import decimal
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.flight as flight

from vgi_flight import _wire as wire
from vgi_flight._arrow_types import arrow_array
from vgi_flight._auth import BearerAuth, ClientCredential, HmacAuth, request_payload
from vgi_flight._client import introspect
from vgi_flight._errors import ErrorCode, RpcError
from vgi_flight._service import MethodDescription, MethodKind, ServiceDescription

OUTPUT_FORMATS = ("jsonl", "table")
_TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "off", "0"})
_MAX_CELL = 60


def _argument_error(message: str) -> RpcError:
    """An error in what the user asked for, reported like a server's ``INVALID_ARGUMENT``."""
    return RpcError("ArgumentError", message, code=ErrorCode.INVALID_ARGUMENT)


# --- connection options -------------------------------------------------------------------------


def add_connection_arguments(parser: argparse.ArgumentParser, *, default_timeout: float | None) -> None:
    """Add the TLS, authentication and deadline options shared by ``describe``, ``call`` and ``health``.

    Args:
        parser: The subcommand's parser.
        default_timeout: Default of ``--timeout`` in seconds (``None``: no deadline).
    """
    group = parser.add_argument_group("connection")
    group.add_argument("--tls-root-certs", metavar="PEM", help="CA bundle to verify the server (grpc+tls)")
    group.add_argument("--tls-cert", metavar="PEM", help="client certificate, when the server requires mTLS")
    group.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    group.add_argument("--override-hostname", metavar="NAME", help="name to verify the server certificate against")
    group.add_argument("--hmac-key-id", metavar="ID", help="sign every call with this HMAC key id")
    group.add_argument("--hmac-secret-file", metavar="FILE", help="file holding the HMAC secret in hex")
    group.add_argument("--bearer-token-file", metavar="FILE", help="file holding a bearer token to send")
    help_timeout = "per-call deadline in seconds" + (f" (default {default_timeout:g})" if default_timeout else "")
    group.add_argument("--timeout", type=float, default=default_timeout, metavar="SECONDS", help=help_timeout)


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _argument_error(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _credential(args: argparse.Namespace) -> ClientCredential | None:
    if bool(args.hmac_key_id) != bool(args.hmac_secret_file):
        raise _argument_error("--hmac-key-id and --hmac-secret-file go together")
    if args.hmac_key_id and args.bearer_token_file:
        raise _argument_error("use either HMAC signing or a bearer token, not both")
    if args.hmac_key_id:
        text = _read_file(args.hmac_secret_file, "HMAC secret file").decode(errors="replace").strip()
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            raise _argument_error(f"HMAC secret file {args.hmac_secret_file} does not hold hex") from None
        if not secret:
            raise _argument_error(f"HMAC secret file {args.hmac_secret_file} is empty")
        return HmacAuth(args.hmac_key_id, secret)
    if args.bearer_token_file:
        token = _read_file(args.bearer_token_file, "bearer token file").decode(errors="replace").strip()
        if not token:
            raise _argument_error(f"bearer token file {args.bearer_token_file} is empty")
        return BearerAuth(token)
    return None


@dataclass(frozen=True)
class Connection:
    """Where and how to reach a server: TLS material, credential and deadline.

    Attributes:
        location: The server's Flight location.
        tls_root_certs: PEM CA bundle to verify the server.
        cert_chain: PEM client certificate (mTLS).
        private_key: PEM key of ``cert_chain``.
        override_hostname: Name to verify the server certificate against.
        credential: Produces each call's ``authorization`` header, or ``None``.
        timeout: Per-call deadline in seconds, or ``None``.
    """

    location: str
    tls_root_certs: bytes | None = None
    cert_chain: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)
    override_hostname: str | None = None
    credential: ClientCredential | None = None
    timeout: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Connection:
        """Build a connection from the options :func:`add_connection_arguments` adds.

        Raises:
            RpcError: Inconsistent options or unreadable files (``INVALID_ARGUMENT``).
        """
        if bool(args.tls_cert) != bool(args.tls_key):
            raise _argument_error("--tls-cert and --tls-key go together")
        return cls(
            location=args.location,
            tls_root_certs=_read_file(args.tls_root_certs, "CA bundle") if args.tls_root_certs else None,
            cert_chain=_read_file(args.tls_cert, "client certificate") if args.tls_cert else None,
            private_key=_read_file(args.tls_key, "client key") if args.tls_key else None,
            override_hostname=args.override_hostname,
            credential=_credential(args),
            timeout=args.timeout,
        )

    def client(self) -> flight.FlightClient:
        """Open a Flight client for this location."""
        kwargs: dict[str, Any] = {}
        if self.tls_root_certs is not None:
            kwargs["tls_root_certs"] = self.tls_root_certs
        if self.cert_chain is not None:
            kwargs["cert_chain"] = self.cert_chain
            kwargs["private_key"] = self.private_key
        if self.override_hostname is not None:
            kwargs["override_hostname"] = self.override_hostname
        return flight.FlightClient(self.location, **kwargs)

    def options(self, rpc: str, payload: bytes) -> flight.FlightCallOptions:
        """Options of one call: the deadline and a fresh credential header for ``payload``."""
        headers = self.credential.headers(rpc, payload) if self.credential is not None else []
        return flight.FlightCallOptions(timeout=self.timeout, headers=headers)

    def describe(self) -> ServiceDescription:
        """Fetch the service description (``__describe__``).

        Raises:
            RpcError: The server refused or could not be reached.
        """
        return introspect(
            self.location,
            timeout=self.timeout,
            tls_root_certs=self.tls_root_certs,
            cert_chain=self.cert_chain,
            private_key=self.private_key,
            override_hostname=self.override_hostname,
            auth=self.credential,
        )


def run_reporting_errors(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; report any failure as ``ERROR <code> <type>: <message>`` on stderr and return 1."""
    try:
        return command(args)
    except RpcError as exc:
        error = exc
    except (flight.FlightError, pa.ArrowException) as exc:
        error = wire.rpc_error_from_flight(exc)
    except wire.WireError as exc:
        error = RpcError("ProtocolError", str(exc), code=ErrorCode.FAILED_PRECONDITION)
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"ERROR {error.code.value} {error.error_type}: {error.error_message}", file=sys.stderr)
    if error.remote_traceback:
        print(error.remote_traceback.rstrip(), file=sys.stderr)
    return 1


# --- JSON rendering -----------------------------------------------------------------------------


def jsonable(value: object) -> Any:
    """Turn a value read from Arrow (``as_py``) into something ``json.dumps`` accepts.

    Bytes become base64, dates and times ISO 8601, durations seconds, decimals and UUIDs strings,
    non-finite floats the strings ``"NaN"``/``"Infinity"``/``"-Infinity"``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


def _dumps(value: object) -> str:
    return json.dumps(jsonable(value), ensure_ascii=False)


def _rows(batch: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = batch.to_pylist(maps_as_pydicts="lossy")
    return rows


def _print_log(entry: Mapping[str, Any]) -> None:
    """Print a service log record (a wire log object) on stderr."""
    line = f"log {entry.get('level', 'INFO')}: {entry.get('message', '')}"
    extra = entry.get("extra")
    if extra:
        line += " " + _dumps(extra)
    print(line, file=sys.stderr, flush=True)


# --- describe -----------------------------------------------------------------------------------


def add_describe_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vgi-flight describe``."""
    parser.add_argument("location", help="the server, e.g. grpc://127.0.0.1:8815")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")
    add_connection_arguments(parser, default_timeout=None)


def _fields_json(schema: pa.Schema | None) -> list[dict[str, Any]] | None:
    if schema is None:
        return None
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def _first_line(doc: str) -> str:
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def describe_json(service: ServiceDescription) -> dict[str, Any]:
    """The machine-readable form of a service description (what ``describe --json`` prints)."""
    methods = []
    for method in service.methods.values():
        params = []
        for f in method.params_schema:
            param: dict[str, Any] = {
                "name": f.name,
                "type": str(f.type),
                "nullable": f.nullable,
                "required": f.name not in method.defaults,
            }
            if f.name in method.defaults:
                param["default"] = jsonable(method.defaults[f.name])
            params.append(param)
        methods.append(
            {
                "name": method.name,
                "kind": method.kind.value,
                "summary": _first_line(method.doc),
                "doc": method.doc,
                "params": params,
                "result_schema": _fields_json(method.result_schema),
                "header_schema": _fields_json(method.header_schema),
            }
        )
    return {"service": service.name, "doc": service.doc, "methods": methods}


def _type_text(f: pa.Field) -> str:
    return f"{f.type}" + (" | null" if f.nullable else "")


def describe_text(service: ServiceDescription) -> str:
    """The human-readable form of a service description (what ``describe`` prints)."""
    lines = [service.name + (f": {_first_line(service.doc)}" if service.doc else "")]
    for method in service.methods.values():
        lines.append("")
        summary = _first_line(method.doc)
        lines.append(f"{method.name} ({method.kind.value})" + (f"  {summary}" if summary else ""))
        if not len(method.params_schema):
            lines.append("    (no parameters)")
        for f in method.params_schema:
            default = f" = {_dumps(method.defaults[f.name])}" if f.name in method.defaults else ""
            lines.append(f"    {f.name}: {_type_text(f)}{default}")
        if method.kind is MethodKind.UNARY:
            result = method.result_schema
            lines.append(
                f"    -> {_type_text(result.field('result'))}" if "result" in result.names else "    -> nothing"
            )
        else:
            lines.append("    -> stream (output schema is known once the stream starts)")
        if method.header_schema is not None:
            fields = ", ".join(f"{f.name}: {_type_text(f)}" for f in method.header_schema)
            lines.append(f"    header {{{fields}}}")
    return "\n".join(lines)


def describe(args: argparse.Namespace) -> int:
    """Print what a server serves."""
    service = Connection.from_args(args).describe()
    print(json.dumps(describe_json(service), indent=2, ensure_ascii=False) if args.json else describe_text(service))
    return 0


# --- parsing arguments --------------------------------------------------------------------------


def _storage(t: pa.DataType) -> pa.DataType:
    if isinstance(t, pa.BaseExtensionType):
        return _storage(t.storage_type)
    if pa.types.is_dictionary(t):
        return _storage(t.value_type)
    return t


def _is_stringish(t: pa.DataType) -> bool:
    t = _storage(t)
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", bool)(t))


def _is_listish(t: pa.DataType) -> bool:
    t = _storage(t)
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def parse_text(text: str, arrow_type: pa.DataType, what: str) -> object:
    """Parse a ``key=value`` value as the parameter's Arrow type expects it.

    Strings are taken as they are; ``null`` is a null for any other type; integers, floats and
    booleans (``true``/``false``/``yes``/``no``/``1``/``0``) are parsed; lists, structs and maps
    are JSON; binary is the text's UTF-8 bytes; anything else (timestamps, dates, decimals, ...)
    is left as text and cast by Arrow.

    Raises:
        RpcError: The text does not parse as the type (``INVALID_ARGUMENT``).
    """
    if _is_stringish(arrow_type):
        return text
    if text == "null":
        return None
    t = _storage(arrow_type)
    try:
        if pa.types.is_integer(t):
            return int(text)
        if pa.types.is_floating(t):
            return float(text)
        if pa.types.is_boolean(t):
            lowered = text.strip().lower()
            if lowered in _TRUE or lowered in _FALSE:
                return lowered in _TRUE
            raise ValueError("expected true or false")
        if pa.types.is_nested(t):
            return json.loads(text)
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            return text.encode()
    except ValueError as exc:
        raise _argument_error(f"{what} expects {arrow_type}, got {text!r}: {exc}") from None
    return text


def to_array(values: Sequence[object], arrow_type: pa.DataType, what: str) -> pa.Array:
    """Build an array of ``arrow_type`` from JSON-like values.

    Strings given for a non-string type (timestamps, dates, decimals, numbers) are cast by Arrow.

    Raises:
        RpcError: The values do not fit the type (``INVALID_ARGUMENT``).
    """
    try:
        return arrow_array(list(values), arrow_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError):
        if not _is_stringish(arrow_type) and all(v is None or isinstance(v, str) for v in values):
            try:
                return pa.array(list(values), pa.string()).cast(arrow_type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise _argument_error(f"{what} expects {arrow_type}: {str(exc).splitlines()[0]}") from None
        shown = _dumps(values[0]) if len(values) == 1 else _dumps(list(values))
        raise _argument_error(f"{what} expects {arrow_type}, got {shown[:200]}") from None


def _split_pair(pair: str) -> tuple[str, str, bool]:
    """``key=value`` → (key, value, False); ``key:=json`` → (key, json, True)."""
    key, sep, value = pair.partition("=")
    if not sep or not key:
        raise _argument_error(f"expected KEY=VALUE or KEY:=JSON, got {pair!r}")
    if key.endswith(":"):
        return key[:-1], value, True
    return key, value, False


def build_params(method: MethodDescription, pairs: Sequence[str], json_text: str | None) -> pa.RecordBatch:
    """Build the one-row parameter batch of a call from ``key=value`` pairs and/or a JSON object.

    Pairs override keys of the JSON object. Parameters not given take the server's defaults.

    Raises:
        RpcError: Unknown, missing, null or unparsable parameters (``INVALID_ARGUMENT``).
    """
    schema = method.params_schema
    values: dict[str, object] = {}
    if json_text is not None:
        try:
            obj = json.loads(json_text)
        except ValueError as exc:
            raise _argument_error(f"--json is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise _argument_error("--json must be a JSON object of parameter name to value")
        values.update(obj)
    for pair in pairs:
        key, text, raw_json = _split_pair(pair)
        if key not in schema.names:
            values[key] = text  # reported as unknown below
            continue
        if raw_json:
            try:
                values[key] = json.loads(text)
            except ValueError as exc:
                raise _argument_error(f"{key}:= is not valid JSON: {exc}") from None
        else:
            values[key] = parse_text(text, schema.field(key).type, f"parameter '{key}'")
    unknown = [k for k in values if k not in schema.names]
    if unknown:
        known = ", ".join(schema.names) or "none"
        raise _argument_error(f"{method.name}() has no parameter(s) {', '.join(unknown)} (parameters: {known})")
    missing = [f"{f.name} ({f.type})" for f in schema if f.name not in values and f.name not in method.defaults]
    if missing:
        raise _argument_error(f"{method.name}() needs {', '.join(missing)}")
    arrays = []
    for f in schema:
        value = values[f.name] if f.name in values else method.defaults[f.name]
        if value is None and not f.nullable:
            raise _argument_error(f"parameter '{f.name}' of {method.name}() may not be null")
        arrays.append(to_array([value], f.type, f"parameter '{f.name}'"))
    if not arrays:
        return pa.RecordBatch.from_pydict({})
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _is_column(value: object, arrow_type: pa.DataType) -> bool:
    """Whether a JSON value given for an input column is a list of row values (else one value)."""
    if not isinstance(value, list):
        return False
    if not _is_listish(arrow_type):
        return True
    return bool(value) and all(v is None or isinstance(v, list) for v in value)


def batch_from_json(line: str, schema: pa.Schema, what: str) -> pa.RecordBatch:
    """Build one exchange input batch from a JSON object of column → value or list of values.

    Single values are repeated to the length of the list columns (one row when there are none);
    a missing column is all nulls. For a list-typed column a list is one value unless it is a
    list of lists.

    Raises:
        RpcError: Not a JSON object, unknown columns, lists of different lengths, or values that do
            not fit the schema (``INVALID_ARGUMENT``).
    """
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise _argument_error(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _argument_error(f"{what} must be a JSON object of column name to value(s)")
    unknown = [k for k in obj if k not in schema.names]
    if unknown:
        raise _argument_error(f"{what} has unknown column(s) {', '.join(unknown)} (columns: {', '.join(schema.names)})")
    lengths = {len(obj[f.name]) for f in schema if f.name in obj and _is_column(obj[f.name], f.type)}
    if len(lengths) > 1:
        raise _argument_error(f"{what} has columns of different lengths {sorted(lengths)}")
    rows = lengths.pop() if lengths else 1
    if not len(schema):
        return pa.RecordBatch.from_struct_array(pa.array([{}] * rows, pa.struct([])))
    arrays = []
    for f in schema:
        value = obj.get(f.name)
        column: list[object] = value if isinstance(value, list) and _is_column(value, f.type) else [value] * rows
        if not f.nullable and any(v is None for v in column):
            raise _argument_error(f"{what}: column '{f.name}' may not be null")
        arrays.append(to_array(column, f.type, f"{what}: column '{f.name}'"))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# --- output -------------------------------------------------------------------------------------


class Sink:
    """Where a call's output batches go."""

    def write(self, batch: pa.RecordBatch) -> None:
        """Take one output batch."""
        raise NotImplementedError

    def end_answer(self) -> None:
        """One exchange answer is complete."""

    def close(self) -> None:
        """No more output."""


class JsonLinesSink(Sink):
    """One JSON object per row."""

    def __init__(self, stream: TextIO) -> None:
        """Write to ``stream``."""
        self._stream = stream

    def write(self, batch: pa.RecordBatch) -> None:
        """Print the batch's rows."""
        for row in _rows(batch):
            self._stream.write(_dumps(row) + "\n")
        self._stream.flush()


def _cell(value: object) -> str:
    text = "null" if value is None else value if isinstance(value, str) else _dumps(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def format_table(schema: pa.Schema, rows: Sequence[Mapping[str, Any]]) -> str:
    """Render rows as an aligned text table (numbers right-aligned, long cells cut)."""
    names = schema.names
    cells = [[_cell(row.get(name)) for name in names] for row in rows]
    widths = [max([len(name), *(len(r[i]) for r in cells)]) for i, name in enumerate(names)]
    numeric = [
        pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type) for f in schema
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(out)


class TableSink(Sink):
    """Collect rows and print them as one table (per exchange answer, or at the end)."""

    def __init__(self, stream: TextIO, schema: pa.Schema) -> None:
        """Print tables of ``schema`` to ``stream``."""
        self._stream = stream
        self._schema = schema
        self._rows: list[dict[str, Any]] = []
        self._pending = False

    def write(self, batch: pa.RecordBatch) -> None:
        """Keep the batch's rows."""
        self._rows.extend(_rows(batch))
        self._pending = True

    def end_answer(self) -> None:
        """Print what was collected."""
        if self._pending:
            self._stream.write(format_table(self._schema, self._rows) + "\n")
            self._stream.flush()
        self._rows, self._pending = [], False

    def close(self) -> None:
        """Print what is left."""
        self.end_answer()


class FileSink(Sink):
    """Write batches to an Arrow IPC file (``.arrow``, ``.feather``, ``.ipc``) or Parquet (``.parquet``)."""

    ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
    PARQUET_SUFFIXES = (".parquet", ".pq")

    def __init__(self, path: str, schema: pa.Schema) -> None:
        """Open ``path`` for batches of ``schema``.

        Raises:
            RpcError: Unknown file suffix or the file cannot be created (``INVALID_ARGUMENT``).
        """
        self.path = path
        self.rows = 0
        suffix = Path(path).suffix.lower()
        self._writer: Any
        try:
            if suffix in self.PARQUET_SUFFIXES:
                import pyarrow.parquet as pq

                self._writer = pq.ParquetWriter(path, schema)
            elif suffix in self.ARROW_SUFFIXES:
                self._writer = pa.ipc.new_file(path, schema)
            else:
                raise _argument_error(f"--out {path}: use a .arrow (Arrow IPC file) or .parquet name")
        except (OSError, pa.ArrowException) as exc:
            raise _argument_error(f"cannot write {path}: {str(exc).splitlines()[0]}") from None

    def write(self, batch: pa.RecordBatch) -> None:
        """Append the batch."""
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        """Finish the file."""
        self._writer.close()
        print(f"wrote {self.rows} row{'' if self.rows == 1 else 's'} to {self.path}", file=sys.stderr)


def _sink(args: argparse.Namespace, schema: pa.Schema) -> Sink:
    if args.out:
        return FileSink(args.out, schema)
    if args.format == "table":
        return TableSink(sys.stdout, schema)
    return JsonLinesSink(sys.stdout)


class Progress:
    """A one-line ``N batches, M rows`` counter on stderr, redrawn at most ten times a second."""

    def __init__(self, enabled: bool) -> None:
        """Count silently unless ``enabled``."""
        self.enabled = enabled
        self.rows = 0
        self.batches = 0
        self._shown = 0.0

    def update(self, rows: int) -> None:
        """Count one batch of ``rows`` rows."""
        self.rows += rows
        self.batches += 1
        now = time.monotonic()
        if self.enabled and now - self._shown >= 0.1:
            self._shown = now
            sys.stderr.write(f"\r{self.batches} batches, {self.rows} rows")
            sys.stderr.flush()

    def clear(self) -> None:
        """Erase the counter line."""
        if self.enabled and self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


# --- call ---------------------------------------------------------------------------------------


def add_call_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vgi-flight call``."""
    parser.add_argument("location", help="the server, e.g. grpc://127.0.0.1:8815")
    parser.add_argument("method", help="the method to call (see `vgi-flight describe`)")
    parser.add_argument(
        "params",
        nargs="*",
        metavar="KEY=VALUE",
        help="a parameter, parsed by its Arrow type (lists and structs as JSON); KEY:=JSON takes raw JSON",
    )
    parser.add_argument("--json", dest="json_params", metavar="OBJECT", help='parameters as a JSON object {"k": ...}')
    parser.add_argument("--out", metavar="FILE", help="write stream output to FILE.arrow (Arrow IPC) or FILE.parquet")
    parser.add_argument(
        "--format", choices=OUTPUT_FORMATS, default="jsonl", help="stream output on stdout (default jsonl)"
    )
    add_connection_arguments(parser, default_timeout=None)


def _assemble(parts: list[pa.RecordBatch], last: pa.RecordBatch) -> pa.RecordBatch:
    """Rejoin a data batch sent as ``data_part`` slices followed by the ``data`` message."""
    if not parts:
        return last
    batch: pa.RecordBatch = pa.Table.from_batches([*parts, last]).combine_chunks().to_batches()[0]
    parts.clear()
    return batch


def _read_messages(reader: flight.FlightStreamReader) -> Iterator[tuple[dict[str, Any], pa.RecordBatch | None]]:
    """Yield ``(app_metadata, batch)`` of each message after printing logs; data_part slices come joined."""
    parts: list[pa.RecordBatch] = []
    while True:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            return
        meta = wire.parse_metadata(chunk.app_metadata)
        kind = meta.get("kind")
        if kind == wire.KIND_DATA_PART:
            parts.append(chunk.data)
            continue
        if kind == wire.KIND_LOG:
            _print_log(meta)
            continue
        yield meta, _assemble(parts, chunk.data) if kind == wire.KIND_DATA else chunk.data


def _call_unary(conn: Connection, client: flight.FlightClient, method: str, request: bytes, out: str | None) -> None:
    options = conn.options("DoAction", request_payload("DoAction", request, method))
    result: bytes | None = None
    for item in client.do_action(flight.Action(method, request), options):
        body = item.body.to_pybytes()
        if body[:1] == b"{":  # every Result but the last is a JSON log record
            _print_log(wire.parse_metadata(body))
        else:
            result = body
    if result is None:
        raise RpcError("ProtocolError", "the server sent no result", code=ErrorCode.FAILED_PRECONDITION)
    batch = wire.read_single_batch(result, "unary result").replace_schema_metadata(None)
    if out:
        sink = FileSink(out, batch.schema)
        sink.write(batch)
        sink.close()
        return
    value = batch.column(batch.schema.get_field_index("result")) if "result" in batch.schema.names else None
    print(_dumps(value.to_pylist(maps_as_pydicts="lossy")[0] if value is not None and len(value) else None))


def _show_header(meta: Mapping[str, Any], to_stdout: bool) -> None:
    if "header" not in meta:
        return
    header = wire.read_single_batch(wire.unb64(meta["header"], "header"), "stream header")
    row = _rows(header)[0] if header.num_rows else {}
    print(f"header {_dumps(row)}", file=sys.stdout if to_stdout else sys.stderr, flush=True)


def _call_producer(conn: Connection, client: flight.FlightClient, token: bytes, sink: Sink, progress: Progress) -> None:
    reader = client.do_get(flight.Ticket(token), conn.options("DoGet", token))
    done = False
    try:
        for meta, batch in _read_messages(reader):
            if meta.get("kind") == wire.KIND_DATA and batch is not None:
                sink.write(batch)
                progress.update(batch.num_rows)
        done = True
    finally:
        progress.clear()
        if not done:
            with contextlib.suppress(flight.FlightError, pa.ArrowException):
                reader.cancel()
    sink.close()


def _call_exchange(
    conn: Connection, client: flight.FlightClient, token: bytes, input_schema: pa.Schema, sink: Sink, stdin: TextIO
) -> None:
    descriptor = flight.FlightDescriptor.for_command(token)
    writer, reader = client.do_exchange(descriptor, conn.options("DoExchange", token))
    messages = _read_messages(reader)
    done = False
    try:
        if not any(meta.get("kind") == wire.KIND_READY for meta, _ in messages):
            raise RpcError("ProtocolError", "the exchange ended before 'ready'", code=ErrorCode.FAILED_PRECONDITION)
        writer.begin(input_schema)
        for number, line in enumerate(stdin, 1):
            if not line.strip():
                continue
            writer.write_batch(batch_from_json(line, input_schema, f"stdin line {number}"))
            for meta, batch in messages:
                if meta.get("kind") == wire.KIND_DATA:
                    if batch is not None:
                        sink.write(batch)
                    sink.end_answer()
                    break
            else:
                raise RpcError(
                    "ProtocolError", "the exchange ended without an answer", code=ErrorCode.FAILED_PRECONDITION
                )
        writer.done_writing()
        for _ in messages:  # logs the server sends while closing are printed by _read_messages
            pass
        done = True
    finally:
        if done:
            writer.close()
        else:  # tear the call down without masking the error that stopped it
            with contextlib.suppress(flight.FlightError, pa.ArrowException):
                reader.cancel()
                writer.close()
    sink.close()


def call(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    """Call one method of a server, built from its ``__describe__`` description."""
    conn = Connection.from_args(args)
    service = conn.describe()
    method = service.methods.get(args.method)
    if method is None:
        known = ", ".join(service.methods) or "none"
        raise RpcError(
            "NotFound", f"{service.name} has no method '{args.method}' (methods: {known})", code=ErrorCode.NOT_FOUND
        )
    request = wire.encode_call(method.name, build_params(method, args.params, args.json_params), whole_batches=True)
    client = conn.client()
    try:
        if method.kind is MethodKind.UNARY:
            _call_unary(conn, client, method.name, request, args.out)
            return 0
        descriptor = flight.FlightDescriptor.for_command(request)
        info = client.get_flight_info(descriptor, conn.options("GetFlightInfo", request))
        meta = wire.parse_metadata(info.app_metadata)
        for entry in meta.get("logs", ()):
            _print_log(entry)
        _show_header(meta, to_stdout=args.format == "table" and not args.out)
        token = info.endpoints[0].ticket.ticket
        sink = _sink(args, info.schema)
        if meta.get("kind") == "exchange":
            input_schema = wire.read_schema(wire.unb64(meta.get("input_schema"), "input_schema"), "input schema")
            _call_exchange(conn, client, token, input_schema, sink, stdin or sys.stdin)
        else:
            interactive = args.format == "jsonl" and not args.out and sys.stdout.isatty()
            _call_producer(conn, client, token, sink, Progress(sys.stderr.isatty() and not interactive))
        return 0
    finally:
        client.close()


# --- health -------------------------------------------------------------------------------------


def add_health_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vgi-flight health``."""
    parser.add_argument("location", help="the server to probe")
    add_connection_arguments(parser, default_timeout=5.0)


def health(args: argparse.Namespace) -> int:
    """Call the ``__health__`` action; print the status and exit 0 when the server is serving."""
    try:
        conn = Connection.from_args(args)
        client = conn.client()
    except RpcError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    try:
        options = conn.options("DoAction", request_payload("DoAction", b"", wire.HEALTH_ACTION))
        results = list(client.do_action(flight.Action(wire.HEALTH_ACTION, b""), options))
        status = json.loads(results[0].body.to_pybytes()).get("status")
    except Exception as exc:  # any failure means "not healthy"; say why
        print(f"unhealthy: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(status)
    return 0 if status == "SERVING" else 1
