"""Bounded fuzzing of everything that decodes bytes from the network.

CI runs a few hundred examples per target. For a longer local run:

    VGI_FUZZ_EXAMPLES=20000 ./scripts/test tests/test_fuzz.py tests/test_tokens.py
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conformance_service import Conformance, ConformanceImpl
from vgi_flight import RpcServer
from vgi_flight import _wire as wire
from vgi_flight._errors import RpcError

EXAMPLES = int(os.environ.get("VGI_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

VALID_CALL = wire.encode_call("add", pa.record_batch({"a": [1], "b": [2]}))
PARAMS = pa.schema([pa.field("a", pa.int64(), False), pa.field("b", pa.int64(), False)])


def mutate(data: bytes, flips: list[int], cut: int) -> bytes:
    buf = bytearray(data)
    for f in flips:
        buf[f % len(buf)] ^= 1 << (f % 8)
    return bytes(buf[: max(0, len(buf) - cut)])


@FUZZ
@given(st.binary(max_size=2048))
def test_decode_call_random_bytes(blob: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        wire.decode_call(blob)


@FUZZ
@given(st.lists(st.integers(min_value=0), max_size=8), st.integers(0, 64))
def test_decode_call_mutated(flips: list[int], cut: int) -> None:
    try:
        method, batch = wire.decode_call(mutate(VALID_CALL, flips, cut))
    except wire.WireError:
        return
    assert isinstance(method, str)
    batch.validate(full=True)


@FUZZ
@given(st.lists(st.integers(min_value=0), max_size=8), st.integers(0, 64))
def test_batch_framing_mutated(flips: list[int], cut: int) -> None:
    framing = wire.BatchFraming(PARAMS)
    data = mutate(framing.encode(pa.record_batch({"a": [1], "b": [2]}, schema=PARAMS)), flips, cut)
    with contextlib.suppress(wire.WireError):
        framing.decode(data, "fuzz").validate(full=True)


@FUZZ
@given(st.binary(max_size=512) | st.text(max_size=200).map(str.encode))
def test_parse_metadata(blob: bytes) -> None:
    try:
        result = wire.parse_metadata(blob)
    except wire.WireError:
        return
    assert isinstance(result, dict)


@FUZZ
@given(st.text(max_size=400))
def test_error_decoding_never_raises(text: str) -> None:
    error = wire.rpc_error_from_flight(flight.FlightServerError(text))
    assert isinstance(error, RpcError)


@pytest.fixture(scope="module")
def live() -> Iterator[flight.FlightClient]:
    with RpcServer(Conformance, ConformanceImpl(), token_key=b"k" * 32) as server:
        client = flight.connect(server.location)
        yield client
        client.close()


@settings(max_examples=max(20, EXAMPLES // 4), deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=6), st.integers(0, 40), st.sampled_from(["action", "info", "get"]))
def test_live_server_refuses_mutated_requests_cleanly(
    live: flight.FlightClient, flips: list[int], cut: int, rpc: str
) -> None:
    data = mutate(VALID_CALL, flips, cut)
    refusal = ""
    try:
        if rpc == "action":
            list(live.do_action(flight.Action("add", data)))
        elif rpc == "info":
            live.get_flight_info(flight.FlightDescriptor.for_command(data))
        else:
            live.do_get(flight.Ticket(data)).read_all()
    except flight.FlightError as exc:
        refusal = str(exc)
    if refusal:
        assert '{"vgi_error"' in refusal
        assert "Traceback" not in refusal
    result = list(live.do_action(flight.Action("__health__", b"")))
    assert result[0].body.to_pybytes() == b'{"status":"SERVING"}'


@FUZZ
@given(st.binary(max_size=600), st.integers(0, 2**63))
def test_data_metadata_fast_path_matches_json(token: bytes, seq: int) -> None:
    import json

    encoded = wire.data_metadata(wire.b64(token).encode(), seq, None)
    assert wire.parse_metadata(encoded) == json.loads(encoded)
    assert wire.unb64(wire.parse_metadata(encoded)["token"], "token") == token
    assert wire.plain_data(encoded) == (seq, wire.b64(token).encode())


JSON_VALUES = st.one_of(st.text(max_size=12), st.integers(-5, 2**63), st.none(), st.booleans())


@FUZZ
@given(
    st.permutations(["kind", "seq", "token"]),
    st.dictionaries(st.sampled_from(["metadata", "x", "token"]), JSON_VALUES, max_size=2),
    st.text(max_size=40),
    st.integers(0, 2**63),
)
def test_data_fast_path_takes_only_the_plain_shape(
    order: list[str], extra: dict[str, object], token: str, seq: int
) -> None:
    # Key orders, extra keys, escapes and non-base64 tokens: the fast path either reads what the
    # JSON parser reads or leaves the message to it.
    import json

    obj: dict[str, object] = {key: {"kind": "data", "seq": seq, "token": token}[key] for key in order}
    obj.update(extra)
    for encoded in (json.dumps(obj, separators=(",", ":")).encode(), json.dumps(obj).encode()):
        assert wire.parse_metadata(encoded) == json.loads(encoded)
        plain = wire.plain_data(encoded)
        if plain is not None:
            parsed = json.loads(encoded)
            assert set(parsed) == {"kind", "seq", "token"}
            assert plain == (parsed["seq"], parsed["token"].encode())


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([pa.int64(), pa.utf8()]), st.booleans()),
        min_size=1,
        max_size=3,
        unique_by=lambda f: f[0],
    ),
    st.dictionaries(st.sampled_from([b"k", b"j"]), st.sampled_from([b"1", b"2"]), max_size=2),
)
def test_schema_caches_keep_metadata_and_nullability(
    fields: list[tuple[str, pa.DataType, bool]], meta: dict[bytes, bytes]
) -> None:
    # pa.Schema equality ignores metadata: the caches must still give each schema its own bytes.
    schema = pa.schema([pa.field(n, t, nullable) for n, t, nullable in fields], metadata=meta or None)
    bare = pa.schema([pa.field(n, t, not nullable) for n, t, nullable in fields])
    for s in (schema, bare, schema):
        data = wire.schema_bytes(s)
        assert data == s.serialize().to_pybytes()
        assert wire.read_schema(data, "schema").equals(s, check_metadata=True)
