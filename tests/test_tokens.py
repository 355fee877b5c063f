"""State tokens: signing, encryption, verification, rotation, expiry and tamper resistance."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgi_flight._sha256 import SMALL_INPUT
from vgi_flight._tokens import (
    MAC_SIZE,
    KeyRing,
    StreamBinding,
    StreamSigner,
    TokenError,
    _derive_keys,
    new_stream_id,
    verify_token,
)


def examples(default: int) -> int:
    """Hypothesis examples per property: ``default`` in CI, ``VGI_FUZZ_EXAMPLES`` for long local runs."""
    return max(default, int(os.environ.get("VGI_FUZZ_EXAMPLES", "0")))


KEY = b"k" * 32
BINDING = StreamBinding(new_stream_id(), "fetch", "alice", "mod:State", b"out-schema", b"in-schema")


def mint(
    ring: KeyRing, seq: int = 3, state: bytes = b"state", ttl: float | None = None, *, encrypt: bool = False
) -> bytes:
    return StreamSigner(ring, BINDING, ttl, encrypt=encrypt).mint(seq, state)


def remac(ring: KeyRing, body: bytes, key_id: str = "k1") -> bytes:
    """Re-sign ``body`` as the server would: a forgery only a key holder could make."""
    keys = ring._derived_keys(key_id)
    assert keys is not None
    return body + hmac.new(keys.mac, body, hashlib.sha256).digest()


def test_round_trip() -> None:
    ring = KeyRing.single(KEY)
    verified = verify_token(ring, mint(ring))
    assert verified.binding == BINDING
    assert (verified.seq, verified.state, verified.key_id) == (3, b"state", "k1")


def test_rotation_accepts_listed_old_key_and_signs_with_current() -> None:
    old = KeyRing({"old": KEY}, "old")
    token = mint(old)
    rotated = KeyRing({"old": KEY, "new": b"n" * 32}, "new")
    assert verify_token(rotated, token).key_id == "old"
    assert verify_token(rotated, mint(rotated)).key_id == "new"
    with pytest.raises(TokenError, match="signature"):
        verify_token(KeyRing({"new": b"n" * 32}, "new"), token)


def test_other_key_is_refused() -> None:
    with pytest.raises(TokenError, match="signature"):
        verify_token(KeyRing.single(b"x" * 32), mint(KeyRing.single(KEY)))


def test_expired() -> None:
    ring = KeyRing.single(KEY)
    token = mint(ring, ttl=10)
    verify_token(ring, token)
    with pytest.raises(TokenError, match="expired"):
        verify_token(ring, token, now=10**11)


def test_size_cap() -> None:
    ring = KeyRing.single(KEY)
    with pytest.raises(TokenError, match="exceeds"):
        verify_token(ring, mint(ring, state=b"x" * 2000), max_bytes=1000)


def test_short_keys_rejected() -> None:
    with pytest.raises(ValueError, match="shorter"):
        KeyRing.single(b"short")


@settings(max_examples=examples(300), deadline=None)
@given(st.integers(min_value=0), st.data())
def test_any_single_bit_flip_is_refused(bit: int, data: st.DataObject) -> None:
    ring = KeyRing.single(KEY)
    token = bytearray(mint(ring, seq=data.draw(st.integers(0, 2**63)), state=data.draw(st.binary(max_size=64))))
    index = bit % (len(token) * 8)
    token[index // 8] ^= 1 << (index % 8)
    with pytest.raises(TokenError):
        verify_token(ring, bytes(token))


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_cleanly(blob: bytes) -> None:
    with pytest.raises(TokenError):
        verify_token(KeyRing.single(KEY), blob)


@settings(max_examples=examples(200), deadline=None)
@given(st.integers(min_value=1, max_value=200))
def test_truncation_is_refused(cut: int) -> None:
    ring = KeyRing.single(KEY)
    token = mint(ring)
    with pytest.raises(TokenError):
        verify_token(ring, token[: max(0, len(token) - cut)])


@settings(max_examples=examples(200), deadline=None)
@given(st.integers(0, 2**64 - 1), st.binary(max_size=256), st.text(max_size=20), st.text(max_size=20))
def test_round_trip_property(seq: int, state: bytes, method: str, principal: str) -> None:
    ring = KeyRing.single(KEY)
    binding = StreamBinding(new_stream_id(), method, principal, "m:C", b"", b"")
    verified = verify_token(ring, StreamSigner(ring, binding, None).mint(seq, state))
    assert (verified.seq, verified.state, verified.binding) == (seq, state, binding)


@settings(max_examples=examples(100), deadline=None)
@given(st.integers(0, 3 * SMALL_INPUT), st.binary(max_size=3 * SMALL_INPUT), st.booleans())
def test_mac_is_hmac_sha256_of_the_body_for_every_size(state_size: int, schema: bytes, encrypt: bool) -> None:
    # Short and long tokens are signed and checked by different SHA-256 implementations.
    ring = KeyRing.single(KEY)
    binding = StreamBinding(new_stream_id(), "m", "", "m:C", schema, b"")
    token = StreamSigner(ring, binding, None, encrypt=encrypt).mint(7, b"s" * state_size)
    assert remac(ring, token[:-MAC_SIZE]) == token
    assert verify_token(ring, token).state == b"s" * state_size
    forged = token[:-1] + bytes([token[-1] ^ 1])
    with pytest.raises(TokenError):
        verify_token(ring, forged)


@settings(max_examples=examples(200), deadline=None)
@given(st.text(max_size=8), st.binary(max_size=2 * SMALL_INPUT), st.integers(0, 2**64 - 1), st.booleans())
def test_base64_token_is_the_token(method: str, state: bytes, seq: int, encrypt: bool) -> None:
    # mint_b64 encodes the prefix's whole 3-byte groups once per stream: methods of every length
    # leave every remainder, and the result must decode to a token that verifies like mint's.
    ring = KeyRing.single(KEY)
    binding = StreamBinding(new_stream_id(), method, "p", "m:C", b"out", b"")
    signer = StreamSigner(ring, binding, 60, encrypt=encrypt)
    token = base64.b64decode(signer.mint_b64(seq, state), validate=True)
    verified = verify_token(ring, token)
    assert (verified.binding, verified.seq, verified.state) == (binding, seq, state)
    assert token[: -MAC_SIZE - len(state) - 28] == signer.mint(seq, state)[: -MAC_SIZE - len(state) - 28]
    assert remac(ring, token[:-MAC_SIZE]) == token


# --- encryption -------------------------------------------------------------------------------

SECRET_STATE = b"top-secret-state:" + bytes(range(83))  # 100 bytes, easy to spot


def test_encrypted_round_trip() -> None:
    ring = KeyRing.single(KEY)
    token = mint(ring, state=SECRET_STATE, encrypt=True)
    assert token[4] == 0x01
    verified = verify_token(ring, token)
    assert verified.encrypted
    assert verified.binding == BINDING
    assert (verified.seq, verified.state, verified.key_id) == (3, SECRET_STATE, "k1")


def test_plain_token_is_not_marked_encrypted() -> None:
    ring = KeyRing.single(KEY)
    token = mint(ring, state=SECRET_STATE)
    assert token[4] == 0x00
    assert not verify_token(ring, token).encrypted


def test_encrypted_token_hides_state() -> None:
    ring = KeyRing.single(KEY)
    assert SECRET_STATE in mint(ring, state=SECRET_STATE)
    token = mint(ring, state=SECRET_STATE, encrypt=True)
    assert SECRET_STATE not in token
    for start in range(0, len(SECRET_STATE) - 8, 8):
        assert SECRET_STATE[start : start + 8] not in token


def test_encrypted_tokens_use_fresh_nonces() -> None:
    signer = StreamSigner(KeyRing.single(KEY), BINDING, None, encrypt=True)
    assert signer.encrypted
    assert signer.mint(1, SECRET_STATE) != signer.mint(1, SECRET_STATE)


def test_encrypted_token_verifies_on_replica_with_same_secret() -> None:
    token = mint(KeyRing.single(KEY), state=SECRET_STATE, encrypt=True)
    replica = KeyRing.single(bytes(KEY))
    assert verify_token(replica, token).state == SECRET_STATE
    with pytest.raises(TokenError, match="signature"):
        verify_token(KeyRing.single(b"x" * 32), token)


def test_rotation_with_encrypted_tokens() -> None:
    old = KeyRing({"old": KEY}, "old")
    token = mint(old, state=SECRET_STATE, encrypt=True)
    rotated = KeyRing({"old": KEY, "new": b"n" * 32}, "new")
    assert (verify_token(rotated, token).key_id, verify_token(rotated, token).state) == ("old", SECRET_STATE)
    fresh = mint(rotated, state=SECRET_STATE, encrypt=True)
    assert (verify_token(rotated, fresh).key_id, verify_token(rotated, fresh).state) == ("new", SECRET_STATE)
    with pytest.raises(TokenError, match="signature"):
        verify_token(KeyRing({"new": b"n" * 32}, "new"), token)


def test_derived_keys_differ_per_purpose() -> None:
    keys = _derive_keys(KEY)
    assert len(keys.mac) == len(keys.enc) == 32
    assert len({keys.mac, keys.enc, KEY}) == 3
    again = _derive_keys(KEY)
    assert (again.mac, again.enc) == (keys.mac, keys.enc)
    assert _derive_keys(b"x" * 32).mac != keys.mac
    ring = KeyRing.single(KEY)
    cached = ring._derived_keys("k1")
    assert cached is not None
    assert cached is ring._derived_keys("k1")
    assert (cached.mac, cached.enc) == (keys.mac, keys.enc)
    assert ring._derived_keys("missing") is None


def test_mac_uses_derived_key_not_raw_secret() -> None:
    ring = KeyRing.single(KEY)
    token = mint(ring)
    body = token[:-MAC_SIZE]
    assert hmac.new(KEY, body, hashlib.sha256).digest() != token[-MAC_SIZE:]
    assert remac(ring, body) == token


@pytest.mark.parametrize("flags", [0x04, 0x07, 0x80, 0xFF])
def test_unknown_flag_bits_are_refused(flags: int) -> None:
    ring = KeyRing.single(KEY)
    body = bytearray(mint(ring, encrypt=bool(flags & 1))[:-MAC_SIZE])
    body[4] = flags
    with pytest.raises(TokenError, match="features this server does not support"):
        verify_token(ring, remac(ring, bytes(body)))


@pytest.mark.parametrize("encrypt", [False, True])
def test_whole_batches_choice_travels_in_the_signed_flags(encrypt: bool) -> None:
    ring = KeyRing.single(KEY)
    whole = dataclasses.replace(BINDING, whole_batches=True)
    token = StreamSigner(ring, whole, None, encrypt=encrypt).mint(1, b"s")
    assert token[4] == (0x02 | (0x01 if encrypt else 0))
    assert verify_token(ring, token).binding == whole
    assert verify_token(ring, StreamSigner(ring, BINDING, None, encrypt=encrypt).mint(1, b"s")).binding == BINDING
    flipped = bytearray(token)
    flipped[4] ^= 0x02  # a client cannot switch slicing on or off: the flag is under the MAC
    with pytest.raises(TokenError, match="signature"):
        verify_token(ring, bytes(flipped))


def test_ciphertext_cannot_be_moved_between_tokens() -> None:
    # Even a forger holding the MAC key cannot transplant a state: the associated data binds it.
    ring = KeyRing.single(KEY)
    signer = StreamSigner(ring, BINDING, None, encrypt=True)
    other = b"other state"
    early, late = signer.mint(3, SECRET_STATE), signer.mint(4, other)
    sealed = early[-MAC_SIZE - (len(SECRET_STATE) + 28) : -MAC_SIZE]  # nonce + ciphertext + tag
    head = late[: -MAC_SIZE - (len(other) + 28) - 4]  # everything before the state length
    forged = head + len(sealed).to_bytes(4, "big") + sealed
    assert late[:-MAC_SIZE].startswith(head + (len(other) + 28).to_bytes(4, "big"))  # slicing is right
    with pytest.raises(TokenError, match="decrypted"):
        verify_token(ring, remac(ring, forged))


def test_truncated_ciphertext_is_refused() -> None:
    ring = KeyRing.single(KEY)
    body = mint(ring, state=b"", encrypt=True)[:-MAC_SIZE]
    head = body[: -(28 + 4)]
    forged = head + (27).to_bytes(4, "big") + body[-28:-1]
    with pytest.raises(TokenError, match="malformed"):
        verify_token(ring, remac(ring, forged))


@settings(max_examples=examples(300), deadline=None)
@given(st.integers(min_value=0), st.data())
def test_any_single_bit_flip_in_encrypted_token_is_refused(bit: int, data: st.DataObject) -> None:
    ring = KeyRing.single(KEY)
    state = data.draw(st.binary(max_size=64))
    token = bytearray(mint(ring, seq=data.draw(st.integers(0, 2**63)), state=state, encrypt=True))
    index = bit % (len(token) * 8)
    token[index // 8] ^= 1 << (index % 8)
    with pytest.raises(TokenError):
        verify_token(ring, bytes(token))


@settings(max_examples=examples(200), deadline=None)
@given(st.integers(0, 2**64 - 1), st.binary(max_size=256), st.text(max_size=20), st.booleans())
def test_encrypted_round_trip_property(seq: int, state: bytes, method: str, encrypt: bool) -> None:
    ring = KeyRing.single(KEY)
    binding = StreamBinding(new_stream_id(), method, "bob", "m:C", b"out", b"")
    verified = verify_token(ring, StreamSigner(ring, binding, 60, encrypt=encrypt).mint(seq, state))
    assert (verified.seq, verified.state, verified.binding, verified.encrypted) == (seq, state, binding, encrypt)
