"""The client side of the load and soak tests: a seeded mix of calls, every answer verified.

A :class:`Worker` runs one operation at a time against the load service (tests/load_service.py)
and checks each answer against the value it must have: unary results equal what was sent (or
``a + b``), every producer row is the right row in the right place, every exchange answer carries
the right running total. What it did is added up in a :class:`Tally`, which a test compares with
the server's own counters (``stats``) to find calls that were lost or ran twice.

Operation kinds:

- ``add``, ``echo_str``, ``echo_bytes``, ``echo_record``: one unary call;
- ``producer``: read a whole ``rows`` stream; ``exchange``: a whole ``running_sum`` session;
- ``producer_abandon`` / ``exchange_abandon``: stop reading (``break``) / ``close()`` mid-way;
- ``producer_cancel`` / ``exchange_cancel``: ``cancel()`` mid-way (the server runs ``on_cancel``);
- ``reconnect``: a new ``connect()`` for a unary call, a producer and an exchange, then close it;
- ``close_open_streams``: close a connection while a producer and an exchange are still open;
- ``deadline``: a unary call and a producer that outlive the connection's deadline.

``python -m tests.load_client drop LOCATION`` opens a producer and an exchange, prints what it
did, and waits to be killed: a client that disappears from outside (tests/test_soak.py).
"""

from __future__ import annotations

import math
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from tests.load_service import SUM_INPUT_SCHEMA, Inner, Load, Record, RowsHeader, Shade, row_text
from vgi_flight import AnnotatedBatch, ErrorCode, RpcError, StreamSession, connect

T = TypeVar("T")

UNARY_KINDS = ("add", "echo_str", "echo_bytes", "echo_record")
STREAM_KINDS = (
    "producer",
    "exchange",
    "producer_abandon",
    "exchange_abandon",
    "producer_cancel",
    "exchange_cancel",
    "reconnect",
    "close_open_streams",
    "deadline",
)

# Weights of each kind in the load test's mix: half unary calls, half streams of every kind.
LOAD_MIX: dict[str, int] = {
    "add": 14,
    "echo_str": 10,
    "echo_bytes": 10,
    "echo_record": 10,
    "producer": 16,
    "exchange": 12,
    "producer_abandon": 6,
    "exchange_abandon": 4,
    "producer_cancel": 4,
    "exchange_cancel": 4,
    "reconnect": 4,
    "close_open_streams": 2,
    "deadline": 1,
}

# The soak's mix of stream kinds (each soak item is one of these plus some unary calls).
SOAK_STREAM_MIX: dict[str, int] = {
    "producer": 30,
    "exchange": 25,
    "producer_abandon": 12,
    "exchange_abandon": 8,
    "producer_cancel": 8,
    "exchange_cancel": 8,
    "reconnect": 5,
    "close_open_streams": 3,
    "deadline": 1,
}

# Transport failures of a call whose replica died. A test may repeat a unary call (or a stream
# open, before any batch arrived) that failed with one of these, and only with one of these.
TRANSPORT_ERRORS = ("FlightUnavailableError", "FlightInternalError", "FlightCancelledError")
DEADLINE_SECONDS = 0.3
_TEXT = "abcdefghij XYZ 0123456789 \t\n\x00éßñ漢字🙂😀∑"


class VerificationError(AssertionError):
    """An answer differed from the one the question determines."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise VerificationError(message)


@dataclass
class Tally:
    """What a worker did and checked; counters mirror the server's ``stats``."""

    ops: Counter[str] = field(default_factory=Counter)
    unary_calls: int = 0
    streams_opened: int = 0
    exchange_turns: int = 0
    cancels: int = 0
    cancelled_rows: int = 0
    cancelled_turns: int = 0
    rows_checked: int = 0
    answers_checked: int = 0
    resumed_streams: int = 0  # streams whose batches came from more than one process
    deadlines: int = 0
    connections: int = 0
    retried: list[str] = field(default_factory=list)  # transport failures the test repeated
    failures: list[str] = field(default_factory=list)

    def merge(self, other: Tally) -> None:
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if isinstance(value, Counter):
                mine.update(value)
            elif isinstance(value, list):
                mine.extend(value)
            else:
                setattr(self, name, mine + value)

    @property
    def total_ops(self) -> int:
        return sum(self.ops.values())

    def summary(self) -> str:
        keys = ("unary_calls", "streams_opened", "exchange_turns", "cancels", "rows_checked", "answers_checked")
        parts = [f"{k}={getattr(self, k)}" for k in keys]
        parts += [f"resumed={self.resumed_streams}", f"retried={len(self.retried)}", f"failures={len(self.failures)}"]
        return f"{self.total_ops} ops ({dict(sorted(self.ops.items()))}); " + ", ".join(parts)


def is_transport_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a call broken in transport (not an answer from a vgi-flight server)."""
    return (
        isinstance(exc, RpcError)
        and exc.error_type in TRANSPORT_ERRORS
        and exc.code in (ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL, ErrorCode.CANCELLED)
    )


def random_text(rng: random.Random, longest: int = 120) -> str:
    return "".join(rng.choice(_TEXT) for _ in range(rng.randint(0, longest)))


def random_bytes(rng: random.Random) -> bytes:
    roll = rng.random()
    size = rng.randint(0, 2048) if roll < 0.9 else rng.randint(2048, 256 * 1024) if roll < 0.99 else 1024 * 1024
    return rng.randbytes(size)


def random_record(rng: random.Random) -> Record:
    return Record(
        id=rng.randint(-(2**62), 2**62),
        name=random_text(rng, 40),
        tags=[random_text(rng, 8) for _ in range(rng.randint(0, 5))],
        scores={f"k{n}": rng.uniform(-1e6, 1e6) for n in range(rng.randint(0, 4))},
        inner=Inner(random_text(rng, 10), rng.uniform(0, 10)),
        shade=rng.choice(list(Shade)),
        blob=rng.randbytes(rng.randint(0, 64)),
        maybe=rng.choice([None, rng.randint(0, 1000)]),
    )


def batches(session: StreamSession) -> Generator[AnnotatedBatch, None, None]:
    """A producer's batches as the generator they are (``close()`` abandons the stream)."""
    return cast(Generator[AnnotatedBatch, None, None], iter(session))


def sum_batch(values: list[int]) -> AnnotatedBatch:
    return AnnotatedBatch.from_pydict({"x": values}, schema=SUM_INPUT_SCHEMA)


@dataclass
class CheckedExchange:
    """An exchange session and the answers it must give next."""

    session: StreamSession
    total: int = 0
    turns: int = 0
    rows: int = 0
    pids: set[int] = field(default_factory=set)


class Worker:
    """Runs verified operations on one shared connection (plus the connections some kinds open).

    Args:
        locations: The server, or every replica.
        tally: Where results are added up.
        may_retry: Whether a transport failure may be repeated now (a replica was killed);
            otherwise every error is a failure.
    """

    def __init__(self, locations: Sequence[str], tally: Tally, may_retry: Callable[[], bool] = lambda: False) -> None:
        self.locations = list(locations)
        self.tally = tally
        self.may_retry = may_retry
        self.connection = connect(Load, self.locations)
        self.proxy: Any = self.connection.proxy
        self.deadline_connection = connect(Load, self.locations, timeout=DEADLINE_SECONDS)
        self.tally.connections += 2

    def close(self) -> None:
        self.connection.close()
        self.deadline_connection.close()

    # --- running ------------------------------------------------------------------------------

    def run(self, kind: str, rng: random.Random, proxy: Any = None) -> None:
        """Run one operation; a failure is recorded in the tally, never raised."""
        self.tally.ops[kind] += 1
        try:
            getattr(self, f"op_{kind}")(rng, proxy if proxy is not None else self.proxy)
        except Exception as exc:
            self.tally.failures.append(f"{kind}: {type(exc).__name__}: {exc}")

    def retrying(self, what: str, call: Callable[[], T]) -> T:
        """Run ``call``, repeating it after a transport failure only while ``may_retry()`` allows."""
        for attempt in range(5):
            try:
                return call()
            except RpcError as exc:
                if attempt == 4 or not (self.may_retry() and is_transport_failure(exc)):
                    raise
                self.tally.retried.append(f"{what}: {exc.error_type}: {exc.error_message[:120]}")
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    # --- unary --------------------------------------------------------------------------------

    def op_add(self, rng: random.Random, proxy: Any) -> None:
        a, b = rng.randint(-(2**61), 2**61), rng.randint(-(2**61), 2**61)
        got = self.retrying("add", lambda: proxy.add(a=a, b=b))
        check(got == a + b, f"add({a}, {b}) returned {got!r}")
        self.tally.unary_calls += 1

    def op_echo_str(self, rng: random.Random, proxy: Any) -> None:
        value = random_text(rng)
        got = self.retrying("echo_str", lambda: proxy.echo_str(value=value))
        check(got == value, f"echo_str({value!r}) returned {got!r}")
        self.tally.unary_calls += 1

    def op_echo_bytes(self, rng: random.Random, proxy: Any) -> None:
        value = random_bytes(rng)
        got = self.retrying("echo_bytes", lambda: proxy.echo_bytes(value=value))
        check(got == value, f"echo_bytes of {len(value)} bytes returned {len(got)} different bytes")
        self.tally.unary_calls += 1

    def op_echo_record(self, rng: random.Random, proxy: Any) -> None:
        value = random_record(rng)
        got = self.retrying("echo_record", lambda: proxy.echo_record(value=value))
        check(got == value, f"echo_record({value!r}) returned {got!r}")
        self.tally.unary_calls += 1

    # --- producers ----------------------------------------------------------------------------

    def open_rows(self, proxy: Any, start: int, count: int, per_batch: int, pause_ms: int) -> StreamSession:
        session: StreamSession = self.retrying(
            "rows open", lambda: proxy.rows(start=start, count=count, per_batch=per_batch, pause_ms=pause_ms)
        )
        self.tally.streams_opened += 1
        header = session.typed_header(RowsHeader)
        check(header == RowsHeader(start, count, sum(range(start, start + count))), f"rows header {header}")
        return session

    def read_rows(
        self, session: StreamSession, start: int, count: int, per_batch: int, stop_after: int | None = None
    ) -> int:
        """Read and check batches (all, or ``stop_after`` then ``break``); return the rows read."""
        end, expected, batches, pids = start + count, start, 0, set()
        for item in session:
            batch = item.batch
            want = list(range(expected, min(end, expected + per_batch)))
            got = batch.column("i").to_pylist()
            check(bool(want) and got == want, f"rows({start}, {count}, {per_batch}): batch {batches} is {got}")
            check(batch.column("sq").to_pylist() == [i * i for i in want], f"rows: bad sq in {want}")
            check(batch.column("text").to_pylist() == [row_text(i) for i in want], f"rows: bad text in {want}")
            pids.update(batch.column("pid").to_pylist())
            expected += len(want)
            batches += 1
            self.tally.rows_checked += len(want)
            if stop_after is not None and batches >= stop_after:
                break
        if stop_after is None:
            check(expected == end, f"rows({start}, {count}, {per_batch}) ended at {expected}")
            check(session.seq == math.ceil(count / per_batch), f"rows: seq {session.seq} after {batches} batches")
        if len(pids) > 1:
            self.tally.resumed_streams += 1
        return expected - start

    @staticmethod
    def rows_params(rng: random.Random, least: int = 0) -> tuple[int, int, int, int]:
        count = rng.randint(least, 60)
        return rng.randint(0, 10**9), count, rng.randint(1, 8), rng.choice((0, 0, 0, 1, 2, 5))

    def op_producer(self, rng: random.Random, proxy: Any) -> None:
        start, count, per_batch, pause = self.rows_params(rng)
        self.read_rows(self.open_rows(proxy, start, count, per_batch, pause), start, count, per_batch)

    def op_producer_abandon(self, rng: random.Random, proxy: Any) -> None:
        start, count, per_batch, pause = self.rows_params(rng, least=20)
        session = self.open_rows(proxy, start, count, per_batch, pause)
        batches = math.ceil(count / per_batch)
        self.read_rows(session, start, count, per_batch, stop_after=rng.randint(1, batches - 1))

    def op_producer_cancel(self, rng: random.Random, proxy: Any) -> None:
        start, count, per_batch, pause = self.rows_params(rng, least=20)
        session = self.open_rows(proxy, start, count, per_batch, pause)
        stop_after = rng.randint(0, math.ceil(count / per_batch) - 1)
        read = 0
        if stop_after:
            iterator = batches(session)
            for _ in range(stop_after):
                batch = next(iterator).batch
                read += batch.num_rows
                check(batch.column("i")[0].as_py() == start + read - batch.num_rows, "rows: wrong batch before cancel")
            cancelled = self.cancel(session)  # while the stream is open: after leaving the loop it is closed
            iterator.close()
        else:
            cancelled = self.cancel(session)
        self.tally.rows_checked += read
        if cancelled:
            self.tally.cancelled_rows += read

    def cancel(self, session: StreamSession) -> bool:
        """Cancel ``session``; return whether it is known to have run ``on_cancel``.

        A cancel cut by its replica's death (possible behind a proxy, where the client has one
        location) fails in transport: whether ``on_cancel`` ran is unknown, and the session cannot
        repeat it (it is closed). That is accepted only once a replica was killed, like a retry.
        """
        try:
            session.cancel()
        except RpcError as exc:
            if not (self.may_retry() and is_transport_failure(exc)):
                raise
            self.tally.retried.append(f"cancel (outcome unknown): {exc.error_type}: {exc.error_message[:120]}")
            return False
        self.tally.cancels += 1
        return True

    # --- exchanges ----------------------------------------------------------------------------

    def turns(self, exchange: CheckedExchange, rng: random.Random, count: int) -> None:
        """Run ``count`` checked turns, continuing the session's running total."""
        for _ in range(count):
            values = [rng.randint(-(10**9), 10**9) for _ in range(rng.randint(0, 5))]
            exchange.total += sum(values)
            exchange.turns += 1
            exchange.rows += len(values)
            answer = exchange.session.exchange(sum_batch(values)).batch.to_pylist()
            check(len(answer) == 1, f"running_sum answered {len(answer)} rows")
            got = answer[0]
            want = {"total": exchange.total, "turns": exchange.turns, "rows": exchange.rows}
            check({k: got[k] for k in want} == want, f"running_sum answered {got}, expected {want}")
            exchange.pids.add(got["pid"])
            self.tally.exchange_turns += 1
            self.tally.answers_checked += 1

    @contextmanager
    def exchange_session(self, proxy: Any) -> Iterator[CheckedExchange]:
        session: StreamSession = self.retrying("running_sum open", lambda: proxy.running_sum())
        self.tally.streams_opened += 1
        exchange = CheckedExchange(session)
        try:
            yield exchange
        finally:
            if len(exchange.pids) > 1:
                self.tally.resumed_streams += 1

    def op_exchange(self, rng: random.Random, proxy: Any) -> None:
        with self.exchange_session(proxy) as exchange, exchange.session:
            self.turns(exchange, rng, rng.randint(1, 12))

    def op_exchange_abandon(self, rng: random.Random, proxy: Any) -> None:
        with self.exchange_session(proxy) as exchange:
            self.turns(exchange, rng, rng.randint(0, 6))
            exchange.session.close()  # mid-way: the client had more to send

    def op_exchange_cancel(self, rng: random.Random, proxy: Any) -> None:
        with self.exchange_session(proxy) as exchange:
            count = rng.randint(0, 6)
            self.turns(exchange, rng, count)
            if self.cancel(exchange.session):
                self.tally.cancelled_turns += count

    # --- connections and deadlines ------------------------------------------------------------

    def op_reconnect(self, rng: random.Random, proxy: Any) -> None:
        with connect(Load, self.locations) as fresh:
            self.tally.connections += 1
            self.op_add(rng, fresh)
            self.op_producer(rng, fresh)
            self.op_exchange(rng, fresh)

    def op_close_open_streams(self, rng: random.Random, proxy: Any) -> None:
        connection = connect(Load, self.locations)
        self.tally.connections += 1
        try:
            fresh: Any = connection.proxy
            start, count, per_batch, pause = self.rows_params(rng, least=30)
            producer = self.open_rows(fresh, start, count, per_batch, pause)
            iterator = batches(producer)
            first = next(iterator).batch.column("i").to_pylist()
            check(first == list(range(start, start + min(count, per_batch))), f"rows: first batch {first}")
            with self.exchange_session(fresh) as exchange:
                self.turns(exchange, rng, rng.randint(1, 3))
                connection.close()  # both streams are still open
                try:
                    exchange.session.exchange(sum_batch([1]))
                    raise VerificationError("exchange() worked after its connection was closed")
                except RpcError as exc:
                    check(exc.error_type == "ProtocolError", f"exchange after close raised {exc}")
            iterator.close()
        finally:
            connection.close()

    def op_deadline(self, rng: random.Random, proxy: Any) -> None:
        deadline: Any = self.deadline_connection.proxy
        try:
            self.retrying("slow", lambda: deadline.slow(seconds=DEADLINE_SECONDS * 4, value=1))
            raise VerificationError("slow() returned within a deadline shorter than its sleep")
        except RpcError as exc:
            check(exc.code is ErrorCode.DEADLINE_EXCEEDED, f"slow() past its deadline raised {exc}")
        start, count = rng.randint(0, 10**6), 200
        session = self.open_rows(deadline, start, count, 1, 10)  # 2 s of rows: longer than the deadline
        got: list[int] = []
        try:
            for item in session:
                got.extend(item.batch.column("i").to_pylist())
            raise VerificationError("rows() outlived its deadline")
        except RpcError as exc:
            check(exc.code is ErrorCode.DEADLINE_EXCEEDED, f"rows() past its deadline raised {exc}")
        check(got == list(range(start, start + len(got))), "rows() before the deadline: wrong rows")
        self.tally.rows_checked += len(got)
        self.tally.deadlines += 2


# --- driving --------------------------------------------------------------------------------------


def run_load(
    locations: Sequence[str],
    *,
    seed: int,
    threads: int,
    ops_per_thread: int,
    may_retry: Callable[[], bool] = lambda: False,
    progress: Callable[[int], None] | None = None,
) -> Tally:
    """``threads`` workers, each running ``ops_per_thread`` operations drawn from ``LOAD_MIX``.

    Args:
        locations: The server, or every replica.
        seed: Seeds every worker's choices (worker ``i`` uses ``seed * 1000 + i``).
        threads: Number of worker threads (one shared connection each).
        ops_per_thread: Operations per worker.
        may_retry: Whether calls that failed in transport may be repeated now (a replica was killed).
        progress: Called with the number of operations finished so far, after each one.
    """
    kinds, weights = list(LOAD_MIX), list(LOAD_MIX.values())
    tallies = [Tally() for _ in range(threads)]
    done = [0]
    lock = threading.Lock()

    def work(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        worker = Worker(locations, tallies[index], may_retry)
        try:
            for _ in range(ops_per_thread):
                worker.run(rng.choices(kinds, weights)[0], rng)
                with lock:
                    done[0] += 1
                    finished = done[0]
                if progress is not None:
                    progress(finished)
        finally:
            worker.close()

    pool = [threading.Thread(target=work, args=(i,), name=f"load-{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    return total


_replica_killed: Any = None  # a multiprocessing Event in a client process (see init_client_process)


def init_client_process(replica_killed: Any) -> None:
    """Initializer of a client process: the Event the test sets just before it kills a replica."""
    global _replica_killed
    _replica_killed = replica_killed


def run_load_process(locations: list[str], seed: int, threads: int, ops_per_thread: int) -> Tally:
    """:func:`run_load` in a client process of its own (for ``multiprocessing``).

    Calls broken in transport may be repeated once the Event given to :func:`init_client_process`
    is set.
    """

    def may_retry() -> bool:
        return _replica_killed is not None and bool(_replica_killed.is_set())

    return run_load(locations, seed=seed, threads=threads, ops_per_thread=ops_per_thread, may_retry=may_retry)


@dataclass
class ProcessSample:
    """Resource use of one process, read from /proc."""

    rss: int  # bytes
    fds: int
    threads: int

    @classmethod
    def of(cls, pid: int) -> ProcessSample:
        text = Path(f"/proc/{pid}/status").read_text()
        status = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        rss = int(status["VmRSS"].split()[0]) * 1024
        return cls(rss, len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"]))


def drop_client_main(location: str) -> None:
    """Open a producer and an exchange, report on stdout, then wait to be killed."""
    connection = connect(Load, location)
    proxy: Any = connection.proxy
    producer = proxy.rows(start=0, count=10**6, pause_ms=1)
    iterator = iter(producer)
    rows = [next(iterator).batch.column("i")[0].as_py() for _ in range(5)]
    assert rows == list(range(5)), rows
    exchange = proxy.running_sum()
    turns = 3
    for turn in range(1, turns + 1):
        assert exchange.exchange(sum_batch([turn])).batch.column("turns")[0].as_py() == turn
    print(f"ready streams=2 turns={turns}", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "drop":
        drop_client_main(sys.argv[2])
    else:
        sys.exit("usage: python -m tests.load_client drop LOCATION")
