"""State tokens: signing, verification, rotation, expiry and tamper resistance."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgi_flight._tokens import KeyRing, StreamBinding, StreamSigner, TokenError, new_stream_id, verify_token

KEY = b"k" * 32
BINDING = StreamBinding(new_stream_id(), "fetch", "alice", "mod:State", b"out-schema", b"in-schema")


def mint(ring: KeyRing, seq: int = 3, state: bytes = b"state", ttl: float | None = None) -> bytes:
    return StreamSigner(ring, BINDING, ttl).mint(seq, state)


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


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.data())
def test_any_single_bit_flip_is_refused(bit: int, data: st.DataObject) -> None:
    ring = KeyRing.single(KEY)
    token = bytearray(mint(ring, seq=data.draw(st.integers(0, 2**63)), state=data.draw(st.binary(max_size=64))))
    index = bit % (len(token) * 8)
    token[index // 8] ^= 1 << (index % 8)
    with pytest.raises(TokenError):
        verify_token(ring, bytes(token))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_cleanly(blob: bytes) -> None:
    with pytest.raises(TokenError):
        verify_token(KeyRing.single(KEY), blob)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=200))
def test_truncation_is_refused(cut: int) -> None:
    ring = KeyRing.single(KEY)
    token = mint(ring)
    with pytest.raises(TokenError):
        verify_token(ring, token[: max(0, len(token) - cut)])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**64 - 1), st.binary(max_size=256), st.text(max_size=20), st.text(max_size=20))
def test_round_trip_property(seq: int, state: bytes, method: str, principal: str) -> None:
    ring = KeyRing.single(KEY)
    binding = StreamBinding(new_stream_id(), method, principal, "m:C", b"", b"")
    verified = verify_token(ring, StreamSigner(ring, binding, None).mint(seq, state))
    assert (verified.seq, verified.state, verified.binding) == (seq, state, binding)
