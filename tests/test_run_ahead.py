"""Producer run-ahead (``ProducerState.run_ahead``): order, tokens, failures and the bounds of a run.

The bounds are tested with a gate, not with timings: a state's second turn waits until the client
holds the first batch. A run that held the first batch back until that turn ended would never let
the gate open; the turn then fails with "held back" after the gate's timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from vgi_flight import CallContext, Level, OutputCollector, ProducerState, RpcError, RpcServer, Stream, connect

KEY = b"run-ahead-test-key-0123456789abc"
SCHEMA = pa.schema([("n", pa.int64())])
GATE = threading.Event()  # set by the client once it holds the first batch of a gated stream
GATE_SECONDS = {"wait": 30.0}  # how long a gated turn waits for the client before it gives up


@dataclass
class AheadState(ProducerState):
    run_ahead = 8
    limit: int
    fail_at: int = -1
    n: int = 0

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.n == self.fail_at:
            raise ValueError(f"no batch {self.n}")
        if self.n >= self.limit:
            out.finish()
            return
        out.client_log(Level.INFO, f"before {self.n}")
        out.emit_pydict({"n": [self.n]})
        self.n += 1


@dataclass
class GatedState(ProducerState):
    """Two batches; the second turn waits until the client holds the first."""

    run_ahead = 8
    rows: int  # rows of the first batch
    pause: float = 0.0  # seconds the first turn takes
    n: int = 0

    def produce(self, out: OutputCollector, ctx: CallContext) -> None:
        if self.n == 2:
            out.finish()
            return
        if self.n == 1 and not GATE.wait(GATE_SECONDS["wait"]):
            raise RuntimeError("the first batch was held back")
        if self.n == 0 and self.pause:
            time.sleep(self.pause)
        out.emit(pa.record_batch([pa.array([self.n] * (self.rows if self.n == 0 else 1), pa.int64())], schema=SCHEMA))
        self.n += 1


@dataclass
class OneAtATimeState(GatedState):
    run_ahead = 1


class AheadService(Protocol):
    def count(self, limit: int, fail_at: int = -1) -> Stream[ProducerState]: ...
    def gated(self, rows: int, pause: float = 0.0) -> Stream[ProducerState]: ...
    def one_at_a_time(self) -> Stream[ProducerState]: ...


class AheadServiceImpl:
    def count(self, limit: int, fail_at: int = -1) -> Stream[AheadState]:
        return Stream(output_schema=SCHEMA, state=AheadState(limit, fail_at))

    def gated(self, rows: int, pause: float = 0.0) -> Stream[GatedState]:
        return Stream(output_schema=SCHEMA, state=GatedState(rows, pause))

    def one_at_a_time(self) -> Stream[OneAtATimeState]:
        return Stream(output_schema=SCHEMA, state=OneAtATimeState(1))


@pytest.fixture
def server() -> Iterator[RpcServer]:
    with RpcServer(AheadService, AheadServiceImpl(), token_key=KEY) as srv:
        yield srv


@pytest.fixture
def gate() -> Iterator[dict[str, float]]:
    GATE.clear()
    yield GATE_SECONDS
    GATE_SECONDS["wait"] = 30.0
    GATE.set()  # release a turn still waiting, so the server can stop


def read_into(stream: Any, got: list[int], *, open_gate: bool = False) -> list[int]:
    """Append each batch's first number to ``got``; with ``open_gate``, open the gate once the first is here."""
    for item in stream:
        got.append(item.batch.column("n")[0].as_py())
        if open_gate:
            GATE.set()
    return got


def read_gated(stream: Any, got: list[int] | None = None) -> list[int]:
    return read_into(stream, [] if got is None else got, open_gate=True)


def test_batches_and_logs_keep_their_order(server: RpcServer) -> None:
    events: list[str] = []
    with connect(AheadService, server.location, on_log=lambda m: events.append(m.message)) as svc:
        for item in svc.count(limit=20):
            events.append(f"batch {item.batch.column('n')[0].as_py()}")
    assert events == [e for n in range(20) for e in (f"before {n}", f"batch {n}")]


def test_a_token_read_mid_run_resumes_after_its_batch(server: RpcServer) -> None:
    with connect(AheadService, server.location) as svc:
        session = svc.count(limit=20)
        stream = iter(session)
        first = [next(stream).batch.column("n")[0].as_py() for _ in range(3)]  # inside the first run of 8
        token = session.token
        session.close()
    rest = flight.connect(server.location).do_get(flight.Ticket(token)).read_all()
    assert first == [0, 1, 2]
    assert rest.column("n").to_pylist() == list(range(3, 20))


def test_batches_made_before_a_failure_arrive_before_the_error(server: RpcServer) -> None:
    got: list[int] = []
    with connect(AheadService, server.location) as svc, pytest.raises(RpcError) as info:
        read_into(svc.count(limit=20, fail_at=5), got)  # fails inside the first run
    assert got == [0, 1, 2, 3, 4]
    assert info.value.error_type == "ValueError"
    assert "no batch 5" in info.value.error_message
    assert server.stats().streams_failed == 1


def test_default_sends_each_batch_when_its_turn_ends(server: RpcServer, gate: dict[str, float]) -> None:
    with connect(AheadService, server.location) as svc:
        assert read_gated(svc.one_at_a_time()) == [0, 1]


def test_a_run_ends_at_its_byte_bound(server: RpcServer, gate: dict[str, float]) -> None:
    with connect(AheadService, server.location) as svc:  # the first batch alone is 8 MiB
        assert read_gated(svc.gated(rows=1 << 20)) == [0, 1]


def test_a_run_ends_after_a_slow_turn(server: RpcServer, gate: dict[str, float]) -> None:
    with connect(AheadService, server.location) as svc:  # the first turn alone takes over 1 ms
        assert read_gated(svc.gated(rows=1, pause=0.01)) == [0, 1]


def test_a_quick_small_turn_is_held_for_the_next(server: RpcServer, gate: dict[str, float]) -> None:
    # The control of the two tests above: within both bounds the first batch waits for the second
    # turn, which gives up on the gate; the batch made before the failure still arrives first.
    gate["wait"] = 0.5
    got: list[int] = []
    with connect(AheadService, server.location) as svc, pytest.raises(RpcError) as info:
        read_gated(svc.gated(rows=1), got)
    assert info.value.error_message.endswith("the first batch was held back")
    assert got == [0]
