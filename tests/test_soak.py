"""Soak: many streams and unary calls against one server process; memory, descriptors and threads stay bounded.

The server runs in a child process (tests/load_server.py) so its resident memory (``VmRSS``), open
file descriptors (``/proc/PID/fd``) and threads can be read from outside. Client threads run
numbered soak items: one stream operation of a seeded random kind (read to the end, abandoned,
closed mid-way, cancelled, cut by a deadline, closed with its connection; see
tests/load_client.py) followed by a share of the unary calls. One item in ten runs on a new
connection that is closed afterwards. Meanwhile client processes that hold a producer and an
exchange open are SIGKILLed. Every answer is checked, and the server's counters must equal what
the clients did.

After a warm-up (allocator arenas, gRPC threads and caches reach their working size) the test
takes a baseline, runs the workload while sampling, and then requires that

- no call is left open on the server, and it still serves;
- the server's RSS never grows more than ``RSS_BOUND`` (64 MiB) beyond the baseline: a leak of
  1 KiB per call would add ~100 MiB over the long run's 110,000 calls, and 0.5 KiB per stream
  over the short run's ~1,000 streams would not be caught, which is why the long run exists;
- the server's open descriptors come back to at most baseline + 8, and its threads do not grow
  past a bound that does not depend on the number of calls;
- the server's Python objects (after ``gc.collect()``) and Arrow allocations come back near the
  baseline: these catch per-call leaks far below what RSS can see;
- the client process (this one) stays within the same RSS and descriptor bounds.

CI runs the short version (1,000 streams and 5,000 unary calls after the warm-up). The long
version is ``VGI_SOAK=1`` (10,000 streams, 100,000 unary calls, 10 killed client processes); the
sizes can be set with ``VGI_SOAK_STREAMS``, ``VGI_SOAK_UNARY`` and ``VGI_SOAK_DROPS``. See
docs/reliability.md for the figures of a long run.
"""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.load_client import SOAK_STREAM_MIX, UNARY_KINDS, ProcessSample, Tally, Worker
from tests.load_server import ROOT, LoadServer
from tests.load_service import Load, LoadStats
from vgi_flight import connect

LONG = os.environ.get("VGI_SOAK", "") not in ("", "0")
STREAMS = int(os.environ.get("VGI_SOAK_STREAMS", 10_000 if LONG else 1_000))
UNARY = int(os.environ.get("VGI_SOAK_UNARY", 100_000 if LONG else 5_000))
DROPS = int(os.environ.get("VGI_SOAK_DROPS", 10 if LONG else 2))
SEED = int(os.environ.get("VGI_SOAK_SEED", "7"))
WARMUP_STREAMS, WARMUP_UNARY = (500, 2_000) if LONG else (200, 1_000)
THREADS = 4
FRESH_CONNECTION = 0.1  # share of items run on a connection of their own

MiB = 1024 * 1024
RSS_BOUND = 64 * MiB
FD_SLACK = 8
THREAD_BOUND = 64  # gRPC's pools grow with concurrency (a few client threads here), not with calls
OBJECT_SLACK = 2_000  # Python objects after a GC: one leaked object per call would exceed it several times over
ARROW_SLACK = 4 * MiB

pytestmark = pytest.mark.timeout(300 + (STREAMS + WARMUP_STREAMS) * 0.1 + (UNARY + WARMUP_UNARY) * 0.01 + DROPS * 10)


@dataclass
class Samples:
    """Resource use sampled during the run."""

    server: list[ProcessSample] = field(default_factory=list)
    client: list[ProcessSample] = field(default_factory=list)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoadServer]:
    started = LoadServer(tmp_path / "server.log")
    yield started
    started.stop()


def run_items(location: str, first: int, streams: int, unary: int, tally: Tally) -> None:
    """Run soak items ``first .. first + streams - 1`` on ``THREADS`` threads; item ``n`` is seeded by ``n``."""
    kinds, weights = list(SOAK_STREAM_MIX), list(SOAK_STREAM_MIX.values())
    next_item = [first]
    lock = threading.Lock()
    tallies = [Tally() for _ in range(THREADS)]

    def unary_share(n: int) -> int:
        index = n - first
        return unary // streams + (1 if index < unary % streams else 0)

    def work(index: int) -> None:
        worker = Worker([location], tallies[index])
        try:
            while True:
                with lock:
                    n = next_item[0]
                    if n >= first + streams:
                        return
                    next_item[0] += 1
                rng = random.Random(SEED * 10**7 + n)
                kind = rng.choices(kinds, weights)[0]
                if rng.random() < FRESH_CONNECTION:
                    with connect(Load, location) as proxy:
                        worker.tally.connections += 1
                        run_item(worker, rng, kind, unary_share(n), proxy)
                else:
                    run_item(worker, rng, kind, unary_share(n), worker.proxy)
        finally:
            worker.close()

    threads = [threading.Thread(target=work, args=(i,), name=f"soak-{i}") for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for part in tallies:
        tally.merge(part)


def run_item(worker: Worker, rng: random.Random, kind: str, unary: int, proxy: Any) -> None:
    worker.run(kind, rng, proxy)
    for _ in range(unary):
        worker.run(rng.choice(UNARY_KINDS), rng, proxy)


def server_stats(location: str, collect: bool = True) -> LoadStats:
    with connect(Load, location) as proxy:
        result: LoadStats = proxy.stats(collect=collect)
        return result


def wait_idle(location: str, timeout: float = 60) -> LoadStats:
    """Wait until the only call open on the server is the one asking; return its stats (after a GC)."""
    end = time.monotonic() + timeout
    with connect(Load, location) as proxy:
        while True:
            stats: LoadStats = proxy.stats(collect=True)
            if stats.live_calls == 1:
                return stats
            assert time.monotonic() < end, f"calls still open on the server after {timeout} s: {stats}"
            time.sleep(0.1)


def drop_clients(location: str, count: int, stop: threading.Event, done: list[tuple[int, int]]) -> None:
    """Start ``count`` client processes one after the other; SIGKILL each once it holds two streams open."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for _ in range(count):
        if stop.is_set():
            return
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.load_client", "drop", location],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
            text=True,
        )
        watchdog = threading.Timer(120, proc.kill)  # a client that never gets ready is killed all the same
        watchdog.start()
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            if line[:1] == ["ready"]:
                fields = dict(item.split("=") for item in line[1:])
                done.append((int(fields["streams"]), int(fields["turns"])))
        finally:
            watchdog.cancel()
            proc.kill()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()


def trajectory(samples: list[ProcessSample], points: int = 10) -> str:
    """RSS (MiB) at ``points`` evenly spaced samples: a leak climbs, a working set levels off."""
    picks = [samples[round(i * (len(samples) - 1) / (points - 1))] for i in range(points)] if samples else []
    return " ".join(f"{s.rss / MiB:.0f}" for s in picks)


def sample(server: LoadServer, samples: Samples) -> None:
    samples.server.append(ProcessSample.of(server.pid))
    samples.client.append(ProcessSample.of(os.getpid()))


def test_soak(server: LoadServer) -> None:
    location = server.location
    tally = Tally()
    started = time.monotonic()
    run_items(location, 0, WARMUP_STREAMS, WARMUP_UNARY, tally)
    assert tally.failures == [], tally.failures[:20]
    gc.collect()
    base_stats = wait_idle(location)
    base_server, base_client = ProcessSample.of(server.pid), ProcessSample.of(os.getpid())
    base_client_objects = len(gc.get_objects())

    samples = Samples()
    stop = threading.Event()
    dropped: list[tuple[int, int]] = []

    def sampler() -> None:
        while not stop.wait(1.0):
            sample(server, samples)

    helpers = [
        threading.Thread(target=sampler, name="soak-sampler"),
        threading.Thread(target=drop_clients, args=(location, DROPS, stop, dropped), name="soak-drops"),
    ]
    for helper in helpers:
        helper.start()
    try:
        run_items(location, WARMUP_STREAMS, STREAMS, UNARY, tally)
    finally:
        helpers[1].join(timeout=60 + DROPS * 30)  # let every client process be dropped
        stop.set()
        helpers[0].join(timeout=30)
    gc.collect()
    end_client_objects = len(gc.get_objects())
    end_stats = wait_idle(location)
    sample(server, samples)
    end_server, end_client = samples.server[-1], samples.client[-1]
    elapsed = time.monotonic() - started

    peak_server = max(s.rss for s in samples.server)
    peak_client = max(s.rss for s in samples.client)
    report = "\n".join(
        [
            f"soak: {STREAMS} streams + {UNARY} unary after a warm-up of {WARMUP_STREAMS} + {WARMUP_UNARY}, "
            f"{len(dropped)}/{DROPS} client processes killed, {elapsed:.0f} s",
            f"clients: {tally.summary()}",
            f"server RSS MiB: baseline {base_server.rss / MiB:.1f}, end {end_server.rss / MiB:.1f}, "
            f"max growth {(peak_server - base_server.rss) / MiB:.1f}",
            f"server fds: baseline {base_server.fds}, end {end_server.fds}, max {max(s.fds for s in samples.server)}",
            f"server threads: baseline {base_server.threads}, end {end_server.threads}, "
            f"max {max(s.threads for s in samples.server)}",
            f"server Python objects: baseline {base_stats.python_objects}, end {end_stats.python_objects}; "
            f"Arrow bytes: baseline {base_stats.arrow_bytes}, end {end_stats.arrow_bytes}",
            f"client RSS MiB: baseline {base_client.rss / MiB:.1f}, end {end_client.rss / MiB:.1f}, "
            f"max growth {(peak_client - base_client.rss) / MiB:.1f}; fds: baseline {base_client.fds}, "
            f"end {end_client.fds}; Python objects: baseline {base_client_objects}, end {end_client_objects}",
            f"server RSS MiB over the run: {trajectory(samples.server)}",
            f"client RSS MiB over the run: {trajectory(samples.client)}",
        ]
    )
    print(report)

    assert tally.failures == [], report + "\n" + "\n".join(tally.failures[:20])
    assert tally.retried == []
    assert len(dropped) == DROPS, f"only {len(dropped)} of {DROPS} client processes got their streams open"
    assert tally.streams_opened >= STREAMS + WARMUP_STREAMS
    assert tally.unary_calls >= UNARY + WARMUP_UNARY
    # Nothing lost, nothing run twice: the server did what the clients (killed ones included) asked.
    expected = {
        "unary_calls": tally.unary_calls,
        "streams_opened": tally.streams_opened + sum(s for s, _ in dropped),
        "exchange_turns": tally.exchange_turns + sum(t for _, t in dropped),
        "cancels": tally.cancels,
        "cancelled_rows": tally.cancelled_rows,
        "cancelled_turns": tally.cancelled_turns,
    }
    assert {k: getattr(end_stats, k) for k in expected} == expected, report
    # Bounded resources.
    assert peak_server - base_server.rss < RSS_BOUND, report
    assert end_server.fds <= base_server.fds + FD_SLACK, report
    assert end_server.threads <= max(base_server.threads, THREAD_BOUND), report
    assert end_stats.python_objects - base_stats.python_objects < OBJECT_SLACK, report
    assert end_stats.arrow_bytes - base_stats.arrow_bytes < ARROW_SLACK, report
    assert peak_client - base_client.rss < RSS_BOUND, report
    assert end_client_objects - base_client_objects < OBJECT_SLACK, report
    assert end_client.fds <= base_client.fds + FD_SLACK, report
    # And it still serves.
    with connect(Load, location) as proxy:
        assert proxy.add(a=1, b=2) == 3
