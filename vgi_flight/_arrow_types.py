"""Mapping between Python type hints and Arrow types, and dataclass <-> Arrow IPC serialization.

The central pieces are:

* :class:`FieldCodec` / :func:`codec_for`: turn one resolved type hint into an Arrow type plus a pair of
  value converters (Python value -> what ``pa.array`` accepts, and ``as_py()`` output -> Python value).
* :class:`ArrowSerializableDataclass`: a mixin giving ``@dataclass`` classes a cached ``ARROW_SCHEMA`` and
  one-row Arrow IPC stream (de)serialization.

Everything expensive (hint resolution, codec construction, schema building) happens once per class and is
cached, because serialization runs on every stream turn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import decimal
import enum
import operator
import sys
import threading
import types
import typing
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Self, Union

import pyarrow as pa

__all__ = [
    "ArrowSerializableDataclass",
    "ArrowType",
    "FieldCodec",
    "arrow_array",
    "codec_for",
    "resolve_type_hints",
    "schema_from_bytes",
    "schema_to_bytes",
]

_Converter = Callable[[object], object]

# End-of-stream marker of the IPC streaming format (continuation token + zero length).
_IPC_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"

# Plans and codecs are built at most once; the lock keeps concurrent first uses from racing on the
# recursion guard. Reentrant because building a class plan builds codecs which may build nested plans.
_BUILD_LOCK = threading.RLock()


def _identity(value: object) -> object:
    return value


# ---------------------------------------------------------------------------------------------------------------------
# Public annotation marker
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ArrowType:
    """Override the Arrow type (and optionally nullability) derived for an annotation.

    Use inside ``typing.Annotated``::

        count: Annotated[int, ArrowType(pa.int32())]
        big: Annotated[int, ArrowType(pa.uint64())]
        when: Annotated[datetime, ArrowType(pa.timestamp("us", tz="UTC"))]

    Attributes:
        arrow_type: The Arrow type to use for the column / child field.
        nullable: Force the field's nullability; ``None`` derives it from the annotation (``X | None``).
    """

    arrow_type: pa.DataType
    nullable: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.arrow_type, pa.DataType):
            raise TypeError(f"ArrowType expects a pyarrow.DataType, got {self.arrow_type!r}")
        if self.nullable is not None and not isinstance(self.nullable, bool):
            raise TypeError(f"ArrowType.nullable must be a bool or None, got {self.nullable!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Type hint resolution
# ---------------------------------------------------------------------------------------------------------------------

# Local namespaces captured when an ArrowSerializableDataclass subclass is defined inside a function, so string
# annotations (``from __future__ import annotations``) naming other function-local classes can still be resolved.
_CAPTURED_LOCALS: weakref.WeakKeyDictionary[type, dict[str, object]] = weakref.WeakKeyDictionary()


def _is_typing_value(value: object) -> bool:
    # Only keep things that can appear in annotations, so captured frames don't pin large user objects.
    return isinstance(value, type | types.GenericAlias | types.UnionType) or type(value).__module__ in (
        "typing",
        "typing_extensions",
    )


def _capture_defining_locals(cls: type) -> None:
    qualname = cls.__qualname__
    if ".<locals>." not in qualname:
        return
    func_qualname = qualname.rsplit(".<locals>.", 1)[0]
    try:
        frame: types.FrameType | None = sys._getframe(2)
    except (AttributeError, ValueError):  # pragma: no cover - non-CPython
        return
    # Walk past metaclass / dataclass machinery (ABCMeta.__new__, dataclasses' slots re-creation, ...).
    for _ in range(16):
        if frame is None:
            return
        if frame.f_code.co_qualname == func_qualname:
            namespace = {k: v for k, v in frame.f_locals.items() if _is_typing_value(v)}
            if namespace:
                _CAPTURED_LOCALS[cls] = namespace
            return
        frame = frame.f_back


def _describe(obj: object) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return str(name) if name else repr(obj)


def resolve_type_hints(obj: object) -> dict[str, object]:
    """Resolve the annotations of a class or function, including ``Annotated`` extras.

    Works for code written with ``from __future__ import annotations``: strings are evaluated against the
    module where ``obj`` was defined (and, for :class:`ArrowSerializableDataclass` subclasses defined inside a
    function, against the types that were visible in that function when the class was created).

    Args:
        obj: A class or a function.

    Returns:
        Mapping of annotated name to the resolved hint.

    Raises:
        TypeError: If an annotation cannot be resolved; the message names ``obj``.
    """
    try:
        return dict(typing.get_type_hints(obj, include_extras=True))
    except NameError as exc:
        first_error: Exception = exc
    except Exception as exc:  # SyntaxError in a string annotation, bad typing constructs, ...
        raise TypeError(f"cannot resolve type annotations of {_describe(obj)}: {exc}") from exc

    localns: dict[str, object] = {}
    if isinstance(obj, type):
        for base in reversed(obj.__mro__):
            localns.update(_CAPTURED_LOCALS.get(base, {}))
    if localns:
        try:
            return dict(typing.get_type_hints(obj, localns=localns, include_extras=True))
        except Exception as exc:
            first_error = exc
    raise TypeError(
        f"cannot resolve type annotations of {_describe(obj)}: {first_error} "
        "(types used in annotations must be importable from the defining module)"
    ) from first_error


# ---------------------------------------------------------------------------------------------------------------------
# Field codecs
# ---------------------------------------------------------------------------------------------------------------------


class FieldCodec:
    """Maps one resolved Python type hint to an Arrow field and converts values both ways.

    Attributes:
        arrow_type: The Arrow type used for values of this hint.
        nullable: Whether ``None`` is an allowed value (``X | None`` or an ``ArrowType(nullable=...)`` override).
        hint: The hint this codec was built for.
    """

    __slots__ = ("_from", "_kind", "_to", "arrow_type", "hint", "nullable")

    def __init__(
        self,
        arrow_type: pa.DataType,
        nullable: bool,
        to_arrow: _Converter = _identity,
        from_arrow: _Converter = _identity,
        *,
        hint: object = None,
        kind: str = "",
    ) -> None:
        self.arrow_type = arrow_type
        self.nullable = nullable
        self.hint = hint
        # Identity converters are detected by plans and skipped entirely on the hot path.
        self._to = to_arrow
        self._from = from_arrow
        self._kind = kind

    def field(self, name: str) -> pa.Field:
        """Return an Arrow field with this codec's type and nullability.

        Args:
            name: The field name.

        Returns:
            The ``pa.Field``.
        """
        return pa.field(name, self.arrow_type, nullable=self.nullable)

    def to_arrow(self, value: object) -> object:
        """Convert a Python value into something ``pa.array([...], type=self.arrow_type)`` accepts.

        Args:
            value: The Python value.

        Returns:
            The Arrow-ready value.
        """
        return self._to(value)

    def from_arrow(self, value: object) -> object:
        """Convert a value from ``Array.to_pylist()`` / ``Scalar.as_py()`` back to the original Python value.

        Args:
            value: The value as produced by pyarrow.

        Returns:
            The Python value, equal to what was serialized.
        """
        return self._from(value)

    def __repr__(self) -> str:
        return f"FieldCodec({self.hint!r} -> {self.arrow_type}, nullable={self.nullable})"


class _UnsupportedHintError(Exception):
    """Internal: raised while building a codec; converted to a TypeError carrying the `where` context."""

    def __init__(self, hint: object, reason: str = "") -> None:
        super().__init__(hint, reason)
        self.hint = hint
        self.reason = reason


_ENUM_TYPE = pa.dictionary(pa.int16(), pa.utf8())

_CODEC_CACHE: dict[object, FieldCodec] = {}


def codec_for(hint: object, *, where: str = "value") -> FieldCodec:
    """Return the (cached) codec for an already-resolved type hint.

    Args:
        hint: A resolved type hint; ``Annotated[..., ArrowType(...)]`` overrides are honoured and other
            ``Annotated`` metadata is ignored.
        where: Describes the annotated thing for error messages, e.g. ``"field 'x' of MyState"``.

    Returns:
        The codec.

    Raises:
        TypeError: If the hint is not supported; the message names ``where`` and the hint.
    """
    try:
        cached = _CODEC_CACHE.get(hint)
    except TypeError:  # unhashable Annotated metadata
        cached = None
    if cached is not None:
        return cached
    with _BUILD_LOCK:
        try:
            codec = _build_codec(hint)
        except _UnsupportedHintError as exc:
            detail = ""
            if exc.hint is not hint:
                detail = f" (unsupported: {exc.hint!r})"
            if exc.reason:
                detail += f": {exc.reason}"
            raise TypeError(f"{where} has unsupported type {hint!r}{detail}") from None
    with contextlib.suppress(TypeError):  # unhashable hints are simply not cached
        _CODEC_CACHE[hint] = codec
    return codec


def _none_safe(conv: _Converter) -> _Converter:
    if conv is _identity:
        return conv

    def convert(value: object) -> object:
        return None if value is None else conv(value)

    return convert


def _with_nullability(codec: FieldCodec, nullable: bool, arrow_type: pa.DataType | None = None) -> FieldCodec:
    to_arrow, from_arrow = codec._to, codec._from
    if nullable and not codec.nullable:
        to_arrow, from_arrow = _none_safe(to_arrow), _none_safe(from_arrow)
    return FieldCodec(
        codec.arrow_type if arrow_type is None else arrow_type,
        nullable,
        to_arrow,
        from_arrow,
        hint=codec.hint,
        kind=codec._kind,
    )


def _build_codec(hint: object) -> FieldCodec:
    origin = typing.get_origin(hint)

    if origin is Annotated:
        base, *metadata = typing.get_args(hint)
        overrides = [m for m in metadata if isinstance(m, ArrowType)]
        base_codec = _build_codec(base)
        if not overrides:
            return base_codec
        override = overrides[-1]
        if not _override_compatible(base_codec._kind, override.arrow_type):
            raise _UnsupportedHintError(
                hint, f"ArrowType({override.arrow_type}) is not compatible with a {base_codec._kind} value"
            )
        nullable = base_codec.nullable if override.nullable is None else override.nullable
        codec = _with_nullability(base_codec, nullable, override.arrow_type)
        codec.hint = hint
        return codec

    if origin is Union or isinstance(hint, types.UnionType):
        args = typing.get_args(hint)
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) != 1:
            raise _UnsupportedHintError(hint, "unions of several non-None types are not supported")
        inner = _build_codec(non_none[0])
        codec = _with_nullability(inner, True)
        codec.hint = hint
        return codec

    if origin is not None:
        return _build_generic(hint, origin)

    supertype = getattr(hint, "__supertype__", None)
    if supertype is not None:  # typing.NewType
        return _build_codec(supertype)
    alias_value = getattr(hint, "__value__", None)
    if alias_value is not None and type(hint).__name__ == "TypeAliasType":  # PEP 695 `type X = ...`
        return _build_codec(alias_value)

    if isinstance(hint, type):
        simple = _SIMPLE_TYPES.get(hint)
        if simple is not None:
            arrow_type, kind, to_arrow, from_arrow = simple
            return FieldCodec(arrow_type, False, to_arrow, from_arrow, hint=hint, kind=kind)
        if issubclass(hint, enum.Enum):
            return _enum_codec(hint)
        if hint is pa.RecordBatch:
            return FieldCodec(pa.binary(), False, _batch_to_ipc, _batch_from_ipc, hint=hint, kind="batch")
        if hint is pa.Schema:
            return FieldCodec(pa.binary(), False, _schema_to_value, _schema_from_value, hint=hint, kind="schema")
        if dataclasses.is_dataclass(hint):
            return _dataclass_codec(hint)
        if hint in (list, set, frozenset, dict):
            raise _UnsupportedHintError(hint, "parameterize it, e.g. list[int]")
    if isinstance(hint, str | typing.ForwardRef):
        raise _UnsupportedHintError(hint, "unresolved forward reference")
    raise _UnsupportedHintError(hint)


def _build_generic(hint: object, origin: object) -> FieldCodec:
    args = typing.get_args(hint)
    if origin is list or origin is set or origin is frozenset:
        if len(args) != 1:
            raise _UnsupportedHintError(hint)
        elem = _build_codec(args[0])
        elem_to, elem_from = elem._to, elem._from
        arrow_type = pa.list_(elem.arrow_type)
        if origin is list:
            to_arrow: _Converter = _identity if elem_to is _identity else _map_list(elem_to)
            from_arrow: _Converter = _identity if elem_from is _identity else _map_list(elem_from)
            return FieldCodec(arrow_type, False, to_arrow, from_arrow, hint=hint, kind="list")
        container: Callable[[Any], object] = set if origin is set else frozenset
        to_arrow = _to_list if elem_to is _identity else _map_list(elem_to)
        from_arrow = _make_set_from(container, elem_from)
        return FieldCodec(arrow_type, False, to_arrow, from_arrow, hint=hint, kind="set")
    if origin is dict:
        if len(args) != 2:
            raise _UnsupportedHintError(hint)
        key, value = _build_codec(args[0]), _build_codec(args[1])
        if key.nullable:
            raise _UnsupportedHintError(hint, "map keys cannot be Optional")
        return FieldCodec(
            pa.map_(key.arrow_type, value.arrow_type),
            False,
            _make_map_to(key._to, value._to),
            _make_map_from(key._from, value._from),
            hint=hint,
            kind="map",
        )
    raise _UnsupportedHintError(hint)


def _map_list(conv: _Converter) -> _Converter:
    def convert(value: object) -> object:
        return [conv(v) for v in typing.cast("list[object]", value)]

    return convert


def _to_list(value: object) -> object:
    return list(typing.cast("set[object]", value))


def _make_set_from(container: Callable[[Any], object], conv: _Converter) -> _Converter:
    if conv is _identity:
        return container

    def convert(value: object) -> object:
        return container([conv(v) for v in typing.cast("list[object]", value)])

    return convert


def _make_map_to(key_conv: _Converter, value_conv: _Converter) -> _Converter:
    if key_conv is _identity and value_conv is _identity:
        return _identity  # pa.array accepts a dict directly for map types

    def convert(value: object) -> object:
        items = typing.cast("Mapping[object, object]", value).items()
        return [(key_conv(k), value_conv(v)) for k, v in items]

    return convert


def _to_dict(value: object) -> object:
    return dict(typing.cast("Mapping[object, object]", value))


def _make_map_from(key_conv: _Converter, value_conv: _Converter) -> _Converter:
    # pyarrow returns maps as a list of (key, value) tuples unless maps_as_pydicts is used; accept both.
    if key_conv is _identity and value_conv is _identity:
        return _to_dict

    def convert(value: object) -> object:
        pairs: Any = value.items() if isinstance(value, Mapping) else value
        return {key_conv(k): value_conv(v) for k, v in pairs}

    return convert


def _enum_codec(enum_cls: type[enum.Enum]) -> FieldCodec:
    members = enum_cls.__members__

    def to_arrow(value: object) -> object:
        if isinstance(value, enum_cls):
            return value.name
        raise TypeError(f"expected a {enum_cls.__qualname__} member, got {value!r}")

    def from_arrow(value: object) -> object:
        if isinstance(value, enum_cls):
            return value
        try:
            return members[typing.cast("str", value)]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a member name of {enum_cls.__qualname__}") from None

    return FieldCodec(_ENUM_TYPE, False, to_arrow, from_arrow, hint=enum_cls, kind="enum")


def _uuid_to(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return value.bytes
    raise TypeError(f"expected uuid.UUID, got {value!r}")


def _uuid_from(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return value
    return uuid.UUID(bytes=bytes(typing.cast("bytes", value)))


def _batch_to_ipc(value: object) -> object:
    if not isinstance(value, pa.RecordBatch):
        raise TypeError(f"expected pyarrow.RecordBatch, got {type(value).__name__}")
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, value.schema) as writer:
        writer.write_batch(value)
    return sink.getvalue().to_pybytes()


def _batch_from_ipc(value: object) -> object:
    reader = pa.ipc.open_stream(pa.py_buffer(typing.cast("bytes", value)))
    batches = list(reader)
    if len(batches) == 1:
        return batches[0]
    schema = reader.schema
    if not batches:
        return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)
    return pa.Table.from_batches(batches, schema=schema).combine_chunks().to_batches()[0]


def _schema_to_value(value: object) -> object:
    if not isinstance(value, pa.Schema):
        raise TypeError(f"expected pyarrow.Schema, got {type(value).__name__}")
    return schema_to_bytes(value)


def _schema_from_value(value: object) -> object:
    return pa.ipc.read_schema(pa.py_buffer(typing.cast("bytes", value)))


# Exact-type table (exact so bool isn't treated as int and datetime isn't treated as date).
_SIMPLE_TYPES: dict[type, tuple[pa.DataType, str, _Converter, _Converter]] = {
    int: (pa.int64(), "int", _identity, _identity),
    float: (pa.float64(), "float", _identity, _identity),
    str: (pa.utf8(), "str", _identity, _identity),
    bool: (pa.bool_(), "bool", _identity, _identity),
    bytes: (pa.binary(), "bytes", _identity, _identity),
    _dt.datetime: (pa.timestamp("us"), "datetime", _identity, _identity),
    _dt.date: (pa.date32(), "date", _identity, _identity),
    _dt.time: (pa.time64("us"), "time", _identity, _identity),
    _dt.timedelta: (pa.duration("us"), "timedelta", _identity, _identity),
    decimal.Decimal: (pa.decimal128(38, 10), "decimal", _identity, _identity),
    uuid.UUID: (pa.uuid(), "uuid", _uuid_to, _uuid_from),
}


def _is_stringish(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _is_binaryish(t: pa.DataType) -> bool:
    return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t))


def _is_listish(t: pa.DataType) -> bool:
    checks = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list, pa.types.is_list_view)
    return any(check(t) for check in checks) or bool(pa.types.is_large_list_view(t))


def _is_dict_of(t: pa.DataType, value_check: Callable[[pa.DataType], bool]) -> bool:
    return bool(pa.types.is_dictionary(t)) and value_check(t.value_type)


_OVERRIDE_CHECKS: dict[str, Callable[[pa.DataType], bool]] = {
    "int": lambda t: bool(pa.types.is_integer(t)),
    "float": lambda t: bool(pa.types.is_floating(t)),
    "bool": lambda t: bool(pa.types.is_boolean(t)),
    "str": lambda t: _is_stringish(t) or _is_dict_of(t, _is_stringish),
    "enum": lambda t: _is_stringish(t) or _is_dict_of(t, _is_stringish),
    "bytes": lambda t: _is_binaryish(t) or bool(pa.types.is_fixed_size_binary(t)) or _is_dict_of(t, _is_binaryish),
    "datetime": lambda t: bool(pa.types.is_timestamp(t)),
    "date": lambda t: bool(pa.types.is_date(t)),
    "time": lambda t: bool(pa.types.is_time(t)),
    "timedelta": lambda t: bool(pa.types.is_duration(t)),
    "decimal": lambda t: bool(pa.types.is_decimal(t)),
    "uuid": lambda t: (
        isinstance(t, pa.UuidType) or (pa.types.is_fixed_size_binary(t) and t.byte_width == 16) or _is_binaryish(t)
    ),
    "list": _is_listish,
    "set": _is_listish,
    "map": lambda t: bool(pa.types.is_map(t)),
    "struct": lambda t: bool(pa.types.is_struct(t)),
    "batch": _is_binaryish,
    "schema": _is_binaryish,
}


def _override_compatible(kind: str, arrow_type: pa.DataType) -> bool:
    check = _OVERRIDE_CHECKS.get(kind)
    return True if check is None else check(arrow_type)


def _plain_type(t: pa.DataType, *, decode_dictionaries: bool) -> pa.DataType:
    """Return `t` with extension types (and optionally dictionaries) replaced by their storage / value types.

    pyarrow's Python-object converter cannot produce extension types nested in other types, so arrays are built
    with the plain type and then cast (or wrapped) back to the real one.
    """

    def child(f: pa.Field) -> pa.Field:
        return f.with_type(_plain_type(f.type, decode_dictionaries=decode_dictionaries))

    if isinstance(t, pa.BaseExtensionType):
        return _plain_type(t.storage_type, decode_dictionaries=decode_dictionaries)
    if pa.types.is_dictionary(t):
        if decode_dictionaries:
            return _plain_type(t.value_type, decode_dictionaries=True)
        return t
    if pa.types.is_struct(t):
        return pa.struct([child(t.field(i)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(child(t.key_field), child(t.item_field), keys_sorted=t.keys_sorted)
    if pa.types.is_list(t):
        return pa.list_(child(t.value_field))
    if pa.types.is_large_list(t):
        return pa.large_list(child(t.value_field))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(child(t.value_field), t.list_size)
    return t


def _restore_type(array: pa.Array, target: pa.DataType) -> pa.Array:
    if array.type.equals(target):
        return array
    if isinstance(target, pa.BaseExtensionType) and array.type.equals(target.storage_type):
        return pa.ExtensionArray.from_storage(target, array)  # cheaper than a cast kernel
    return array.cast(target)


# Per target type: (the type pyarrow can build from Python objects, whether it holds dictionaries).
# Keyed by the (hashable, immutable) DataType; services use a bounded set of types.
_ARRAY_PLANS: dict[pa.DataType, tuple[pa.DataType, bool]] = {}


def arrow_array(values: Sequence[object], arrow_type: pa.DataType) -> pa.Array:
    """Build an array of ``arrow_type`` from Arrow-ready Python values (e.g. from :meth:`FieldCodec.to_arrow`).

    Unlike plain ``pa.array(values, type=arrow_type)`` this also handles extension types (such as ``pa.uuid()``)
    nested inside structs/lists/maps, and avoids pyarrow producing invalid dictionary indices under null struct
    slots.

    Args:
        values: The converted values.
        arrow_type: The target type.

    Returns:
        The array.
    """
    plan = _ARRAY_PLANS.get(arrow_type)
    if plan is None:
        plan = _ARRAY_PLANS[arrow_type] = (
            _plain_type(arrow_type, decode_dictionaries=False),
            _contains_dictionary(arrow_type),
        )
    plain, has_dictionary = plan
    array = pa.array(values, type=plain)
    if has_dictionary:
        try:
            array.validate(full=True)
        except pa.ArrowInvalid:
            array = pa.array(values, type=_plain_type(arrow_type, decode_dictionaries=True))
    return _restore_type(array, arrow_type)


def _contains_dictionary(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return True
    if isinstance(t, pa.BaseExtensionType):
        return _contains_dictionary(t.storage_type)
    return any(_contains_dictionary(t.field(i).type) for i in range(t.num_fields))


# ---------------------------------------------------------------------------------------------------------------------
# Per-class plans
# ---------------------------------------------------------------------------------------------------------------------

_PLAN_ATTR = "_vgi_arrow_plan"
_FOREIGN_PLANS: weakref.WeakKeyDictionary[type, _ClassPlan] = weakref.WeakKeyDictionary()
_PLANS_IN_PROGRESS: set[type] = set()


def _plan_for(cls: type) -> _ClassPlan:
    # Look in the class's own __dict__ so a subclass never reuses its parent's plan.
    plan = cls.__dict__.get(_PLAN_ATTR)
    if plan is not None:
        return typing.cast("_ClassPlan", plan)
    plan = _FOREIGN_PLANS.get(cls)
    if plan is not None:
        return plan
    with _BUILD_LOCK:
        plan = cls.__dict__.get(_PLAN_ATTR) or _FOREIGN_PLANS.get(cls)
        if plan is not None:
            return typing.cast("_ClassPlan", plan)
        if cls in _PLANS_IN_PROGRESS:
            raise _UnsupportedHintError(cls, "recursive dataclasses cannot be mapped to an Arrow struct")
        _PLANS_IN_PROGRESS.add(cls)
        try:
            plan = _ClassPlan(cls)
        finally:
            _PLANS_IN_PROGRESS.discard(cls)
        if issubclass(cls, ArrowSerializableDataclass):
            setattr(cls, _PLAN_ATTR, plan)
        else:
            _FOREIGN_PLANS[cls] = plan
        return plan


def _dataclass_codec(cls: type) -> FieldCodec:
    try:
        plan = _plan_for(cls)
    except TypeError as exc:
        raise _UnsupportedHintError(cls, str(exc)) from None
    struct_type = pa.struct([codec.field(name) for name, codec in zip(plan.names, plan.codecs, strict=True)])
    return FieldCodec(struct_type, False, plan.to_struct, plan.from_mapping, hint=cls, kind="struct")


class _ClassPlan:
    """Everything needed to convert instances of one dataclass, computed once."""

    def __init__(self, cls: type) -> None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__qualname__} is not a dataclass; decorate it with @dataclass")
        label = (
            f"ArrowSerializableDataclass {cls.__qualname__}"
            if issubclass(cls, ArrowSerializableDataclass)
            else f"dataclass {cls.__qualname__}"
        )
        fields = dataclasses.fields(cls)
        hints = resolve_type_hints(cls) if fields else {}
        self.cls = cls
        self.label = label
        self.names: tuple[str, ...] = tuple(f.name for f in fields)
        self.codecs: tuple[FieldCodec, ...] = tuple(
            codec_for(hints.get(f.name, f.type), where=f"{label}: field {f.name!r}") for f in fields
        )
        self.schema: pa.Schema = pa.schema([c.field(n) for n, c in zip(self.names, self.codecs, strict=True)])
        self.types: tuple[pa.DataType, ...] = tuple(c.arrow_type for c in self.codecs)
        self.to_convs: tuple[tuple[int, _Converter], ...] = tuple(
            (i, c._to) for i, c in enumerate(self.codecs) if c._to is not _identity
        )
        self.from_convs: tuple[_Converter, ...] = tuple(c._from for c in self.codecs)
        self.from_all_identity = all(conv is _identity for conv in self.from_convs)
        self.required: tuple[int, ...] = tuple(i for i, c in enumerate(self.codecs) if not c.nullable)
        self.has_required = bool(self.required)
        self.init_flags: tuple[bool, ...] = tuple(f.init for f in fields)
        self.all_init = all(self.init_flags)
        self.has_default: tuple[bool, ...] = tuple(
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING for f in fields
        )
        if len(self.names) > 1:
            self.getter: Callable[[object], tuple[object, ...]] = operator.attrgetter(*self.names)
        elif self.names:
            single = operator.attrgetter(self.names[0])
            self.getter = lambda obj: (single(obj),)
        else:
            self.getter = lambda obj: ()
        # A one-row stream can be assembled from cached schema bytes + the batch message, unless dictionaries
        # are involved (those need dictionary batches, which only the stream writer emits).
        self.has_dictionary = any(_contains_dictionary(t) for t in self.types)
        self.schema_message = schema_to_bytes(self.schema)
        self.struct_type: pa.DataType = pa.struct(list(self.schema))
        build_type = _plain_type(self.struct_type, decode_dictionaries=False)
        self.build_type: pa.DataType = build_type
        self.needs_restore = not build_type.equals(self.struct_type)
        self.decoded_type: pa.DataType = _plain_type(self.struct_type, decode_dictionaries=True)
        self._column_maps: dict[pa.Schema, tuple[int | None, ...]] = {}

    # -- Python -> Arrow ------------------------------------------------------------------------------------------

    def to_values(self, obj: object) -> list[object]:
        values = list(self.getter(obj))
        if self.has_required and None in values:
            for i in self.required:
                if values[i] is None:
                    raise TypeError(f"{self.label}: field {self.names[i]!r} is not Optional but is None")
        for i, conv in self.to_convs:
            try:
                values[i] = conv(values[i])
            except TypeError as exc:
                raise TypeError(f"{self.label}: field {self.names[i]!r}: {exc}") from exc
            except Exception as exc:
                raise ValueError(f"{self.label}: field {self.names[i]!r}: {exc}") from exc
        return values

    def to_struct(self, obj: object) -> object:
        if not isinstance(obj, self.cls):
            raise TypeError(f"expected {self.cls.__qualname__}, got {type(obj).__qualname__}")
        return dict(zip(self.names, self.to_values(obj), strict=True))

    def to_record_batch(self, obj: object) -> pa.RecordBatch:
        values = [tuple(self.to_values(obj))]
        try:
            # One struct conversion is ~3x faster than one pa.array() per column (measured for 5 fields).
            struct_array = pa.array(values, type=self.build_type)
            restore = self.needs_restore
            if self.has_dictionary:
                try:
                    struct_array.validate(full=True)
                except pa.ArrowInvalid:
                    # pyarrow leaves dictionary index 0 under null struct slots even when the dictionary is empty;
                    # converting plain values and dictionary-encoding them afterwards avoids that.
                    struct_array = pa.array(values, type=self.decoded_type)
                    restore = True
            if not restore:
                return pa.RecordBatch.from_struct_array(struct_array)
            columns = [_restore_type(struct_array.field(i), t) for i, t in enumerate(self.types)]
        except Exception:
            self._raise_conversion_error(list(values[0]))
            raise
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def _raise_conversion_error(self, values: list[object]) -> None:
        for name, value, t in zip(self.names, values, self.types, strict=True):
            try:
                arrow_array([value], t)
            except (TypeError, pa.ArrowTypeError) as exc:
                raise TypeError(f"{self.label}: field {name!r}: cannot convert {value!r} to {t}: {exc}") from exc
            except Exception as exc:
                raise ValueError(f"{self.label}: field {name!r}: cannot convert {value!r} to {t}: {exc}") from exc

    def serialize(self, obj: object) -> bytes:
        batch = self.to_record_batch(obj)
        if self.has_dictionary:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, self.schema) as writer:
                writer.write_batch(batch)
            return typing.cast("bytes", sink.getvalue().to_pybytes())
        return b"".join((self.schema_message, batch.serialize().to_pybytes(), _IPC_EOS))

    # -- Arrow -> Python ------------------------------------------------------------------------------------------

    def column_map(self, schema: pa.Schema) -> tuple[int | None, ...] | None:
        """Return, per field, the column index in `schema` (None = missing); None when `schema` is ours."""
        if schema is self.schema or schema.equals(self.schema):
            return None
        cached = self._column_maps.get(schema)
        if cached is not None:
            return cached
        mapping: list[int | None] = []
        for name, codec, has_default, init in zip(
            self.names, self.codecs, self.has_default, self.init_flags, strict=True
        ):
            matches = schema.get_all_field_indices(name)
            if not matches:
                if init and not has_default:
                    raise ValueError(f"{self.label}: required column {name!r} is missing from the data")
                mapping.append(None)
                continue
            if len(matches) > 1:
                raise ValueError(f"{self.label}: column {name!r} appears more than once in the data")
            actual = schema.field(matches[0]).type
            if not actual.equals(codec.arrow_type):
                raise ValueError(f"{self.label}: column {name!r} has Arrow type {actual}, expected {codec.arrow_type}")
            mapping.append(matches[0])
        if self.names and len(schema) and all(j is None for j in mapping):
            # Defaults would make any foreign stream "compatible"; sharing no column at all means wrong data.
            raise ValueError(f"{self.label}: the data has none of the expected columns (got {schema.names})")
        result = tuple(mapping)
        if len(self._column_maps) < 64:  # bounded: schemas normally come from a handful of peer versions
            self._column_maps[schema] = result
        return result

    def from_batch(self, batch: pa.RecordBatch, row: int) -> object:
        mapping = self.column_map(batch.schema)
        if batch.num_rows == 1:  # the common case; to_pylist() beats Scalar.as_py() per column
            raw = [column.to_pylist()[0] for column in batch.columns]
        else:
            raw = [column[row].as_py() for column in batch.columns]
        if mapping is None:
            return self._build(raw, None)
        return self._build([None if j is None else raw[j] for j in mapping], mapping)

    def read_own_stream(self, data: bytes | bytearray | memoryview | pa.Buffer) -> pa.RecordBatch | None:
        """Fast path for streams laid out exactly as :meth:`serialize` writes them; None means "use the reader"."""
        if self.has_dictionary:
            return None
        buf = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
        prefix = len(self.schema_message)
        size = buf.size - prefix - len(_IPC_EOS)
        if size <= 0 or buf.slice(0, prefix) != self.schema_message or buf.slice(prefix + size) != _IPC_EOS:
            return None
        body = buf.slice(prefix, size)
        try:
            message = pa.ipc.read_message(body)
            # The batch message must span the whole middle, i.e. the stream holds exactly one batch.
            if message.type != "record batch" or 8 + message.metadata.size + message.body.size != size:
                return None
            batch = pa.ipc.read_record_batch(message, self.schema)
            return batch if batch.num_rows == 1 else None
        except Exception:
            return None  # let the general reader produce the error message

    def from_mapping(self, value: object) -> object:
        data = typing.cast("Mapping[str, object]", value)
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a mapping for {self.cls.__qualname__}, got {type(value).__qualname__}")
        missing = _MISSING
        raw = [data.get(name, missing) for name in self.names]
        if missing in raw:
            mapping: tuple[int | None, ...] = tuple(None if v is missing else i for i, v in enumerate(raw))
            for i, j in enumerate(mapping):
                if j is None and self.init_flags[i] and not self.has_default[i]:
                    raise ValueError(f"{self.label}: required field {self.names[i]!r} is missing")
            return self._build(raw, mapping)
        return self._build(raw, None)

    def _build(self, raw: list[object], mapping: tuple[int | None, ...] | None) -> object:
        values = raw if self.from_all_identity else [conv(v) for conv, v in zip(self.from_convs, raw, strict=True)]
        if self.has_required and None in values:
            for i in self.required:
                if values[i] is None and (mapping is None or mapping[i] is not None):
                    raise ValueError(f"{self.label}: non-Optional field {self.names[i]!r} is null in the data")
        if mapping is None and self.all_init:
            return self.cls(**dict(zip(self.names, values, strict=True)))
        kwargs: dict[str, object] = {}
        late: list[tuple[str, object]] = []
        for i, (name, value) in enumerate(zip(self.names, values, strict=True)):
            if mapping is not None and mapping[i] is None:
                continue  # missing column: the dataclass default / default_factory applies
            if self.init_flags[i]:
                kwargs[name] = value
            else:
                late.append((name, value))
        obj = self.cls(**kwargs)
        for name, value in late:
            object.__setattr__(obj, name, value)  # init=False fields, works for frozen classes too
        return obj


_MISSING: Any = object()


# ---------------------------------------------------------------------------------------------------------------------
# The mixin
# ---------------------------------------------------------------------------------------------------------------------


def _read_single_row(data: bytes | bytearray | memoryview | pa.Buffer) -> pa.RecordBatch:
    reader = pa.ipc.open_stream(data)
    batches = [batch for batch in reader if batch.num_rows]
    if len(batches) != 1 or batches[0].num_rows != 1:
        raise ValueError(f"expected exactly one row, got {sum(b.num_rows for b in batches)}")
    return batches[0]


class _ArrowSchemaDescriptor:
    """Lazily builds (and caches) the Arrow schema of the concrete class it is accessed on."""

    def __get__(self, obj: object, owner: type) -> pa.Schema:
        if not dataclasses.is_dataclass(owner):
            # AttributeError (not TypeError) keeps hasattr()/introspection of abstract bases working.
            raise AttributeError(f"{owner.__qualname__} is not a dataclass, so it has no ARROW_SCHEMA")
        return _plan_for(owner).schema


class ArrowSerializableDataclass:
    """Mixin giving ``@dataclass`` classes Arrow schema and one-row Arrow IPC (de)serialization.

    Example::

        @dataclass
        class RunningStatsState(ArrowSerializableDataclass):
            count: int = 0
            total: float = 0.0

        data = RunningStatsState(3, 1.5).serialize_to_bytes()
        state = RunningStatsState.deserialize_from_bytes(data)

    Unsupported field types raise ``TypeError`` on first use (first ``ARROW_SCHEMA`` access or first
    (de)serialization) naming the class and field.
    """

    __slots__ = ()

    ARROW_SCHEMA: ClassVar[pa.Schema] = _ArrowSchemaDescriptor()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _capture_defining_locals(cls)

    def serialize_to_bytes(self) -> bytes:
        """Serialize to an Arrow IPC stream holding the schema and exactly one one-row batch.

        Returns:
            The IPC stream bytes.

        Raises:
            TypeError: If a field value has the wrong type (or the class has an unsupported field type).
            ValueError: If a field value cannot be represented in its Arrow type (e.g. out of range).
        """
        return _plan_for(type(self)).serialize(self)

    @classmethod
    def deserialize_from_bytes(cls, data: bytes | pa.Buffer) -> Self:
        """Deserialize an instance from bytes produced by :meth:`serialize_to_bytes`.

        Args:
            data: Arrow IPC stream bytes (``bytes``, ``bytearray``, ``memoryview`` or ``pa.Buffer``).

        Returns:
            The instance.

        Raises:
            ValueError: If the data is not a valid IPC stream, its schema does not match this class, or it does
                not hold exactly one row.
            TypeError: If ``data`` is not bytes-like.
        """
        plan = _plan_for(cls)
        if isinstance(data, str) or not isinstance(data, bytes | bytearray | memoryview | pa.Buffer):
            raise TypeError(f"{cls.__qualname__}.deserialize_from_bytes expects bytes, got {type(data).__name__}")
        try:
            batch = plan.read_own_stream(data)
            if batch is None:
                batch = _read_single_row(data)
            # Network input: full validation stops corrupt offsets from reading out of bounds below.
            batch.validate(full=True)
        except ValueError as exc:
            raise ValueError(f"{cls.__qualname__}: invalid Arrow IPC stream: {exc}") from exc
        except Exception as exc:
            raise ValueError(f"{cls.__qualname__}: invalid Arrow IPC stream: {type(exc).__name__}: {exc}") from exc
        return cls._from_checked_batch(plan, batch, 0)

    @classmethod
    def _from_checked_batch(cls, plan: _ClassPlan, batch: pa.RecordBatch, row: int) -> Self:
        try:
            return typing.cast("Self", plan.from_batch(batch, row))
        except ValueError:
            raise
        except (TypeError, KeyError, OverflowError, pa.ArrowException) as exc:
            raise ValueError(f"{cls.__qualname__}: cannot decode data: {type(exc).__name__}: {exc}") from exc

    def to_record_batch(self) -> pa.RecordBatch:
        """Return a one-row record batch whose schema is ``ARROW_SCHEMA``.

        Returns:
            The record batch.
        """
        return _plan_for(type(self)).to_record_batch(self)

    @classmethod
    def from_record_batch(cls, batch: pa.RecordBatch, row: int = 0) -> Self:
        """Build an instance from one row of a record batch.

        Columns are matched by name; unknown columns are ignored and missing columns fall back to field defaults.

        Args:
            batch: The record batch.
            row: Index of the row to read.

        Returns:
            The instance.

        Raises:
            ValueError: If the schema is incompatible or ``row`` is out of range.
        """
        plan = _plan_for(cls)
        if not 0 <= row < batch.num_rows:
            raise ValueError(f"{cls.__qualname__}: row {row} out of range for a batch of {batch.num_rows} rows")
        return cls._from_checked_batch(plan, batch, row)

    def to_arrow_value(self) -> dict[str, object]:
        """Return this instance as a value for a struct column of type ``pa.struct(ARROW_SCHEMA)``.

        Returns:
            A dict usable in ``pa.array([...], type=struct_type)``.
        """
        plan = _plan_for(type(self))
        return dict(zip(plan.names, plan.to_values(self), strict=True))

    @classmethod
    def from_arrow_value(cls, value: Mapping[str, object]) -> Self:
        """Inverse of :meth:`to_arrow_value`, accepting ``StructScalar.as_py()`` / ``to_pylist()`` dicts.

        Args:
            value: The struct value.

        Returns:
            The instance.
        """
        return typing.cast("Self", _plan_for(cls).from_mapping(value))


# ---------------------------------------------------------------------------------------------------------------------
# Schema helpers
# ---------------------------------------------------------------------------------------------------------------------


def schema_to_bytes(schema: pa.Schema) -> bytes:
    """Serialize a schema as an Arrow IPC schema message.

    Args:
        schema: The schema.

    Returns:
        The encapsulated IPC message bytes.
    """
    return typing.cast("bytes", schema.serialize().to_pybytes())


def schema_from_bytes(data: bytes | pa.Buffer) -> pa.Schema:
    """Deserialize a schema written by :func:`schema_to_bytes`.

    Args:
        data: The IPC schema message bytes.

    Returns:
        The schema.

    Raises:
        ValueError: If the bytes are not a valid IPC schema message.
    """
    try:
        return pa.ipc.read_schema(pa.py_buffer(data))
    except Exception as exc:
        raise ValueError(f"invalid Arrow IPC schema message: {type(exc).__name__}: {exc}") from exc
