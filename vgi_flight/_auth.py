r"""Authentication and authorization: HMAC request signing, bearer tokens, mTLS identity, policies.

Flight middleware sees only a call's headers, never its body, and handlers cannot read headers.
So the work is split: :class:`AuthMiddlewareFactory` parses and verifies the credential in the
headers (signature, clock skew, replay) and keeps the outcome on the call; the server's handler
then checks the signed body digest against the real request and combines the outcome with the
TLS peer identity into an :class:`AuthContext`.

HMAC scheme (normative text in docs/wire-protocol.md §11), header ``authorization``::

    VGI-HMAC-SHA256 kid=<key id>, ts=<unix seconds>, nonce=<hex>, digest=<hex>, sig=<base64>

where ``sig = HMAC-SHA256(secret, "VGI-HMAC-SHA256\\n" + kid + "\\n" + ts + "\\n" + nonce + "\\n" +
method + "\\n" + digest)``, ``method`` is the Flight RPC name (``DoAction``, ``DoGet``, ...) and
``digest`` is the hex SHA-256 of the request payload (:func:`request_payload`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow.flight as flight

from vgi_flight._context import AuthContext

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


def _string_to_sign(kid: str, ts: str, nonce: str, rpc: str, digest: str) -> bytes:
    return "\n".join((SCHEME, kid, ts, nonce, rpc, digest)).encode()


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

    def headers(self, rpc: str, payload: bytes) -> list[tuple[bytes, bytes]]:
        """Return the ``authorization`` header for one call."""
        ts = str(int(time.time()))
        nonce = os.urandom(12).hex()
        digest = hashlib.sha256(payload).hexdigest()
        sig = hmac.new(self.secret, _string_to_sign(self.key_id, ts, nonce, rpc, digest), hashlib.sha256).digest()
        value = (
            f"{SCHEME} kid={self.key_id}, ts={ts}, nonce={nonce}, digest={digest}, sig={base64.b64encode(sig).decode()}"
        )
        return [(b"authorization", value.encode())]


@dataclass(frozen=True)
class BearerAuth:
    """Send a bearer token with every call.

    Attributes:
        token: The token.
    """

    token: str = field(repr=False)

    def headers(self, rpc: str, payload: bytes) -> list[tuple[bytes, bytes]]:
        """Return the ``authorization`` header."""
        return [(b"authorization", f"Bearer {self.token}".encode())]


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
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_use(self, nonce: str, now: float) -> bool:
        """Record ``nonce``; return ``False`` if it was seen within the window (a replay)."""
        with self._lock:
            horizon = now - 2 * self._window  # a timestamp may be skewed either way
            while self._seen:
                oldest, seen_at = next(iter(self._seen.items()))
                if seen_at >= horizon and len(self._seen) < self._max:
                    break
                del self._seen[oldest]
            if nonce in self._seen:
                return False
            self._seen[nonce] = now
            return True


@dataclass
class CallCredential:
    """The outcome of checking one call's headers (kept on the call by the middleware).

    Attributes:
        auth: The identity the credential proved, or ``None`` when none was presented.
        failed: A credential was presented and was invalid.
        digest: The payload digest an HMAC signature committed to (checked by the handler).
        forwarded_identity: Client identity forwarded by a trusted proxy.
    """

    auth: AuthContext | None = None
    failed: bool = False
    digest: str | None = None
    forwarded_identity: str | None = None


class _AuthMiddleware(flight.ServerMiddleware):  # type: ignore[misc]  # pyarrow ships no type stubs
    def __init__(self, credential: CallCredential) -> None:
        super().__init__()
        self.credential = credential


def _parse_hmac(value: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in value[len(SCHEME) :].split(","):
        key, sep, val = part.strip().partition("=")
        if not sep or key in fields:
            raise AuthenticationError("malformed signature header")
        fields[key] = val
    return fields


class AuthMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Checks each call's credential headers and leaves a :class:`CallCredential` on the call."""

    def __init__(self, config: ServerAuth) -> None:
        """Create the factory for ``config``."""
        super().__init__()
        self._config = config
        self._nonces = NonceCache(config.max_clock_skew)

    def start_call(self, info: Any, headers: Mapping[str, list[str]]) -> _AuthMiddleware:
        """Verify the call's credential; never raise (the handler reports failures uniformly)."""
        credential = CallCredential()
        config = self._config
        if config.trusted_identity_header:
            forwarded = headers.get(config.trusted_identity_header.lower())
            credential.forwarded_identity = forwarded[0] if forwarded else None
        rpc = RPC_NAMES.get(info.method, "")
        values = headers.get("authorization", [])
        try:
            if len(values) > 1:
                raise AuthenticationError("more than one authorization header")
            handled = bool(values) and self._check(values[0], rpc, credential)
            if not handled:
                if config.authenticate is not None:
                    credential.auth = config.authenticate(AuthRequest(rpc, headers))
                elif values:
                    raise AuthenticationError("unsupported authorization scheme")
        except AuthenticationError:
            credential.failed = True
            credential.auth = None
        except Exception:  # a failing hook must not crash the call; treat it as refusal
            credential.failed = True
            credential.auth = None
        return _AuthMiddleware(credential)

    def _check(self, value: str, rpc: str, credential: CallCredential) -> bool:
        """Check a built-in scheme; return ``False`` when ``value`` is none of them."""
        config = self._config
        if value.startswith(SCHEME + " ") and config.hmac_keys:
            fields = _parse_hmac(value)
            kid, ts, nonce, digest, sig = (fields.get(k, "") for k in ("kid", "ts", "nonce", "digest", "sig"))
            key = config.hmac_keys.get(kid)
            try:
                given = base64.b64decode(sig, validate=True)
            except ValueError:
                given = b""
            secret = key.secret if key is not None else b"\x00" * 32
            expected = hmac.new(secret, _string_to_sign(kid, ts, nonce, rpc, digest), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, given) or key is None:
                raise AuthenticationError("bad signature")
            now = time.time()
            if not ts.isdigit() or abs(now - int(ts)) > config.max_clock_skew:
                raise AuthenticationError("timestamp outside the accepted window")
            if len(nonce) < 16 or not self._nonces.first_use(f"{kid}:{nonce}", now):
                raise AuthenticationError("replayed request")
            credential.digest = digest
            credential.auth = AuthContext(
                domain="hmac", authenticated=True, principal=key.principal, claims={"key_id": kid}
            )
            return True
        if value.startswith("Bearer ") and config.bearer_tokens:
            token = value[len("Bearer ") :].strip()
            principal = None
            for known, who in config.bearer_tokens.items():  # compare every token in constant time
                if hmac.compare_digest(known.encode(), token.encode()):
                    principal = who
            if principal is None:
                raise AuthenticationError("unknown bearer token")
            credential.auth = AuthContext(domain="bearer", authenticated=True, principal=principal)
            return True
        return False


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
        credential: What the middleware found in the headers.
        peer_identity: The verified client-certificate identity ("" without mTLS).
        rpc: The Flight RPC name.
        payload: The request payload (:func:`request_payload`), checked against a signed digest.
        method: The vgi-flight method (or reserved action) being called.

    Raises:
        AuthenticationError: The caller is not authenticated.
    """
    mtls = AuthContext(domain="mtls", authenticated=True, principal=peer_identity) if peer_identity else None
    if config is None:
        return mtls or AuthContext.anonymous()
    credential = credential or CallCredential()
    if credential.failed:
        raise AuthenticationError(AUTH_FAILED)
    if credential.digest is not None:
        actual = hashlib.sha256(payload).hexdigest()
        if not hmac.compare_digest(actual, credential.digest):
            raise AuthenticationError(AUTH_FAILED)
    if config.trusted_identity_header and credential.forwarded_identity:
        mtls = AuthContext(domain="mtls-proxy", authenticated=True, principal=credential.forwarded_identity)
    if config.require_hmac and (credential.auth is None or credential.auth.domain != "hmac"):
        if method in config.public_methods:
            return AuthContext.anonymous()
        raise AuthenticationError(AUTH_FAILED)
    if config.require_mtls and mtls is None:
        if method in config.public_methods:
            return AuthContext.anonymous()
        raise AuthenticationError(AUTH_FAILED)
    if credential.auth is not None:
        if mtls is not None:
            claims = dict(credential.auth.claims, mtls_identity=mtls.principal)
            return AuthContext(credential.auth.domain, True, credential.auth.principal, claims)
        return credential.auth
    if mtls is not None:
        return mtls
    if config.allow_anonymous or method in config.public_methods:
        return AuthContext.anonymous()
    raise AuthenticationError(AUTH_FAILED)
