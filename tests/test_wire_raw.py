"""The wire protocol, spoken by a plain pyarrow.flight client with no vgi-flight client code.

These tests follow docs/wire-protocol.md literally, the way a Go or Java developer would, and
check that bad input is refused with a typed error while the server keeps serving.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from vgi_flight import AnnotatedBatch, CallContext, ExchangeState, OutputCollector, RpcServer, Stream

TOKEN_KEY_HEX = "00" * 32


def ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def call_request(method: str, columns: dict[str, pa.Array]) -> bytes:
    batch = pa.record_batch(columns) if columns else pa.RecordBatch.from_pydict({})
    return ipc(batch.replace_schema_metadata({"vgi.method": method}))


def error_body(exc: BaseException) -> dict[str, Any]:
    text = str(exc)
    body, _ = json.JSONDecoder().raw_decode(text, text.index('{"vgi_error"'))
    assert isinstance(body, dict)
    return body


@pytest.fixture
def client(spawn_server: Callable[..., Any]) -> Iterator[flight.FlightClient]:
    server = spawn_server("tests.conformance_service:Conformance", "tests.conformance_service:ConformanceImpl")
    c = flight.connect(server.location)
    yield c
    c.close()


def assert_serving(client: flight.FlightClient) -> None:
    results = list(client.do_action(flight.Action("add", ipc(pa.record_batch({"a": [1], "b": [2]})))))
    assert pa.ipc.open_stream(results[-1].body).read_all().to_pydict() == {"result": [3]}


def test_unary_with_logs(client: flight.FlightClient) -> None:
    results = list(client.do_action(flight.Action("logs_then_value", ipc(pa.record_batch({"count": [2]})))))
    logs = [json.loads(r.body.to_pybytes()) for r in results[:-1]]
    assert logs == [
        {"kind": "log", "level": "INFO", "message": "log 0", "extra": {"index": 0}},
        {"kind": "log", "level": "INFO", "message": "log 1", "extra": {"index": 1}},
    ]
    assert pa.ipc.open_stream(results[-1].body).read_all().to_pydict() == {"result": [2]}


def test_unary_int32_argument_is_cast(client: flight.FlightClient) -> None:
    body = ipc(pa.record_batch({"a": pa.array([5], pa.int32())}))
    result = list(client.do_action(flight.Action("add", body)))[-1]
    assert pa.ipc.open_stream(result.body).read_all().to_pydict() == {"result": [15]}


def test_void_result_is_empty_schema(client: flight.FlightClient) -> None:
    result = list(client.do_action(flight.Action("nothing", b"")))[-1]
    table = pa.ipc.open_stream(result.body).read_all()
    assert table.schema == pa.schema([])


def test_producer_via_flight_info(client: flight.FlightClient) -> None:
    info = client.get_flight_info(
        flight.FlightDescriptor.for_command(call_request("count_with_header", {"limit": pa.array([3])}))
    )
    meta = json.loads(info.app_metadata)
    assert meta["kind"] == "producer"
    header = pa.ipc.open_stream(base64.b64decode(meta["header"])).read_all().to_pylist()
    assert header == [{"rows": 3, "note": "counting"}]
    assert info.schema == pa.schema([("i", pa.int64())])
    reader = client.do_get(info.endpoints[0].ticket)
    kinds, values, seqs = [], [], []
    for chunk in reader:
        m = json.loads(chunk.app_metadata.to_pybytes())
        kinds.append(m["kind"])
        if m["kind"] == "data":
            values += chunk.data.column("i").to_pylist()
            seqs.append(m["seq"])
    assert kinds == ["ready", "data", "data", "data"]
    assert values == [0, 1, 2]
    assert seqs == [1, 2, 3]


def test_producer_resumes_from_any_data_token(client: flight.FlightClient) -> None:
    info = client.get_flight_info(flight.FlightDescriptor.for_command(call_request("count", {"limit": pa.array([5])})))
    tokens = {}
    for chunk in client.do_get(info.endpoints[0].ticket):
        m = json.loads(chunk.app_metadata.to_pybytes())
        if m["kind"] == "data":
            tokens[m["seq"]] = base64.b64decode(m["token"])
    rest = [
        c.data.column("i")[0].as_py()
        for c in client.do_get(flight.Ticket(tokens[2]))
        if json.loads(c.app_metadata.to_pybytes())["kind"] == "data"
    ]
    assert rest == [2, 3, 4]


def test_single_call_doget_sends_logs_and_ready_first(client: flight.FlightClient) -> None:
    reader = client.do_get(flight.Ticket(call_request("count", {"limit": pa.array([1]), "tag": pa.array(["t"])})))
    metas = [json.loads(c.app_metadata.to_pybytes()) for c in reader]
    assert [m["kind"] for m in metas] == ["log", "ready", "data"]
    assert metas[0]["message"] == "opening count"


def test_exchange_single_call_and_resume(client: flight.FlightClient) -> None:
    descriptor = flight.FlightDescriptor.for_command(call_request("echo_stream", {}))
    writer, reader = client.do_exchange(descriptor)
    ready = json.loads(reader.read_chunk().app_metadata.to_pybytes())
    assert ready["kind"] == "ready"
    assert "header" in ready
    writer.begin(pa.schema([("x", pa.float64())]))
    token = b""
    for i in range(2):
        writer.write_batch(pa.record_batch({"x": [float(i)]}))
        while True:
            chunk = reader.read_chunk()
            m = json.loads(chunk.app_metadata.to_pybytes())
            if m["kind"] == "data":
                assert chunk.data.to_pydict() == {"x": [float(i)]}
                token = base64.b64decode(m["token"])
                break
    writer.done_writing()
    writer.close()
    # Resume on a new call from the last token: the turn counter continues at 3.
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(token))
    ready = json.loads(reader.read_chunk().app_metadata.to_pybytes())
    assert (ready["kind"], ready["seq"]) == ("ready", 2)
    writer.begin(pa.schema([("x", pa.float64())]))
    writer.write_batch(pa.record_batch({"x": [9.0]}))
    logs = []
    while True:
        m = json.loads(reader.read_chunk().app_metadata.to_pybytes())
        if m["kind"] == "log":
            logs.append(m["message"])
        if m["kind"] == "data":
            assert m["seq"] == 3
            break
    assert logs == ["turn 3"]
    writer.done_writing()
    writer.close()


def test_describe_and_list_actions(client: flight.FlightClient) -> None:
    result = list(client.do_action(flight.Action("__describe__", b"")))[-1]
    table = pa.ipc.open_stream(result.body).read_all()
    rows = {r["name"]: r for r in table.to_pylist()}
    assert rows["add"]["kind"] == "unary"
    assert rows["count_with_header"]["has_header"] is True
    defaults = pa.ipc.open_stream(rows["add"]["defaults"]).read_all().to_pylist()
    assert defaults == [{"b": 10}]
    assert table.schema.metadata[b"vgi.protocol"] == b"Conformance"
    names = {a.type for a in client.list_actions()}
    assert {"add", "count", "__describe__", "__cancel__", "__health__"} <= names


def test_get_schema(client: flight.FlightClient) -> None:
    unary = client.get_schema(flight.FlightDescriptor.for_command(call_request("add", {})))
    assert unary.schema == pa.schema([pa.field("result", pa.int64(), nullable=False)])
    stream = client.get_schema(flight.FlightDescriptor.for_command(call_request("count", {"limit": pa.array([1])})))
    assert stream.schema == pa.schema([("i", pa.int64())])


# --- bad input: typed errors, server keeps serving ----------------------------------------------


@pytest.mark.parametrize(
    ("action", "body", "code"),
    [
        ("no_such_method", b"", "UNIMPLEMENTED"),
        ("add", b"not arrow at all", "INVALID_ARGUMENT"),
        ("add", b"\xff\xff\xff\xff\x10\x00\x00\x00garbage-garbage-", "INVALID_ARGUMENT"),
        ("add", ipc(pa.record_batch({"a": ["text"]})), "INVALID_ARGUMENT"),
        ("add", ipc(pa.record_batch({"zzz": [1]})), "INVALID_ARGUMENT"),
        ("add", ipc(pa.record_batch({"b": [1]})), "INVALID_ARGUMENT"),
        ("add", ipc(pa.record_batch({"a": pa.array([None], pa.int64())})), "INVALID_ARGUMENT"),
        ("add", ipc(pa.record_batch({"a": [1, 2]})), "INVALID_ARGUMENT"),
        ("count", ipc(pa.record_batch({"limit": [1]})), "INVALID_ARGUMENT"),
        ("__cancel__", b"VGT1 forged token", "UNAUTHENTICATED"),
        ("fail", ipc(pa.record_batch({"message": ["x"]})), "UNKNOWN"),
    ],
)
def test_bad_unary_requests(client: flight.FlightClient, action: str, body: bytes, code: str) -> None:
    with pytest.raises(flight.FlightError) as info:
        list(client.do_action(flight.Action(action, body)))
    err = error_body(info.value)
    assert err["code"] == code
    assert "Traceback" not in str(info.value)
    assert ".py" not in str(info.value)
    assert_serving(client)


def _token(client: flight.FlightClient) -> bytes:
    info = client.get_flight_info(flight.FlightDescriptor.for_command(call_request("count", {"limit": pa.array([3])})))
    ticket: bytes = info.endpoints[0].ticket.ticket
    return ticket


@pytest.mark.parametrize("mutate", ["flip", "truncate", "extend", "empty_state"])
def test_tampered_tokens_refused(client: flight.FlightClient, mutate: str) -> None:
    token = bytearray(_token(client))
    if mutate == "flip":
        token[len(token) // 2] ^= 0x01
    elif mutate == "truncate":
        del token[-10:]
    elif mutate == "extend":
        token += b"\x00"
    else:
        token = bytearray(b"VGT1")
    with pytest.raises(flight.FlightError) as info:
        list(client.do_get(flight.Ticket(bytes(token))))
    assert error_body(info.value)["code"] == "UNAUTHENTICATED"
    assert_serving(client)


def test_wrong_rpc_for_kind(client: flight.FlightClient) -> None:
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(_token(client)))
    with pytest.raises(flight.FlightError) as info:
        reader.read_chunk()
    assert error_body(info.value)["code"] == "INVALID_ARGUMENT"
    with pytest.raises(flight.FlightError):  # closing re-reports the call's status
        writer.close()
    assert_serving(client)


def test_malformed_command(client: flight.FlightClient) -> None:
    with pytest.raises(flight.FlightError) as info:
        client.get_flight_info(flight.FlightDescriptor.for_command(b"\x00\x01garbage"))
    assert error_body(info.value)["code"] == "INVALID_ARGUMENT"
    with pytest.raises(flight.FlightError) as info:
        client.get_flight_info(flight.FlightDescriptor.for_path("count"))
    assert error_body(info.value)["code"] == "INVALID_ARGUMENT"
    assert_serving(client)


def read_until_end(reader: flight.FlightStreamReader) -> None:
    while True:
        reader.read_chunk()


def test_exchange_wrong_schema_mid_stream(client: flight.FlightClient) -> None:
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(call_request("echo_stream", {})))
    reader.read_chunk()
    writer.begin(pa.schema([("y", pa.utf8())]))
    writer.write_batch(pa.record_batch({"y": ["nope"]}))
    with pytest.raises(flight.FlightError) as info:
        read_until_end(reader)
    assert error_body(info.value)["code"] == "INVALID_ARGUMENT"
    with pytest.raises(flight.FlightError):  # closing re-reports the call's status
        writer.close()
    assert_serving(client)


@dataclass
class InputTypeState(ExchangeState):
    def exchange(self, input: AnnotatedBatch, out: OutputCollector, ctx: CallContext) -> None:
        out.emit_pydict({"type": [str(input.batch.schema.field("x").type)]})


class InputTypes(Protocol):
    def input_types(self) -> Stream[InputTypeState]: ...


class InputTypesImpl:
    def input_types(self) -> Stream[InputTypeState]:
        return Stream(
            output_schema=pa.schema([("type", pa.utf8())]),
            state=InputTypeState(),
            input_schema=pa.schema([("x", pa.float64())]),
        )


def test_exchange_castable_stream_schema_is_conformed_every_turn() -> None:
    # The server decides once per stream whether its batches need conforming: every one must be.
    with (
        RpcServer(InputTypes, InputTypesImpl()) as server,
        contextlib.closing(flight.connect(server.location)) as client,
    ):
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(call_request("input_types", {})))
        reader.read_chunk()
        writer.begin(pa.schema([("x", pa.int32())]))
        types = []
        for i in range(3):
            writer.write_batch(pa.record_batch({"x": pa.array([i], pa.int32())}))
            chunk = reader.read_chunk()
            assert json.loads(chunk.app_metadata.to_pybytes())["kind"] == "data"
            types += chunk.data.column("type").to_pylist()
        writer.done_writing()
        writer.close()
    assert types == ["double"] * 3


def test_client_disconnect_mid_stream(client: flight.FlightClient) -> None:
    reader = client.do_get(flight.Ticket(call_request("count", {"limit": pa.array([10**9])})))
    for _ in range(5):
        reader.read_chunk()
    reader.cancel()
    assert_serving(client)


@pytest.fixture
def small_limit_client() -> Iterator[flight.FlightClient]:
    from tests.conformance_service import Conformance, ConformanceImpl
    from vgi_flight import RpcServer

    with RpcServer(Conformance, ConformanceImpl(), token_key=b"k" * 32, max_request_bytes=4096) as server:
        c = flight.connect(server.location)
        yield c
        c.close()


def test_oversized_requests_are_refused(small_limit_client: flight.FlightClient) -> None:
    client = small_limit_client
    big = "x" * 10_000
    with pytest.raises(flight.FlightError) as info:
        list(client.do_action(flight.Action("echo_str", ipc(pa.record_batch({"value": [big]})))))
    assert error_body(info.value)["code"] == "RESOURCE_EXHAUSTED"
    with pytest.raises(flight.FlightError) as info:
        client.get_flight_info(flight.FlightDescriptor.for_command(call_request("count", {"tag": pa.array([big])})))
    assert error_body(info.value)["code"] == "RESOURCE_EXHAUSTED"
    with pytest.raises(flight.FlightError) as info:
        client.do_get(flight.Ticket(b"VGT1" + b"x" * 10_000)).read_all()
    assert error_body(info.value)["code"] == "RESOURCE_EXHAUSTED"
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(call_request("echo_stream", {})))
    reader.read_chunk()
    writer.begin(pa.schema([("x", pa.float64())]))
    writer.write_batch(pa.record_batch({"x": [1.0] * 2000}))
    with pytest.raises(flight.FlightError) as info:
        read_until_end(reader)
    assert error_body(info.value)["code"] == "RESOURCE_EXHAUSTED"
    with pytest.raises(flight.FlightError):
        writer.close()
    result = list(client.do_action(flight.Action("echo_str", ipc(pa.record_batch({"value": ["small"]})))))[-1]
    assert pa.ipc.open_stream(result.body).read_all().to_pydict() == {"result": ["small"]}


def test_whole_batches_request_turns_slicing_off_for_the_stream_and_its_resumes(client: flight.FlightClient) -> None:
    batch = pa.record_batch({"rows": pa.array([400_000]), "batches": pa.array([2])})
    request = ipc(batch.replace_schema_metadata({"vgi.method": "big", "vgi.whole_batches": "1"}))
    kinds, rows, tokens = [], [], []
    for chunk in client.do_get(flight.Ticket(request)):
        meta = json.loads(chunk.app_metadata.to_pybytes())
        kinds.append(meta["kind"])
        if meta["kind"] == "data":
            rows.append(chunk.data.num_rows)
            tokens.append(base64.b64decode(meta["token"]))
    assert kinds == ["ready", "data", "data"]
    assert rows == [400_000, 400_000]  # ~10 MiB messages: the pyarrow client's receive limit is lifted
    # Resuming from the first data token: the token carries the choice, the next batch comes whole.
    resumed = [json.loads(c.app_metadata.to_pybytes())["kind"] for c in client.do_get(flight.Ticket(tokens[0]))]
    assert resumed == ["ready", "data"]


def test_large_output_arrives_in_slices_under_4_mib(client: flight.FlightClient) -> None:
    ticket = flight.Ticket(call_request("big", {"rows": pa.array([400_000]), "batches": pa.array([1])}))
    kinds, sizes, rows = [], [], 0
    for chunk in client.do_get(ticket):
        meta = json.loads(chunk.app_metadata.to_pybytes())
        kinds.append(meta["kind"])
        if meta["kind"] in ("data_part", "data"):
            assert meta["seq"] == 1
            sizes.append(chunk.data.nbytes)
            rows += chunk.data.num_rows
    assert kinds[0] == "ready"
    assert kinds[-1] == "data"
    assert kinds.count("data_part") >= 2
    assert rows == 400_000
    assert max(sizes) < 4 * 1024 * 1024 - 32 * 1024


def test_stream_opened_with_the_other_kinds_rpc_is_refused_with_its_own_error_type(client: flight.FlightClient) -> None:
    # The single-call path: DoGet with an exchange's call request, DoExchange with a producer's.
    with pytest.raises(flight.FlightError) as info:
        read_until_end(client.do_get(flight.Ticket(call_request("echo_stream", {}))))
    body = error_body(info.value)
    assert (body["code"], body["error_type"]) == ("INVALID_ARGUMENT", "WrongStreamKind")
    assert "use DoExchange" in body["error_message"]
    writer, reader = client.do_exchange(
        flight.FlightDescriptor.for_command(call_request("count", {"limit": pa.array([2])}))
    )
    with pytest.raises(flight.FlightError) as info:
        read_until_end(reader)
    body = error_body(info.value)
    assert (body["code"], body["error_type"]) == ("INVALID_ARGUMENT", "WrongStreamKind")
    assert "use DoGet" in body["error_message"]
    with contextlib.suppress(flight.FlightError):
        writer.close()
    assert [c.data.num_rows for c in client.do_get(flight.Ticket(call_request("count", {"limit": pa.array([2])})))][
        -2:
    ] == [1, 1]
