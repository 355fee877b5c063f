"""vgi-flight cluster benchmark: failover time when a replica dies, and throughput of 1 vs 3 replicas.

    python -m benchmarks.cluster [--quick] [--json results.json]

Replicas are ``python -m benchmarks.services vgi`` child processes on 127.0.0.1 sharing one token
key; the nginx front (``grpc_pass`` to an upstream of the replicas) is :func:`benchmarks.nginx.grpc_front`,
nginx with a throw-away configuration. The client runs here.

1. Failover: a producer of one-row batches is read; after a fixed number of batches the replica
   serving it is killed with SIGKILL. Reported: kill -> the client notices the break, kill -> the
   first batch from the replica that took over, and the longest gap between two delivered batches.
   Every run must deliver exactly 0..count-1 once each, or the benchmark fails.
2. Scaling: the same concurrent workload against 1 replica and 3 replicas, direct (the client
   lists the locations) and through nginx, in interleaved rounds; ratios are to 1 replica direct.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from benchmarks.common import concurrently
from benchmarks.nginx import grpc_front
from benchmarks.services import BenchService, ServerChild, bulk_batch
from vgi_flight import StreamSession, connect

CLIENT_LOG = "vgi_flight.client"  # the client logs "stream ... broke at ..." when it starts a resume


# --- processes -----------------------------------------------------------------------------------


class Replica(ServerChild):
    """One ``benchmarks.services vgi`` server process."""

    def __init__(self) -> None:
        super().__init__("vgi")

    def stop(self) -> None:
        self.kill()


def nginx_front(replicas: Sequence[Replica], buffer: str | None = None) -> AbstractContextManager[str]:
    """nginx on a loopback port, ``grpc_pass`` to the replicas; ``buffer`` sets ``grpc_buffer_size``."""
    return grpc_front([f"127.0.0.1:{r.port}" for r in replicas], buffer=buffer)


def established_on(port: int) -> int:
    """How many ESTABLISHED TCP connections have local port ``port`` (from /proc/net/tcp and tcp6)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # gRPC listens on dual-stack sockets (v4-mapped)
        with open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def serving_replica(replicas: Sequence[Replica]) -> Replica:
    """Behind nginx, the replica holding the stream's call: the only one with an open upstream connection.

    nginx opens one upstream connection per call (no ``keepalive`` in the upstream block), so while
    a single stream is open exactly one replica has an established connection.
    """
    for _ in range(100):
        busy = [r for r in replicas if established_on(r.port) > 0]
        if len(busy) == 1:
            return busy[0]
        time.sleep(0.005)
    raise RuntimeError(f"cannot tell which replica serves the stream ({len(busy)} have connections)")


# --- failover --------------------------------------------------------------------------------------


class BreakClock(logging.Handler):
    """Records when the client starts resuming a broken stream (its ``broke at`` log line)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.breaks: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "broke" in record.getMessage():
            self.breaks.append(time.perf_counter())


@dataclass
class FailoverSample:
    mode: str
    detect_ms: float  # kill -> the client's call fails
    failover_ms: float  # kill -> first batch read from the replica that took over
    gap_ms: float  # longest gap between two delivered batches in the whole run
    drained_after_kill: int  # batches already in flight from the killed replica, delivered after the kill
    breaks: int


def failover_once(mode: str, replicas: list[Replica], clock: BreakClock, count: int, kill_at: int) -> FailoverSample:
    """Read ``small_batches(count)``; SIGKILL the serving replica after ``kill_at`` batches; time the takeover."""
    clock.breaks.clear()
    victim: Replica | None = None
    with entry_point(mode, replicas) as entry, connect(BenchService, entry) as svc:
        for i in range(3 * len(replicas)):  # warm: a channel to every replica (direct) / to nginx
            assert svc.add(a=i, b=1) == i + 1
        session = cast(StreamSession, svc.small_batches(count=count))  # what the proxy returns at run time
        expected = 0
        last = time.perf_counter()
        gap = 0.0
        killed_at = resumed_at = 0.0
        drained = 0
        for batch in session:
            now = time.perf_counter()
            gap = max(gap, now - last)
            last = now
            value = batch.batch.column("i").to_pylist()
            if value != [expected]:
                raise AssertionError(f"{mode}: expected batch [{expected}], got {value} (lost or duplicated rows)")
            expected += 1
            if victim is not None and not resumed_at:
                if clock.breaks:
                    resumed_at = now
                else:
                    drained += 1
            if expected == kill_at:
                if mode == "direct":
                    location = session._location  # private, but fine for a benchmark
                    victim = next(r for r in replicas if r.location == location)
                else:
                    victim = serving_replica(replicas)
                killed_at = time.perf_counter()
                victim.kill()
                last = killed_at
        if expected != count:
            raise AssertionError(f"{mode}: stream ended after {expected} of {count} batches")
        if victim is None or not clock.breaks or not resumed_at:
            raise AssertionError(f"{mode}: the stream never broke, so nothing failed over (count too small?)")
        if mode == "direct" and session._location == victim.location:
            raise AssertionError("direct: the stream resumed on the replica that was killed")
    replicas[replicas.index(victim)] = Replica()  # restart the killed replica for the next run
    victim.stop()
    return FailoverSample(
        mode,
        (clock.breaks[0] - killed_at) * 1e3,
        (resumed_at - killed_at) * 1e3,
        gap * 1e3,
        drained,
        len(clock.breaks),
    )


@contextmanager
def entry_point(mode: str, replicas: Sequence[Replica]) -> Iterator[str | list[str]]:
    """The client's entry: the replicas' locations (direct) or a fresh nginx in front of them."""
    if mode == "direct":
        yield [r.location for r in replicas]
    else:
        with nginx_front(replicas) as location:
            yield location


# --- scaling -----------------------------------------------------------------------------------


@dataclass
class ScalingConfig:
    name: str
    entry: str | list[str]
    unary: list[float] = field(default_factory=list)  # calls/s per round
    bulk: list[float] = field(default_factory=list)  # GB/s per round


def scaling(
    replicas: list[Replica], rounds: int, threads: int, calls: int, streams: int, batches: int
) -> list[ScalingConfig]:
    with (
        nginx_front(replicas[:1]) as nginx_one,
        nginx_front(replicas) as nginx_three,
        nginx_front(replicas, buffer="1m") as nginx_three_buffered,
    ):
        configs = [
            ScalingConfig("1 replica, direct", [replicas[0].location]),
            ScalingConfig("3 replicas, direct", [r.location for r in replicas]),
            ScalingConfig("1 replica, nginx", nginx_one),
            ScalingConfig("3 replicas, nginx", nginx_three),
            ScalingConfig("3 replicas, nginx buffer 1m", nginx_three_buffered),
        ]
        nbytes = streams * batches * bulk_batch().nbytes
        connections = [connect(BenchService, c.entry) for c in configs]
        try:
            proxies: list[Any] = [c.proxy for c in connections]
            for svc in proxies:  # warm every channel
                for i in range(12):
                    assert svc.add(a=i, b=1) == i + 1
                sum(1 for _ in svc.bulk(batches=2))

            for _ in range(rounds):
                for config, svc in zip(configs, proxies, strict=True):

                    def unary(i: int, svc: Any = svc) -> None:
                        for n in range(calls):
                            if svc.add(a=i, b=n) != i + n:
                                raise AssertionError("wrong result from add")

                    config.unary.append(threads * calls / concurrently(threads, unary))

                    def bulk(_i: int, svc: Any = svc) -> None:
                        got = 0
                        for batch in svc.bulk(batches=batches):
                            got += batch.batch.num_rows == bulk_batch().num_rows
                        if got != batches:
                            raise AssertionError(f"bulk delivered {got} of {batches} batches")

                    config.bulk.append(nbytes / concurrently(streams, bulk) / 1e9)
        finally:
            for connection in connections:
                connection.close()
    return configs


# --- report ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Row:
    workload: str
    unit: str
    median: float
    p99: float | None = None
    max: float | None = None
    ratio: float | None = None
    note: str = ""


def failover_rows(samples: list[FailoverSample]) -> list[Row]:
    rows = []
    for mode in ("direct", "nginx"):
        mine = [s for s in samples if s.mode == mode]
        n = len(mine)
        drained = statistics.median(s.drained_after_kill for s in mine)
        for label, values, note in (
            ("kill -> call fails", [s.detect_ms for s in mine], f"{drained:.0f} batches still delivered first"),
            (
                "call fails -> resumed",
                [s.failover_ms - s.detect_ms for s in mine],
                "first resume goes to another replica at once",
            ),
            ("kill -> first batch elsewhere", [s.failover_ms for s in mine], f"{n} kills, no loss/dup"),
            ("longest gap between batches", [s.gap_ms for s in mine], "the stall the reader sees"),
        ):
            rows.append(
                Row(
                    f"failover {mode}: {label}",
                    "ms",
                    statistics.median(values),
                    percentile(values, 0.99),
                    max(values),
                    note=note,
                )
            )
    return rows


def scaling_rows(configs: list[ScalingConfig], threads: int, streams: int, nbytes: int) -> list[Row]:
    rows = []
    base_unary, base_bulk = statistics.median(configs[0].unary), statistics.median(configs[0].bulk)
    for config in configs:
        value = statistics.median(config.unary)
        rows.append(Row(f"unary add x{threads} threads, {config.name}", "calls/s", value, ratio=value / base_unary))
    for config in configs:
        value = statistics.median(config.bulk)
        rows.append(
            Row(
                f"bulk x{streams} streams {nbytes / 2**20:.0f} MiB, {config.name}",
                "GB/s",
                value,
                ratio=value / base_bulk,
            )
        )
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"{'workload':<54} {'unit':<8} {'median':>9} {'p99':>9} {'max':>9} {'ratio':>7}  note")
    for row in rows:
        p99 = f"{row.p99:>9.1f}" if row.p99 is not None else f"{'':>9}"
        top = f"{row.max:>9.1f}" if row.max is not None else f"{'':>9}"
        ratio = f"{row.ratio:>6.2f}x" if row.ratio is not None else f"{'':>7}"
        print(f"{row.workload:<54} {row.unit:<8} {row.median:>9.2f} {p99} {top} {ratio}  {row.note}")
    print(
        f"ratio = figure / the same workload on 1 replica, direct, in this run. This machine has "
        f"{os.cpu_count()} cores: 3 replicas + nginx + the client compete for them (and each Python process "
        f"runs handlers under its GIL), so scaling is bounded by the cores, not by vgi-flight."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer kills and rounds (a smoke run, noisy)")
    parser.add_argument("--json", help="also write results to this file")
    args = parser.parse_args()
    kills = 3 if args.quick else 10
    rounds = 2 if args.quick else 7
    threads, calls = 8, (60 if args.quick else 250)
    streams, batches = 6, (16 if args.quick else 96)
    count, kill_at = 4000, 1500

    clock = BreakClock()
    client_log = logging.getLogger(CLIENT_LOG)
    client_log.setLevel(logging.INFO)
    client_log.addHandler(clock)
    replicas: list[Replica] = []
    try:
        replicas += [Replica() for _ in range(3)]
        samples: list[FailoverSample] = []
        for _ in range(kills):
            for mode in ("direct", "nginx"):  # interleaved, so that machine noise hits both alike
                samples.append(failover_once(mode, replicas, clock, count, kill_at))
        configs = scaling(replicas, rounds, threads, calls, streams, batches)
    finally:
        client_log.removeHandler(clock)
        for replica in replicas:
            replica.stop()

    rows = failover_rows(samples) + scaling_rows(configs, threads, streams, streams * batches * bulk_batch().nbytes)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "cpu_count": os.cpu_count(),
                    "rows": [asdict(r) for r in rows],
                    "failover_samples": [asdict(s) for s in samples],
                    "scaling_rounds": [asdict(c) for c in configs],
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
