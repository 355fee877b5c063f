"""Load: many concurrent clients mixing unary calls, producers and exchanges; every answer checked.

Client threads (and one client process of their own, for concurrency past the GIL) run a seeded
mix of operations (tests/load_client.py) against one server, and against three replicas (directly
and behind nginx) of which one is SIGKILLed at evenly spaced points of the run and restarted at
the same address, except after the last kill. Nothing may fail, be lost or run twice, and the
servers left must still serve with no call left open.

CI runs a bounded version with one kill. ``VGI_LOAD_OPS`` (operations per client thread, default
50), ``VGI_LOAD_THREADS`` (default 16; the client process runs half as many, with twice the
operations each), ``VGI_LOAD_KILLS`` (default 1) and ``VGI_LOAD_SEED`` scale it up, e.g.
``VGI_LOAD_OPS=500 VGI_LOAD_KILLS=4 python -m pytest tests/test_load.py`` (see docs/reliability.md).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.load_client import (
    Tally,
    check,
    init_client_process,
    is_transport_failure,
    run_load,
    run_load_process,
    sum_batch,
)
from tests.load_server import LoadServer, Nginx
from tests.load_service import Load, LoadStats
from vgi_flight import RpcError, connect

OPS = int(os.environ.get("VGI_LOAD_OPS", "50"))
THREADS = int(os.environ.get("VGI_LOAD_THREADS", "16"))
# The client process has a GIL of its own, so its threads go faster: half as many, twice the operations.
PROCESS_THREADS = max(1, THREADS // 2)
PROCESS_OPS = OPS * 2
TOTAL_OPS = THREADS * OPS + PROCESS_THREADS * PROCESS_OPS
SEED = int(os.environ.get("VGI_LOAD_SEED", "20250101"))
KILLS = int(os.environ.get("VGI_LOAD_KILLS", "1"))
# Generous overall bounds: a run that needs longer is stuck, whatever the machine.
RUN_TIMEOUT = 120 + OPS * THREADS * 0.05
pytestmark = pytest.mark.timeout(int(RUN_TIMEOUT * 2 + 60))


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., LoadServer]]:
    started: list[LoadServer] = []

    def start(location: str = "grpc://127.0.0.1:0") -> LoadServer:
        server = LoadServer(tmp_path / f"server-{len(started)}.log", location)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def stats(location: str) -> LoadStats:
    with connect(Load, location) as proxy:
        result: LoadStats = proxy.stats()
        return result


def assert_serving_and_idle(server: LoadServer) -> LoadStats:
    """Every call but the asking one has ended (nothing left open), and the server still answers.

    Returns the server's counters from before the final ``add``.
    """
    assert server.alive(), server.log()
    with connect(Load, server.location) as proxy:
        wait_until(lambda: proxy.stats().live_calls == 1, 60, f"the calls open on {server.location} to end")
        result: LoadStats = proxy.stats()
        assert proxy.add(a=40, b=2) == 42
        return result


def client_process(locations: list[str], seed: int) -> tuple[ProcessPoolExecutor, Future[Tally], Any]:
    """Start :func:`run_load` in a client process (spawned: no fork of a process running gRPC threads).

    Returns the pool, the future of the process's tally, and the Event to set just before a replica
    is killed (from then on the process may repeat calls broken in transport).
    """
    context = multiprocessing.get_context("spawn")
    replica_killed = context.Event()
    pool = ProcessPoolExecutor(
        max_workers=1, mp_context=context, initializer=init_client_process, initargs=(replica_killed,)
    )
    return pool, pool.submit(run_load_process, locations, seed, PROCESS_THREADS, PROCESS_OPS), replica_killed


def stop_client_process(pool: ProcessPoolExecutor) -> None:
    """Shut the client process down; kill it if it does not end (a failed or stuck run)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join(timeout=30)


def report(tally: Tally) -> str:
    lines = [tally.summary(), *tally.failures[:20]]
    if tally.retried:
        lines += ["retried:", *tally.retried[:20]]
    return "\n".join(lines)


def test_load_on_one_server(start_server: Callable[..., LoadServer]) -> None:
    server = start_server()
    pool, child, _ = client_process([server.location], SEED + 1)
    try:
        tally = run_load([server.location], seed=SEED, threads=THREADS, ops_per_thread=OPS)
        tally.merge(child.result(timeout=RUN_TIMEOUT))
    finally:
        stop_client_process(pool)
    print(report(tally))
    assert tally.failures == [], report(tally)
    assert tally.retried == [], report(tally)
    assert tally.total_ops == TOTAL_OPS
    assert tally.rows_checked > 0
    assert tally.answers_checked > 0
    after = assert_serving_and_idle(server)
    # The server did exactly what the clients asked: nothing lost, nothing run twice.
    for name in ("unary_calls", "streams_opened", "exchange_turns", "cancels", "cancelled_rows", "cancelled_turns"):
        assert getattr(after, name) == getattr(tally, name), f"{name}: server {after}, clients {tally.summary()}"


@pytest.mark.parametrize("entry", ["direct", "nginx"])
def test_load_on_three_replicas_killed_mid_run(
    start_server: Callable[..., LoadServer], tmp_path: Path, entry: str
) -> None:
    """``KILLS`` times, at evenly spaced points of the load, SIGKILL a replica; restart it but after the last."""
    replicas = [start_server() for _ in range(3)]
    nginx = Nginx([r.location for r in replicas], tmp_path) if entry == "nginx" else None
    locations = [nginx.location] if nginx is not None else [r.location for r in replicas]
    done = [0]
    result: dict[str, Any] = {"loading": []}  # per kill: (main load running, client process running)
    killed = threading.Event()

    def load() -> None:
        result["tally"] = run_load(
            locations,
            seed=SEED + 2,
            threads=THREADS,
            ops_per_thread=OPS,
            may_retry=killed.is_set,
            progress=lambda n: done.__setitem__(0, n),
        )

    pool, child, child_killed = client_process(locations, SEED + 3)
    loader = threading.Thread(target=load, name="load")

    def kill(victim: LoadServer) -> None:
        result["loading"].append((loader.is_alive(), not child.done()))
        killed.set()  # from now on a call broken in transport may be repeated
        child_killed.set()
        victim.stop()  # SIGKILL

    try:
        loader.start()
        for k in range(1, KILLS + 1):
            point = THREADS * OPS * k // (KILLS + 1)

            def reached(point: int = point) -> bool:
                return done[0] >= point or not loader.is_alive()

            wait_until(reached, RUN_TIMEOUT, f"kill point {k}")
            victim = kill_a_replica_under_sentinel_streams(replicas, locations, kill, strict=nginx is None)
            if k < KILLS:  # a replacement at the same address: clients and nginx keep their lists
                replicas[replicas.index(victim)] = start_server(victim.location)
        loader.join(timeout=RUN_TIMEOUT)
        assert not loader.is_alive(), "the load did not finish"
        tally: Tally = result["tally"]
        tally.merge(child.result(timeout=RUN_TIMEOUT))
    finally:
        stop_client_process(pool)
        if nginx is not None:
            nginx.stop()
    print(report(tally))
    # Every kill hits the running load (the kill points are points of its progress), the first one
    # the client process's load too.
    assert all(main for main, _ in result["loading"]), f"a kill came after the load (raise VGI_LOAD_OPS): {result}"
    assert result["loading"][0][1], "the client process had finished before the first kill"
    assert tally.failures == [], report(tally)
    assert tally.total_ops == TOTAL_OPS
    # The client moves calls refused by a dead replica elsewhere by itself; what reaches the test is
    # a call that was in flight on the replica when it died: at most one per client thread and kill.
    assert len(tally.retried) <= KILLS * (THREADS + PROCESS_THREADS), report(tally)
    for server in replicas:
        if server.alive():
            assert_serving_and_idle(server)
    with connect(Load, [r.location for r in replicas]) as proxy:  # a dead one is still listed: calls go around it
        assert [proxy.add(a=i, b=1) for i in range(30)] == [i + 1 for i in range(30)]


def kill_a_replica_under_sentinel_streams(
    replicas: list[LoadServer], locations: list[str], kill: Callable[[LoadServer], None], *, strict: bool
) -> LoadServer:
    """Kill the replica serving a producer while exchanges are open too; check that they all carry on.

    Connected directly (``strict``), the three exchanges open on the three replicas, so one of them
    is on the victim and must move; behind a proxy the proxy places them. Returns the victim.
    """
    rows = 300
    with connect(Load, locations) as proxy:
        producer = proxy.rows(start=0, count=rows, pause_ms=5)
        iterator = iter(producer)
        got = [next(iterator).batch for _ in range(10)]
        victim_pid = got[-1].column("pid")[0].as_py()
        exchanges = [proxy.running_sum() for _ in replicas]
        pids_before = [ex.exchange(sum_batch([n])).batch.column("pid")[0].as_py() for n, ex in enumerate(exchanges)]
        if strict:
            assert victim_pid in pids_before, (victim_pid, pids_before)
        victim = next(r for r in replicas if r.pid == victim_pid)
        kill(victim)
        got += [item.batch for item in iterator]
        assert [b.column("i")[0].as_py() for b in got] == list(range(rows)), "the producer lost or repeated rows"
        check(got[-1].column("pid")[0].as_py() != victim_pid, "the producer did not move to a surviving replica")
        for n, exchange in enumerate(exchanges):
            with exchange:
                for turn in range(2, 6):
                    answer = exchange.exchange(sum_batch([n, turn])).batch.to_pylist()[0]
                    assert answer["turns"] == turn
                    assert answer["total"] == n + sum(n + t for t in range(2, turn + 1))
                    assert answer["pid"] != victim_pid
    return victim


def test_unary_call_cut_by_its_dying_replica_is_not_sent_again(start_server: Callable[..., LoadServer]) -> None:
    """A unary call that was running when its replica died must fail with a transport error, not run again.

    gRPC reports a connection reset mid-call (the replica was SIGKILLed while the handler ran) as
    UNAVAILABLE, like a connection that could not be made. Only a call that was never sent
    (connection refused) or that a draining server refused itself is safe to move to another
    replica; this one may have run, so a non-idempotent method must not run twice.
    """
    first, second = start_server(), start_server()
    outcome: dict[str, Any] = {}
    with connect(Load, [first.location, second.location]) as proxy, connect(Load, first.location) as on_first:

        def call() -> None:
            try:
                outcome["value"] = proxy.slow(seconds=3.0, value=7)  # the first pick is the first location
            except RpcError as exc:
                outcome["error"] = exc

        caller = threading.Thread(target=call)
        caller.start()
        wait_until(lambda: on_first.stats().slow_started == 1, 30, "slow() to run on the first replica")
        first.stop()  # SIGKILL while the handler runs
        caller.join(timeout=60)
    assert stats(second.location).slow_started == 0, f"the call ran again on the other replica: {outcome}"
    assert is_transport_failure(outcome.get("error", RuntimeError())), outcome
