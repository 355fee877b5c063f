r"""Authentication and authorization: HMAC request signing, bearer tokens, mTLS identity, policies.

Flight middleware sees only a call's headers, never its body, and handlers cannot read headers.
So the work is split: :class:`AuthMiddlewareFactory` picks the credential out of the headers,
checks what needs nothing else (bearer tokens, the ``authenticate`` hook) and leaves a
:class:`CallCredential` on the call; the server's handler then calls :func:`resolve_identity`,
which verifies an HMAC signature against the RPC and payload the handler actually received
(signature, clock skew, payload digest, replay) and combines the outcome with the TLS peer
identity into an :class:`AuthContext`.

Everything here runs on every call, on a server whose caches are cold after each wait for the
network, where each extra Python call or object costs several times its microbenchmark figure:
per-key material (HMAC pads, AuthContexts) is derived once, and the per-call paths are flat.

HMAC scheme (normative text in docs/wire-protocol.md §11), header ``authorization``::

    VGI-HMAC-SHA256 kid=<key id>, ts=<unix seconds>, nonce=<hex>, digest=<hex>, sig=<base64>

where ``sig = HMAC-SHA256(secret, "VGI-HMAC-SHA256\\n" + kid + "\\n" + ts + "\\n" + nonce + "\\n" +
method + "\\n" + digest)``, ``method`` is the Flight RPC name (``DoAction``, ``DoGet``, ...) and
``digest`` is the hex SHA-256 of the request payload (:func:`request_payload`).
"""

from __future__ import annotations

import binascii
import hmac
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import pyarrow.flight as flight

from vgi_flight._context import AuthContext
from vgi_flight._gil import pin_thread_state
from vgi_flight._sha256 import HmacPads, hmac_pads, hmac_sha256, sha256_hex

SCHEME = "VGI-HMAC-SHA256"
MIDDLEWARE_KEY = "vgi-auth"
AUTH_FAILED = "authentication failed"

RPC_NAMES: dict[flight.FlightMethod, str] = {
    flight.FlightMethod.HANDSHAKE: "Handshake",
    flight.FlightMethod.LIST_FLIGHTS: "ListFlights",
    flight.FlightMethod.GET_FLIGHT_INFO: "GetFlightInfo",
    flight.FlightMethod.GET_SCHEMA: "GetSchema",
    flight.FlightMethod.DO_GET: "DoGet",
    flight.FlightMethod.DO_PUT: "DoPut",
    flight.FlightMethod.DO_ACTION: "DoAction",
    flight.FlightMethod.LIST_ACTIONS: "ListActions",
    flight.FlightMethod.DO_EXCHANGE: "DoExchange",
}

_HMAC_PREFIX = SCHEME + " "
# The header exactly as vgi-flight and the reference clients write it (fields in order, at most one
# space after each comma): parsed with one regex. Any other spelling goes through _parse_hmac, which
# gives the same fields for every header this pattern matches.
_HMAC_HEADER = re.compile(
    r"VGI-HMAC-SHA256 kid=([^,\s]*), ?ts=([^,\s]*), ?nonce=([^,\s]*), ?digest=([^,\s]*), ?sig=([^,\s]*)"
)
_HMAC_FIELDS = ("kid", "ts", "nonce", "digest", "sig")
_CACHE_LIMIT = 1024  # identities kept per credential (one per client certificate seen with it)
_SWEEP_INTERVAL = 1.0  # seconds between evictions of expired nonces


class AuthenticationError(Exception):
    """The caller could not be authenticated (reported to clients with one uniform message)."""


def request_payload(rpc: str, payload: bytes, action_type: str = "") -> bytes:
    """The bytes whose SHA-256 a signed request commits to.

    ``DoAction``: the action type, a newline, then the body. ``DoGet``: the ticket.
    ``GetFlightInfo``, ``GetSchema``, ``DoExchange``, ``DoPut``: the descriptor's command.
    Other RPCs: empty.
    """
    if rpc == "DoAction":
        return action_type.encode() + b"\n" + payload
    return payload


# --- client credentials -------------------------------------------------------------------------


class ClientCredential(Protocol):
    """Produces the headers that authenticate one call."""

    def headers(self, rpc: str, payload: bytes) -> list[tuple[bytes, bytes]]:
        """Return the headers for a call of ``rpc`` whose signed payload is ``payload``."""
        ...


@dataclass(frozen=True)
class HmacAuth:
    """Sign every call with a shared secret (the server maps ``key_id`` to a principal).

    Attributes:
        key_id: The key's id, known to the server.
        secret: The shared secret (at least 32 random bytes recommended).
    """

    key_id: str
    secret: bytes = field(repr=False)
    # Derived once per credential (see __post_init__): the key's HMAC pads and the constant prefixes.
    _pads: HmacPads = field(init=False, repr=False, compare=False)
    _sign_prefix: str = field(init=False, repr=False, compare=False)
    _header_prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pads", hmac_pads(self.secret))
        object.__setattr__(self, "_sign_prefix", f"{SCHEME}\n{self.key_id}\n")
        object.__setattr__(self, "_header_prefix", f"{SCHEME} kid={self.key_id}, ts=")

    def __reduce__(self) -> tuple[type[HmacAuth], tuple[str, bytes]]:
        # The derived hash states cannot be pickled or copied: rebuild them from the key.
        return (HmacAuth, (self.key_id, self.secret))

    def headers(self, rpc: str, payload: bytes) -> list[tuple[bytes, bytes]]:
        """Return the ``authorization`` header for one call."""
        ts = int(time.time())
        nonce = os.urandom(12).hex()
        digest = sha256_hex(payload)
        sig = hmac_sha256(self._pads, f"{self._sign_prefix}{ts}\n{nonce}\n{rpc}\n{digest}".encode())
        sig64 = binascii.b2a_base64(sig, newline=False).decode()
        return [(b"authorization", f"{self._header_prefix}{ts}, nonce={nonce}, digest={digest}, sig={sig64}".encode())]


@dataclass(frozen=True)
class BearerAuth:
    """Send a bearer token with every call.

    Attributes:
        token: The token.
    """

    token: str = field(repr=False)
    _header: tuple[bytes, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_header", (b"authorization", f"Bearer {self.token}".encode()))

    def headers(self, rpc: str, payload: bytes) -> list[tuple[bytes, bytes]]:
        """Return the ``authorization`` header."""
        return [self._header]


# --- server configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class HmacKey:
    """A request-signing key known to the server.

    Attributes:
        secret: The shared secret.
        principal: The identity a caller holding this key gets.
    """

    secret: bytes = field(repr=False)
    principal: str


@dataclass(frozen=True)
class AuthRequest:
    """What a custom ``authenticate`` hook sees.

    Attributes:
        rpc: The Flight RPC name.
        headers: Request headers (lower-case names, each with its values).
    """

    rpc: str
    headers: Mapping[str, list[str]]


Authenticate = Callable[[AuthRequest], AuthContext | None]
Authorize = Callable[[AuthContext, str], bool]


@dataclass(frozen=True)
class ServerAuth:
    """How a server authenticates and authorizes callers.

    A call is authenticated by the first credential that succeeds: an HMAC signature, a bearer
    token, or the ``authenticate`` hook. Without one, a verified client certificate (mTLS) is
    the identity; otherwise the call is refused unless ``allow_anonymous``.

    Attributes:
        hmac_keys: Key id → key for HMAC-signed requests.
        bearer_tokens: Bearer token → principal.
        authenticate: A hook that returns an AuthContext for a request, or ``None`` to pass.
        require_mtls: Also require a verified client certificate on every call.
        require_hmac: Require an HMAC signature on every call (with ``require_mtls``, both).
        trusted_identity_header: Behind a TLS-terminating proxy that verified the client
            certificate, take the client identity from this header. Only set this when the proxy
            strips the header from incoming requests.
        allow_anonymous: Let callers without credentials in (as the anonymous principal).
        max_clock_skew: Accepted difference between a signed request's timestamp and now (s).
        authorize: Either principal → allowed method names (``"*"`` allows all), or a callable
            ``(auth, method) -> bool``. ``None`` allows every authenticated caller everything.
        public_methods: Methods that need no credentials (health checks from orchestrators).
    """

    hmac_keys: Mapping[str, HmacKey] = field(default_factory=dict)
    bearer_tokens: Mapping[str, str] = field(default_factory=dict, repr=False)
    authenticate: Authenticate | None = None
    require_mtls: bool = False
    require_hmac: bool = False
    trusted_identity_header: str | None = None
    allow_anonymous: bool = False
    max_clock_skew: float = 300.0
    authorize: Authorize | Mapping[str, Collection[str]] | None = None
    public_methods: frozenset[str] = frozenset({"__health__"})

    def allows(self, auth: AuthContext, method: str) -> bool:
        """Whether ``auth`` may call ``method`` under the authorization policy."""
        policy = self.authorize
        if policy is None:
            return True
        if callable(policy):
            return bool(policy(auth, method))
        allowed = policy.get(auth.principal or "", ())
        return "*" in allowed or method in allowed


class NonceCache:
    """Remembers nonces of signed requests within the clock-skew window, to refuse replays."""

    def __init__(self, window: float, max_entries: int = 1_000_000) -> None:
        """Create a cache for nonces younger than ``window`` seconds, holding at most ``max_entries``."""
        self._window = window
        self._max = max_entries
        self._seen: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def first_use(self, nonce: Hashable, now: float) -> bool:
        """Record ``nonce``; return ``False`` if it was seen within the window (a replay).

        Nonces older than twice the window (a timestamp may be skewed either way) are evicted at
        most once per second, so they may be refused for up to a second longer; the oldest are
        also evicted while the cache is full.
        """
        with self._lock:
            seen = self._seen
            if now >= self._next_sweep or len(seen) >= self._max:
                self._sweep(now)
            if nonce in seen:
                return False
            seen[nonce] = now
            return True

    def _sweep(self, now: float) -> None:
        seen = self._seen
        horizon = now - 2 * self._window
        while seen:
            oldest, seen_at = next(iter(seen.items()))
            if seen_at >= horizon and len(seen) < self._max:
                break
            del seen[oldest]
        self._next_sweep = now + min(_SWEEP_INTERVAL, self._window)


def _frozen_context(domain: str | None, principal: str | None, claims: Mapping[str, Any]) -> AuthContext:
    """An authenticated AuthContext whose claims cannot be changed (it is shared between calls)."""
    return AuthContext(domain=domain, authenticated=True, principal=principal, claims=MappingProxyType(dict(claims)))


def _with_certificate(auth: AuthContext, identity: str) -> AuthContext:
    """``auth`` with the client-certificate identity added as the ``mtls_identity`` claim."""
    return AuthContext(auth.domain, True, auth.principal, dict(auth.claims, mtls_identity=identity))


class _Identity:
    """What a verified built-in credential proves: its AuthContext, built once, and the same per certificate."""

    __slots__ = ("_with_peer", "auth")

    def __init__(self, auth: AuthContext) -> None:
        self.auth = auth
        self._with_peer: dict[str, AuthContext] = {}

    def with_peer(self, identity: str) -> AuthContext:
        """The AuthContext with the client-certificate ``identity`` added (cached per identity)."""
        auth = self._with_peer.get(identity)
        if auth is None:
            if len(self._with_peer) >= _CACHE_LIMIT:
                self._with_peer.clear()
            base = self.auth
            auth = _frozen_context(base.domain, base.principal, {**base.claims, "mtls_identity": identity})
            self._with_peer[identity] = auth
        return auth


_MTLS: dict[str, AuthContext] = {}  # client-certificate identity -> its AuthContext


def _mtls_identity(identity: str) -> AuthContext:
    auth = _MTLS.get(identity)
    if auth is None:
        if len(_MTLS) >= _CACHE_LIMIT:
            _MTLS.clear()
        auth = _MTLS[identity] = _frozen_context("mtls", identity, {})
    return auth


class CallCredential(flight.ServerMiddleware):  # type: ignore[misc]  # pyarrow ships no type stubs
    """What a call's headers presented, kept on the call by the middleware for the handler.

    The middleware sees only headers, so an HMAC signature, which covers the RPC and the request
    payload, is verified by :func:`resolve_identity` in the handler.

    Attributes:
        verifier: The factory that made it (it verifies ``signed``).
        auth: What a credential already verified proves (bearer token, hook), or ``None``.
        failed: A credential was presented and was invalid.
        signed: An HMAC ``authorization`` header, still to be verified.
        forwarded_identity: Client identity forwarded by a trusted proxy.
    """

    __slots__ = ("auth", "failed", "forwarded_identity", "signed", "verifier")

    def __init__(
        self,
        verifier: AuthMiddlewareFactory,
        auth: _Identity | AuthContext | None = None,
        failed: bool = False,
        signed: str | None = None,
        forwarded_identity: str | None = None,
    ) -> None:
        """Record the outcome of checking one call's headers (done by :class:`AuthMiddlewareFactory`)."""
        self.verifier = verifier
        self.auth = auth
        self.failed = failed
        self.signed = signed
        self.forwarded_identity = forwarded_identity


def _parse_hmac(value: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in value[len(SCHEME) :].split(","):
        key, sep, val = part.strip().partition("=")
        if not sep or key in fields:
            raise AuthenticationError("malformed signature header")
        fields[key] = val
    return fields


def _hmac_fields(value: str) -> tuple[str, ...]:
    """``(kid, ts, nonce, digest, sig)`` of an HMAC header ("" for a missing field).

    Raises:
        AuthenticationError: The header is malformed.
    """
    match = _HMAC_HEADER.fullmatch(value)
    if match is not None:
        return match.groups()
    fields = _parse_hmac(value)
    return tuple(fields.get(k, "") for k in _HMAC_FIELDS)


class AuthMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Checks each call's credential headers and leaves a :class:`CallCredential` on the call.

    Calls without any credential (and no hook or forwarded identity to consider) get no middleware
    at all: the handler then finds none, which means the same.
    """

    def __init__(self, config: ServerAuth) -> None:
        """Create the factory for ``config``."""
        super().__init__()
        self._config = config
        self._nonces = NonceCache(config.max_clock_skew)
        self._max_skew = config.max_clock_skew
        self._hook = config.authenticate
        self._identity_header = config.trusted_identity_header.lower() if config.trusted_identity_header else None
        self._failed = CallCredential(self, failed=True)
        # key id -> (inner HMAC state, outer HMAC state, identity); None: the stand-in for unknown key ids,
        # checked like a real key so that unknown key ids take as long as known ones.
        self._keys: dict[str, tuple[HmacPads, _Identity | None]] = {}
        for kid, key in config.hmac_keys.items():
            identity = _Identity(_frozen_context("hmac", key.principal, {"key_id": kid}))
            self._keys[kid] = (hmac_pads(key.secret), identity)
        self._unknown_key: tuple[HmacPads, _Identity | None] = (hmac_pads(b"\x00" * 32), None)
        self._bearer = [
            (token.encode(), _Identity(_frozen_context("bearer", principal, {})))
            for token, principal in config.bearer_tokens.items()
        ]

    def start_call(self, info: Any, headers: Mapping[str, list[str]]) -> CallCredential | None:
        """Check the call's credential headers; never raise (the handler reports failures uniformly)."""
        pin_thread_state()  # runs on the gRPC thread that then runs the handler: keep its thread state
        values = headers.get("authorization")
        forwarded: str | None = None
        if self._identity_header is not None:
            forwarded_values = headers.get(self._identity_header)
            forwarded = forwarded_values[0] if forwarded_values else None
        if values:
            if len(values) > 1:
                return self._failed  # more than one authorization header
            value = values[0]
            if self._keys and value.startswith(_HMAC_PREFIX):
                return CallCredential(self, None, False, value, forwarded)
            if self._bearer and value.startswith("Bearer "):
                identity = self._check_bearer(value)
                if identity is None:
                    return self._failed
                return CallCredential(self, identity, False, None, forwarded)
        if self._hook is not None:
            try:
                auth = self._hook(AuthRequest(RPC_NAMES.get(info.method, ""), headers))
            except Exception:  # a failing hook must not crash the call; treat it as refusal
                return self._failed
            return CallCredential(self, auth, False, None, forwarded)
        if values:
            return self._failed  # a scheme nothing here accepts
        return None if forwarded is None else CallCredential(self, None, False, None, forwarded)

    def _check_bearer(self, value: str) -> _Identity | None:
        token = value[len("Bearer ") :].strip().encode()
        found = None
        for known, identity in self._bearer:  # compare every token in constant time
            if hmac.compare_digest(known, token):
                found = identity
        return found

    def verify_signature(self, value: str, rpc: str, payload: bytes) -> _Identity:
        """Verify an HMAC header for a call of ``rpc`` carrying ``payload``; return what its key proves.

        Checks, in order: the signature (in constant time, also for unknown key ids), the timestamp
        against the skew window, the payload digest, and that the nonce was not used before (only
        requests that pass every other check record their nonce).

        Raises:
            AuthenticationError: The request is refused.
        """
        # It runs on every signed call: HMAC from the key's precomputed pads (see vgi_flight._sha256).
        try:
            match = _HMAC_HEADER.fullmatch(value)
            kid, ts, nonce, digest, sig = match.groups() if match is not None else _hmac_fields(value)
            pads, identity = self._keys.get(kid, self._unknown_key)
            expected = hmac_sha256(pads, f"{SCHEME}\n{kid}\n{ts}\n{nonce}\n{rpc}\n{digest}".encode())
            try:
                given = binascii.a2b_base64(sig, strict_mode=True)  # = base64.b64decode(sig, validate=True)
            except ValueError:
                given = b""
            if not hmac.compare_digest(expected, given) or identity is None:
                raise AuthenticationError("bad signature")
            now = time.time()
            if not ts.isdigit() or abs(now - int(ts)) > self._max_skew:
                raise AuthenticationError("timestamp outside the accepted window")
            actual = sha256_hex(payload)
            if not hmac.compare_digest(actual, digest):
                raise AuthenticationError("payload does not match the signed digest")
            if len(nonce) < 16 or not self._nonces.first_use((kid, nonce), now):
                raise AuthenticationError("replayed request")
            return identity
        except AuthenticationError:
            raise
        except Exception:  # anything unexpected in a header refuses the call like any other failure
            raise AuthenticationError(AUTH_FAILED) from None


def resolve_identity(
    config: ServerAuth | None,
    credential: CallCredential | None,
    peer_identity: str,
    *,
    rpc: str,
    payload: bytes,
    method: str,
) -> AuthContext:
    """Combine a call's credential, its TLS peer identity and the config into one AuthContext.

    Args:
        config: The server's auth configuration (``None``: accept everyone, mTLS identity if any).
        credential: What the middleware found in the headers (``None``: no middleware, no credential).
        peer_identity: The verified client-certificate identity ("" without mTLS).
        rpc: The Flight RPC name.
        payload: The request payload (:func:`request_payload`), which a signature must cover.
        method: The vgi-flight method (or reserved action) being called.

    Raises:
        AuthenticationError: The caller is not authenticated.
    """
    if config is None:
        return _mtls_identity(peer_identity) if peer_identity else AuthContext.anonymous()
    presented: _Identity | AuthContext | None = None
    certificate = peer_identity  # the client identity from mTLS, or from a trusted proxy
    certificate_domain = "mtls"
    if credential is not None:
        if credential.failed:
            raise AuthenticationError(AUTH_FAILED)
        signed = credential.signed
        presented = credential.auth if signed is None else credential.verifier.verify_signature(signed, rpc, payload)
        if credential.forwarded_identity and config.trusted_identity_header:
            certificate, certificate_domain = credential.forwarded_identity, "mtls-proxy"
    auth = presented.auth if isinstance(presented, _Identity) else presented
    if config.require_hmac and (auth is None or auth.domain != "hmac"):
        if method in config.public_methods:
            return AuthContext.anonymous()
        raise AuthenticationError(AUTH_FAILED)
    if config.require_mtls and not certificate:
        if method in config.public_methods:
            return AuthContext.anonymous()
        raise AuthenticationError(AUTH_FAILED)
    if auth is not None:
        if not certificate:
            return auth
        if isinstance(presented, _Identity):
            return presented.with_peer(certificate)
        return _with_certificate(auth, certificate)
    if certificate:
        if certificate_domain == "mtls":
            return _mtls_identity(certificate)
        return AuthContext(domain=certificate_domain, authenticated=True, principal=certificate)
    if config.allow_anonymous or method in config.public_methods:
        return AuthContext.anonymous()
    raise AuthenticationError(AUTH_FAILED)
