"""vgi-flight interop client over raw gRPC: grpcio stubs from tests/interop/proto/flight.proto.

Written from docs/wire-protocol.md alone. pyarrow is used only to encode and decode Arrow IPC
messages; every Flight concern (FlightData framing, descriptors, tickets, app_metadata, data_part
reassembly, HMAC signing) is done by hand here. The generated `flight_pb2*` modules must be on
sys.path (run.sh puts the build cache there).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import queue
import secrets
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import flight_pb2
import flight_pb2_grpc
import grpc
import pyarrow as pa

LANG = "grpc_python"
KNOWN_KINDS = {"ready", "data", "data_part", "log"}
T = TypeVar("T")
CONTINUATION = b"\xff\xff\xff\xff"
# §8: dataclass fields are non-nullable unless `T | None`; list<utf8> as pyarrow spells it.
POINT = pa.struct(
    [
        pa.field("x", pa.float64(), False),
        pa.field("y", pa.float64(), False),
        pa.field("tags", pa.list_(pa.utf8()), False),
    ]
)


class MismatchError(Exception):
    """An interop expectation did not hold."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise MismatchError(what)


def expect_equal(actual: Any, expected: Any, what: str) -> None:
    if actual != expected:
        raise MismatchError(f"{what}: expected {expected!r}, got {actual!r}")


def present(value: T | None, what: str) -> T:
    if value is None:
        raise MismatchError(f"{what}: missing")
    return value


# --- HMAC signing (wire-protocol §11.1) ---------------------------------------------------------


def authorization(kid: str, secret: bytes, rpc: str, payload: bytes, ts: str, nonce: str) -> str:
    """The `authorization` value: the string-to-sign is six lines joined by LF, no trailing LF."""
    digest = hashlib.sha256(payload).hexdigest()
    string_to_sign = "\n".join(["VGI-HMAC-SHA256", kid, ts, nonce, rpc, digest]).encode()
    sig = base64.b64encode(hmac.new(secret, string_to_sign, hashlib.sha256).digest()).decode()
    return f"VGI-HMAC-SHA256 kid={kid}, ts={ts}, nonce={nonce}, digest={digest}, sig={sig}"


@dataclass(frozen=True)
class Signer:
    kid: str
    secret: bytes

    def metadata(self, rpc: str, payload: bytes) -> list[tuple[str, str]]:
        """Fresh metadata for one call: new ts and nonce every time (the server refuses replays)."""
        nonce = secrets.token_hex(12)  # 24 hex characters, as §11.1 recommends
        return [("authorization", authorization(self.kid, self.secret, rpc, payload, str(int(time.time())), nonce))]


def self_test_signer() -> None:
    """The worked example of §11.5, so a signing bug shows up as such and not as UNAUTHENTICATED."""
    secret = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
    header = authorization("k-demo", secret, "DoAction", b"whoami\n", "1700000000", "0123456789abcdef01234567")
    expected = (
        "VGI-HMAC-SHA256 kid=k-demo, ts=1700000000, nonce=0123456789abcdef01234567, "
        "digest=33e7267d8409d63707706f95f3d67ee9be5fd3a2c6ffc60856c9baeca1ae3ed4, "
        "sig=ppQuvJURVrutnPMzbu/15Em8+HezlJuLGe+DJ+t0ZQQ="
    )
    expect_equal(header, expected, "§11.5 worked example")


# --- Arrow IPC <-> FlightData ------------------------------------------------------------------


def param(name: str, type_: pa.DataType, value: Any, nullable: bool = False) -> tuple[pa.Field, Any]:
    """One parameter: its field (§8: non-nullable unless the parameter is `T | None`) and value."""
    return pa.field(name, type_, nullable), value


def call_request(method: str, *params: tuple[pa.Field, Any]) -> bytes:
    """A call request (§2): IPC stream, schema metadata vgi.method, one batch of one row.

    A parameterless call sends one batch without columns; pyarrow gives it zero rows (§2 allows it).
    """
    schema = pa.schema([f for f, _ in params], metadata={"vgi.method": method, "vgi.version": "1"})
    batch = pa.record_batch([pa.array([value], f.type) for f, value in params], schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def read_ipc_stream(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def flight_data(message_bytes: pa.Buffer, **kwargs: Any) -> flight_pb2.FlightData:
    """FlightData from an encapsulated IPC message: data_header = flatbuffer, data_body = body."""
    message = pa.ipc.read_message(message_bytes)
    body = message.body.to_pybytes() if message.body is not None else b""
    return flight_pb2.FlightData(data_header=message.metadata.to_pybytes(), data_body=body, **kwargs)


def decode_message(data: flight_pb2.FlightData) -> pa.ipc.Message:
    """Re-frame data_header/data_body as an encapsulated IPC message and parse it."""
    header = data.data_header + b"\x00" * (-len(data.data_header) % 8)  # keep the body 8-byte aligned
    return pa.ipc.read_message(pa.py_buffer(CONTINUATION + struct.pack("<i", len(header)) + header + data.data_body))


@dataclass
class Received:
    """One server message of a stream: its decoded app_metadata and batch (None if metadata-only)."""

    meta: dict[str, Any]
    batch: pa.RecordBatch | None


@dataclass
class StreamDecoder:
    """Turns FlightData into schema + Received messages, reassembling data_part slices (§6.4)."""

    schema: pa.Schema | None = None
    parts: list[pa.RecordBatch] = field(default_factory=list)  # data_part slices of batch `parts_seq`
    parts_seq: int = -1
    parts_seen: int = 0

    def feed(self, data: flight_pb2.FlightData) -> Received | None:
        batch = None
        if data.data_header:
            message = decode_message(data)
            if message.type == "schema":
                self.schema = pa.ipc.read_schema(message)
            elif message.type == "record batch":
                check(self.schema is not None, "record batch before the schema")
                batch = pa.ipc.read_record_batch(message, self.schema)
            else:
                raise MismatchError(f"unexpected IPC message type {message.type!r}")
        if not data.app_metadata:
            check(batch is None, "a record batch without app_metadata (§5.2: every message carries it)")
            return None
        meta = json.loads(data.app_metadata)
        check(isinstance(meta, dict) and "kind" in meta, f"app_metadata without kind: {meta!r}")
        if meta["kind"] not in KNOWN_KINDS and (batch is None or batch.num_rows == 0):
            return None  # §6: zero-row messages of an unknown kind are ignored
        if meta["kind"] == "data_part":
            check(not self.parts or self.parts_seq == meta["seq"], "data_part slices of different seqs")
            self.parts.append(present(batch, "data_part batch"))
            self.parts_seq = meta["seq"]
            self.parts_seen += 1
            return None
        if meta["kind"] == "data":
            batch = present(batch, "data message batch")
            if self.parts:
                # §6.4: the logical batch is the rows of all slices in order, this one last.
                expect_equal(meta["seq"], self.parts_seq, "seq of the data message completing data_part slices")
                batch = pa.Table.from_batches([*self.parts, batch]).combine_chunks().to_batches()[0]
                self.parts = []
        return Received(meta, batch)


# --- the client ---------------------------------------------------------------------------------


class RpcFailedError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    def json(self) -> dict[str, Any]:
        """The first JSON object in the status message (§9: clients may append text)."""
        start = self.details.find("{")
        check(start >= 0, f"error message is not JSON: {self.details!r}")
        obj, _ = json.JSONDecoder().raw_decode(self.details[start:])
        return obj


class Client:
    def __init__(self, location: str, ca: bytes, cert: bytes, key: bytes, signer: Signer) -> None:
        url = urlparse(location)
        check(url.scheme == "grpc+tls", f"expected a grpc+tls location, got {location!r}")
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        # The dev server certificate is issued for "localhost"; we dial 127.0.0.1. The default 4 MiB
        # receive limit is kept on purpose (the server must slice big batches into data_part).
        self.channel = grpc.secure_channel(
            f"{url.hostname}:{url.port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        )
        self.stub = flight_pb2_grpc.FlightServiceStub(self.channel)
        self.signer = signer

    def do_action(self, action: str, body: bytes, signer: Signer | None = None) -> list[bytes]:
        metadata = (signer or self.signer).metadata("DoAction", action.encode() + b"\n" + body)
        try:
            return [r.body for r in self.stub.DoAction(flight_pb2.Action(type=action, body=body), metadata=metadata)]
        except grpc.RpcError as e:
            raise RpcFailedError(e.code(), e.details()) from None

    def unary(self, method: str, *params: tuple[pa.Field, Any], signer: Signer | None = None) -> pa.Table:
        """DoAction (§4): every Result but the last is a log record; the last is the return value."""
        results = self.do_action(method, call_request(method, *params), signer)
        check(bool(results), f"{method}: no Result")
        for log in results[:-1]:
            check(log[:1] == b"{" and json.loads(log).get("kind") == "log", f"{method}: non-log Result {log!r}")
        table = read_ipc_stream(results[-1])
        if table.num_columns:
            expect_equal(table.num_rows, 1, f"{method}: rows of the result")
        return table

    def get_flight_info(self, cmd: bytes) -> flight_pb2.FlightInfo:
        descriptor = flight_pb2.FlightDescriptor(type=flight_pb2.FlightDescriptor.CMD, cmd=cmd)
        try:
            return self.stub.GetFlightInfo(descriptor, metadata=self.signer.metadata("GetFlightInfo", cmd))
        except grpc.RpcError as e:
            raise RpcFailedError(e.code(), e.details()) from None

    def do_get(self, ticket: bytes) -> tuple[pa.Schema | None, list[Received], int]:
        decoder = StreamDecoder()
        try:
            call = self.stub.DoGet(flight_pb2.Ticket(ticket=ticket), metadata=self.signer.metadata("DoGet", ticket))
            received = [r for r in map(decoder.feed, call) if r is not None]
        except grpc.RpcError as e:
            raise RpcFailedError(e.code(), e.details()) from None
        check(not decoder.parts, "stream ended inside a sliced batch")
        return decoder.schema, received, decoder.parts_seen

    def do_exchange(self, cmd: bytes) -> Exchange:
        return Exchange(self, cmd)


class Exchange:
    """A DoExchange call driven turn by turn: requests come from a queue grpc drains in its own thread."""

    def __init__(self, client: Client, cmd: bytes) -> None:
        self.outbox: queue.Queue[flight_pb2.FlightData | None] = queue.Queue()
        self.decoder = StreamDecoder()
        descriptor = flight_pb2.FlightDescriptor(type=flight_pb2.FlightDescriptor.CMD, cmd=cmd)
        # The first message carries only the descriptor: the server answers schema + ready before
        # reading input (§5.3), so the input schema can follow once the ready message is in.
        self.outbox.put(flight_pb2.FlightData(flight_descriptor=descriptor))
        self.call = client.stub.DoExchange(self._requests(), metadata=client.signer.metadata("DoExchange", cmd))
        self.responses: Iterator[flight_pb2.FlightData] = iter(self.call)
        self.schema_sent = False

    def _requests(self) -> Iterator[flight_pb2.FlightData]:
        while (item := self.outbox.get()) is not None:
            yield item

    def next(self) -> Received | None:
        """The next app_metadata message, or None when the server ended the call with OK."""
        try:
            for data in self.responses:
                if (received := self.decoder.feed(data)) is not None:
                    return received
        except grpc.RpcError as e:
            raise RpcFailedError(e.code(), e.details()) from None
        return None

    def send(self, batch: pa.RecordBatch) -> None:
        if not self.schema_sent:
            self.outbox.put(flight_data(batch.schema.serialize()))
            self.schema_sent = True
        self.outbox.put(flight_data(batch.serialize()))

    def half_close(self) -> None:
        self.outbox.put(None)


# --- the checks ---------------------------------------------------------------------------------


def result(table: pa.Table) -> Any:
    return table.column("result").to_pylist()[0]


def check_unary(client: Client, signer: Signer) -> None:
    add_params = (param("a", pa.int64(), 2), param("b", pa.int64(), 40))
    expect_equal(result(client.unary("add", *add_params)), 42, "add(2, 40)")

    p = param("p", POINT, {"x": 1.5, "y": -2.0, "tags": ["a", "b"]})
    table = client.unary("describe_point", p, param("label", pa.utf8(), None, nullable=True))
    expect_equal(result(table), "point:1.5,-2:2", "describe_point(label=null)")
    table = client.unary("describe_point", p, param("label", pa.utf8(), "P", nullable=True))
    expect_equal(result(table), "P:1.5,-2:2", "describe_point(label='P')")

    p = param("p", POINT, {"x": 1.0, "y": 2.0, "tags": ["t"]})
    table = client.unary("scale", p, param("factor", pa.float64(), 2.5))
    expect_equal(result(table), {"x": 2.5, "y": 5.0, "tags": ["t"]}, "scale")

    table = client.unary("noop")
    expect_equal(table.schema.names, [], "noop result schema")

    try:
        client.unary("fail", param("message", pa.utf8(), "boom"))
        raise MismatchError("fail() did not fail")
    except RpcFailedError as e:
        expect_equal(e.code, grpc.StatusCode.UNKNOWN, "fail(): gRPC status")
        err = e.json()
        expect_equal(err.get("code"), "UNKNOWN", "fail(): JSON code")
        expect_equal(err.get("error_type"), "ValueError", "fail(): error_type")
        expect_equal(err.get("error_message"), "boom", "fail(): error_message")

    expect_equal(result(client.unary("whoami")), "interop-client", "whoami()")

    wrong = Signer(signer.kid, bytes(b ^ 0xFF for b in signer.secret))
    try:
        client.unary("add", *add_params, signer=wrong)
        raise MismatchError("add signed with a wrong secret succeeded")
    except RpcFailedError as e:
        expect_equal(e.code, grpc.StatusCode.UNAUTHENTICATED, "wrong secret: gRPC status")
        err = e.json()  # §11.4: one uniform message whatever the cause
        expect_equal(err.get("code"), "UNAUTHENTICATED", "wrong secret: JSON code")
        expect_equal(err.get("error_message"), "authentication failed", "wrong secret: error_message")
    print("unary: ok")


def stream_info(client: Client, cmd: bytes) -> tuple[pa.Schema, bytes, dict[str, Any], dict[str, Any]]:
    """GetFlightInfo (§5.1): output schema, ticket, app_metadata, decoded header row."""
    info = client.get_flight_info(cmd)
    expect_equal(len(info.endpoint), 1, "number of endpoints")
    expect_equal(len(info.endpoint[0].location), 0, "endpoint locations")
    meta = json.loads(info.app_metadata)
    expect_equal(meta.get("seq"), 0, "FlightInfo seq")
    header = read_ipc_stream(base64.b64decode(meta["header"]))
    expect_equal(header.num_rows, 1, "header rows")
    schema = pa.ipc.read_schema(pa.py_buffer(info.schema))
    return schema, info.endpoint[0].ticket.ticket, meta, header.to_pylist()[0]


def check_producer(client: Client) -> None:
    schema, ticket, meta, header = stream_info(
        client, call_request("generate", param("count", pa.int64(), 4), param("big_rows", pa.int64(), 300000))
    )
    expect_equal(meta.get("kind"), "producer", "generate: kind")
    expect_equal(header, {"count": 4, "label": "generate 4"}, "generate: header")
    expect_equal(
        pa.ipc.read_schema(pa.py_buffer(base64.b64decode(meta["input_schema"]))).names, [], "generate: input_schema"
    )
    expected_schema = pa.schema([("i", pa.int64()), ("text", pa.utf8())])
    check(schema.equals(expected_schema), f"generate: FlightInfo schema {schema}")

    stream_schema, received, parts = client.do_get(ticket)
    check(stream_schema is not None and stream_schema.equals(expected_schema), f"DoGet schema {stream_schema}")
    check(bool(received), "DoGet: no messages")
    expect_equal(received[0].meta.get("kind"), "ready", "DoGet: first message")
    expect_equal(received[0].meta.get("seq"), 0, "DoGet: ready seq")
    kinds = {r.meta.get("kind") for r in received[1:]}
    check(kinds <= {"log", "data"}, f"DoGet: unexpected kinds after ready: {kinds}")
    data = [r for r in received[1:] if r.meta.get("kind") == "data"]
    expect_equal([r.meta.get("seq") for r in data], [1, 2, 3, 4], "DoGet: data seqs")
    for r, values in zip(data, [range(10), range(300000), range(20, 30), range(30, 40)], strict=True):
        seq, batch = r.meta["seq"], present(r.batch, "DoGet data batch")
        expect_equal(batch.column("i").to_pylist(), list(values), f"DoGet batch {seq}: i")
        expect_equal(batch.column("text").to_pylist(), [f"row-{i}" for i in values], f"DoGet batch {seq}: text")
    check(parts >= 1, "batch 2 (> 4 MiB) did not arrive as data_part slices")
    print(f"producer: ok (batch 2 reassembled from {parts} data_part slice(s) + data)")


def expect_turn(exchange: Exchange, turn: int, total: float) -> str:
    """One exchange turn's answer: log `turn <n>`, then data {total, turns}; returns its token."""
    log = present(exchange.next(), f"turn {turn}: log message")
    expect_equal(
        (log.meta.get("kind"), log.meta.get("level"), log.meta.get("message")),
        ("log", "INFO", f"turn {turn}"),
        f"turn {turn}: log",
    )
    data = present(exchange.next(), f"turn {turn}: data message")
    expect_equal(data.meta.get("kind"), "data", f"turn {turn}: kind")
    expect_equal(data.meta.get("seq"), turn, f"turn {turn}: seq")
    batch = present(data.batch, f"turn {turn}: data batch")
    expect_equal(batch.to_pylist(), [{"total": total, "turns": turn}], f"turn {turn}: data")
    return data.meta["token"]


def expect_ready(exchange: Exchange, seq: int) -> None:
    ready = present(exchange.next(), "exchange: ready message")
    expect_equal((ready.meta.get("kind"), ready.meta.get("seq")), ("ready", seq), "exchange: ready")


def expect_end(exchange: Exchange) -> None:
    exchange.half_close()
    rest = exchange.next()
    check(rest is None, f"exchange: unexpected message after half-close: {rest and rest.meta}")


def check_exchange(client: Client) -> None:
    _, ticket, meta, header = stream_info(client, call_request("accumulate", param("start", pa.float64(), 1.0)))
    expect_equal(meta.get("kind"), "exchange", "accumulate: kind")
    expect_equal(header, {"start": 1.0}, "accumulate: header")
    input_schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(meta["input_schema"])))
    check(input_schema.equals(pa.schema([("value", pa.float64())])), f"accumulate: input_schema {input_schema}")

    def values(*vs: float) -> pa.RecordBatch:
        return pa.record_batch([pa.array(vs, pa.float64())], schema=input_schema)

    exchange = client.do_exchange(ticket)
    expect_ready(exchange, 0)
    exchange.send(values(1.0, 2.0))
    expect_turn(exchange, 1, 4.0)
    exchange.send(values(3.0))
    token = base64.b64decode(expect_turn(exchange, 2, 7.0))
    expect_end(exchange)

    resumed = client.do_exchange(token)
    expect_ready(resumed, 2)
    resumed.send(values(10.0))
    expect_turn(resumed, 3, 17.0)
    expect_end(resumed)
    print("exchange: ok (resumed from the seq-2 token)")


def main() -> int:
    env = {
        name: os.environ.get(name, "")
        for name in ("VGI_LOCATION", "VGI_CA", "VGI_CERT", "VGI_KEY", "VGI_HMAC_KID", "VGI_HMAC_SECRET_HEX")
    }
    missing = [name for name, value in env.items() if not value]
    if missing:
        print(f"missing environment: {', '.join(missing)}", file=sys.stderr)
        return 2
    self_test_signer()
    signer = Signer(env["VGI_HMAC_KID"], bytes.fromhex(env["VGI_HMAC_SECRET_HEX"]))
    client = Client(
        env["VGI_LOCATION"],
        Path(env["VGI_CA"]).read_bytes(),
        Path(env["VGI_CERT"]).read_bytes(),
        Path(env["VGI_KEY"]).read_bytes(),
        signer,
    )
    try:
        check_unary(client, signer)
        check_producer(client)
        check_exchange(client)
    except (MismatchError, RpcFailedError) as e:
        print(f"INTEROP FAILED {LANG}: {e}", file=sys.stderr)
        return 1
    finally:
        client.channel.close()
    print(f"INTEROP OK {LANG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
