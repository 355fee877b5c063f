"""How the benchmark schedules the pair's rows: server processes in rotation, and a settled machine before bulk ones."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks.common import Sampler
from benchmarks.run import (
    FULL,
    QUICK,
    RAW,
    REST_SECONDS,
    VGI,
    WORKLOADS,
    LocalSide,
    cpu_idle_fraction,
    rest_before,
    settle,
)


def test_rounds_rotate_over_server_processes() -> None:
    calls: list[tuple[int, str, int]] = []

    def sampler(process: int, workload: str) -> Sampler:
        def sample(count: int, warmup: int) -> list[float]:
            calls.append((process, workload, warmup))
            return [0.0] * count

        return sample

    side = LocalSide("side", [{w: sampler(i, w) for w in ("bulk", "noop")} for i in range(3)])
    for r in range(5):
        assert side.sample("bulk", 1, 2 if r == 0 else 0, {}) == [0.0]
    for r in range(2):
        side.sample("noop", 1, 3 if r == 0 else 0, {})
    assert calls == [
        (0, "bulk", 2),
        (1, "bulk", 2),  # every process is warmed up before every timed transfer, as in round 0
        (2, "bulk", 2),
        (0, "bulk", 2),
        (1, "bulk", 2),
        (0, "noop", 3),  # every workload rotates on its own count, warmed up like its round 0
        (1, "noop", 3),
    ]
    calls.clear()
    other = LocalSide("side", [{"bulk": sampler(i, "bulk")} for i in range(2)])
    for _ in range(3):
        other.sample("bulk", 1, 0, {})  # a run whose plan asks no warm-up still warms each process once
    assert calls == [(0, "bulk", 1), (1, "bulk", 1), (0, "bulk", 1)]


def test_a_full_run_meets_a_new_server_process_every_round() -> None:
    # a process's speed is a draw for its whole life: reusing one within a row would weigh its draw twice
    assert FULL.server_processes >= FULL.rounds
    assert QUICK.server_processes >= 2


def test_idle_fraction_sees_a_busy_core() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = 1.0 - cpu_idle_fraction(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy >= 0.5 / (os.cpu_count() or 1)  # one spinning process keeps one core of all busy
    settle(limit=0.2)  # bounded even when the machine never settles


def test_bulk_rows_of_the_pair_take_more_transfers_and_rest_first() -> None:
    by_key = {w.key: w for w in WORKLOADS}
    peer = "vgi-rpc pipe"
    for key in ("bulk", "bulk_local", "bulk_exchange"):
        w = by_key[key]
        assert FULL.count(w, VGI) == FULL.count(w, RAW) == FULL.pair_transfers > FULL.transfer_count
        assert FULL.count(w, peer) == FULL.transfer_count
        assert QUICK.count(w, VGI) == QUICK.pair_transfers
        assert rest_before(w, VGI, FULL) == rest_before(w, RAW, FULL) == REST_SECONDS > 0
        assert rest_before(w, peer, FULL) == 0.0
        assert rest_before(w, VGI, QUICK) == 0.0  # a smoke run does not rest
    for key in ("noop", "turn", "small", "threads"):
        w = by_key[key]
        assert FULL.count(w, VGI) == FULL.count(w, RAW) == FULL.count(w, peer) == FULL.count(w)
        assert rest_before(w, VGI, FULL) == 0.0
