"""Example tests for vgi_flight._arrow_types (type mapping, dataclass IPC round trips, errors)."""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import enum
import math
import socket
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, ClassVar, NewType, Optional

import pyarrow as pa
import pytest

from vgi_flight._arrow_types import (
    ArrowSerializableDataclass,
    ArrowType,
    FieldCodec,
    arrow_array,
    codec_for,
    resolve_type_hints,
    schema_from_bytes,
    schema_to_bytes,
)

# ---------------------------------------------------------------------------------------------------------------------
# Module-level types used by the tests (string annotations resolve against this module)
# ---------------------------------------------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = 1
    GREEN = 2
    BLUE = 3


class Level(enum.IntEnum):
    LOW = 10
    HIGH = 20


UserId = NewType("UserId", int)


@dataclass
class RunningStatsState(ArrowSerializableDataclass):
    count: int = 0
    total: float = 0.0
    history: list[float] = field(default_factory=list)
    label: str = ""


@dataclass
class EnumState(ArrowSerializableDataclass):
    color: Color
    maybe: Color | None = None
    level: Level = Level.LOW


@dataclass(frozen=True)
class Point:
    x: int
    y: float = 0.0


@dataclass(frozen=True)
class Shape(ArrowSerializableDataclass):
    name: str
    points: list[Point]
    origin: Point | None = None
    tagged: dict[str, Point] = field(default_factory=dict)


def roundtrip(obj: ArrowSerializableDataclass) -> Any:
    data = obj.serialize_to_bytes()
    assert isinstance(data, bytes)
    return type(obj).deserialize_from_bytes(data)


def batch_bytes(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data: bytes = sink.getvalue().to_pybytes()
    return data


# ---------------------------------------------------------------------------------------------------------------------
# Seed examples
# ---------------------------------------------------------------------------------------------------------------------


def test_running_stats_roundtrip() -> None:
    state = RunningStatsState(count=3, total=6.5, history=[1.0, 2.5, 3.0], label="abc")
    assert roundtrip(state) == state
    assert roundtrip(RunningStatsState()) == RunningStatsState()


def test_running_stats_schema() -> None:
    schema = RunningStatsState.ARROW_SCHEMA
    assert schema.names == ["count", "total", "history", "label"]
    assert schema.field("count").type == pa.int64()
    assert schema.field("total").type == pa.float64()
    assert schema.field("history").type == pa.list_(pa.float64())
    assert schema.field("label").type == pa.utf8()
    assert not any(f.nullable for f in schema)
    # cached, and also reachable from an instance
    assert RunningStatsState.ARROW_SCHEMA is schema
    assert RunningStatsState().ARROW_SCHEMA is schema


def test_enum_state_roundtrip() -> None:
    state = EnumState(Color.GREEN, Color.BLUE, Level.HIGH)
    out = roundtrip(state)
    assert out == state
    assert out.color is Color.GREEN
    assert out.level is Level.HIGH
    assert roundtrip(EnumState(Color.RED)) == EnumState(Color.RED)
    assert EnumState.ARROW_SCHEMA.field("color").type == pa.dictionary(pa.int16(), pa.utf8())
    assert EnumState.ARROW_SCHEMA.field("maybe").nullable


def test_enum_stores_member_name() -> None:
    batch = EnumState(Color.BLUE).to_record_batch()
    assert batch.column("color").to_pylist() == ["BLUE"]


def test_to_record_batch() -> None:
    state = RunningStatsState(1, 2.0, [3.0], "x")
    batch = state.to_record_batch()
    assert batch.num_rows == 1
    assert batch.schema.equals(RunningStatsState.ARROW_SCHEMA)
    assert batch.to_pylist() == [{"count": 1, "total": 2.0, "history": [3.0], "label": "x"}]
    assert RunningStatsState.from_record_batch(batch) == state


def test_serialized_bytes_are_a_standard_ipc_stream() -> None:
    state = RunningStatsState(1, 2.0, [3.0], "x")
    data = state.serialize_to_bytes()
    # byte-identical to what the IPC stream writer produces
    assert data == batch_bytes(state.to_record_batch())
    table = pa.ipc.open_stream(data).read_all()
    assert table.num_rows == 1
    assert table.schema.equals(RunningStatsState.ARROW_SCHEMA)


def test_deserialize_accepts_buffer_bytearray_memoryview() -> None:
    state = RunningStatsState(5, 1.0, [], "buf")
    data = state.serialize_to_bytes()
    assert RunningStatsState.deserialize_from_bytes(pa.py_buffer(data)) == state
    assert RunningStatsState.deserialize_from_bytes(bytearray(data)) == state
    assert RunningStatsState.deserialize_from_bytes(memoryview(data)) == state


# ---------------------------------------------------------------------------------------------------------------------
# One test per type-table row
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class IntState(ArrowSerializableDataclass):
    plain: int
    small: Annotated[int, ArrowType(pa.int32())]
    big: Annotated[int, ArrowType(pa.uint64())]
    tiny: Annotated[int, ArrowType(pa.int8())] = 0


def test_int_types_and_extremes() -> None:
    schema = IntState.ARROW_SCHEMA
    assert [f.type for f in schema] == [pa.int64(), pa.int32(), pa.uint64(), pa.int8()]
    for state in (
        IntState(2**63 - 1, 2**31 - 1, 2**64 - 1, 127),
        IntState(-(2**63), -(2**31), 0, -128),
        IntState(0, 0, 2**63, 0),
    ):
        assert roundtrip(state) == state


def test_int_out_of_range_is_reported() -> None:
    with pytest.raises((TypeError, ValueError), match="small"):
        IntState(0, 2**40, 0).serialize_to_bytes()
    with pytest.raises((TypeError, ValueError), match="big"):
        IntState(0, 0, -1).serialize_to_bytes()


@dataclass
class FloatState(ArrowSerializableDataclass):
    value: float


@pytest.mark.parametrize("value", [0.0, -0.0, 1.5, -1e308, 5e-324, math.inf, -math.inf])
def test_float_roundtrip(value: float) -> None:
    out = roundtrip(FloatState(value)).value
    assert out == value
    assert math.copysign(1.0, out) == math.copysign(1.0, value)


def test_float_nan() -> None:
    assert math.isnan(roundtrip(FloatState(math.nan)).value)


@dataclass
class TextState(ArrowSerializableDataclass):
    text: str
    blob: bytes
    flag: bool


def test_str_bytes_bool() -> None:
    state = TextState("a\x00b\u00e9\U0001f600", b"\x00\x01\xff\x00", True)
    out = roundtrip(state)
    assert out == state
    assert type(out.flag) is bool
    assert roundtrip(TextState("", b"", False)) == TextState("", b"", False)
    assert [f.type for f in TextState.ARROW_SCHEMA] == [pa.utf8(), pa.binary(), pa.bool_()]


@dataclass
class ContainerState(ArrowSerializableDataclass):
    ints: list[int]
    tags: set[str]
    colors: frozenset[Color]
    scores: dict[str, float]
    nested: list[list[int]]
    optional_items: list[int | None]
    by_color: dict[Color, list[str]]


def test_containers_roundtrip() -> None:
    state = ContainerState(
        ints=[1, 2, 3],
        tags={"a", "b"},
        colors=frozenset({Color.RED, Color.BLUE}),
        scores={"x": 1.0, "y": -2.0},
        nested=[[1], [], [2, 3]],
        optional_items=[1, None, 3],
        by_color={Color.GREEN: ["g"], Color.RED: []},
    )
    out = roundtrip(state)
    assert out == state
    assert type(out.tags) is set
    assert type(out.colors) is frozenset
    assert type(out.scores) is dict
    empty = ContainerState([], set(), frozenset(), {}, [], [], {})
    assert roundtrip(empty) == empty


def test_container_schema() -> None:
    schema = ContainerState.ARROW_SCHEMA
    assert schema.field("ints").type == pa.list_(pa.int64())
    assert schema.field("tags").type == pa.list_(pa.utf8())
    assert schema.field("colors").type == pa.list_(pa.dictionary(pa.int16(), pa.utf8()))
    assert schema.field("scores").type == pa.map_(pa.utf8(), pa.float64())


@dataclass
class OptionalState(ArrowSerializableDataclass):
    a: int | None
    b: Optional[str] = None  # noqa: UP045 - both spellings must work
    c: list[int] | None = None
    d: Point | None = None
    e: Annotated[Color, "tag"] | None = None


def test_optional_fields() -> None:
    schema = OptionalState.ARROW_SCHEMA
    assert all(f.nullable for f in schema)
    assert schema.field("e").type == pa.dictionary(pa.int16(), pa.utf8())
    for state in (
        OptionalState(None),
        OptionalState(1, "x", [1], Point(1, 2.0), Color.RED),
        OptionalState(0, "", [], Point(0), None),
    ):
        assert roundtrip(state) == state


def test_non_optional_none_is_rejected() -> None:
    with pytest.raises(TypeError, match="'label'"):
        RunningStatsState(label=None).serialize_to_bytes()  # type: ignore[arg-type]


def test_nested_dataclasses() -> None:
    shape = Shape(
        name="tri",
        points=[Point(0, 0.0), Point(1, 0.5), Point(2)],
        origin=Point(-1, -1.0),
        tagged={"a": Point(5, 5.0)},
    )
    out = roundtrip(shape)
    assert out == shape
    assert isinstance(out.points[0], Point)
    assert isinstance(out.tagged["a"], Point)
    struct_type = pa.struct([pa.field("x", pa.int64(), nullable=False), pa.field("y", pa.float64(), nullable=False)])
    assert Shape.ARROW_SCHEMA.field("origin").type == struct_type
    assert Shape.ARROW_SCHEMA.field("points").type == pa.list_(struct_type)


@dataclass
class Inner(ArrowSerializableDataclass):
    color: Color
    values: list[int] = field(default_factory=list)


@dataclass
class Outer(ArrowSerializableDataclass):
    inner: Inner
    inners: list[Inner]
    by_name: dict[str, Inner]
    maybe: Inner | None = None


def test_nested_serializable_dataclasses_with_enums() -> None:
    state = Outer(
        inner=Inner(Color.RED, [1]),
        inners=[Inner(Color.GREEN), Inner(Color.BLUE, [2, 3])],
        by_name={"k": Inner(Color.RED)},
    )
    assert roundtrip(state) == state


def test_to_and_from_arrow_value() -> None:
    items = [Inner(Color.RED, [1, 2]), Inner(Color.BLUE)]
    struct_type = pa.struct(list(Inner.ARROW_SCHEMA))
    array = pa.array([i.to_arrow_value() for i in items], type=struct_type)
    assert [Inner.from_arrow_value(v) for v in array.to_pylist()] == items
    assert Inner.from_arrow_value(array[1].as_py()) == items[1]


@dataclass
class TimeState(ArrowSerializableDataclass):
    when: dt.datetime
    when_utc: Annotated[dt.datetime, ArrowType(pa.timestamp("us", tz="UTC"))]
    day: dt.date
    at: dt.time
    span: dt.timedelta


def test_temporal_types() -> None:
    state = TimeState(
        when=dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
        when_utc=dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=5))),
        day=dt.date(1, 1, 1),
        at=dt.time(23, 59, 59, 123456),
        span=dt.timedelta(days=-3, microseconds=7),
    )
    out = roundtrip(state)
    assert out == state
    assert out.when.tzinfo is None
    assert out.when_utc.tzinfo is not None
    assert out.when_utc.utcoffset() == dt.timedelta(0)
    schema = TimeState.ARROW_SCHEMA
    assert [f.type for f in schema] == [
        pa.timestamp("us"),
        pa.timestamp("us", tz="UTC"),
        pa.date32(),
        pa.time64("us"),
        pa.duration("us"),
    ]


@dataclass
class DecimalState(ArrowSerializableDataclass):
    default: Decimal
    money: Annotated[Decimal, ArrowType(pa.decimal128(12, 2))] = Decimal("0.00")


def test_decimal() -> None:
    assert DecimalState.ARROW_SCHEMA.field("default").type == pa.decimal128(38, 10)
    assert DecimalState.ARROW_SCHEMA.field("money").type == pa.decimal128(12, 2)
    for state in (
        DecimalState(Decimal("1.5"), Decimal("19.99")),
        DecimalState(Decimal("-1234567890123456789012345678.0123456789"), Decimal("-9999999999.99")),
        DecimalState(Decimal(0)),
    ):
        assert roundtrip(state) == state


def test_decimal_too_precise_is_reported() -> None:
    with pytest.raises((TypeError, ValueError), match="money"):
        DecimalState(Decimal(1), Decimal("0.001")).serialize_to_bytes()


@dataclass
class UuidState(ArrowSerializableDataclass):
    id: uuid.UUID
    other: uuid.UUID | None = None


def test_uuid() -> None:
    assert UuidState.ARROW_SCHEMA.field("id").type == pa.uuid()
    state = UuidState(uuid.uuid4(), uuid.UUID(int=0))
    out = roundtrip(state)
    assert out == state
    assert isinstance(out.id, uuid.UUID)
    assert roundtrip(UuidState(uuid.UUID(int=2**128 - 1))) == UuidState(uuid.UUID(int=2**128 - 1))


@dataclass
class ArrowObjectsState(ArrowSerializableDataclass):
    batch: pa.RecordBatch
    schema: pa.Schema
    maybe_batch: pa.RecordBatch | None = None


def test_record_batch_and_schema_fields() -> None:
    batch = pa.RecordBatch.from_pydict(
        {"a": [1, 2, None], "b": ["x", "y", "z"]},
        schema=pa.schema([("a", pa.int32()), ("b", pa.utf8())], metadata={b"k": b"v"}),
    )
    schema = pa.schema([pa.field("q", pa.list_(pa.float32()), nullable=False)], metadata={b"m": b"1"})
    state = ArrowObjectsState(batch, schema)
    out = roundtrip(state)
    assert out.batch.equals(batch)
    assert out.batch.schema.equals(batch.schema, check_metadata=True)
    assert out.schema.equals(schema, check_metadata=True)
    assert out.maybe_batch is None
    assert ArrowObjectsState.ARROW_SCHEMA.field("batch").type == pa.binary()
    empty = pa.RecordBatch.from_pydict({"a": pa.array([], pa.int64())})
    assert roundtrip(ArrowObjectsState(empty, schema, batch)).maybe_batch.equals(batch)


@dataclass
class OverrideState(ArrowSerializableDataclass):
    counts: Annotated[dict[str, int], ArrowType(pa.map_(pa.utf8(), pa.int32()))]
    category: Annotated[str, ArrowType(pa.dictionary(pa.int32(), pa.utf8()))]
    color32: Annotated[Color, ArrowType(pa.dictionary(pa.int32(), pa.utf8()))]
    color_text: Annotated[Color, ArrowType(pa.utf8())]
    small_list: Annotated[list[int], ArrowType(pa.list_(pa.int16()))]
    text: Annotated[str, ArrowType(pa.large_utf8())]
    forced_nullable: Annotated[int, ArrowType(pa.int64(), nullable=True)] = 0
    forced_required: Annotated[int | None, ArrowType(pa.int16(), nullable=False)] = 1
    tagged: Annotated[int, "just a tag", 42] = 7


def test_arrow_type_overrides() -> None:
    schema = OverrideState.ARROW_SCHEMA
    assert schema.field("counts").type == pa.map_(pa.utf8(), pa.int32())
    assert schema.field("category").type == pa.dictionary(pa.int32(), pa.utf8())
    assert schema.field("color32").type == pa.dictionary(pa.int32(), pa.utf8())
    assert schema.field("color_text").type == pa.utf8()
    assert schema.field("small_list").type == pa.list_(pa.int16())
    assert schema.field("text").type == pa.large_utf8()
    assert schema.field("forced_nullable").nullable
    assert not schema.field("forced_required").nullable
    assert schema.field("forced_required").type == pa.int16()
    assert schema.field("tagged").type == pa.int64()
    # forced_nullable is `int` in Python but nullable in Arrow, so None must survive
    state = OverrideState({"a": 1, "b": -2}, "cat", Color.GREEN, Color.BLUE, [1, -1], "t", None, 5)  # type: ignore[arg-type]
    out = roundtrip(state)
    assert out == state
    assert out.color32 is Color.GREEN


def test_incompatible_override_is_rejected() -> None:
    with pytest.raises(TypeError, match="not compatible"):
        codec_for(Annotated[int, ArrowType(pa.utf8())], where="parameter 'a' of add")


def test_arrow_type_validates_arguments() -> None:
    with pytest.raises(TypeError):
        ArrowType("int64")
    assert ArrowType(pa.int32()) == ArrowType(pa.int32())
    assert hash(ArrowType(pa.int32())) == hash(ArrowType(pa.int32()))


@dataclass
class NewTypeState(ArrowSerializableDataclass):
    user: UserId


def test_newtype() -> None:
    assert NewTypeState.ARROW_SCHEMA.field("user").type == pa.int64()
    assert roundtrip(NewTypeState(UserId(7))) == NewTypeState(UserId(7))


@dataclass
class EmptyState(ArrowSerializableDataclass):
    pass


def test_empty_dataclass() -> None:
    assert len(EmptyState.ARROW_SCHEMA) == 0
    assert EmptyState().to_record_batch().num_rows == 1
    assert roundtrip(EmptyState()) == EmptyState()


# ---------------------------------------------------------------------------------------------------------------------
# Dataclass flavours
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class WithInitFalse(ArrowSerializableDataclass):
    a: int
    derived: int = field(init=False, default=0)
    note: str = field(init=False, default="")
    KIND: ClassVar[str] = "not a field"

    def __post_init__(self) -> None:
        self.derived = self.a * 2


def test_init_false_fields_and_classvars() -> None:
    assert WithInitFalse.ARROW_SCHEMA.names == ["a", "derived", "note"]
    state = WithInitFalse(3)
    state.derived = 100  # differs from what __post_init__ computes: the stored value must win
    state.note = "n"
    out = roundtrip(state)
    assert (out.a, out.derived, out.note) == (3, 100, "n")


@dataclass(frozen=True)
class FrozenInitFalse(ArrowSerializableDataclass):
    a: int
    b: int = field(init=False, default=5)


def test_frozen_init_false() -> None:
    state = FrozenInitFalse(1)
    object.__setattr__(state, "b", 9)
    out = roundtrip(state)
    assert out.b == 9
    assert out == state


@dataclass(slots=True)
class SlottedState(ArrowSerializableDataclass):
    a: int
    b: list[str] = field(default_factory=list)


def test_slots_dataclass() -> None:
    state = SlottedState(1, ["x"])
    assert roundtrip(state) == state
    assert not hasattr(state, "__dict__")


@dataclass(kw_only=True)
class KwOnlyState(ArrowSerializableDataclass):
    a: int
    b: str = "b"


def test_kw_only_dataclass() -> None:
    assert roundtrip(KwOnlyState(a=1)) == KwOnlyState(a=1)


class StreamState(ArrowSerializableDataclass, abc.ABC):
    @abc.abstractmethod
    def step(self) -> int: ...


@dataclass
class CounterState(StreamState):
    n: int = 0
    history: list[int] = field(default_factory=list)

    def step(self) -> int:
        self.n += 1
        self.history.append(self.n)
        return self.n


def test_abstract_base_subclass() -> None:
    state = CounterState()
    state.step()
    state.step()
    out = CounterState.deserialize_from_bytes(state.serialize_to_bytes())
    assert out == state
    assert isinstance(out, StreamState)
    with pytest.raises(TypeError):
        StreamState()  # type: ignore[abstract]
    assert not hasattr(StreamState, "ARROW_SCHEMA")  # not a dataclass: no schema, but no crash either


@dataclass
class BaseState(ArrowSerializableDataclass):
    a: int = 0


@dataclass
class DerivedState(BaseState):
    b: str = ""


def test_subclass_gets_its_own_schema() -> None:
    assert BaseState.ARROW_SCHEMA.names == ["a"]
    assert DerivedState.ARROW_SCHEMA.names == ["a", "b"]
    assert BaseState.ARROW_SCHEMA.names == ["a"]
    out = roundtrip(DerivedState(1, "x"))
    assert type(out) is DerivedState
    assert out == DerivedState(1, "x")


# ---------------------------------------------------------------------------------------------------------------------
# String annotations / scoping
# ---------------------------------------------------------------------------------------------------------------------


def test_annotations_are_strings_in_this_module() -> None:
    assert RunningStatsState.__dataclass_fields__["count"].type == "int"


def test_class_defined_in_function_uses_module_types() -> None:
    @dataclass
    class LocalState(ArrowSerializableDataclass):
        color: Color
        point: Point
        items: list[Inner] = field(default_factory=list)

    state = LocalState(Color.BLUE, Point(1, 1.0), [Inner(Color.RED)])
    assert roundtrip(state) == state


def test_class_defined_in_function_uses_local_types() -> None:
    class LocalEnum(enum.Enum):
        A = "a"
        B = "b"

    @dataclass
    class LocalInner:
        v: int

    @dataclass
    class LocalOuter(ArrowSerializableDataclass):
        e: LocalEnum
        inner: LocalInner
        many: list[LocalInner]

    state = LocalOuter(LocalEnum.B, LocalInner(1), [LocalInner(2)])
    assert roundtrip(state) == state


def test_unresolvable_annotation_raises_type_error() -> None:
    @dataclass
    class Broken(ArrowSerializableDataclass):
        x: DoesNotExist  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(TypeError, match="Broken"):
        _ = Broken.ARROW_SCHEMA


def test_resolve_type_hints_for_functions() -> None:
    def add(a: int, b: Annotated[int, ArrowType(pa.int32())] | None = None) -> list[Color]:
        return []

    hints = resolve_type_hints(add)
    assert hints["a"] is int
    assert hints["b"] == Optional[Annotated[int, ArrowType(pa.int32())]]  # noqa: UP045
    assert hints["return"] == list[Color]

    def bad(a: Missing) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    with pytest.raises(TypeError, match="bad"):
        resolve_type_hints(bad)


# ---------------------------------------------------------------------------------------------------------------------
# codec_for
# ---------------------------------------------------------------------------------------------------------------------


def test_codec_for_basics() -> None:
    codec = codec_for(int)
    assert isinstance(codec, FieldCodec)
    assert codec.arrow_type == pa.int64()
    assert not codec.nullable
    assert codec.field("n") == pa.field("n", pa.int64(), nullable=False)
    assert codec_for(int) is codec  # cached

    opt = codec_for(Color | None)
    assert opt.nullable
    assert opt.to_arrow(None) is None
    assert opt.to_arrow(Color.RED) == "RED"
    assert opt.from_arrow("RED") is Color.RED
    assert opt.from_arrow(None) is None

    fs = codec_for(frozenset[Color])
    assert fs.from_arrow(["RED", "BLUE"]) == frozenset({Color.RED, Color.BLUE})

    m = codec_for(dict[str, Point])
    arrow_value = m.to_arrow({"a": Point(1, 2.0)})
    array = pa.array([arrow_value], type=m.arrow_type)
    assert m.from_arrow(array.to_pylist()[0]) == {"a": Point(1, 2.0)}
    assert m.from_arrow(array.to_pylist(maps_as_pydicts="strict")[0]) == {"a": Point(1, 2.0)}


def test_codec_values_work_with_pa_array() -> None:
    samples: list[tuple[object, object]] = [
        (int, 5),
        (list[Color], [Color.RED]),
        (set[int], {1, 2}),
        (uuid.UUID, uuid.UUID(int=5)),
        (Point, Point(1, 2.0)),
        (dict[Color, int], {Color.RED: 1}),
        (Decimal, Decimal("2.5")),
    ]
    for hint, value in samples:
        codec = codec_for(hint)
        array = pa.array([codec.to_arrow(value)], type=codec.arrow_type)
        assert codec.from_arrow(array.to_pylist()[0]) == value
        assert codec.from_arrow(array[0].as_py()) == value


@pytest.mark.parametrize(
    "hint",
    [
        tuple[int, int],
        object,
        Any,
        int | str,
        Callable[[int], int],
        socket.socket,
        list,
        dict,
        type(None),
        typing.TypeVar("T"),
        dict[int | None, int],
    ],
)
def test_unsupported_hints(hint: object) -> None:
    with pytest.raises(TypeError, match=r"parameter 'a' of add"):
        codec_for(hint, where="parameter 'a' of add")


def test_unsupported_nested_hint_message_names_everything() -> None:
    with pytest.raises(TypeError) as info:
        codec_for(list[dict[str, socket.socket]], where="parameter 'a' of add")
    message = str(info.value)
    assert "parameter 'a' of add" in message
    assert "socket" in message


@dataclass
class HasSocket(ArrowSerializableDataclass):
    name: str
    handle: socket.socket


def test_unsupported_field_message() -> None:
    expected = "ArrowSerializableDataclass HasSocket: field 'handle' has unsupported type <class 'socket.socket'>"
    with pytest.raises(TypeError, match="^" + expected.replace("(", r"\(").replace(")", r"\)")):
        _ = HasSocket.ARROW_SCHEMA
    # still raising (not cached as a half-built plan) and also on serialize
    with pytest.raises(TypeError, match="field 'handle'"):
        HasSocket("x", None).serialize_to_bytes()  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="field 'handle'"):
        HasSocket.deserialize_from_bytes(b"")


@dataclass
class HasTuple(ArrowSerializableDataclass):
    pair: tuple[int, int]


@dataclass
class HasUnion(ArrowSerializableDataclass):
    value: int | str | None


@dataclass
class HasBadNested(ArrowSerializableDataclass):
    inner: list[HasTuple]


@pytest.mark.parametrize(
    ("cls", "name"), [(HasTuple, "pair"), (HasUnion, "value"), (HasBadNested, "inner")], ids=lambda x: str(x)
)
def test_unsupported_field_types(cls: type[ArrowSerializableDataclass], name: str) -> None:
    with pytest.raises(TypeError, match=f"{cls.__name__}: field '{name}' has unsupported type"):
        _ = cls.ARROW_SCHEMA


@dataclass
class Node(ArrowSerializableDataclass):
    value: int
    children: list[Node] = field(default_factory=list)


def test_recursive_dataclass_is_rejected() -> None:
    with pytest.raises(TypeError, match="recursive"):
        _ = Node.ARROW_SCHEMA


def test_not_a_dataclass() -> None:
    class Plain(ArrowSerializableDataclass):
        pass

    with pytest.raises(TypeError, match="not a dataclass"):
        Plain().serialize_to_bytes()


def test_wrong_value_type_names_field() -> None:
    with pytest.raises((TypeError, ValueError), match="'count'"):
        RunningStatsState(count="three").serialize_to_bytes()  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'color'"):
        EnumState("RED").serialize_to_bytes()  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'origin'"):
        Shape("s", [], origin=Inner(Color.RED)).serialize_to_bytes()  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------------
# Forward compatibility and schema mismatches
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class StateV1(ArrowSerializableDataclass):
    count: int


@dataclass
class StateV2(ArrowSerializableDataclass):
    count: int
    label: str = "default"
    history: list[int] = field(default_factory=lambda: [42])
    color: Color | None = Color.RED


def test_missing_defaulted_columns_use_defaults() -> None:
    out = StateV2.deserialize_from_bytes(StateV1(7).serialize_to_bytes())
    assert out == StateV2(7, "default", [42], Color.RED)


def test_extra_columns_are_ignored() -> None:
    out = StateV1.deserialize_from_bytes(StateV2(3, "x", [1], None).serialize_to_bytes())
    assert out == StateV1(3)


def test_reordered_columns() -> None:
    batch = pa.RecordBatch.from_pydict(
        {"label": ["l"], "count": [5]}, schema=pa.schema([("label", pa.utf8()), ("count", pa.int64())])
    )
    assert StateV2.deserialize_from_bytes(batch_bytes(batch)) == StateV2(5, "l")
    assert StateV2.from_record_batch(batch) == StateV2(5, "l")


def test_missing_required_column_is_value_error() -> None:
    with pytest.raises(ValueError, match="'count'"):
        StateV1.deserialize_from_bytes(EmptyState().serialize_to_bytes())


def test_wrong_column_type_is_value_error() -> None:
    @dataclass
    class CountAsText(ArrowSerializableDataclass):
        count: str

    with pytest.raises(ValueError, match="'count'"):
        StateV1.deserialize_from_bytes(CountAsText("7").serialize_to_bytes())


def test_wrong_schema_is_value_error() -> None:
    # no column in common: even an all-defaults class must not silently accept another class's data
    with pytest.raises(ValueError, match="none of the expected columns"):
        RunningStatsState.deserialize_from_bytes(EnumState(Color.RED).serialize_to_bytes())
    with pytest.raises(ValueError, match="'color'"):
        EnumState.deserialize_from_bytes(RunningStatsState().serialize_to_bytes())
    with pytest.raises(ValueError, match="'history'"):
        RunningStatsState.deserialize_from_bytes(ContainerStateLike([1]).serialize_to_bytes())


@dataclass
class ContainerStateLike(ArrowSerializableDataclass):
    history: list[int]


def test_null_in_non_nullable_column_is_value_error() -> None:
    batch = pa.RecordBatch.from_pydict({"count": pa.array([None], pa.int64())})
    with pytest.raises(ValueError, match="'count'"):
        StateV1.deserialize_from_bytes(batch_bytes(batch))


def test_unknown_enum_member_is_value_error() -> None:
    batch = pa.RecordBatch.from_pydict({"color": pa.array(["PURPLE"], pa.dictionary(pa.int16(), pa.utf8()))})
    with pytest.raises(ValueError, match="PURPLE"):
        EnumState.deserialize_from_bytes(batch_bytes(batch))


# ---------------------------------------------------------------------------------------------------------------------
# Malformed input
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\xff\xff\xff\xff\x00\x00\x00\x00",
        b"\x00" * 64,
        b"\xff" * 64,
        pa.py_buffer(b"nope"),
    ],
)
def test_malformed_bytes_are_value_error(data: bytes | pa.Buffer) -> None:
    with pytest.raises(ValueError, match="RunningStatsState"):
        RunningStatsState.deserialize_from_bytes(data)


def test_truncated_and_corrupted_streams_are_value_error() -> None:
    data = RunningStatsState(1, 2.0, [1.0, 2.0], "abc").serialize_to_bytes()
    for cut in range(len(data) - 1):
        with contextlib.suppress(ValueError):
            RunningStatsState.deserialize_from_bytes(data[:cut])
    for i in range(0, len(data), 3):
        corrupted = bytearray(data)
        corrupted[i] ^= 0x5A
        with contextlib.suppress(ValueError):
            RunningStatsState.deserialize_from_bytes(bytes(corrupted))


def test_row_count_must_be_one() -> None:
    two = pa.RecordBatch.from_pylist([{"count": 1}, {"count": 2}], schema=StateV1.ARROW_SCHEMA)
    with pytest.raises(ValueError, match="exactly one row"):
        StateV1.deserialize_from_bytes(batch_bytes(two))
    zero = pa.RecordBatch.from_pylist([], schema=StateV1.ARROW_SCHEMA)
    with pytest.raises(ValueError, match="exactly one row"):
        StateV1.deserialize_from_bytes(batch_bytes(zero))
    # two one-row batches in one stream is two rows
    one = StateV1(1).to_record_batch()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, one.schema) as writer:
        writer.write_batch(one)
        writer.write_batch(one)
    with pytest.raises(ValueError, match="exactly one row"):
        StateV1.deserialize_from_bytes(sink.getvalue())


def test_empty_batches_around_the_row_are_tolerated() -> None:
    one = StateV1(9).to_record_batch()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, one.schema) as writer:
        writer.write_batch(one.slice(0, 0))
        writer.write_batch(one)
    assert StateV1.deserialize_from_bytes(sink.getvalue()) == StateV1(9)


def test_deserialize_rejects_non_bytes() -> None:
    with pytest.raises(TypeError):
        RunningStatsState.deserialize_from_bytes("not bytes")


def test_from_record_batch_rows() -> None:
    batch = pa.RecordBatch.from_pylist([{"count": 1}, {"count": 2}, {"count": 3}], schema=StateV1.ARROW_SCHEMA)
    assert [StateV1.from_record_batch(batch, i).count for i in range(3)] == [1, 2, 3]
    with pytest.raises(ValueError, match="out of range"):
        StateV1.from_record_batch(batch, 3)


# ---------------------------------------------------------------------------------------------------------------------
# Schema helpers
# ---------------------------------------------------------------------------------------------------------------------


def test_schema_bytes_roundtrip() -> None:
    schema = Outer.ARROW_SCHEMA.with_metadata({b"a": b"b"})
    data = schema_to_bytes(schema)
    assert isinstance(data, bytes)
    assert schema_from_bytes(data).equals(schema, check_metadata=True)
    assert schema_from_bytes(pa.py_buffer(data)).equals(schema)
    with pytest.raises(ValueError):
        schema_from_bytes(b"not a schema")


@dataclass(frozen=True)
class Tagged:
    id: uuid.UUID
    color: Color | None = None


@dataclass
class NestedExtensionState(ArrowSerializableDataclass):
    tagged: Tagged
    maybe: Tagged | None
    many: list[Tagged | None]
    by_id: dict[uuid.UUID, Tagged]
    ids: dict[str, uuid.UUID]


def test_extension_types_nested_in_structs_lists_and_maps() -> None:
    a, b = uuid.UUID(int=1), uuid.UUID(int=2**127)
    state = NestedExtensionState(
        tagged=Tagged(a, Color.RED),
        maybe=None,
        many=[None, Tagged(b)],
        by_id={a: Tagged(b, Color.BLUE)},
        ids={"a": a},
    )
    assert roundtrip(state) == state
    assert NestedExtensionState.ARROW_SCHEMA.field("ids").type == pa.map_(pa.utf8(), pa.uuid())


def test_arrow_array_helper() -> None:
    codec = codec_for(Tagged | None)
    values = [codec.to_arrow(v) for v in (Tagged(uuid.UUID(int=3), Color.GREEN), None)]
    array = arrow_array(values, codec.arrow_type)
    array.validate(full=True)
    assert array.type == codec.arrow_type
    assert [codec.from_arrow(v) for v in array.to_pylist()] == [Tagged(uuid.UUID(int=3), Color.GREEN), None]


def test_unhashable_annotated_metadata_is_ignored() -> None:
    codec = codec_for(Annotated[int, ["unhashable"]])
    assert codec.arrow_type == pa.int64()
