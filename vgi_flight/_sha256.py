"""SHA-256 and HMAC-SHA256 for the short inputs hashed on every call and every stream turn.

Request signatures and state tokens hash a few hundred bytes at a time. OpenSSL's per-call set-up
(provider dispatch, context allocation on every copy and digest) costs more than the hashing
there, and several times more on a server whose caches are cold after each wait for the network;
CPython's own implementation (``_sha2``, ``_sha256`` before 3.12) is a plain struct. So short
inputs use the built-in one, and HMAC is computed from precomputed inner and outer hash states
(RFC 2104) instead of ``hmac.new``, which sets the key up again on every call. Large inputs still
go to OpenSSL, which is faster per byte. Under OpenSSL's FIPS mode, or if the built-in module is
missing, OpenSSL's is used throughout.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from typing import Protocol

SMALL_INPUT = 1024  # up to this size, use short_sha256
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class Sha256(Protocol):
    """A SHA-256 hash object (hashlib's, or CPython's built-in one)."""

    def copy(self) -> Sha256: ...
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


def pick_short_sha256() -> Callable[[bytes], Sha256]:
    """The SHA-256 to use for short inputs: CPython's built-in one when allowed, else OpenSSL's."""
    try:
        from _hashlib import get_fips_mode
    except ImportError:  # Python without OpenSSL: hashlib's sha256 is the built-in one already
        return hashlib.sha256
    if get_fips_mode():
        return hashlib.sha256
    for name in ("_sha2", "_sha256"):
        try:
            sha256: Callable[[bytes], Sha256] = importlib.import_module(name).sha256
            if sha256(b"abc").hexdigest() == hashlib.sha256(b"abc").hexdigest():
                return sha256
        except Exception:  # absent or refusing: try the next, then OpenSSL's
            continue
    return hashlib.sha256


short_sha256 = pick_short_sha256()


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``, by the implementation that suits its size."""
    return (short_sha256(data) if len(data) <= SMALL_INPUT else hashlib.sha256(data)).hexdigest()


HmacPads = tuple[Sha256, Sha256]


def hmac_pads(secret: bytes) -> HmacPads:
    """The inner and outer hash states of HMAC-SHA256 under ``secret``, computed once per key.

    ``HMAC(secret, msg)`` is then ``outer.copy()`` updated with the digest of ``inner.copy()``
    updated with ``msg``: two state copies and two short hashes per MAC.
    """
    key = hashlib.sha256(secret).digest() if len(secret) > 64 else secret
    key = key.ljust(64, b"\0")
    return short_sha256(key.translate(_IPAD)), short_sha256(key.translate(_OPAD))


def hmac_sha256(pads: HmacPads, message: bytes) -> bytes:
    """``HMAC-SHA256(secret, message)`` from the secret's :func:`hmac_pads`.

    With an inner state that has already hashed a fixed prefix, it is the HMAC of prefix + ``message``.
    """
    inner = pads[0].copy()
    inner.update(message)
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.digest()
