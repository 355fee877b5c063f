"""Signed state tokens: the resumable position of a stream.

A token is opaque to clients. It is minted by the server after every turn and carried in Flight
tickets, ``DoExchange`` descriptors and ``app_metadata``; any replica holding the key can verify it
and resume the stream. Layout (all integers big-endian)::

    magic      4  b"VGT1"
    flags      1  bit 0: state is encrypted; bit 1: whole batches (the client that opened the
                  stream reads data batches of any size as one message); other bits reserved, 0
    kid        1+n   key id
    stream_id  16
    method     2+n   UTF-8
    principal  2+n   UTF-8 ("" when anonymous)
    state_cls  2+n   "module:qualname" of the StreamState subclass
    out_schema 4+n   Arrow IPC schema
    in_schema  4+n   Arrow IPC schema (empty schema for producers)
    issued_at  8     unix seconds
    expires_at 8     unix seconds, 0 = never
    seq        8     data batches emitted before this point
    state      4+n   the state dataclass: an Arrow IPC stream, or 0x01 + the compact codec;
                     when encrypted: nonce (12) || AES-256-GCM ciphertext + tag (16)
    mac        32    HMAC-SHA256(mac_key, all bytes above)

Every ring secret yields two independent 32-byte keys via HKDF-SHA256: ``mac_key`` (info
``b"vgi-flight token mac v1"``) and ``enc_key`` (info ``b"vgi-flight token enc v1"``), so one secret
never serves two purposes. Encryption is encrypt-then-MAC: the state is sealed with AES-GCM under
``enc_key`` with a random 12-byte nonce and, as associated data, every token byte before the state
field (``magic`` through ``seq``), so a ciphertext cannot be moved into another token; the HMAC then
covers the ciphertext like any other field and is checked before decryption is attempted.

The part up to ``in_schema`` (including ``flags``: encryption is fixed per stream) is fixed for a
stream, so its HMAC prefix is computed once per stream.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import logging
import os
import struct
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vgi_flight._sha256 import SMALL_INPUT, HmacPads, hmac_pads, hmac_sha256

MAGIC = b"VGT1"
MAC_SIZE = 32
FLAG_ENCRYPTED = 0x01
FLAG_WHOLE_BATCHES = 0x02
NONCE_SIZE = 12
GCM_TAG_SIZE = 16
_KNOWN_FLAGS = FLAG_ENCRYPTED | FLAG_WHOLE_BATCHES
_MAC_INFO = b"vgi-flight token mac v1"
_ENC_INFO = b"vgi-flight token enc v1"
_DERIVED_KEY_SIZE = 32
# Stand-in MAC key for unknown key ids, so the check costs the same and fails like a bad MAC.
_UNKNOWN_KEY_MAC = b"\x00" * _DERIVED_KEY_SIZE
_UNKNOWN_KEY_PADS = hmac_pads(_UNKNOWN_KEY_MAC)
DEFAULT_MAX_TOKEN_BYTES = 4 * 1024 * 1024
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_TAIL = struct.Struct(">QQQI")
_TIMES = struct.Struct(">QQQ")

log = logging.getLogger("vgi_flight.tokens")


class TokenError(ValueError):
    """A token was refused (tampered, expired, foreign key, wrong binding, malformed or too large)."""


@dataclass(frozen=True)
class StreamBinding:
    """The fixed facts of a stream that every one of its tokens carries.

    Attributes:
        stream_id: Random id of the stream.
        method: RPC method that opened the stream.
        principal: Caller the stream belongs to ("" when anonymous).
        state_class: ``module:qualname`` of the state class.
        output_schema: IPC bytes of the output schema.
        input_schema: IPC bytes of the input schema.
        whole_batches: Send data batches whole, never as ``data_part`` slices (the opening client
            asked for it: its gRPC receive limit is lifted).
    """

    stream_id: bytes
    method: str
    principal: str
    state_class: str
    output_schema: bytes
    input_schema: bytes
    whole_batches: bool = False


@dataclass(frozen=True)
class VerifiedToken:
    """A token that passed verification.

    Attributes:
        binding: The stream's fixed facts.
        issued_at: When the token was minted (unix seconds).
        expires_at: Expiry (unix seconds), 0 for never.
        seq: Data batches emitted before this point.
        state: Serialized state bytes (the decrypted plaintext when the token was encrypted).
        key_id: The key that signed it.
        encrypted: Whether the state travelled encrypted.
    """

    binding: StreamBinding
    issued_at: int
    expires_at: int
    seq: int
    state: bytes
    key_id: str
    encrypted: bool = False


def new_stream_id() -> bytes:
    """Return a fresh random 16-byte stream id."""
    return uuid.uuid4().bytes


@dataclass(frozen=True)
class _DerivedKeys:
    """The per-purpose keys derived from one ring secret.

    Attributes:
        mac: HMAC-SHA256 key.
        mac_pads: The inner and outer hash states of HMAC under ``mac``.
        enc: AES-256-GCM key.
        aead: Cipher object for ``enc`` (stateless, safe to share between threads).
    """

    mac: bytes
    mac_pads: HmacPads
    enc: bytes
    aead: AESGCM


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=_DERIVED_KEY_SIZE, salt=None, info=info).derive(secret)


def _derive_keys(secret: bytes) -> _DerivedKeys:
    """Derive the MAC and encryption keys of ``secret`` (HKDF-SHA256, distinct info strings)."""
    enc = _hkdf(secret, _ENC_INFO)
    mac = _hkdf(secret, _MAC_INFO)
    return _DerivedKeys(mac=mac, mac_pads=hmac_pads(mac), enc=enc, aead=AESGCM(enc))


class KeyRing:
    """Secrets for state tokens: sign with the current key, verify with any listed key.

    Each secret is only used as HKDF input; the MAC and encryption keys derived from it are computed
    once, when the ring is built.

    Rotation: add the new key and make it current on every replica, keep the old one listed until
    every token it signed has expired, then remove it.
    """

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        """Create a key ring.

        Args:
            keys: Key id → secret (at least 32 bytes recommended; at least 16 required).
            current: The key id new tokens are signed with.

        Raises:
            ValueError: No keys, unknown current id, a key id longer than 255 bytes or a short key.
        """
        if not keys:
            raise ValueError("a key ring needs at least one key")
        if current not in keys:
            raise ValueError(f"current key id {current!r} is not in the key ring")
        for kid, secret in keys.items():
            if len(kid.encode()) > 255:
                raise ValueError("key ids are limited to 255 bytes")
            if len(secret) < 16:
                raise ValueError(f"key {kid!r} is shorter than 16 bytes")
        self._keys = {kid: bytes(secret) for kid, secret in keys.items()}
        self._derived = {kid: _derive_keys(secret) for kid, secret in self._keys.items()}
        self._current = current

    @classmethod
    def single(cls, secret: bytes, key_id: str = "k1") -> KeyRing:
        """A ring holding one key."""
        return cls({key_id: secret}, key_id)

    @classmethod
    def random(cls) -> KeyRing:
        """A ring holding one random key (tokens die with the process)."""
        return cls.single(os.urandom(32), "ephemeral-" + os.urandom(4).hex())

    @property
    def current(self) -> str:
        """Id of the signing key."""
        return self._current

    def secret(self, key_id: str) -> bytes | None:
        """Return the secret for ``key_id``, or ``None``."""
        return self._keys.get(key_id)

    def _derived_keys(self, key_id: str) -> _DerivedKeys | None:
        """Return the cached derived keys for ``key_id``, or ``None``."""
        return self._derived.get(key_id)


def _put_str(parts: list[bytes], value: bytes, size: struct.Struct) -> None:
    parts.append(size.pack(len(value)))
    parts.append(value)


class StreamSigner:
    """Mints the tokens of one stream; the fixed prefix is packed and pre-hashed once."""

    __slots__ = (
        "_aead",
        "_mac",
        "_mac_key",
        "_pads",
        "_prefix",
        "_prefix_b64",
        "_prefix_rest",
        "_ttl",
        "binding",
    )

    def __init__(self, ring: KeyRing, binding: StreamBinding, ttl: float | None, *, encrypt: bool = False) -> None:
        """Prepare to mint tokens for ``binding`` with the ring's current key.

        Args:
            ring: Key ring; tokens are signed (and encrypted) with its current key.
            binding: The stream's fixed facts.
            ttl: Token lifetime in seconds; ``None`` or 0 for tokens that never expire.
            encrypt: Encrypt the state so clients cannot read it (AES-256-GCM, encrypt-then-MAC).
        """
        kid = ring.current.encode()
        keys = ring._derived_keys(ring.current)
        assert keys is not None
        flags = (FLAG_ENCRYPTED if encrypt else 0) | (FLAG_WHOLE_BATCHES if binding.whole_batches else 0)
        parts = [MAGIC, bytes([flags]), bytes([len(kid)]), kid, binding.stream_id]
        for text in (binding.method, binding.principal, binding.state_class):
            _put_str(parts, text.encode(), _U16)
        _put_str(parts, binding.output_schema, _U32)
        _put_str(parts, binding.input_schema, _U32)
        self._prefix = b"".join(parts)
        # Base64 works in 3-byte groups: the prefix's whole groups are encoded once per stream, and
        # each token encodes only the rest (a few prefix bytes, the tail and the MAC).
        whole = len(self._prefix) - len(self._prefix) % 3
        self._prefix_b64 = binascii.b2a_base64(self._prefix[:whole], newline=False)
        self._prefix_rest = self._prefix[whole:]
        # The prefix is hashed once per stream, so each token hashes only its tail: short tails (the
        # usual flat state) through the built-in SHA-256 from HMAC pads, long ones through OpenSSL,
        # whose prefix-hashed state is made when the stream mints its first long token.
        inner = keys.mac_pads[0].copy()
        inner.update(self._prefix)
        self._pads: HmacPads = (inner, keys.mac_pads[1])
        self._mac_key = keys.mac
        self._mac: hmac.HMAC | None = None
        self._aead = keys.aead if encrypt else None
        self._ttl = ttl
        self.binding = binding

    @property
    def encrypted(self) -> bool:
        """Whether this signer encrypts the state."""
        return self._aead is not None

    def mint(self, seq: int, state: bytes) -> bytes:
        """Return a token for the stream at position ``seq`` with serialized ``state``.

        Args:
            seq: Data batches emitted before this point.
            state: Serialized state bytes (encrypted into the token when the signer encrypts).

        Returns:
            The token bytes.
        """
        return self._prefix + self._signed_tail(seq, state)

    def mint_b64(self, seq: int, state: bytes) -> bytes:
        """Return the standard base64 (ASCII bytes) of :meth:`mint`'s token: what ``app_metadata`` carries."""
        return self._prefix_b64 + binascii.b2a_base64(self._prefix_rest + self._signed_tail(seq, state), newline=False)

    def _signed_tail(self, seq: int, state: bytes) -> bytes:
        """The token after the fixed prefix: times, seq, state and the MAC over the whole token."""
        now = int(time.time())
        expires = now + int(self._ttl) if self._ttl else 0
        if self._aead is not None:
            nonce = os.urandom(NONCE_SIZE)
            state = nonce + self._aead.encrypt(nonce, state, self._prefix + _TIMES.pack(now, expires, seq))
        tail = _TAIL.pack(now, expires, seq, len(state)) + state
        if len(tail) <= SMALL_INPUT:
            return tail + hmac_sha256(self._pads, tail)  # the pads' inner state has hashed the prefix
        if self._mac is None:
            self._mac = hmac.new(self._mac_key, self._prefix, hashlib.sha256)
        mac = self._mac.copy()
        mac.update(tail)
        return tail + mac.digest()


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise TokenError("token is truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def sized(self, size: struct.Struct) -> bytes:
        (n,) = size.unpack(self.take(size.size))
        return self.take(n)


def verify_token(
    ring: KeyRing, token: bytes, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES, now: float | None = None
) -> VerifiedToken:
    """Check a token's signature and expiry, decrypt its state if needed and unpack it.

    The MAC is checked (in constant time) before any field is trusted or any decryption is tried.

    Args:
        ring: Keys the token may have been signed with.
        token: The token bytes.
        max_bytes: Tokens longer than this are refused before any work is done.
        now: Current unix time for the expiry check (default: the clock).

    Returns:
        The verified token, with the plaintext state.

    Raises:
        TokenError: Malformed, too large, signed by an unknown key, tampered, expired, using unknown
            flags or undecryptable.
    """
    if len(token) > max_bytes:
        raise TokenError(f"token of {len(token)} bytes exceeds the {max_bytes}-byte limit")
    if len(token) < len(MAGIC) + 2 + MAC_SIZE or not token.startswith(MAGIC):
        raise TokenError("not a vgi-flight state token")
    body, mac = token[:-MAC_SIZE], token[-MAC_SIZE:]
    kid_len = body[5]
    kid = body[6 : 6 + kid_len].decode("utf-8", "replace")
    keys = ring._derived_keys(kid)
    # An unknown key and a bad MAC are reported identically so a prober learns nothing.
    if len(body) <= SMALL_INPUT:
        expected = hmac_sha256(keys.mac_pads if keys is not None else _UNKNOWN_KEY_PADS, body)
    else:
        expected = hmac.new(keys.mac if keys is not None else _UNKNOWN_KEY_MAC, body, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac) or keys is None:
        raise TokenError("token signature is invalid")
    flags = body[4]
    if flags & ~_KNOWN_FLAGS:
        raise TokenError("token uses features this server does not support")
    encrypted = bool(flags & FLAG_ENCRYPTED)
    reader = _Reader(body)
    reader.take(6 + kid_len)
    try:
        stream_id = reader.take(16)
        method = reader.sized(_U16).decode()
        principal = reader.sized(_U16).decode()
        state_class = reader.sized(_U16).decode()
        out_schema = reader.sized(_U32)
        in_schema = reader.sized(_U32)
        aad_end = reader.pos + _TIMES.size
        issued_at, expires_at, seq, state_len = _TAIL.unpack(reader.take(_TAIL.size))
        state = reader.take(state_len)
    except (UnicodeDecodeError, struct.error) as exc:
        raise TokenError(f"token is malformed: {exc}") from None
    if reader.pos != len(body):
        raise TokenError("token has trailing bytes")
    if expires_at and (now if now is not None else time.time()) > expires_at:
        raise TokenError("token has expired")
    if encrypted:
        state = _decrypt_state(keys.aead, state, body[:aad_end])
    binding = StreamBinding(
        stream_id, method, principal, state_class, out_schema, in_schema, bool(flags & FLAG_WHOLE_BATCHES)
    )
    return VerifiedToken(binding, issued_at, expires_at, seq, state, kid, encrypted)


def _decrypt_state(aead: AESGCM, sealed: bytes, aad: bytes) -> bytes:
    """Open an encrypted state field (``nonce || ciphertext+tag``) bound to ``aad``."""
    if len(sealed) < NONCE_SIZE + GCM_TAG_SIZE:
        raise TokenError("token is malformed: encrypted state is too short")
    try:
        return aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
    except InvalidTag:
        raise TokenError("token state could not be decrypted") from None
