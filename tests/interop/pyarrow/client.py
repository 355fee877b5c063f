"""vgi-flight interop client on the Arrow C++ Flight client, through pyarrow.flight directly.

Written from docs/wire-protocol.md alone (no vgi_flight import): call requests are built with
pyarrow's IPC writer, app_metadata JSON is parsed here, data_part slices are reassembled here and
every call is HMAC-signed here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.flight as flight

LANG = "pyarrow"
KNOWN_KINDS = {"ready", "data", "data_part", "log"}
# gRPC's default receive limit. Arrow's client otherwise lifts it, and the contract is that clients
# keep it, so that the server's data_part slicing (§5.2) is what gets a > 4 MiB batch through.
GRPC_DEFAULT_RECEIVE_LIMIT = 4 * 1024 * 1024
# §8: dataclass fields are non-nullable unless `T | None`; list<utf8> as pyarrow spells it.
POINT = pa.struct(
    [
        pa.field("x", pa.float64(), False),
        pa.field("y", pa.float64(), False),
        pa.field("tags", pa.list_(pa.utf8()), False),
    ]
)
T = TypeVar("T")


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

    def options(self, rpc: str, payload: bytes) -> flight.FlightCallOptions:
        """Call options for one call: new ts and nonce every time (the server refuses replays)."""
        nonce = secrets.token_hex(12)  # 24 hex characters, as §11.1 recommends
        value = authorization(self.kid, self.secret, rpc, payload, str(int(time.time())), nonce)
        return flight.FlightCallOptions(headers=[(b"authorization", value.encode())])


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


# --- call requests and stream messages ----------------------------------------------------------


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


def error_json(error: Exception) -> dict[str, Any]:
    """The first JSON object in the error message (§9: text may follow it, e.g. `. Detail: ...`)."""
    text = str(error)
    start = text.find("{")
    check(start >= 0, f"error message is not JSON: {text!r}")
    obj, _ = json.JSONDecoder().raw_decode(text[start:])
    return obj


@dataclass
class Received:
    """One server message of a stream: its decoded app_metadata and batch (None if metadata-only)."""

    meta: dict[str, Any]
    batch: pa.RecordBatch | None


@dataclass
class Reassembler:
    """Turns stream chunks into Received messages, joining data_part slices to their data (§6.4)."""

    parts: list[pa.RecordBatch] = field(default_factory=list)  # data_part slices of batch `parts_seq`
    parts_seq: int = -1
    parts_seen: int = 0

    def feed(self, chunk: flight.FlightStreamChunk) -> Received | None:
        batch = chunk.data
        if chunk.app_metadata is None:
            check(batch is None, "a record batch without app_metadata (§5.2: every message carries it)")
            return None
        meta = json.loads(chunk.app_metadata.to_pybytes())
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
                # The logical batch is the rows of all slices in order, this one last.
                expect_equal(meta["seq"], self.parts_seq, "seq of the data message completing data_part slices")
                batch = pa.Table.from_batches([*self.parts, batch]).combine_chunks().to_batches()[0]
                self.parts = []
        return Received(meta, batch)


def next_message(reader: flight.FlightStreamReader, reassembler: Reassembler) -> Received | None:
    """The next app_metadata message, or None when the server ended the call with OK."""
    while True:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            check(not reassembler.parts, "stream ended inside a sliced batch")
            return None
        if (received := reassembler.feed(chunk)) is not None:
            return received


# --- the checks ---------------------------------------------------------------------------------


def unary(client: flight.FlightClient, signer: Signer, method: str, *params: tuple[pa.Field, Any]) -> pa.Table:
    """DoAction (§4): every Result but the last is a log record; the last is the return value."""
    body = call_request(method, *params)
    options = signer.options("DoAction", method.encode() + b"\n" + body)
    results = [r.body.to_pybytes() for r in client.do_action(flight.Action(method, body), options)]
    check(bool(results), f"{method}: no Result")
    for log in results[:-1]:
        check(log[:1] == b"{" and json.loads(log).get("kind") == "log", f"{method}: non-log Result {log!r}")
    table = read_ipc_stream(results[-1])
    if table.num_columns:
        expect_equal(table.num_rows, 1, f"{method}: rows of the result")
    return table


def result(table: pa.Table) -> Any:
    return table.column("result").to_pylist()[0]


def check_unary(client: flight.FlightClient, signer: Signer) -> None:
    add_params = (param("a", pa.int64(), 2), param("b", pa.int64(), 40))
    expect_equal(result(unary(client, signer, "add", *add_params)), 42, "add(2, 40)")

    p = param("p", POINT, {"x": 1.5, "y": -2.0, "tags": ["a", "b"]})
    table = unary(client, signer, "describe_point", p, param("label", pa.utf8(), None, nullable=True))
    expect_equal(result(table), "point:1.5,-2:2", "describe_point(label=null)")
    table = unary(client, signer, "describe_point", p, param("label", pa.utf8(), "P", nullable=True))
    expect_equal(result(table), "P:1.5,-2:2", "describe_point(label='P')")

    p = param("p", POINT, {"x": 1.0, "y": 2.0, "tags": ["t"]})
    table = unary(client, signer, "scale", p, param("factor", pa.float64(), 2.5))
    expect_equal(result(table), {"x": 2.5, "y": 5.0, "tags": ["t"]}, "scale")

    expect_equal(unary(client, signer, "noop").schema.names, [], "noop result schema")

    try:
        unary(client, signer, "fail", param("message", pa.utf8(), "boom"))
        raise MismatchError("fail() did not fail")
    except flight.FlightError as e:
        # gRPC UNKNOWN surfaces in Arrow's client as FlightServerError (Flight status "failed").
        check(isinstance(e, flight.FlightServerError), f"fail(): expected FlightServerError, got {e!r}")
        err = error_json(e)
        expect_equal(err.get("code"), "UNKNOWN", "fail(): JSON code")
        expect_equal(err.get("error_type"), "ValueError", "fail(): error_type")
        expect_equal(err.get("error_message"), "boom", "fail(): error_message")

    expect_equal(result(unary(client, signer, "whoami")), "interop-client", "whoami()")

    wrong = Signer(signer.kid, bytes(b ^ 0xFF for b in signer.secret))
    try:
        unary(client, wrong, "add", *add_params)
        raise MismatchError("add signed with a wrong secret succeeded")
    except flight.FlightUnauthenticatedError as e:  # gRPC UNAUTHENTICATED
        err = error_json(e)  # §11.4: one uniform message whatever the cause
        expect_equal(err.get("code"), "UNAUTHENTICATED", "wrong secret: JSON code")
        expect_equal(err.get("error_message"), "authentication failed", "wrong secret: error_message")
    print("unary: ok")


def stream_info(
    client: flight.FlightClient, signer: Signer, cmd: bytes
) -> tuple[pa.Schema, bytes, dict[str, Any], dict[str, Any]]:
    """GetFlightInfo (§5.1): output schema, ticket, app_metadata, decoded header row."""
    info = client.get_flight_info(flight.FlightDescriptor.for_command(cmd), signer.options("GetFlightInfo", cmd))
    expect_equal(len(info.endpoints), 1, "number of endpoints")
    expect_equal(len(info.endpoints[0].locations), 0, "endpoint locations")
    meta = json.loads(info.app_metadata)
    expect_equal(meta.get("seq"), 0, "FlightInfo seq")
    header = read_ipc_stream(base64.b64decode(meta["header"]))
    expect_equal(header.num_rows, 1, "header rows")
    return info.schema, info.endpoints[0].ticket.ticket, meta, header.to_pylist()[0]


def check_producer(client: flight.FlightClient, signer: Signer) -> None:
    cmd = call_request("generate", param("count", pa.int64(), 4), param("big_rows", pa.int64(), 300000))
    schema, ticket, meta, header = stream_info(client, signer, cmd)
    expect_equal(meta.get("kind"), "producer", "generate: kind")
    expect_equal(header, {"count": 4, "label": "generate 4"}, "generate: header")
    input_schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(meta["input_schema"])))
    expect_equal(input_schema.names, [], "generate: input_schema")
    expected_schema = pa.schema([("i", pa.int64()), ("text", pa.utf8())])
    check(schema.equals(expected_schema), f"generate: FlightInfo schema {schema}")

    reader = client.do_get(flight.Ticket(ticket), signer.options("DoGet", ticket))
    check(reader.schema.equals(expected_schema), f"DoGet schema {reader.schema}")
    reassembler = Reassembler()
    received = []
    while (message := next_message(reader, reassembler)) is not None:
        received.append(message)
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
    check(reassembler.parts_seen >= 1, "batch 2 (> 4 MiB) did not arrive as data_part slices")
    print(f"producer: ok (batch 2 reassembled from {reassembler.parts_seen} data_part slice(s) + data)")


class Exchange:
    """One DoExchange call, driven turn by turn."""

    def __init__(self, client: flight.FlightClient, signer: Signer, cmd: bytes) -> None:
        # Arrow sends the descriptor as soon as the call opens; the input schema goes with the first
        # batch, after `ready` (§5.3: the server sends ready before reading any input).
        options = signer.options("DoExchange", cmd)
        self.writer, self.reader = client.do_exchange(flight.FlightDescriptor.for_command(cmd), options)
        self.reassembler = Reassembler()
        self.begun = False

    def next(self) -> Received | None:
        return next_message(self.reader, self.reassembler)

    def send(self, batch: pa.RecordBatch) -> None:
        if not self.begun:
            self.writer.begin(batch.schema)
            self.begun = True
        self.writer.write_batch(batch)

    def expect_ready(self, seq: int) -> None:
        ready = present(self.next(), "exchange: ready message")
        expect_equal((ready.meta.get("kind"), ready.meta.get("seq")), ("ready", seq), "exchange: ready")

    def expect_turn(self, turn: int, total: float) -> str:
        """One turn's answer: log `turn <n>`, then data {total, turns}; returns the data token."""
        log = present(self.next(), f"turn {turn}: log message")
        expect_equal(
            (log.meta.get("kind"), log.meta.get("level"), log.meta.get("message")),
            ("log", "INFO", f"turn {turn}"),
            f"turn {turn}: log",
        )
        data = present(self.next(), f"turn {turn}: data message")
        expect_equal(data.meta.get("kind"), "data", f"turn {turn}: kind")
        expect_equal(data.meta.get("seq"), turn, f"turn {turn}: seq")
        batch = present(data.batch, f"turn {turn}: data batch")
        expect_equal(batch.to_pylist(), [{"total": total, "turns": turn}], f"turn {turn}: data")
        return data.meta["token"]

    def close(self) -> None:
        """Half-close, then read to the end: the server must end the call with OK and nothing more."""
        self.writer.done_writing()
        rest = self.next()
        check(rest is None, f"exchange: unexpected message after half-close: {rest and rest.meta}")
        self.writer.close()


def check_exchange(client: flight.FlightClient, signer: Signer) -> None:
    _, ticket, meta, header = stream_info(client, signer, call_request("accumulate", param("start", pa.float64(), 1.0)))
    expect_equal(meta.get("kind"), "exchange", "accumulate: kind")
    expect_equal(header, {"start": 1.0}, "accumulate: header")
    input_schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(meta["input_schema"])))
    check(input_schema.equals(pa.schema([("value", pa.float64())])), f"accumulate: input_schema {input_schema}")

    def values(*vs: float) -> pa.RecordBatch:
        return pa.record_batch([pa.array(vs, pa.float64())], schema=input_schema)

    exchange = Exchange(client, signer, ticket)
    exchange.expect_ready(0)
    exchange.send(values(1.0, 2.0))
    exchange.expect_turn(1, 4.0)
    exchange.send(values(3.0))
    token = base64.b64decode(exchange.expect_turn(2, 7.0))
    exchange.close()

    resumed = Exchange(client, signer, token)
    resumed.expect_ready(2)
    resumed.send(values(10.0))
    resumed.expect_turn(3, 17.0)
    resumed.close()
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
    client = flight.FlightClient(
        env["VGI_LOCATION"],
        tls_root_certs=Path(env["VGI_CA"]).read_bytes(),
        cert_chain=Path(env["VGI_CERT"]).read_bytes(),
        private_key=Path(env["VGI_KEY"]).read_bytes(),
        override_hostname="localhost",  # the dev server certificate names localhost; we dial 127.0.0.1
        generic_options=[("grpc.max_receive_message_length", GRPC_DEFAULT_RECEIVE_LIMIT)],
    )
    try:
        check_unary(client, signer)
        check_producer(client, signer)
        check_exchange(client, signer)
    except (MismatchError, flight.FlightError, pa.ArrowException) as e:
        print(f"INTEROP FAILED {LANG}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"INTEROP OK {LANG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
