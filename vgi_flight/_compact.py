"""A compact binary codec for flat state dataclasses, used inside state tokens.

Stream state crosses the wire after every turn, inside the signed token. For the common case of
a dataclass whose fields are all ``int``, ``float``, ``bool``, ``str``, ``bytes`` (or Optional of
those) this codec is several times cheaper than an Arrow IPC stream; any other state uses
:meth:`ArrowSerializableDataclass.serialize_to_bytes`. Tokens are opaque to clients, so the choice
is invisible on the wire. Layout: one field after another in declaration order; Optional fields
start with a presence byte; int is a signed 64-bit big-endian value (a state holding an int
outside that range falls back to Arrow IPC); float is an IEEE double; bool one byte; str (UTF-8)
and bytes a u32 length and the data.
"""

from __future__ import annotations

import dataclasses
import struct
import types
import typing
from collections.abc import Callable
from typing import Any

from vgi_flight._arrow_types import resolve_type_hints

_Q = struct.Struct(">q")
_D = struct.Struct(">d")
_I = struct.Struct(">I")
_Encoder = Callable[[Any, list[bytes]], None]
_Decoder = Callable[[memoryview, int], tuple[Any, int]]


class CompactUnsupportedError(Exception):
    """A value cannot be written compactly (e.g. an int beyond 64 bits)."""


def _enc_int(v: Any, out: list[bytes]) -> None:
    if type(v) is not int or not -(2**63) <= v < 2**63:
        raise CompactUnsupportedError
    out.append(_Q.pack(v))


def _dec_int(buf: memoryview, pos: int) -> tuple[Any, int]:
    return _Q.unpack_from(buf, pos)[0], pos + 8


def _enc_float(v: Any, out: list[bytes]) -> None:
    out.append(_D.pack(v))


def _dec_float(buf: memoryview, pos: int) -> tuple[Any, int]:
    return _D.unpack_from(buf, pos)[0], pos + 8


def _enc_bool(v: Any, out: list[bytes]) -> None:
    out.append(b"\x01" if v else b"\x00")


def _dec_bool(buf: memoryview, pos: int) -> tuple[Any, int]:
    return buf[pos] == 1, pos + 1


def _enc_bytes(v: Any, out: list[bytes]) -> None:
    data = v.encode() if isinstance(v, str) else bytes(v)
    out.append(_I.pack(len(data)))
    out.append(data)


def _dec_bytes(buf: memoryview, pos: int) -> tuple[Any, int]:
    (n,) = _I.unpack_from(buf, pos)
    end = pos + 4 + n
    if end > len(buf):
        raise ValueError("compact state is truncated")
    return bytes(buf[pos + 4 : end]), end


def _dec_str(buf: memoryview, pos: int) -> tuple[Any, int]:
    data, end = _dec_bytes(buf, pos)
    return data.decode(), end


_SCALARS: dict[object, tuple[_Encoder, _Decoder]] = {
    int: (_enc_int, _dec_int),
    float: (_enc_float, _dec_float),
    bool: (_enc_bool, _dec_bool),
    str: (_enc_bytes, _dec_str),
    bytes: (_enc_bytes, _dec_bytes),
}


def _optional(enc: _Encoder, dec: _Decoder) -> tuple[_Encoder, _Decoder]:
    def encode(v: Any, out: list[bytes]) -> None:
        if v is None:
            out.append(b"\x00")
        else:
            out.append(b"\x01")
            enc(v, out)

    def decode(buf: memoryview, pos: int) -> tuple[Any, int]:
        if buf[pos] == 0:
            return None, pos + 1
        return dec(buf, pos + 1)

    return encode, decode


class CompactCodec:
    """Encodes and decodes one flat dataclass."""

    __slots__ = ("_cls", "_decoders", "_encoders", "_names")

    def __init__(self, cls: type, fields: list[tuple[str, _Encoder, _Decoder]]) -> None:
        self._cls = cls
        self._names = [f[0] for f in fields]
        self._encoders = [(f[0], f[1]) for f in fields]
        self._decoders = [(f[0], f[2]) for f in fields]

    def encode(self, obj: object) -> bytes:
        """Encode ``obj``.

        Raises:
            CompactUnsupportedError: A value does not fit (the caller falls back to Arrow IPC).
        """
        out: list[bytes] = []
        try:
            for name, enc in self._encoders:
                enc(getattr(obj, name), out)
        except (TypeError, AttributeError, struct.error, UnicodeEncodeError) as exc:
            raise CompactUnsupportedError from exc
        return b"".join(out)

    def decode(self, data: bytes) -> object:
        """Decode bytes written by :meth:`encode`.

        Raises:
            ValueError: Truncated or trailing bytes.
        """
        buf = memoryview(data)
        pos = 0
        values: dict[str, Any] = {}
        try:
            for name, dec in self._decoders:
                values[name], pos = dec(buf, pos)
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise ValueError(f"compact state is malformed: {exc}") from None
        if pos != len(buf):
            raise ValueError("compact state has trailing bytes")
        obj: Any = object.__new__(self._cls)
        for name, value in values.items():
            object.__setattr__(
                obj, name, value
            )  # works for frozen dataclasses; classes with __post_init__ never get here
        return obj


_CACHE: dict[type, CompactCodec | None] = {}


def compact_codec(cls: type) -> CompactCodec | None:
    """Return the compact codec of a flat dataclass, or ``None`` when its fields are not all scalars."""
    if cls in _CACHE:
        return _CACHE[cls]
    codec: CompactCodec | None = None
    if dataclasses.is_dataclass(cls) and not getattr(cls, "__post_init__", None):
        hints = resolve_type_hints(cls)
        fields: list[tuple[str, _Encoder, _Decoder]] = []
        for f in dataclasses.fields(cls):
            pair = _scalar_pair(hints.get(f.name))
            if pair is None:
                fields = []
                break
            fields.append((f.name, *pair))
        else:
            codec = CompactCodec(cls, fields)
    _CACHE[cls] = codec
    return codec


def _scalar_pair(hint: object) -> tuple[_Encoder, _Decoder] | None:
    if hint in _SCALARS:
        return _SCALARS[hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2 and args[0] in _SCALARS:
            return _optional(*_SCALARS[args[0]])
    return None


_COMPACT_TAG = b"\x01"  # an Arrow IPC stream starts with 0xFF, so one byte tells the encodings apart


def state_to_bytes(state: Any) -> bytes:
    """Encode a state for a token: compactly when its class allows, else as an Arrow IPC stream."""
    codec = compact_codec(type(state))
    if codec is not None:
        try:
            return _COMPACT_TAG + codec.encode(state)
        except CompactUnsupportedError:
            pass
    data: bytes = state.serialize_to_bytes()
    return data


def state_from_bytes(cls: Any, data: bytes) -> Any:
    """Decode what :func:`state_to_bytes` wrote for ``cls``.

    Raises:
        ValueError: The bytes do not hold a ``cls`` state.
    """
    if data[:1] == _COMPACT_TAG:
        codec = compact_codec(cls)
        if codec is None:
            raise ValueError(f"{cls.__qualname__} has no compact encoding")
        return codec.decode(data[1:])
    return cls.deserialize_from_bytes(data)
