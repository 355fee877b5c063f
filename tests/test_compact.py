"""The compact state codec used inside tokens round-trips flat states and falls back otherwise."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.seed_services import RunningStatsState, StatefulPipeline
from vgi_flight import ArrowSerializableDataclass
from vgi_flight._compact import compact_codec, state_from_bytes, state_to_bytes


@dataclass
class Flat:
    n: int = 0
    x: float = 0.0
    flag: bool = False
    label: str = ""
    blob: bytes = b""
    maybe: int | None = None
    note: str | None = None


@dataclass(frozen=True)
class FrozenFlat:
    a: int
    b: str


# Every field of Flat, in declaration order (NaN: see test_negative_zero_and_nan).
FLAT_STATES = st.builds(
    Flat,
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(),
    st.binary(),
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.none() | st.text(),
)


@settings(max_examples=300, deadline=None)
@given(FLAT_STATES)
def test_flat_round_trip(state: Flat) -> None:
    data = state_to_bytes(state)
    assert data[:1] == b"\x01"
    assert state_from_bytes(Flat, data) == state


def test_negative_zero_and_nan() -> None:
    restored = state_from_bytes(Flat, state_to_bytes(Flat(x=-0.0)))
    assert math.copysign(1, restored.x) == -1
    assert math.isnan(state_from_bytes(Flat, state_to_bytes(Flat(x=math.nan))).x)


def test_frozen() -> None:
    assert state_from_bytes(FrozenFlat, state_to_bytes(FrozenFlat(1, "a"))) == FrozenFlat(1, "a")


def test_out_of_range_int_is_refused_not_truncated() -> None:
    @dataclass
    class Big(ArrowSerializableDataclass):
        n: int

    with pytest.raises(ValueError, match="n"):
        state_to_bytes(Big(2**63))


def test_non_flat_states_use_arrow_ipc() -> None:
    assert compact_codec(RunningStatsState) is None  # list field
    assert compact_codec(StatefulPipeline) is None  # enum field
    state = RunningStatsState(count=2, total=3.0, history=[1.0, 2.0])
    data = state_to_bytes(state)
    assert data[:1] == b"\xff"
    assert state_from_bytes(RunningStatsState, data) == state


@dataclass
class WithList:
    items: list[int] = field(default_factory=list)


@pytest.mark.parametrize("data", [b"\x01", b"\x01\x00\x00", b"\x01" + b"\x00" * 100])
def test_malformed_compact_bytes(data: bytes) -> None:
    with pytest.raises(ValueError):
        state_from_bytes(Flat, data)
    with pytest.raises(ValueError):
        state_from_bytes(WithList, data)


def _reference_layout(state: Flat) -> bytes:
    """The layout as the module docstring gives it, written out independently of the generated encoder."""
    out = [b"\x01", struct.pack(">q", state.n), struct.pack(">d", state.x), b"\x01" if state.flag else b"\x00"]
    for data in (state.label.encode(), state.blob):
        out += [struct.pack(">I", len(data)), data]
    out += [b"\x00"] if state.maybe is None else [b"\x01", struct.pack(">q", state.maybe)]
    out += (
        [b"\x00"] if state.note is None else [b"\x01", struct.pack(">I", len(state.note.encode())), state.note.encode()]
    )
    return b"".join(out)


@settings(max_examples=200, deadline=None)
@given(FLAT_STATES)
def test_encoder_writes_the_documented_layout(state: Flat) -> None:
    assert state_to_bytes(state) == _reference_layout(state)


@dataclass
class Typed(ArrowSerializableDataclass):
    n: int = 0
    label: str = ""
    blob: bytes = b""


@pytest.mark.parametrize(
    "state",
    [Typed(n=True), Typed(n=1.5), Typed(label=5), Typed(blob=5), Typed(blob="text")],  # type: ignore[arg-type]
    ids=["bool-in-int", "float-in-int", "int-in-str", "int-in-bytes", "str-in-bytes"],
)
def test_values_of_another_type_are_never_written_compactly(state: Typed) -> None:
    # bytes(5) would be five zero bytes: such values go to Arrow IPC, which converts or refuses them.
    try:
        data = state_to_bytes(state)
    except (ValueError, TypeError, pa.ArrowException):
        return
    assert data[:1] != b"\x01"
