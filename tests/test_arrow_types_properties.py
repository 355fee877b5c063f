"""Hypothesis property tests for vgi_flight._arrow_types round trips and malformed-input handling."""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Annotated, Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgi_flight._arrow_types import ArrowSerializableDataclass, ArrowType, arrow_array, codec_for

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Suit(enum.Enum):
    CLUBS = "c"
    DIAMONDS = "d"
    HEARTS = "h"
    SPADES = "s"


@dataclass(frozen=True)
class Card:
    suit: Suit
    rank: int
    note: str | None = None


@dataclass
class Rich(ArrowSerializableDataclass):
    i: int
    f: float
    s: str
    b: bytes
    flag: bool
    ints: list[int]
    floats: list[float | None]
    scores: dict[str, int]
    opt: int | None
    opt_text: str | None
    suit: Suit
    opt_suit: Suit | None
    card: Card
    opt_card: Card | None
    cards: list[Card | None]
    hands: dict[str, list[Card]]
    when: dt.datetime
    when_utc: Annotated[dt.datetime, ArrowType(pa.timestamp("us", tz="UTC"))]
    day: dt.date
    at: dt.time
    span: dt.timedelta
    amount: Decimal
    money: Annotated[Decimal, ArrowType(pa.decimal128(18, 4))]
    ident: uuid.UUID
    idents: list[uuid.UUID]
    suits: frozenset[Suit]
    tags: set[str]
    big: Annotated[int, ArrowType(pa.uint64())]
    small: Annotated[int, ArrowType(pa.int32())] = 0
    extra: list[list[str]] = field(default_factory=list)


int64s = st.one_of(st.sampled_from([INT64_MIN, INT64_MAX, 0, -1]), st.integers(INT64_MIN, INT64_MAX))
floats = st.one_of(st.sampled_from([-0.0, 0.0, math.inf, -math.inf, math.nan]), st.floats())
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=20) | st.sampled_from(["\x00", "a\x00b", ""])
blobs = st.binary(max_size=20) | st.sampled_from([b"\x00", b"\x00\xff\x00"])
naive_datetimes = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59))
aware_datetimes = st.datetimes(
    min_value=dt.datetime(2, 1, 1),
    max_value=dt.datetime(9998, 12, 31),
    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-7)), dt.timezone(dt.timedelta(hours=13))]),
)
# duration("us") is int64 microseconds: about +-106_751_991 days, less than Python's timedelta range
timedeltas = st.timedeltas(min_value=dt.timedelta(days=-106_751_990), max_value=dt.timedelta(days=106_751_990))
decimals_38_10 = st.decimals(
    min_value=Decimal("-9999999999999999999999999999.9999999999"),
    max_value=Decimal("9999999999999999999999999999.9999999999"),
    places=10,
    allow_nan=False,
    allow_infinity=False,
)
decimals_18_4 = st.decimals(
    min_value=Decimal("-99999999999999.9999"),
    max_value=Decimal("99999999999999.9999"),
    places=4,
    allow_nan=False,
    allow_infinity=False,
)
cards = st.builds(Card, suit=st.sampled_from(Suit), rank=int64s, note=st.none() | texts)

rich_values = st.builds(
    Rich,
    i=int64s,
    f=floats,
    s=texts,
    b=blobs,
    flag=st.booleans(),
    ints=st.lists(int64s, max_size=5),
    floats=st.lists(st.none() | floats, max_size=5),
    scores=st.dictionaries(texts, int64s, max_size=4),
    opt=st.none() | int64s,
    opt_text=st.none() | texts,
    suit=st.sampled_from(Suit),
    opt_suit=st.none() | st.sampled_from(Suit),
    card=cards,
    opt_card=st.none() | cards,
    cards=st.lists(st.none() | cards, max_size=4),
    hands=st.dictionaries(texts, st.lists(cards, max_size=3), max_size=3),
    when=naive_datetimes,
    when_utc=aware_datetimes,
    day=st.dates(),
    at=st.times(),
    span=timedeltas,
    amount=decimals_38_10,
    money=decimals_18_4,
    ident=st.uuids(),
    idents=st.lists(st.uuids(), max_size=3),
    suits=st.frozensets(st.sampled_from(Suit)),
    tags=st.sets(texts, max_size=4),
    big=st.integers(0, 2**64 - 1),
    small=st.integers(-(2**31), 2**31 - 1),
    extra=st.lists(st.lists(texts, max_size=3), max_size=3),
)


def same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN and distinguishes -0.0 from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@given(rich_values)
@SETTINGS
def test_rich_roundtrip(value: Rich) -> None:
    out = Rich.deserialize_from_bytes(value.serialize_to_bytes())
    for f in fields(Rich):
        assert same(getattr(value, f.name), getattr(out, f.name)), f.name
    assert out.when.tzinfo is None
    assert out.when_utc.tzinfo is not None
    assert type(out.suits) is frozenset
    assert type(out.tags) is set


@given(rich_values)
@SETTINGS
def test_rich_record_batch_and_struct_value(value: Rich) -> None:
    batch = value.to_record_batch()
    assert batch.num_rows == 1
    assert batch.schema.equals(Rich.ARROW_SCHEMA)
    out = Rich.from_record_batch(batch)
    struct_type = pa.struct(list(Rich.ARROW_SCHEMA))
    array = arrow_array([value.to_arrow_value()], struct_type)
    again = Rich.from_arrow_value(array[0].as_py())
    for f in fields(Rich):
        assert same(getattr(value, f.name), getattr(out, f.name)), f.name
        assert same(getattr(value, f.name), getattr(again, f.name)), f.name


@dataclass
class Small(ArrowSerializableDataclass):
    count: int = 0
    label: str = ""
    suit: Suit | None = None
    history: list[float] = field(default_factory=list)


VALID = Small(3, "x", Suit.HEARTS, [1.0]).serialize_to_bytes()


@given(st.binary(max_size=600))
@settings(max_examples=200, deadline=None)
def test_arbitrary_bytes_never_raise_unexpected_errors(data: bytes) -> None:
    try:
        out = Small.deserialize_from_bytes(data)
    except ValueError:
        return
    assert isinstance(out, Small)


@given(st.integers(0, len(VALID) - 1), st.integers(1, 255), st.integers(0, len(VALID)))
@settings(max_examples=200, deadline=None)
def test_mutated_valid_streams_never_raise_unexpected_errors(pos: int, xor: int, cut: int) -> None:
    mutated = bytearray(VALID)
    mutated[pos] ^= xor
    for data in (bytes(mutated), bytes(mutated[:cut]), VALID[:cut]):
        try:
            out = Small.deserialize_from_bytes(data)
        except ValueError:
            continue
        assert isinstance(out, Small)


@given(st.lists(st.integers(0, 2**64 - 1), max_size=5))
@SETTINGS
def test_uint64_codec(values: list[int]) -> None:
    codec = codec_for(list[Annotated[int, ArrowType(pa.uint64())]])
    array = pa.array([codec.to_arrow(values)], type=codec.arrow_type)
    assert codec.from_arrow(array.to_pylist()[0]) == values
