"""Protocol introspection: turn a ``typing.Protocol`` into a :class:`ServiceDescription`.

A method whose return annotation is ``Stream[...]`` is a stream; anything else is unary. Whether a
stream is a producer or an exchange is decided at run time by the ``Stream`` the implementation
returns, so a Protocol may declare ``Stream[StreamState, H]`` generically.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pyarrow as pa

from vgi_flight._arrow_types import ArrowSerializableDataclass, FieldCodec, codec_for, resolve_type_hints
from vgi_flight._context import CallContext
from vgi_flight._streams import Stream

RESERVED_PREFIX = "__"
_NO_DEFAULT: Any = inspect.Parameter.empty


class MethodKind(StrEnum):
    """How a method is called."""

    UNARY = "unary"
    STREAM = "stream"


@dataclass(frozen=True)
class ParamDescription:
    """One parameter of a method.

    Attributes:
        name: Parameter name (callers pass it by keyword).
        hint: The resolved Python type hint.
        codec: Maps the hint to Arrow and back.
        default: The default value, or ``inspect.Parameter.empty`` when required.
    """

    name: str
    hint: object
    codec: FieldCodec
    default: Any = _NO_DEFAULT

    @property
    def required(self) -> bool:
        """Whether the caller must supply a value."""
        return self.default is _NO_DEFAULT


@dataclass(frozen=True)
class MethodDescription:
    """Everything the framework knows about one RPC method.

    Attributes:
        name: Method name (the Flight action type for unary methods).
        kind: Unary or stream.
        doc: The Protocol method's docstring.
        params: Parameters in declaration order.
        params_schema: Arrow schema of the one-row parameter batch.
        result_hint: The unary return hint (``None`` for void), or the ``Stream[...]`` hint
            (``None`` in descriptions fetched from a remote server).
        result_schema: ``{result: T}`` for a unary method with a value, empty otherwise.
        result_codec: Codec of the unary result, or ``None``.
        header_type: The stream header dataclass, or ``None`` (also for remote descriptions).
        header_schema: Arrow schema of the stream header, or ``None`` for no header.
        defaults: Default values of optional parameters.
    """

    name: str
    kind: MethodKind
    doc: str
    params: tuple[ParamDescription, ...]
    params_schema: pa.Schema
    result_hint: object
    result_schema: pa.Schema
    result_codec: FieldCodec | None = None
    header_type: type[ArrowSerializableDataclass] | None = None
    header_schema: pa.Schema | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    param_by_name: Mapping[str, ParamDescription] = field(default_factory=dict, repr=False, compare=False)

    @property
    def has_header(self) -> bool:
        """Whether the stream sends a header."""
        return self.header_schema is not None


@dataclass(frozen=True)
class ServiceDescription:
    """A described Protocol.

    Attributes:
        name: The Protocol's class name.
        doc: The Protocol's docstring.
        methods: Methods by name, in declaration order.
    """

    name: str
    doc: str
    methods: Mapping[str, MethodDescription]


def _stream_args(hint: object) -> tuple[bool, type[ArrowSerializableDataclass] | None]:
    """Return (is_stream, header_type) for a return hint."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if hint is Stream:
        return True, None
    if typing.get_origin(hint) is not Stream:
        return False, None
    args = typing.get_args(hint)
    header = args[1] if len(args) > 1 else None
    if header is None or header is type(None):
        return True, None
    if typing.get_origin(header) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(header) if a is not type(None)]
        header = members[0] if len(members) == 1 else header
    if not (isinstance(header, type) and issubclass(header, ArrowSerializableDataclass)):
        raise TypeError(f"stream header type must be an ArrowSerializableDataclass, got {header!r}")
    return True, header


def _protocol_functions(protocol: type) -> dict[str, types.FunctionType]:
    found: dict[str, types.FunctionType] = {}
    for klass in reversed(protocol.__mro__):
        if klass in (object, typing.Protocol, typing.Generic) or not getattr(klass, "_is_protocol", False):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or not isinstance(value, types.FunctionType):
                continue
            found[name] = value
    return found


def _is_ctx_param(name: str, hint: object) -> bool:
    return name == "ctx" or hint is CallContext


def describe_method(name: str, func: Callable[..., Any], where: str) -> MethodDescription:
    """Describe one Protocol method.

    Args:
        name: The method name.
        func: The Protocol's function object.
        where: Names the Protocol in error messages.

    Raises:
        TypeError: A parameter or the return type cannot be mapped to Arrow.
    """
    hints = resolve_type_hints(func)
    sig = inspect.signature(func)
    params: list[ParamDescription] = []
    for pname, param in list(sig.parameters.items())[1:]:
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"{where}.{name}: *args/**kwargs are not supported in RPC methods")
        if pname not in hints:
            raise TypeError(f"{where}.{name}: parameter '{pname}' needs a type annotation")
        hint = hints[pname]
        if _is_ctx_param(pname, hint):
            continue
        codec = codec_for(hint, where=f"parameter '{pname}' of {where}.{name}")
        params.append(ParamDescription(pname, hint, codec, param.default))
    if "return" not in hints:
        raise TypeError(f"{where}.{name}: a return annotation is required (use -> None for no result)")
    ret = hints["return"]
    is_stream, header_type = _stream_args(ret)
    params_schema = pa.schema([p.codec.field(p.name) for p in params])
    result_codec: FieldCodec | None = None
    if is_stream or ret is None or ret is type(None):
        result_schema = pa.schema([])
    else:
        result_codec = codec_for(ret, where=f"return type of {where}.{name}")
        result_schema = pa.schema([result_codec.field("result")])
    return MethodDescription(
        name=name,
        kind=MethodKind.STREAM if is_stream else MethodKind.UNARY,
        doc=inspect.getdoc(func) or "",
        params=tuple(params),
        params_schema=params_schema,
        result_hint=ret,
        result_schema=result_schema,
        result_codec=result_codec,
        header_type=header_type,
        header_schema=header_type.ARROW_SCHEMA if header_type is not None else None,
        defaults={p.name: p.default for p in params if not p.required},
        param_by_name={p.name: p for p in params},
    )


_DESCRIPTIONS: dict[type, ServiceDescription] = {}


def describe_protocol(protocol: type) -> ServiceDescription:
    """Describe a Protocol class (cached per class).

    Args:
        protocol: A ``typing.Protocol`` subclass.

    Raises:
        TypeError: ``protocol`` is not a Protocol, or a method cannot be mapped to Arrow.
    """
    cached = _DESCRIPTIONS.get(protocol)
    if cached is not None:
        return cached
    if not getattr(protocol, "_is_protocol", False):
        raise TypeError(f"{protocol!r} is not a typing.Protocol class")
    methods = {
        name: describe_method(name, func, protocol.__name__) for name, func in _protocol_functions(protocol).items()
    }
    desc = ServiceDescription(name=protocol.__name__, doc=inspect.getdoc(protocol) or "", methods=methods)
    _DESCRIPTIONS[protocol] = desc
    return desc


@dataclass(frozen=True)
class BoundMethod:
    """A Protocol method bound to its implementation.

    Attributes:
        description: The Protocol-side description.
        call: The implementation's bound method.
        takes_ctx: Whether the implementation declares a ``ctx`` parameter.
    """

    description: MethodDescription
    call: Callable[..., Any]
    takes_ctx: bool


def bind_implementation(service: ServiceDescription, implementation: object) -> dict[str, BoundMethod]:
    """Check ``implementation`` against the Protocol and bind its methods.

    Extra methods, extra ``ctx`` parameters and return annotations that differ from the Protocol's
    are allowed; a missing method, a missing parameter or a unary/stream mismatch is not.

    Raises:
        TypeError: The implementation does not fit the Protocol.
    """
    bound: dict[str, BoundMethod] = {}
    impl_name = type(implementation).__name__
    for name, desc in service.methods.items():
        func = getattr(implementation, name, None)
        if func is None or not callable(func):
            raise TypeError(f"{impl_name} does not implement {service.name}.{name}")
        sig = inspect.signature(func)
        has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        missing = [p.name for p in desc.params if p.name not in sig.parameters and not has_var_kw]
        if missing:
            raise TypeError(f"{impl_name}.{name} lacks parameter(s) {missing} declared by {service.name}.{name}")
        takes_ctx = "ctx" in sig.parameters
        try:
            impl_ret = resolve_type_hints(func).get("return", _NO_DEFAULT)
        except TypeError:
            impl_ret = _NO_DEFAULT  # unresolvable annotations are the implementer's business
        if impl_ret is not _NO_DEFAULT:
            try:
                impl_is_stream = _stream_args(impl_ret)[0]
            except TypeError:
                impl_is_stream = None
            if impl_is_stream is True and desc.kind is MethodKind.UNARY:
                raise TypeError(f"{impl_name}.{name} returns a Stream but {service.name}.{name} is a unary method")
            if impl_is_stream is False and desc.kind is MethodKind.STREAM and _is_plain_type(impl_ret):
                raise TypeError(f"{impl_name}.{name} returns {impl_ret!r} but {service.name}.{name} is a stream method")
        bound[name] = BoundMethod(desc, func, takes_ctx)
    return bound


def _is_plain_type(hint: object) -> bool:
    """Whether a hint is a concrete non-Stream type (unions and Any are given the benefit of the doubt)."""
    return isinstance(hint, type) or hint is None or hint is type(None)
