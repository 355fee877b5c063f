"""The benchmark's raw-Flight request signing: the raw side of the mTLS+HMAC mode must really check it."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.flight as flight
import pytest

from benchmarks.raw_hmac import HmacVerifier, signed_options
from benchmarks.services import HMAC_KEY_ID, HMAC_SECRET, RawServer, add_ipc, read_one


@pytest.fixture
def client() -> Iterator[flight.FlightClient]:
    server = RawServer("grpc://127.0.0.1:0", hmac=HmacVerifier({HMAC_KEY_ID: HMAC_SECRET}))
    with server, flight.connect(f"grpc://127.0.0.1:{server.port}") as client:
        yield client


def signed(rpc: str, payload: bytes, secret: bytes = HMAC_SECRET) -> flight.FlightCallOptions:
    return signed_options(HMAC_KEY_ID, secret, rpc, payload)


def test_signed_calls_are_served(client: flight.FlightClient) -> None:
    body = add_ipc(2, 40)
    results = list(client.do_action(flight.Action("add", body), signed("DoAction", b"add\n" + body)))
    assert read_one(results[-1].body).column(0)[0].as_py() == 42
    ticket = b"small:3"
    assert client.do_get(flight.Ticket(ticket), signed("DoGet", ticket)).read_all().num_rows == 3


def test_unsigned_call_is_refused(client: flight.FlightClient) -> None:
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(client.do_action(flight.Action("noop", b"")))


@pytest.mark.parametrize(
    ("rpc", "payload", "secret"),
    [
        ("DoAction", b"noop\nother body", HMAC_SECRET),  # signed over another payload
        ("DoGet", b"noop\n", HMAC_SECRET),  # signed for another RPC
        ("DoAction", b"noop\n", b"x" * 32),  # signed with another key
    ],
)
def test_mismatched_signature_is_refused(client: flight.FlightClient, rpc: str, payload: bytes, secret: bytes) -> None:
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(client.do_action(flight.Action("noop", b""), signed(rpc, payload, secret)))


def test_replayed_signature_is_refused(client: flight.FlightClient) -> None:
    options = signed("DoAction", b"noop\n")
    list(client.do_action(flight.Action("noop", b""), options))
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(client.do_action(flight.Action("noop", b""), options))
