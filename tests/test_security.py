"""Adversarial suite: authentication, authorization, replay, tampering and token transplant.

Every refusal must be a clean, typed error and the server must keep serving.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from tests.conformance_service import Conformance, ConformanceImpl
from tests.pki import DevCA
from vgi_flight import (
    AnnotatedBatch,
    AuthContext,
    BearerAuth,
    ErrorCode,
    HmacAuth,
    HmacKey,
    RpcError,
    RpcServer,
    ServerAuth,
    connect,
    introspect,
)
from vgi_flight._auth import request_payload

ALICE = HmacAuth("k-alice", b"a" * 32)
BOB = HmacAuth("k-bob", b"b" * 32)
TOKEN_KEY = b"t" * 32


def api_key_hook(request: Any) -> AuthContext | None:
    keys = request.headers.get("x-api-key", [])
    if keys == ["erin-key"]:
        return AuthContext(domain="api-key", authenticated=True, principal="erin")
    return None


POLICY = {
    "alice": ["*"],
    "bob": ["add", "count", "echo_stream", "whoami"],
    "carol": ["whoami"],
    "erin": ["whoami"],
}


def make_auth(**overrides: Any) -> ServerAuth:
    settings: dict[str, Any] = {
        "hmac_keys": {"k-alice": HmacKey(b"a" * 32, "alice"), "k-bob": HmacKey(b"b" * 32, "bob")},
        "bearer_tokens": {"carol-token-0123456789": "carol"},
        "authenticate": api_key_hook,
        "authorize": POLICY,
    }
    settings.update(overrides)
    return ServerAuth(**settings)


@pytest.fixture
def server() -> Iterator[RpcServer]:
    with RpcServer(Conformance, ConformanceImpl(), token_key=TOKEN_KEY, auth=make_auth()) as s:
        yield s


def code_of(exc: BaseException) -> str:
    text = str(exc)
    body, _ = json.JSONDecoder().raw_decode(text, text.index('{"vgi_error"'))
    return str(body["code"])


def assert_serving(server: RpcServer) -> None:
    with connect(Conformance, server.location, auth=ALICE) as proxy:
        assert proxy.add(a=1, b=1) == 2


def raw_action(server: RpcServer, name: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> list[Any]:
    client = flight.connect(server.location)
    try:
        return list(client.do_action(flight.Action(name, body), flight.FlightCallOptions(headers=headers)))
    finally:
        client.close()


def ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


ADD_BODY = ipc(pa.record_batch({"a": [1], "b": [2]}))


# --- authentication -----------------------------------------------------------------------------


def test_hmac_principals(server: RpcServer) -> None:
    with connect(Conformance, server.location, auth=ALICE) as proxy:
        assert proxy.whoami() == "alice"
        assert [b.batch.column(0)[0].as_py() for b in proxy.count(limit=2)] == [0, 1]
        with proxy.echo_stream() as session:
            assert session.exchange(AnnotatedBatch.from_pydict({"x": [1.0]})).batch.to_pydict() == {"x": [1.0]}
        session = proxy.echo_stream(tag="auth")
        session.exchange(AnnotatedBatch.from_pydict({"x": [1.0]}))
        session.cancel()
        proxy.count(limit=5).cancel()  # __cancel__ action, signed
    with connect(Conformance, server.location, auth=BOB) as proxy:
        assert proxy.whoami() == "bob"


def test_bearer_and_hook(server: RpcServer) -> None:
    with connect(Conformance, server.location, auth=BearerAuth("carol-token-0123456789")) as proxy:
        assert proxy.whoami() == "carol"
    client = flight.connect(server.location)
    options = flight.FlightCallOptions(headers=[(b"x-api-key", b"erin-key")])
    result = list(client.do_action(flight.Action("whoami", b""), options))[-1]
    assert pa.ipc.open_stream(result.body).read_all().to_pydict() == {"result": ["erin"]}
    client.close()


@pytest.mark.parametrize(
    "credential",
    [None, HmacAuth("k-alice", b"x" * 32), HmacAuth("k-nobody", b"a" * 32), BearerAuth("wrong-token")],
    ids=["none", "wrong-secret", "unknown-key", "wrong-bearer"],
)
def test_unauthenticated_calls_are_refused_uniformly(server: RpcServer, credential: Any) -> None:
    with connect(Conformance, server.location, auth=credential) as proxy:
        with pytest.raises(RpcError) as info:
            proxy.add(a=1)
        assert info.value.code is ErrorCode.UNAUTHENTICATED
        assert info.value.error_message == "authentication failed"
        with pytest.raises(RpcError) as stream_info:
            proxy.count(limit=1)
        assert stream_info.value.code is ErrorCode.UNAUTHENTICATED
    assert_serving(server)


def test_health_needs_no_credentials(server: RpcServer) -> None:
    assert raw_action(server, "__health__", b"", [])[0].body.to_pybytes() == b'{"status":"SERVING"}'


def test_replayed_request_is_refused(server: RpcServer) -> None:
    headers = ALICE.headers("DoAction", request_payload("DoAction", ADD_BODY, "add"))
    assert len(raw_action(server, "add", ADD_BODY, headers)) == 1
    with pytest.raises(flight.FlightUnauthenticatedError) as info:
        raw_action(server, "add", ADD_BODY, headers)
    assert code_of(info.value) == "UNAUTHENTICATED"
    assert_serving(server)


def test_signature_covers_the_body(server: RpcServer) -> None:
    headers = ALICE.headers("DoAction", request_payload("DoAction", ADD_BODY, "add"))
    other = ipc(pa.record_batch({"a": [100], "b": [2]}))
    with pytest.raises(flight.FlightUnauthenticatedError):
        raw_action(server, "add", other, headers)
    headers = ALICE.headers("DoAction", request_payload("DoAction", ADD_BODY, "add"))
    with pytest.raises(flight.FlightUnauthenticatedError):  # same body, other method
        raw_action(server, "echo_int", ADD_BODY, headers)
    assert_serving(server)


def _signed_header(kid: str, secret: bytes, ts: int, rpc: str, payload: bytes, nonce: str = "ab" * 12) -> str:
    digest = hashlib.sha256(payload).hexdigest()
    text = "\n".join(("VGI-HMAC-SHA256", kid, str(ts), nonce, rpc, digest)).encode()
    sig = base64.b64encode(hmac.new(secret, text, hashlib.sha256).digest()).decode()
    return f"VGI-HMAC-SHA256 kid={kid}, ts={ts}, nonce={nonce}, digest={digest}, sig={sig}"


@pytest.mark.parametrize("skew", [-3600, 3600])
def test_stale_or_future_timestamp_refused(server: RpcServer, skew: int) -> None:
    payload = request_payload("DoAction", ADD_BODY, "add")
    header = _signed_header("k-alice", b"a" * 32, int(time.time()) + skew, "DoAction", payload)
    with pytest.raises(flight.FlightUnauthenticatedError):
        raw_action(server, "add", ADD_BODY, [(b"authorization", header.encode())])
    fresh = _signed_header("k-alice", b"a" * 32, int(time.time()), "DoAction", payload, nonce="cd" * 12)
    assert len(raw_action(server, "add", ADD_BODY, [(b"authorization", fresh.encode())])) == 1


@pytest.mark.parametrize(
    "header",
    [
        "VGI-HMAC-SHA256 garbage",
        "VGI-HMAC-SHA256 kid=k-alice, kid=k-alice",
        "VGI-HMAC-SHA256 kid=k-alice, ts=1, nonce=00, digest=00, sig=!!notbase64!!",
        "Basic YWxpY2U6cGFzcw==",
        "Bearer ",
        "x" * 4000,
    ],
)
def test_malformed_authorization_headers(server: RpcServer, header: str) -> None:
    with pytest.raises(flight.FlightUnauthenticatedError):
        raw_action(server, "add", ADD_BODY, [(b"authorization", header.encode())])
    assert_serving(server)


def test_header_flood_is_refused_and_server_keeps_serving(server: RpcServer) -> None:
    headers = [(f"x-flood-{i}".encode(), b"v" * 100) for i in range(2000)]
    with pytest.raises((flight.FlightError, pa.ArrowException)):
        raw_action(server, "__health__", b"", headers)
    assert_serving(server)


# --- authorization ------------------------------------------------------------------------------


def test_per_method_policy(server: RpcServer) -> None:
    with connect(Conformance, server.location, auth=BOB) as proxy:
        assert proxy.add(a=1) == 11
        with pytest.raises(RpcError) as info:
            proxy.echo_int(value=1)
        assert info.value.code is ErrorCode.PERMISSION_DENIED
        with pytest.raises(RpcError) as stream_info:
            proxy.count_with_header(limit=1)
        assert stream_info.value.code is ErrorCode.PERMISSION_DENIED
    carol = connect(Conformance, server.location, auth=BearerAuth("carol-token-0123456789"))
    with carol as proxy, pytest.raises(RpcError, match="not allowed to call 'add'"):
        proxy.add(a=1)


def test_describe_is_authorized(server: RpcServer) -> None:
    assert "add" in introspect(server.location, auth=ALICE).methods
    with pytest.raises(RpcError) as info:
        introspect(server.location, auth=BOB)
    assert info.value.code is ErrorCode.PERMISSION_DENIED
    with pytest.raises(RpcError) as anon:
        introspect(server.location)
    assert anon.value.code is ErrorCode.UNAUTHENTICATED


def test_token_of_another_principal_is_refused(server: RpcServer) -> None:
    with connect(Conformance, server.location, auth=ALICE) as alice:
        session = alice.count(limit=3)
        token = session.token
    client = flight.connect(server.location)
    for credential in (BOB, ALICE):
        options = flight.FlightCallOptions(headers=credential.headers("DoGet", token))
        if credential is BOB:
            with pytest.raises(flight.FlightUnauthorizedError) as info:
                client.do_get(flight.Ticket(token), options).read_all()
            assert code_of(info.value) == "PERMISSION_DENIED"
        else:
            assert client.do_get(flight.Ticket(token), options).read_all().num_rows == 3
    # Cancelling another principal's stream is refused too.
    cancel = BOB.headers("DoAction", request_payload("DoAction", token, "__cancel__"))
    with pytest.raises(flight.FlightUnauthorizedError):
        list(client.do_action(flight.Action("__cancel__", token), flight.FlightCallOptions(headers=cancel)))
    client.close()


def test_resume_is_authorized_on_every_replica() -> None:
    strict = {**POLICY, "bob": ["whoami"]}
    with (
        RpcServer(Conformance, ConformanceImpl(), token_key=TOKEN_KEY, auth=make_auth()) as a,
        RpcServer(Conformance, ConformanceImpl(), token_key=TOKEN_KEY, auth=make_auth(authorize=strict)) as b,
    ):
        with connect(Conformance, a.location, auth=BOB) as bob:
            token = bob.count(limit=2).token
        client = flight.connect(b.location)
        options = flight.FlightCallOptions(headers=BOB.headers("DoGet", token))
        with pytest.raises(flight.FlightUnauthorizedError):
            client.do_get(flight.Ticket(token), options).read_all()
        client.close()


# --- mTLS, proxies, encrypted state ------------------------------------------------------------


def test_mtls_and_hmac_required_together() -> None:
    ca = DevCA()
    server_pem, client_pem = ca.issue("localhost", server=True), ca.issue("alice-laptop", server=False)
    tls = {"tls_certificates": [(server_pem.cert, server_pem.key)], "root_certificates": ca.cert_pem}
    auth = make_auth(require_mtls=True, authorize={**POLICY, "alice-laptop": ["whoami"]})
    with RpcServer(
        Conformance,
        ConformanceImpl(),
        "grpc+tls://127.0.0.1:0",
        token_key=TOKEN_KEY,
        auth=auth,
        verify_client=True,
        **tls,
    ) as server:
        client_tls = {"tls_root_certs": ca.cert_pem, "cert_chain": client_pem.cert, "private_key": client_pem.key}
        with connect(Conformance, server.location, auth=ALICE, **client_tls) as proxy:
            assert proxy.whoami() == "alice"
        with connect(Conformance, server.location, **client_tls) as proxy:  # certificate alone is enough identity
            assert proxy.whoami() == "alice-laptop"
    # Without client-certificate verification the identity is missing: HMAC alone is refused.
    with (
        RpcServer(
            Conformance, ConformanceImpl(), "grpc+tls://127.0.0.1:0", token_key=TOKEN_KEY, auth=auth, **tls
        ) as server,
        connect(Conformance, server.location, auth=ALICE, tls_root_certs=ca.cert_pem) as proxy,
    ):
        with pytest.raises(RpcError) as info:
            proxy.whoami()
        assert info.value.code is ErrorCode.UNAUTHENTICATED


def test_forwarded_identity_only_when_configured() -> None:
    headers = [(b"x-client-cert-identity", b"dave")]
    with RpcServer(
        Conformance,
        ConformanceImpl(),
        token_key=TOKEN_KEY,
        auth=make_auth(trusted_identity_header="x-client-cert-identity", authorize={"dave": ["whoami"]}),
    ) as server:
        result = raw_action(server, "whoami", b"", headers)[-1]
        assert pa.ipc.open_stream(result.body).read_all().to_pydict() == {"result": ["dave"]}
    plain = RpcServer(Conformance, ConformanceImpl(), token_key=TOKEN_KEY, auth=make_auth())
    with plain as server, pytest.raises(flight.FlightUnauthenticatedError):
        raw_action(server, "whoami", b"", headers)


def test_encrypted_state_hides_state_from_clients() -> None:
    encrypted = RpcServer(Conformance, ConformanceImpl(), token_key=TOKEN_KEY, encrypt_state=True)
    with encrypted as server, connect(Conformance, server.location) as proxy:
        session = proxy.count(limit=3, tag="secret-tag-value")
        assert [b.batch.column(0)[0].as_py() for b in session] == [0, 1, 2]
        assert b"secret-tag-value" not in session.token
    plain = RpcServer(Conformance, ConformanceImpl(), token_key=TOKEN_KEY)
    with plain as server, connect(Conformance, server.location) as proxy:
        assert b"secret-tag-value" in proxy.count(limit=1, tag="secret-tag-value").token


def test_require_hmac_refuses_certificate_only_calls() -> None:
    ca = DevCA()
    server_pem, client_pem = ca.issue("localhost", server=True), ca.issue("alice-laptop", server=False)
    auth = make_auth(require_mtls=True, require_hmac=True)
    server = RpcServer(
        Conformance,
        ConformanceImpl(),
        "grpc+tls://127.0.0.1:0",
        token_key=TOKEN_KEY,
        auth=auth,
        verify_client=True,
        tls_certificates=[(server_pem.cert, server_pem.key)],
        root_certificates=ca.cert_pem,
    )
    client_tls = {"tls_root_certs": ca.cert_pem, "cert_chain": client_pem.cert, "private_key": client_pem.key}
    with server:
        with connect(Conformance, server.location, **client_tls) as proxy, pytest.raises(RpcError) as info:
            proxy.whoami()
        assert info.value.code is ErrorCode.UNAUTHENTICATED
        with connect(Conformance, server.location, auth=ALICE, **client_tls) as proxy:
            assert proxy.whoami() == "alice"
