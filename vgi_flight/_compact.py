"""A compact binary codec for flat state dataclasses, used inside state tokens.

Stream state crosses the wire after every turn, inside the signed token. For the common case of
a dataclass whose fields are all ``int``, ``float``, ``bool``, ``str``, ``bytes`` (or Optional of
those) this codec is several times cheaper than an Arrow IPC stream; any other state uses
:meth:`ArrowSerializableDataclass.serialize_to_bytes`. Tokens are opaque to clients, so the choice
is invisible on the wire. Layout: one field after another in declaration order; Optional fields
start with a presence byte; int is a signed 64-bit big-endian value; float is an IEEE double;
bool one byte; str (UTF-8) and bytes a u32 length and the data. A state holding a value that does
not fit its field's layout (an int beyond 64 bits, a bool in an int field, an int in a str or bytes
field) falls back to Arrow IPC, which converts it or refuses it.
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
_Decoder = Callable[[memoryview, int], tuple[Any, int]]
_COMPACT_TAG = b"\x01"  # an Arrow IPC stream starts with 0xFF, so one byte tells the encodings apart


class CompactUnsupportedError(Exception):
    """A value cannot be written compactly (e.g. an int beyond 64 bits)."""


def _dec_int(buf: memoryview, pos: int) -> tuple[Any, int]:
    return _Q.unpack_from(buf, pos)[0], pos + 8


def _dec_float(buf: memoryview, pos: int) -> tuple[Any, int]:
    return _D.unpack_from(buf, pos)[0], pos + 8


def _dec_bool(buf: memoryview, pos: int) -> tuple[Any, int]:
    return buf[pos] == 1, pos + 1


def _dec_bytes(buf: memoryview, pos: int) -> tuple[Any, int]:
    (n,) = _I.unpack_from(buf, pos)
    end = pos + 4 + n
    if end > len(buf):
        raise ValueError("compact state is truncated")
    return bytes(buf[pos + 4 : end]), end


def _dec_str(buf: memoryview, pos: int) -> tuple[Any, int]:
    data, end = _dec_bytes(buf, pos)
    return data.decode(), end


_DECODERS: dict[object, _Decoder] = {
    int: _dec_int,
    float: _dec_float,
    bool: _dec_bool,
    str: _dec_str,
    bytes: _dec_bytes,
}
_FIXED: dict[object, str] = {int: "q", float: "d", bool: "?"}  # struct codes of the fixed-width kinds


def _optional_decoder(dec: _Decoder) -> _Decoder:
    def decode(buf: memoryview, pos: int) -> tuple[Any, int]:
        if buf[pos] == 0:
            return None, pos + 1
        return dec(buf, pos + 1)

    return decode


def _compile_encoder(fields: list[tuple[str, object, bool]]) -> Callable[[object], bytes]:
    """Build one straight-line function that writes a state's fields in the layout above, tag first.

    Tokens are minted after every turn, so the encoder is generated per class, as ``dataclasses``
    does for ``__init__``: runs of fixed-width fields are one ``struct`` call and there is no
    per-field function call. A state whose values do not fit is written as an Arrow IPC stream
    (``serialize_to_bytes``) instead: an int must be exactly ``int`` (not a bool or float), a str a
    ``str``, bytes bytes-like, and a value out of range raises ``struct.error``. Field names are
    identifiers (dataclass fields), so they can be written into the source.
    """
    env: dict[str, Any] = {
        "_Unsupported": CompactUnsupportedError,
        "_u32": _I.pack,
        "_tag": _COMPACT_TAG,
        "_bytes_like": (bytes, bytearray, memoryview),
        "_unfit": (CompactUnsupportedError, TypeError, AttributeError, struct.error, UnicodeEncodeError),
    }
    body: list[str] = []
    pieces = ["_tag"]
    run: list[tuple[str, object]] = []  # fixed-width non-optional fields not written yet: one struct

    def packer(kinds: list[object]) -> str:
        """Name, in the generated source, of a struct pack for these fixed-width kinds in order."""
        name = f"_s{len(env)}"
        env[name] = struct.Struct(">" + "".join(_FIXED[kind] for kind in kinds)).pack
        return name

    def flush() -> None:
        if run:
            pieces.append(f"{packer([kind for _, kind in run])}({', '.join(v for v, _ in run)})")
            run.clear()

    def checks(v: str, kind: object, indent: str) -> list[str]:
        if kind is int:
            return [f"{indent}if type({v}) is not int: raise _Unsupported"]
        if kind is str:
            return [f"{indent}if not isinstance({v}, str): raise _Unsupported", f"{indent}{v} = {v}.encode()"]
        if kind is bytes:  # bytes() of an int would be that many zero bytes: only bytes-like values
            return [f"{indent}if not isinstance({v}, _bytes_like): raise _Unsupported", f"{indent}{v} = bytes({v})"]
        return []

    def value(v: str, kind: object) -> list[str]:
        if kind in _FIXED:
            return [f"{packer([kind])}({v})"]
        return [f"_u32(len({v}))", v]

    for i, (field_name, kind, optional) in enumerate(fields):
        v = f"v{i}"
        body.append(f"    {v} = obj.{field_name}")
        if not optional:
            body += checks(v, kind, "    ")
            if kind in _FIXED:
                run.append((v, kind))
            else:
                flush()
                pieces += value(v, kind)
            continue
        flush()
        body.append(f"    if {v} is None: p{i} = b'\\x00'")
        body.append("    else:")
        body += checks(v, kind, "        ")
        body.append(f"        p{i} = b'\\x01' + {' + '.join(value(v, kind))}")
        pieces.append(f"p{i}")
    flush()
    lines = ["def encode(obj):", "  try:", *body, f"    return b''.join(({', '.join(pieces)},))"]
    lines += ["  except _unfit:", "    return obj.serialize_to_bytes()"]
    source = "\n".join(lines) + "\n"
    exec(source, env)  # generated from the class's own field names and fixed templates
    encode: Callable[[object], bytes] = env["encode"]
    return encode


class CompactCodec:
    """Encodes and decodes one flat dataclass."""

    __slots__ = ("_cls", "_decoders", "encode")

    def __init__(self, cls: type, fields: list[tuple[str, object, bool]]) -> None:
        self._cls = cls
        self._decoders = [
            (name, _optional_decoder(_DECODERS[kind]) if optional else _DECODERS[kind])
            for name, kind, optional in fields
        ]
        # What state_to_bytes does for this class: the tag and the fields, or Arrow IPC when they do not fit.
        self.encode: Callable[[object], bytes] = _compile_encoder(fields)

    def decode(self, data: bytes) -> object:
        """Decode the fields :meth:`encode` wrote after the tag byte (``state_from_bytes`` strips it).

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
        fields: list[tuple[str, object, bool]] = []
        for f in dataclasses.fields(cls):
            kind = _scalar_kind(hints.get(f.name))
            if kind is None:
                fields = []
                break
            fields.append((f.name, *kind))
        else:
            codec = CompactCodec(cls, fields)
    _CACHE[cls] = codec
    return codec


def _scalar_kind(hint: object) -> tuple[object, bool] | None:
    """``(scalar type, optional)`` of a field the codec can write, else ``None``."""
    if hint in _DECODERS:
        return hint, False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2 and args[0] in _DECODERS:
            return args[0], True
    return None


def state_encoder(cls: type) -> Callable[[Any], bytes]:
    """The function that encodes states of ``cls`` for tokens: what :func:`state_to_bytes` calls.

    Compact when the class is flat (falling back to Arrow IPC for values that do not fit), else
    Arrow IPC. A stream looks it up once and calls it after every turn.
    """
    codec = compact_codec(cls)
    return codec.encode if codec is not None else _ipc_bytes


def _ipc_bytes(state: Any) -> bytes:
    data: bytes = state.serialize_to_bytes()
    return data


def state_to_bytes(state: Any) -> bytes:
    """Encode a state for a token: compactly when its class allows, else as an Arrow IPC stream."""
    return state_encoder(type(state))(state)


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
