"""How the benchmark schedules the pair's rows: server processes in rotation, and a settled machine before bulk ones."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

from benchmarks.common import Sampler
from benchmarks.run import (
    FULL,
    QUICK,
    RAW,
    REST_SECONDS,
    VGI,
    WORKLOADS,
    Cell,
    LocalSide,
    cpu_idle_fraction,
    rest_before,
    round_blocks,
    round_order,
    run_rounds,
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
    assert FULL.pair_transfers > FULL.transfer_count
    for key in ("bulk", "bulk_local", "bulk_exchange"):
        w = by_key[key]
        assert FULL.count(w, VGI) == FULL.count(w, RAW) == 1  # one transfer per call: the pair alternates
        assert FULL.count(w, peer) == FULL.transfer_count
        assert rest_before(w, VGI, FULL) == rest_before(w, RAW, FULL) == REST_SECONDS > 0
        assert rest_before(w, peer, FULL) == 0.0
        assert rest_before(w, VGI, QUICK) == 0.0  # a smoke run does not rest
    for key in ("noop", "turn", "small", "threads"):
        w = by_key[key]
        assert FULL.count(w, VGI) == FULL.count(w, RAW) == FULL.count(w, peer) == FULL.count(w)
        assert rest_before(w, VGI, FULL) == 0.0


def named(*names: str) -> list[LocalSide]:
    return [LocalSide(name, []) for name in names]


def test_bulk_rows_alternate_the_pair_transfer_by_transfer() -> None:
    by_key = {w.key: w for w in WORKLOADS}
    sides = named("vgi-rpc pipe", VGI, "vgi-rpc http", RAW)
    for r in range(4):
        order = round_order(sides, r)
        pair = [s.name for s in order if s.name in (VGI, RAW)]
        blocks = round_blocks(by_key["bulk"], order, FULL)
        assert [[s.name for s in b] for b in blocks if len(b) > 1] == [pair * FULL.pair_transfers]
        assert sorted(b[0].name for b in blocks if len(b) == 1) == ["vgi-rpc http", "vgi-rpc pipe"]
        # a latency row keeps one sample call per side, in the round's order
        assert [b for b in round_blocks(by_key["turn"], order, FULL)] == [[s] for s in order]
    assert {next(s.name for s in round_order(sides, r) if s.name in (VGI, RAW)) for r in range(2)} == {VGI, RAW}


def test_every_server_process_weighs_alike_in_a_full_run() -> None:
    # a process's speed is a draw for its whole life: each one takes the same number of a row's calls,
    # a latency row meets a new one every round, a bulk row each one pair_transfers times
    assert FULL.server_processes >= FULL.rounds
    assert FULL.rounds % FULL.server_processes == 0
    assert (FULL.rounds * FULL.pair_transfers) % FULL.server_processes == 0
    assert QUICK.server_processes >= 2


def test_a_bulk_round_runs_the_pair_in_alternation_over_their_processes() -> None:
    calls: list[tuple[str, int, int]] = []

    def sampler(side: str, process: int) -> Sampler:
        def sample(count: int, warmup: int) -> list[float]:
            calls.append((side, process, count))
            return [float(len(calls))] * count

        return sample

    plan = replace(FULL, rounds=2, rest_seconds=0.0, settle_seconds=0.0, pair_transfers=3, server_processes=2)
    sides = [LocalSide(name, [{"bulk": sampler(name, i)} for i in range(2)]) for name in (VGI, RAW, "vgi-rpc pipe")]
    cells = {side.name: Cell() for side in sides}
    bulk = next(w for w in WORKLOADS if w.key == "bulk")
    run_rounds(bulk, sides, cells, plan, "plain")
    pair_calls = [c for c in calls if c[0] != "vgi-rpc pipe"]
    firsts = [pair_calls[0][0], pair_calls[6][0]]
    assert firsts in ([VGI, RAW], [RAW, VGI])  # the pair takes turns at going first, round by round
    for r in range(2):
        names = [c[0] for c in pair_calls[6 * r : 6 * r + 6]]
        assert names == [firsts[r], *({VGI, RAW} - {firsts[r]})] * 3  # alternating, transfer by transfer
    for name in (VGI, RAW):
        mine = [c for c in pair_calls if c[0] == name]
        assert [c[1] for c in mine] == [0, 1, 0, 1, 0, 1]  # each transfer on the side's next process
        assert all(c[2] == 1 for c in mine)
        assert [len(r) for r in cells[name].rounds] == [3, 3]
    assert [len(r) for r in cells["vgi-rpc pipe"].rounds] == [1, 1]  # the others sample once per round
