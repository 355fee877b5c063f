"""Memory under long and large streams: does RSS stay flat, and is a large batch ever held twice?

    python -m benchmarks.memory [--gib 10] [--exchange-gib 2] [--big-mib 512] [--json out.json]

The server is ``python -m benchmarks.services vgi`` (or ``raw``) in a child process on 127.0.0.1,
the client a fresh ``python -m benchmarks.memory`` process. Each side's resident set is read
from ``/proc/<pid>/status``: ``VmRSS`` is sampled while a stream runs (growth = median of the last
fifth of the samples minus the median of the first fifth), and
``VmHWM`` (the peak, reset through ``/proc/<pid>/clear_refs``) gives the extra memory one large
batch needs on each side, as a multiple of the batch's size: about 1x means it is held once.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from benchmarks.services import BULK_ROWS, BenchService, bulk_batch, server_process
from vgi_flight import AnnotatedBatch, connect

# The benchmark service's bulk batch is 1 MiB (BULK_ROWS rows of int64 + float64).
ROWS_PER_MIB = BULK_ROWS


# --- /proc ----------------------------------------------------------------------------------------


def status_kib(pid: int | str, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int | str) -> None:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` value 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


class RssSampler:
    """Samples the RSS of some processes in a background thread."""

    def __init__(self, pids: dict[str, int | str], every: float = 0.05) -> None:
        self.pids = pids
        self.every = every
        self.samples: dict[str, list[int]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for name, pid in self.pids.items():
                self.samples[name].append(status_kib(pid, "VmRSS"))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for name, pid in self.pids.items():
            self.samples[name].append(status_kib(pid, "VmRSS"))


@dataclass
class Growth:
    """RSS of one side over one stream, in MiB."""

    workload: str
    side: str
    baseline_mib: float
    max_mib: float
    end_mib: float
    growth_mib: float


def growth_rows(workload: str, sampler: RssSampler) -> list[Growth]:
    """Baseline and end are the medians of the first and last fifth of the samples.

    Arrow's allocator (mimalloc) and gRPC keep freed memory for a while, so single samples swing
    by tens of MiB; medians over a fifth of a long stream show a trend, which is what a leak makes.
    """
    rows = []
    for side, samples in sampler.samples.items():
        fifth = max(1, len(samples) // 5)
        base, end = statistics.median(samples[:fifth]), statistics.median(samples[-fifth:])
        rows.append(Growth(workload, side, base / 1024, max(samples) / 1024, end / 1024, (end - base) / 1024))
    return rows


@dataclass
class Peak:
    """Extra peak memory for one large batch, as a multiple of its size."""

    workload: str
    side: str
    batch_mib: int
    extra_peak_mib: float
    times_batch: float


# --- running ----------------------------------------------------------------------------------------


def producer_growth(svc: BenchService, server_pid: int, mib: int) -> list[Growth]:
    """RSS of both sides while a producer streams ``mib`` MiB in 1 MiB batches."""
    received = 0
    with RssSampler({"client": "self", "server": server_pid}) as sampler:
        for item in svc.bulk(batches=mib):
            received += item.batch.num_rows
    if received != mib * ROWS_PER_MIB:
        raise AssertionError(f"received {received} rows, expected {mib * ROWS_PER_MIB}")
    return growth_rows(f"producer {mib / 1024:g} GiB in 1 MiB batches", sampler)


def exchange_growth(svc: BenchService, server_pid: int, mib: int) -> list[Growth]:
    """RSS of both sides over an exchange of ``mib`` turns, each echoing a 1 MiB batch."""
    one_mib = bulk_batch()
    with RssSampler({"client": "self", "server": server_pid}) as sampler, svc.bulk_echo() as session:
        for _ in range(mib):
            answer = session.exchange(AnnotatedBatch(one_mib))
            if answer.batch.num_rows != one_mib.num_rows:
                raise AssertionError("exchange answer lost rows")
    return growth_rows(f"exchange {mib} turns of 1 MiB each way", sampler)


def peak_of(read: Callable[[], int], server_pid: int, mib: int, workload: str) -> list[Peak]:
    """Extra peak RSS on each side while ``read`` receives one ``mib`` MiB batch (returns its rows)."""
    before = {"client": status_kib("self", "VmRSS"), "server": status_kib(server_pid, "VmRSS")}
    reset_peak("self")
    reset_peak(server_pid)
    rows = read()
    if rows != mib * ROWS_PER_MIB:
        raise AssertionError(f"received {rows} rows, expected {mib * ROWS_PER_MIB}")
    peaks = []
    for side, pid in (("client", "self"), ("server", server_pid)):
        extra = (status_kib(pid, "VmHWM") - before[side]) / 1024
        peaks.append(Peak(workload, side, mib, extra, extra / mib))
    return peaks


def _run_fresh(*args: str) -> Any:
    """Run ``python -m benchmarks.memory ARGS`` in a fresh client process and return the JSON it prints."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    ).stdout
    return json.loads(out)


def stream_growth(producer_mib: int, exchange_turns: int) -> list[Growth]:
    """RSS growth of both sides over a producer and an exchange, in fresh client and server processes.

    A fresh client keeps what else a process did (a test runner, other benchmarks) out of its RSS.
    """
    return [Growth(**row) for row in _run_fresh("growth", str(producer_mib), str(exchange_turns))]


def round_rss(rounds: int, producer_mib: int, exchange_turns: int) -> dict[str, list[float]]:
    """RSS (MiB) each side keeps after each of ``rounds`` rounds of a producer then an exchange, in fresh processes.

    Read when a stream has ended, so it is what stays held, not what was in flight: a loaded
    machine makes gRPC buffer more while a stream runs (peaks rose 160 -> 300 MiB over six rounds
    in one CI run while the memory kept after each round stayed put). A leak raises every
    round's figure; memory an allocator keeps for reuse raises early rounds and then stops.
    Keyed ``"<side> <workload>"``.
    """
    result: dict[str, list[float]] = _run_fresh("rounds", str(rounds), str(producer_mib), str(exchange_turns))
    return result


@contextmanager
def _warm_server() -> Iterator[tuple[BenchService, int]]:
    """A fresh benchmark server and a client to it, past the first 0.5 GiB (allocators and gRPC buffers settle)."""
    with server_process("vgi") as server, connect(BenchService, server.location) as svc:
        sum(1 for _ in svc.bulk(batches=512))
        yield svc, server.pid


def _release_cached_memory() -> None:
    """Hand the memory allocators keep for reuse back to the OS, so that RSS shows what is held.

    Arrow's pool and glibc's malloc keep freed memory, and sometimes a burst of it for a while
    (seen on Python 3.13: +75 MiB from one round on, with Arrow memory and objects unchanged).
    """
    gc.collect()
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, looked up once (``find_library`` may run ``ldconfig``); ``None`` elsewhere."""
    libc_name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc_name), "malloc_trim", None) if libc_name else None


def _round_rss_here(rounds: int, producer_mib: int, exchange_turns: int) -> dict[str, list[float]]:
    kept: dict[str, list[float]] = {}
    with _warm_server() as (svc, pid):
        for _ in range(rounds):
            for workload, run in (("producer", producer_growth), ("exchange", exchange_growth)):
                run(svc, pid, producer_mib if workload == "producer" else exchange_turns)
                _release_cached_memory()  # in this (client) process; the server's RSS is read as it is
                for side, side_pid in (("client", "self"), ("server", pid)):
                    kept.setdefault(f"{side} {workload}", []).append(status_kib(side_pid, "VmRSS") / 1024)
    return kept


def _growth_here(producer_mib: int, exchange_turns: int) -> list[Growth]:
    with _warm_server() as (svc, pid):
        return producer_growth(svc, pid, producer_mib) + exchange_growth(svc, pid, exchange_turns)


def big_batch_peak(side: str, mib: int) -> list[Peak]:
    """Extra peak RSS when one ``mib`` MiB batch is built, sent and read, with fresh client and server processes.

    Arrow's allocator keeps freed memory for reuse, so a second measurement in the same processes
    would see a lower peak: each one gets new processes.
    """
    return [Peak(**row) for row in _run_fresh("peak", side, str(mib))]


def _peak_here(side: str, mib: int) -> list[Peak]:
    """The measurement of :func:`big_batch_peak`, in the fresh client process."""
    with server_process(side) as server:
        if side == "vgi":
            with connect(BenchService, server.location) as svc:
                return peak_of(
                    lambda: sum(item.batch.num_rows for item in svc.one(mib=mib)),
                    server.pid,
                    mib,
                    f"one batch of {mib} MiB",
                )
        raw = flight.connect(server.location)
        try:
            return peak_of(
                lambda: sum(chunk.data.num_rows for chunk in raw.do_get(flight.Ticket(f"one:{mib}".encode()))),
                server.pid,
                mib,
                f"one batch of {mib} MiB, raw flight",
            )
        finally:
            raw.close()


def measure(gib: float, exchange_gib: float, big_mib: int) -> tuple[list[Growth], list[Peak]]:
    """Run every measurement against a fresh server."""
    growth = stream_growth(int(gib * 1024), int(exchange_gib * 1024))
    return growth, big_batch_peak("vgi", big_mib) + big_batch_peak("raw", big_mib)


def main() -> None:
    if sys.argv[1:2] == ["rounds"]:
        print(json.dumps(_round_rss_here(*(int(a) for a in sys.argv[2:5]))))
        return
    if sys.argv[1:2] == ["growth"]:
        print(json.dumps([asdict(g) for g in _growth_here(int(sys.argv[2]), int(sys.argv[3]))]))
        return
    if sys.argv[1:2] == ["peak"]:
        print(json.dumps([asdict(p) for p in _peak_here(sys.argv[2], int(sys.argv[3]))]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--gib", type=float, default=10.0, help="producer stream size (default 10 GiB)")
    parser.add_argument("--exchange-gib", type=float, default=2.0, help="exchange volume each way (default 2 GiB)")
    parser.add_argument("--big-mib", type=int, default=512, help="size of the single large batch (default 512 MiB)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    growth, peaks = measure(args.gib, args.exchange_gib, args.big_mib)
    print(f"{'workload':<42} {'side':<7} {'baseline':>9} {'max':>9} {'end':>9} {'growth':>8}  (MiB)")
    for g in growth:
        print(
            f"{g.workload:<42} {g.side:<7} {g.baseline_mib:>9.1f} {g.max_mib:>9.1f} {g.end_mib:>9.1f} "
            f"{g.growth_mib:>+8.1f}"
        )
    for p in peaks:
        print(f"{p.workload:<42} {p.side:<7} extra peak {p.extra_peak_mib:.1f} MiB = {p.times_batch:.2f}x the batch")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"growth": [asdict(g) for g in growth], "peaks": [asdict(p) for p in peaks]}, fh, indent=2)


if __name__ == "__main__":
    main()
