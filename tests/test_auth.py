"""Request signing and its verification in-process: header format, parsing, nonces, identities.

The end-to-end refusals (every failure is one UNAUTHENTICATED message) are in test_security.py;
these tests pin the pieces the fast paths in ``vgi_flight._auth`` are built from to the normative
format of docs/wire-protocol.md §11 and to the straightforward implementations they replace.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import hmac
import os
import pickle
import time
from typing import Any
from unittest import mock

import pyarrow.flight as flight
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vgi_flight import AuthContext, BearerAuth, HmacAuth, HmacKey, ServerAuth
from vgi_flight._auth import (
    _HMAC_FIELDS,
    _HMAC_HEADER,
    AuthenticationError,
    AuthMiddlewareFactory,
    CallCredential,
    NonceCache,
    _hmac_fields,
    _parse_hmac,
    request_payload,
    resolve_identity,
)
from vgi_flight._sha256 import SMALL_INPUT, hmac_pads, hmac_sha256, pick_short_sha256, sha256_hex


def examples(default: int) -> int:
    """Hypothesis examples per property: ``default`` in CI, ``VGI_FUZZ_EXAMPLES`` for long local runs."""
    return max(default, int(os.environ.get("VGI_FUZZ_EXAMPLES", "0")))


SECRET = b"s" * 32
KID = "k-alice"
RPCS = ["DoAction", "DoGet", "GetFlightInfo", "GetSchema", "DoExchange", "DoPut", "ListActions"]
PAYLOAD = request_payload("DoAction", b"body", "add")
DO_ACTION = flight.CallInfo(flight.FlightMethod.DO_ACTION)


def reference_header(kid: str, secret: bytes, ts: int | str, nonce: str, rpc: str, payload: bytes) -> str:
    """The header exactly as wire-protocol.md §11.1 defines it, with the standard library only."""
    digest = hashlib.sha256(payload).hexdigest()
    text = "\n".join(["VGI-HMAC-SHA256", kid, str(ts), nonce, rpc, digest]).encode()
    sig = base64.b64encode(hmac.new(secret, text, hashlib.sha256).digest()).decode()
    return f"VGI-HMAC-SHA256 kid={kid}, ts={ts}, nonce={nonce}, digest={digest}, sig={sig}"


def signed(rpc: str = "DoAction", payload: bytes = PAYLOAD, *, ts: int | None = None, nonce: str | None = None) -> str:
    """A fresh header signed with ``KID``/``SECRET`` (the reference implementation)."""
    when = int(time.time()) if ts is None else ts
    return reference_header(KID, SECRET, when, nonce or os.urandom(12).hex(), rpc, payload)


def make_factory(**overrides: Any) -> AuthMiddlewareFactory:
    settings_: dict[str, Any] = {"hmac_keys": {KID: HmacKey(SECRET, "alice")}}
    settings_.update(overrides)
    return AuthMiddlewareFactory(ServerAuth(**settings_))


# --- the client's header ------------------------------------------------------------------------

header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","), min_size=1)


@given(
    kid=header_text,
    secret=st.binary(max_size=200),
    rpc=st.sampled_from(RPCS),
    payload=st.binary(max_size=3 * SMALL_INPUT),
    ts=st.integers(0, 2**40),
    nonce=st.binary(min_size=12, max_size=12),
)
@settings(max_examples=examples(200), deadline=None)
def test_client_header_is_the_specified_one(
    kid: str, secret: bytes, rpc: str, payload: bytes, ts: int, nonce: bytes
) -> None:
    with mock.patch("time.time", return_value=ts + 0.75), mock.patch("os.urandom", return_value=nonce):
        headers = HmacAuth(kid, secret).headers(rpc, payload)
    assert headers == [(b"authorization", reference_header(kid, secret, ts, nonce.hex(), rpc, payload).encode())]


@given(secret=st.binary(max_size=200), message=st.binary(max_size=600))
@settings(max_examples=examples(300), deadline=None)
def test_precomputed_pads_compute_hmac_sha256(secret: bytes, message: bytes) -> None:
    assert hmac_sha256(hmac_pads(secret), message) == hmac.digest(secret, message, "sha256")


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, SMALL_INPUT - 1, SMALL_INPUT, SMALL_INPUT + 1, 1 << 20])
def test_sha256_hex_is_sha256(size: int) -> None:
    payload = os.urandom(size)
    assert sha256_hex(payload) == hashlib.sha256(payload).hexdigest()


def test_short_sha256_is_openssl_in_fips_mode() -> None:
    with mock.patch("_hashlib.get_fips_mode", return_value=1):
        assert pick_short_sha256() is hashlib.sha256
    assert pick_short_sha256()(b"abc").hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_credentials_copy_and_pickle() -> None:
    auth = HmacAuth(KID, SECRET)
    for clone in (pickle.loads(pickle.dumps(auth)), copy.copy(auth), copy.deepcopy(auth)):
        assert clone == auth
        with mock.patch("time.time", return_value=1e9), mock.patch("os.urandom", return_value=b"n" * 12):
            assert clone.headers("DoGet", b"t") == auth.headers("DoGet", b"t")
    other = dataclasses.replace(auth, secret=b"x" * 32)
    with mock.patch("time.time", return_value=1e9), mock.patch("os.urandom", return_value=b"n" * 12):
        assert other.headers("DoGet", b"t") != auth.headers("DoGet", b"t")
    assert "secret" not in repr(auth)
    assert repr(SECRET) not in repr(auth)
    bearer = BearerAuth("tok")
    assert bearer.headers("DoGet", b"") == [(b"authorization", b"Bearer tok")]
    assert pickle.loads(pickle.dumps(bearer)) == bearer


# --- parsing ------------------------------------------------------------------------------------

# Mostly values and separators the fast path takes, so both branches are exercised.
value_text = st.one_of(
    st.text(st.sampled_from(list("ab0=/+")), max_size=6), st.text(st.sampled_from(list("ab0=/+ ,\t")), max_size=6)
)


@st.composite
def hmac_headers(draw: st.DrawFn) -> str:
    """Canonical headers, and respellings: other order, spacing, missing, repeated or extra fields."""
    names = list(_HMAC_FIELDS)
    if draw(st.booleans()):
        names = draw(st.permutations(names))
        names = names[: draw(st.integers(0, len(names)))] + draw(st.lists(st.sampled_from([*_HMAC_FIELDS, "x"])))
    parts = [f"{name}={draw(value_text)}" for name in names]
    messy = draw(st.booleans())
    separators = draw(
        st.lists(st.sampled_from([",", ", ", ",  ", " , ", ",\t"] if messy else [",", ", "]), min_size=len(parts))
    )
    return "VGI-HMAC-SHA256 " + "".join(sep + part for sep, part in zip(["", *separators], parts, strict=False))


@given(hmac_headers())
@example("VGI-HMAC-SHA256 kid=a, ts=1, nonce=b, digest=0, sig=a+/=")
@example("VGI-HMAC-SHA256 kid=a=b,ts=,nonce=b, digest=0,sig=")
@settings(max_examples=examples(500), deadline=None)
def test_fast_parser_agrees_with_the_general_one(header: str) -> None:
    try:
        general: tuple[str, ...] | None = tuple(_parse_hmac(header).get(k, "") for k in _HMAC_FIELDS)
        names = set(_parse_hmac(header))
    except AuthenticationError:
        general, names = None, set()
    match = _HMAC_HEADER.fullmatch(header)
    if match is not None:  # the fast path only takes headers the general parser reads the same way
        assert names == set(_HMAC_FIELDS)
        assert match.groups() == general
    if general is None:
        with pytest.raises(AuthenticationError):
            _hmac_fields(header)
    else:
        assert _hmac_fields(header) == general


# --- verification -------------------------------------------------------------------------------


def test_signed_request_is_accepted_once() -> None:
    factory = make_factory()
    header = HmacAuth(KID, SECRET).headers("DoAction", PAYLOAD)[0][1].decode()
    identity = factory.verify_signature(header, "DoAction", PAYLOAD)
    assert identity.auth.principal == "alice"
    assert identity.auth.domain == "hmac"
    assert dict(identity.auth.claims) == {"key_id": KID}
    with pytest.raises(AuthenticationError):
        factory.verify_signature(header, "DoAction", PAYLOAD)  # replay


def test_respelled_header_is_accepted() -> None:
    factory = make_factory()
    header = signed()
    fields = dict(part.split("=", 1) for part in header.removeprefix("VGI-HMAC-SHA256 ").split(", "))
    respelled = "VGI-HMAC-SHA256 " + " ,".join(f"{k}={fields[k]}" for k in reversed(_HMAC_FIELDS)) + ",x=1"
    assert _HMAC_HEADER.fullmatch(respelled) is None
    assert factory.verify_signature(respelled, "DoAction", PAYLOAD).auth.principal == "alice"


def _tampered(header: str, name: str, value: str) -> str:
    fields = dict(part.split("=", 1) for part in header.removeprefix("VGI-HMAC-SHA256 ").split(", "))
    fields[name] = value
    return "VGI-HMAC-SHA256 " + ", ".join(f"{k}={v}" for k, v in fields.items())


@pytest.mark.parametrize(
    "case",
    [
        "other rpc",
        "other payload",
        "other action",
        "wrong secret",
        "unknown key",
        "stale",
        "future",
        "short nonce",
        "bad base64",
        "unpadded base64",
        "digest field changed",
        "duplicate field",
        "no fields",
        "superscript ts",
    ],
)
def test_refusals(case: str) -> None:
    factory = make_factory()
    now = int(time.time())
    header, rpc, payload = signed(), "DoAction", PAYLOAD
    if case == "other rpc":
        rpc = "DoGet"
    elif case == "other payload":
        payload = request_payload("DoAction", b"body!", "add")
    elif case == "other action":
        payload = request_payload("DoAction", b"body", "sub")
    elif case == "wrong secret":
        header = reference_header(KID, b"x" * 32, now, "ab" * 12, rpc, payload)
    elif case == "unknown key":
        header = reference_header("k-nobody", SECRET, now, "ab" * 12, rpc, payload)
    elif case == "stale":
        header = signed(ts=now - 3600)
    elif case == "future":
        header = signed(ts=now + 3600)
    elif case == "short nonce":
        header = signed(nonce="ab" * 7)
    elif case == "bad base64":
        header = _tampered(header, "sig", "!!notbase64!!")
    elif case == "unpadded base64":
        header = _tampered(header, "sig", header.rsplit("sig=", 1)[1].rstrip("="))
    elif case == "digest field changed":
        header = _tampered(header, "digest", hashlib.sha256(b"other").hexdigest())
    elif case == "duplicate field":
        header = header + ", kid=" + KID
    elif case == "no fields":
        header = "VGI-HMAC-SHA256 garbage"
    elif case == "superscript ts":
        header = reference_header(KID, SECRET, "\u00b2", "ab" * 12, rpc, payload)  # isdigit(), yet int() raises
    with pytest.raises(AuthenticationError):
        factory.verify_signature(header, rpc, payload)


def test_refused_payload_does_not_use_up_the_nonce() -> None:
    factory = make_factory()
    header = signed()
    with pytest.raises(AuthenticationError):
        factory.verify_signature(header, "DoAction", b"tampered")
    assert factory.verify_signature(header, "DoAction", PAYLOAD).auth.principal == "alice"


# --- the middleware -----------------------------------------------------------------------------


def test_start_call_outcomes() -> None:
    hook_calls: list[tuple[str, Any]] = []

    def hook(request: Any) -> AuthContext | None:
        hook_calls.append((request.rpc, request.headers))
        return AuthContext("api-key", True, "erin") if request.headers.get("x-api-key") == ["e"] else None

    plain = make_factory(bearer_tokens={"tok-0123456789": "carol"})
    assert plain.start_call(DO_ACTION, {}) is None  # no credential: no middleware at all
    header = signed()
    credential = plain.start_call(DO_ACTION, {"authorization": [header]})
    assert isinstance(credential, CallCredential)
    assert credential.signed == header
    assert not credential.failed
    for refused in (
        {"authorization": [header, header]},
        {"authorization": ["Basic YWxpY2U6cGFzcw=="]},
        {"authorization": ["Bearer wrong"]},
        {"authorization": ["Bearer "]},
    ):
        outcome = plain.start_call(DO_ACTION, refused)
        assert outcome is not None
        assert outcome.failed
    bearer = plain.start_call(DO_ACTION, {"authorization": ["Bearer tok-0123456789"]})
    assert bearer is not None
    assert not bearer.failed
    hooked = make_factory(authenticate=hook)
    erin = hooked.start_call(DO_ACTION, {"x-api-key": ["e"]})
    assert erin is not None
    assert isinstance(erin.auth, AuthContext)
    assert erin.auth.principal == "erin"
    assert hook_calls[-1][0] == "DoAction"
    nobody = hooked.start_call(DO_ACTION, {})
    assert nobody is not None
    assert nobody.auth is None
    assert not nobody.failed

    def broken(request: Any) -> AuthContext | None:
        raise RuntimeError("hook failed")

    failing = make_factory(authenticate=broken).start_call(DO_ACTION, {})
    assert failing is not None
    assert failing.failed
    proxied = make_factory(trusted_identity_header="X-Client-Identity")
    forwarded = proxied.start_call(DO_ACTION, {"x-client-identity": ["dave"]})
    assert forwarded is not None
    assert forwarded.forwarded_identity == "dave"


def test_identities_are_shared_and_read_only() -> None:
    config = ServerAuth(hmac_keys={KID: HmacKey(SECRET, "alice")})
    factory = AuthMiddlewareFactory(config)

    def resolve(peer: str) -> AuthContext:
        credential = factory.start_call(DO_ACTION, {"authorization": [signed()]})
        return resolve_identity(config, credential, peer, rpc="DoAction", payload=PAYLOAD, method="add")

    first, second = resolve("alice-laptop"), resolve("alice-laptop")
    assert first is second
    assert (first.domain, first.principal, dict(first.claims)) == (
        "hmac",
        "alice",
        {"key_id": KID, "mtls_identity": "alice-laptop"},
    )
    assert resolve("").claims == {"key_id": KID}
    with pytest.raises(TypeError):
        first.claims["key_id"] = "forged"  # type: ignore[index]
    mtls = resolve_identity(None, None, "bob-laptop", rpc="DoAction", payload=b"", method="add")
    assert (mtls.domain, mtls.principal, mtls.authenticated) == ("mtls", "bob-laptop", True)
    assert resolve_identity(None, None, "", rpc="DoAction", payload=b"", method="add") == AuthContext.anonymous()


def test_hook_identity_gets_the_certificate_as_before() -> None:
    config = ServerAuth(authenticate=lambda request: AuthContext("api-key", True, "erin", {"tier": "gold"}))
    factory = AuthMiddlewareFactory(config)
    credential = factory.start_call(DO_ACTION, {})
    auth = resolve_identity(config, credential, "erin-laptop", rpc="DoAction", payload=b"", method="whoami")
    assert (auth.domain, auth.principal, auth.claims) == (
        "api-key",
        "erin",
        {"tier": "gold", "mtls_identity": "erin-laptop"},
    )


# --- the nonce cache ----------------------------------------------------------------------------


def test_nonce_cache_refuses_replays_within_the_window_and_forgets_after() -> None:
    cache = NonceCache(window=10)
    assert cache.first_use(("k", "n1"), 1000.0)
    assert not cache.first_use(("k", "n1"), 1015.0)
    assert cache.first_use(("k2", "n1"), 1015.0)  # nonces are per key
    assert cache.first_use(("k", "n1"), 1021.5)  # older than twice the window: forgotten


def test_nonce_cache_is_bounded() -> None:
    cache = NonceCache(window=300, max_entries=3)
    for i in range(10):
        assert cache.first_use(("k", f"n{i}"), 1000.0 + i * 0.01)
        assert len(cache._seen) <= 3
    assert not cache.first_use(("k", "n9"), 1000.2)
