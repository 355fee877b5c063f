"""HMAC request signing written directly on pyarrow.flight: the raw side of the mTLS+HMAC mode.

The secure mode compares vgi-flight with the same workload on raw pyarrow.flight, and that workload
includes signing every request. This is the scheme of wire protocol §11 (the header vgi-flight
clients send) the way an application would write it with the standard library and pyarrow's
middleware: the client signs each call's options; a server middleware picks the header up and the
handler, which has the payload, verifies it (signature, clock window, payload digest, replay).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import time
from typing import Any

import pyarrow.flight as flight

SCHEME = "VGI-HMAC-SHA256"
MIDDLEWARE_KEY = "raw-hmac"
MAX_SKEW = 300.0


def _signature(secret: bytes, kid: str, ts: str, nonce: str, rpc: str, digest: str) -> bytes:
    message = f"{SCHEME}\n{kid}\n{ts}\n{nonce}\n{rpc}\n{digest}".encode()
    return hmac.new(secret, message, hashlib.sha256).digest()


def signed_options(kid: str, secret: bytes, rpc: str, payload: bytes) -> flight.FlightCallOptions:
    """Call options carrying the ``authorization`` header for one call of ``rpc`` with ``payload``."""
    ts = str(int(time.time()))
    nonce = os.urandom(16).hex()
    digest = hashlib.sha256(payload).hexdigest()
    sig = base64.b64encode(_signature(secret, kid, ts, nonce, rpc, digest)).decode()
    header = f"{SCHEME} kid={kid}, ts={ts}, nonce={nonce}, digest={digest}, sig={sig}"
    return flight.FlightCallOptions(headers=[(b"authorization", header.encode())])


class _Presented(flight.ServerMiddleware):  # type: ignore[misc]
    def __init__(self, header: str) -> None:
        self.header = header


class HmacMiddleware(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Refuses calls without a signature header; the handler verifies the one it keeps."""

    def start_call(self, info: Any, headers: dict[str, list[str]]) -> _Presented:
        values = headers.get("authorization", [])
        if len(values) != 1 or not values[0].startswith(SCHEME + " "):
            raise flight.FlightUnauthenticatedError("authentication failed")
        return _Presented(values[0])


class HmacVerifier:
    """Checks the signature a call presented against the RPC and payload its handler received."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self._keys = keys
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def verify(self, context: Any, rpc: str, payload: bytes) -> None:
        """Raise ``FlightUnauthenticatedError`` unless the call is signed for ``rpc`` and ``payload``."""
        presented = context.get_middleware(MIDDLEWARE_KEY)
        try:
            fields = dict(part.strip().split("=", 1) for part in presented.header[len(SCHEME) + 1 :].split(","))
            kid, ts, nonce, digest = fields["kid"], fields["ts"], fields["nonce"], fields["digest"]
            expected = _signature(self._keys[kid], kid, ts, nonce, rpc, digest)
            valid = hmac.compare_digest(expected, base64.b64decode(fields["sig"], validate=True))
        except (KeyError, ValueError, AttributeError):
            valid = False
        now = time.time()
        if not valid or not ts.isdigit() or abs(now - int(ts)) > MAX_SKEW:
            raise flight.FlightUnauthenticatedError("authentication failed")
        if not hmac.compare_digest(hashlib.sha256(payload).hexdigest(), digest):
            raise flight.FlightUnauthenticatedError("authentication failed")
        with self._lock:
            if nonce in self._seen:
                raise flight.FlightUnauthenticatedError("authentication failed")
            self._seen[nonce] = now
            if len(self._seen) > 100_000:  # forget nonces older than the clock window
                self._seen = {n: t for n, t in self._seen.items() if now - t <= 2 * MAX_SKEW}
