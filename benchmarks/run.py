"""vgi-flight beside raw pyarrow.flight and vgi-rpc (pipe, subprocess, unix, HTTP): every workload, in one run.

    python -m benchmarks [--quick] [--json results.json] [--no-secure] [--no-peers] [--only add,bulk]

(``python -m benchmarks.run`` is the same command.) Every workload runs in two modes: plain, and
with mTLS + HMAC (vgi-flight and raw Flight over mTLS, both requiring HMAC-signed requests, raw
Flight's signing written directly with hmac and pyarrow middleware, ``--raw-mtls-only`` to leave it
out; vgi-rpc's HTTP transport behind an nginx that terminates mTLS, with a bearer token; its other
transports have no TLS, so "n/a").

Servers run in child processes on 127.0.0.1; the vgi-flight and raw clients run in this process,
each vgi-rpc transport's client in a worker process of the Python 3.13 venv (``benchmarks.vgirpc``).
Every client connects once per mode. vgi-flight and raw Flight are served side by side in each of
Plan.server_processes server processes per mode, and every call of a workload takes the next one
(the same one on both sides), warmed up first. Each workload runs in rounds; a round runs every side
once, one side at a time, vgi-flight and raw Flight back to back (taking turns at going first) at a
random place among the vgi-rpc sides (seeded per round), so that noise, and what the side before
leaves behind, hits all sides alike. In bulk rows the two take turns transfer by transfer after a
rest, several transfers each (see round_blocks and REST_SECONDS).
Figures are medians of all samples of all rounds, with the spread (lowest and highest per-round
median) and, for latency, p99; ratios are computed within the run. Every process of the run holds
glibc's malloc thresholds fixed (``benchmarks.allocator``; ``--malloc-defaults`` to leave them).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.flight as flight

from benchmarks.allocator import hold_thresholds
from benchmarks.clients import raw_samplers, vgi_flight_samplers
from benchmarks.common import BULK_ROWS, SMALL_SCHEMA, Sampler, Sizes, bulk_batch, latency_samples
from benchmarks.nginx import NGINX, tls_front
from benchmarks.services import HMAC_KEY_ID, HMAC_SECRET, BenchService, server_process
from benchmarks.vgirpc import BEARER, TRANSPORTS, VgiRpcSide, vgirpc_python, vgirpc_server
from vgi_flight import HmacAuth, connect

__all__ = ["latency_samples", "main", "percentile", "server_process"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VGI, RAW = "vgi-flight", "raw flight"
RPC = tuple(f"vgi-rpc {t}" for t in TRANSPORTS)
SIDES = (VGI, RAW, *RPC)
PLAIN, SECURE = "plain", "mTLS+HMAC"


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    kind: str  # "latency" (us per call, p50 + p99), "ms" (per call), "gbps" (bytes per transfer), "calls" (calls/s)
    raw_target: tuple[str, float] | None = None  # ("<=" or ">=", ratio of vgi-flight to raw)
    ahead_of_all_rpc: bool = False  # target: ahead of every vgi-rpc transport (always: ahead of vgi-rpc HTTP)


WORKLOADS = (
    Workload("noop", "unary noop", "latency", ("<=", 1.2)),
    Workload("add", "unary add", "latency", ("<=", 1.2)),
    Workload("rich", "unary rich dataclass round trip", "latency", ("<=", 1.2)),
    Workload("small", "producer 50 small batches", "ms"),
    Workload("exchange20", "exchange 20 rounds (open+close)", "ms"),
    Workload("turn", "exchange round trip", "latency", ("<=", 1.3)),
    Workload("bulk", "bulk producer", "gbps", (">=", 0.95)),
    # The same transfer with the vgi-flight client on the server's host reading over the local data
    # channel (wire protocol 5.6); raw Flight and vgi-rpc run their usual bulk producer.
    Workload("bulk_local", "bulk producer, local data channel", "gbps", ahead_of_all_rpc=True),
    Workload("bulk_exchange", "bulk exchange (echo)", "gbps", (">=", 0.9)),
    Workload("threads", "unary add, 8 threads", "calls"),
)
UNITS = {"latency": "us", "ms": "ms", "gbps": "GB/s", "calls": "calls/s"}


# Before each bulk sample of vgi-flight or raw Flight a full run also rests this long. Without it the
# first of the pair (right after a vgi-rpc side, with the CPUs already idle) was the slower one in
# most rounds, and more so for vgi-flight: over 12 rounds of the plain bulk producer vgi-flight read
# 0.68-0.96x raw where it went first, 0.92-1.44x where raw Flight did. With the rest the order no
# longer decides.
REST_SECONDS = 1.0


def pair_bulk(w: Workload, side: str) -> bool:
    """Whether ``w`` is a bulk row and ``side`` one of the pair its target compares (vgi-flight, raw Flight)."""
    return w.kind == "gbps" and side in (VGI, RAW)


@dataclass(frozen=True)
class Plan:
    rounds: int
    latency_count: int  # calls per round and side of a latency workload
    call_count: int  # calls per round and side of a "ms" workload
    transfer_count: int  # transfers (bulk) or batches of threaded calls per round and side
    sizes: Sizes
    # bulk transfers per round of vgi-flight and raw Flight, whose ratio has a target, taken in
    # alternation (see round_blocks): one 1 GiB transfer varies by +-15% on this kind of machine, so
    # a few per round left the bulk ratios a draw
    pair_transfers: int = 1
    rest_seconds: float = 0.0  # before the pair's transfers of a bulk row (see REST_SECONDS)
    settle_seconds: float = 2.0  # longest wait for an idle machine before each bulk transfer (see settle)
    server_processes: int = 2  # per side and mode for vgi-flight and raw Flight, taken in turn (see LocalSide)

    def count(self, w: Workload, side: str = "") -> int:
        """Samples per call of ``side``'s sampler: one transfer for the pair's bulk rows (see round_blocks)."""
        if pair_bulk(w, side):
            return 1
        return {"latency": self.latency_count, "ms": self.call_count}.get(w.kind, self.transfer_count)

    def warmup(self, w: Workload) -> int:
        # bulk and threaded warm-ups are short transfers / a few calls per thread (see the samplers)
        return {"latency": max(3, self.latency_count // 10), "ms": 2}.get(w.kind, 1)


FULL = Plan(
    rounds=8,
    latency_count=200,
    call_count=20,
    transfer_count=1,
    sizes=Sizes(),
    pair_transfers=6,
    rest_seconds=REST_SECONDS,
    server_processes=8,  # one per round of the latency rows; the bulk rows meet each six times
)
QUICK = Plan(
    rounds=3,
    latency_count=40,
    call_count=5,
    transfer_count=1,
    sizes=Sizes(bulk_batches=102, bulk_exchange_turns=4, thread_calls=200),
)


# --- processes and sides -------------------------------------------------------------------------


class Side(Protocol):
    name: str

    def sample(self, workload: str, count: int, warmup: int, sizes: dict[str, int]) -> list[float]: ...


# Workloads that other sides run as another one (only vgi-flight changes how it reads).
SAMPLED_AS = {"bulk_local": "bulk"}


class LocalSide:
    """vgi-flight or raw Flight: samplers run in this process, one set per server process of the side.

    Every workload rotates over the server processes (``Plan.server_processes``), one per call.
    How fast one process serves depends on where its memory and threads landed, for its whole life:
    processes of the same server code differ by up to 15% in bulk throughput and by 5-12% in
    exchange round-trip latency, so with one process per side every ratio was partly a draw. Each
    process hosts a raw Flight server and a vgi-flight server side by side (``benchmarks.services
    pair``), and the two sides rotate in step: the n-th call of a workload meets the same process on
    either side, so a process's draw weighs on both sides of their ratio alike.

    Every call of a workload takes the next server process and warms it up first with the warm-up
    the workload's first round asked for (at least one call or transfer, whatever the round: the
    process sat idle while the others ran).
    """

    def __init__(self, name: str, samplers: list[dict[str, Sampler]]) -> None:
        self.name = name
        self.samplers = samplers
        self._calls: dict[str, int] = {}
        self._warmup: dict[str, int] = {}

    def sample(self, workload: str, count: int, warmup: int, sizes: dict[str, int]) -> list[float]:
        calls = self._calls.get(workload, 0)
        self._calls[workload] = calls + 1
        warmup = max(1, self._warmup.setdefault(workload, warmup))
        return self.samplers[calls % len(self.samplers)][workload](count, warmup)


@dataclass
class Cell:
    """All samples of one side for one workload in one mode (seconds), by round; or why there are none."""

    rounds: list[list[float]] = field(default_factory=list)
    note: str | None = None


def load_cert_generator() -> Any:
    spec = importlib.util.spec_from_file_location("certs_generate", os.path.join(ROOT, "certs", "generate.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Peers:
    python: Path | None
    skipped: str | None  # why vgi-rpc is not measured at all
    http: bool
    versions: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def mode_sides(
    mode: str, peers: Peers, sizes: Sizes, *, processes: int, raw_hmac: bool = True
) -> Iterator[tuple[list[Side], dict[str, str]]]:
    """Start the servers of one mode and connect every side; yields the sides and why others are missing.

    ``processes``: server processes, each serving vgi-flight and raw Flight (see LocalSide).
    ``raw_hmac=False``: in the secure mode raw Flight uses mTLS alone (what request signing costs).
    """
    notes: dict[str, str] = {}
    sides: list[Side] = []
    with contextlib.ExitStack() as stack:
        tls: dict[str, Any] = {}
        options: tuple[str, ...] = ()
        certs = ""
        if mode == SECURE:
            certs = stack.enter_context(tempfile.TemporaryDirectory(prefix="vgi-bench-certs-"))
            load_cert_generator().generate(certs, principals=["bench"], force=True)
            files = {n: Path(certs, n).read_bytes() for n in ("ca.pem", "client-bench.pem", "client-bench.key")}
            tls = {
                "tls_root_certs": files["ca.pem"],
                "cert_chain": files["client-bench.pem"],
                "private_key": files["client-bench.key"],
            }
            options = ("--tls", certs, "--hmac", *(("--raw-hmac",) if raw_hmac else ()))
        auth = HmacAuth(HMAC_KEY_ID, HMAC_SECRET) if mode == SECURE else None
        raw_key = (HMAC_KEY_ID, HMAC_SECRET) if mode == SECURE and raw_hmac else None
        vgi_sets: list[dict[str, Sampler]] = []
        raw_sets: list[dict[str, Sampler]] = []
        for _ in range(processes):
            raw_loc, vgi_loc = stack.enter_context(server_process("pair", "--local-data", *options)).locations
            svc = stack.enter_context(connect(BenchService, vgi_loc, auth=auth, **tls))
            vgi_samplers = vgi_flight_samplers(svc, sizes)
            local = stack.enter_context(connect(BenchService, vgi_loc, auth=auth, local_data=True, **tls))
            vgi_samplers["bulk_local"] = vgi_flight_samplers(local, sizes)["bulk"]
            vgi_sets.append(vgi_samplers)
            raw = flight.FlightClient(raw_loc, **tls)
            stack.callback(raw.close)
            raw_sets.append(raw_samplers(raw, sizes, hmac_key=raw_key))
        sides.append(LocalSide(VGI, vgi_sets))
        sides.append(LocalSide(RAW, raw_sets))
        for transport, name in zip(TRANSPORTS, RPC, strict=True):
            if peers.skipped is not None or peers.python is None:
                notes[name] = peers.skipped or "skipped"
                continue
            if mode == SECURE and transport != "http":
                notes[name] = "n/a: no TLS on this transport"
                continue
            if transport == "http" and not peers.http:
                notes[name] = "skipped: vgi-rpc[http] not installed"
                continue
            if transport == "http" and mode == SECURE and not os.path.exists(NGINX):
                notes[name] = "skipped: no nginx to terminate TLS in front of vgi-rpc http"
                continue
            try:
                address: str | None = None
                bearer: str | None = None
                if transport == "unix":
                    sock_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="vgirpc-bench-"))
                    address = stack.enter_context(vgirpc_server(peers.python, "unix", os.path.join(sock_dir, "s")))
                elif transport == "http" and mode == PLAIN:
                    address = stack.enter_context(vgirpc_server(peers.python, "http"))
                elif transport == "http":
                    bearer = BEARER
                    upstream = stack.enter_context(vgirpc_server(peers.python, "http", bearer=bearer))
                    address = stack.enter_context(tls_front(upstream, certs))
                side = VgiRpcSide(peers.python, transport, address, tls=certs or None, bearer=bearer)
                stack.callback(side.close)
                peers.versions = side.versions
                sides.append(side)
            except (RuntimeError, OSError, ValueError) as exc:
                notes[name] = f"error: {exc}"
                print(f"{name} ({mode}): {notes[name]}", file=sys.stderr, flush=True)
        yield sides, notes


def cpu_idle_fraction(window: float) -> float:
    """The share of all CPUs' time that was idle over ``window`` seconds (``/proc/stat``; 1.0 elsewhere)."""

    def times() -> list[int]:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]

    try:
        before = times()
        time.sleep(window)
        after = times()
    except OSError:
        return 1.0
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return (spent[3] + spent[4]) / max(1, sum(spent))  # idle + iowait


def settle(limit: float = 2.0, window: float = 0.05, idle: float = 0.85) -> None:
    """Wait, up to ``limit`` seconds, until the machine is idle before a bulk transfer is timed.

    What the previous side leaves running (a server freeing a GiB of buffers, a vgi-rpc worker or
    nginx winding down) otherwise lands on whichever side runs next: in one full run the bulk
    producer read 0.75x raw (mean) in the rounds where vgi-flight ran right after a vgi-rpc side
    and 0.93x where raw Flight did.
    """
    end = time.monotonic() + limit
    while time.monotonic() < end and cpu_idle_fraction(window) < idle:
        pass


def rest_before(w: Workload, side: str, plan: Plan) -> float:
    """Seconds to rest before a block that starts with ``side``: the plan's rest for the pair's bulk rows."""
    return plan.rest_seconds if pair_bulk(w, side) else 0.0


def round_blocks(w: Workload, order: Sequence[Side], plan: Plan) -> list[list[Side]]:
    """The samples of one round in the order they run: one per side, except the pair's bulk rows.

    There vgi-flight and raw Flight take turns transfer by transfer, ``plan.pair_transfers`` each,
    in one block: the machine drifts over seconds (one 1 GiB transfer varies by +-15%), and
    alternating puts every transfer of one side next to one of the other. Each transfer takes the
    side's next server process (LocalSide), so a round also mixes several processes of each side.
    """
    pair = [s for s in order if pair_bulk(w, s.name)]
    blocks: list[list[Side]] = []
    for side in order:
        if side not in pair:
            blocks.append([side])
        elif side is pair[0]:
            blocks.append(pair * plan.pair_transfers)
    return blocks


def round_order(sides: Sequence[Side], r: int) -> list[Side]:
    """The order of round ``r``: vgi-flight and raw Flight back to back, first by turns, at a seeded random place.

    A fixed rotation made vgi-flight always run right after vgi-rpc HTTP (the heaviest side, with
    nginx and its server still winding down), a bias of up to 20% on bulk rows against it.
    """
    rng = random.Random(r)
    pair = [s for s in sides if s.name in (VGI, RAW)]
    if r % 2:
        pair.reverse()
    others = [s for s in sides if s.name not in (VGI, RAW)]
    rng.shuffle(others)
    at = rng.randrange(len(others) + 1)
    return others[:at] + pair + others[at:]


def run_mode(
    mode: str, workloads: Sequence[Workload], plan: Plan, peers: Peers, started: float, *, raw_hmac: bool = True
) -> dict[str, dict[str, Cell]]:
    """Every workload of one mode, in rounds over all sides: {workload: {side: Cell}}."""
    cells = {w.key: {name: Cell() for name in SIDES} for w in workloads}
    with mode_sides(mode, peers, plan.sizes, processes=plan.server_processes, raw_hmac=raw_hmac) as (sides, notes):
        for w in workloads:
            for name, note in notes.items():
                cells[w.key][name].note = note
            run_rounds(w, sides, cells[w.key], plan, mode)
            print(f"  {mode} {w.title}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return cells


def run_rounds(w: Workload, sides: Sequence[Side], cells: dict[str, Cell], plan: Plan, mode: str) -> None:
    """Every round of one workload over ``sides``; each side's samples go to its cell, a list per round."""
    sizes = plan.sizes.to_json()
    for r in range(plan.rounds):
        order = round_order(sides, r)
        for side in order:
            cells[side.name].rounds.append([])
        warmup = plan.warmup(w) if r == 0 else 0
        for block in round_blocks(w, order, plan):
            if w.kind == "gbps":
                time.sleep(rest_before(w, block[0].name, plan))
            for side in block:
                take_sample(w, side, cells[side.name], plan, warmup, sizes, mode)


def take_sample(w: Workload, side: Side, cell: Cell, plan: Plan, warmup: int, sizes: dict[str, int], mode: str) -> None:
    """One call of ``side``'s sampler for ``w``, added to the cell's current round; a failure ends the cell."""
    if cell.note is not None:
        return
    try:
        key = w.key if side.name == VGI else SAMPLED_AS.get(w.key, w.key)
        if w.kind == "gbps":
            settle(plan.settle_seconds)
        cell.rounds[-1].extend(side.sample(key, plan.count(w, side.name), warmup, sizes))
    except Exception as exc:
        cell.note = f"error: {type(exc).__name__}: {exc}"
        print(f"{side.name} {w.key} ({mode}): {cell.note}", file=sys.stderr, flush=True)


# --- figures -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Figure:
    median: float
    low: float  # lowest per-round median
    high: float  # highest per-round median
    p99: float | None
    samples: int


@dataclass
class Row:
    workload: str
    title: str
    mode: str
    unit: str
    figures: dict[str, Figure | None]
    notes: dict[str, str]
    ratio_raw: float | None  # vgi-flight / raw flight, in the row's unit
    ratios_rpc: dict[str, float | None]  # transport -> vgi-flight / vgi-rpc over it, in the row's unit
    higher_is_better: bool
    target: str = ""
    met: bool | None = None  # every target of the row (raw and vgi-rpc) met; None: nothing to check
    misses: list[str] = field(default_factory=list)
    # Median over rounds of vgi-flight / raw within the round (the two ran back to back): less
    # sensitive than ratio_raw to slow phases of the machine that last several transfers.
    paired_raw: float | None = None


def converter(w: Workload, sizes: Sizes) -> Callable[[float], float]:
    """Seconds per sample -> the row's unit."""
    if w.kind == "latency":
        return lambda s: s * 1e6
    if w.kind == "ms":
        return lambda s: s * 1e3
    if w.kind == "calls":
        return lambda s: sizes.thread_calls / s
    nbytes = (
        sizes.bulk_batches * bulk_batch(BULK_ROWS).nbytes
        if w.key in ("bulk", "bulk_local")
        else sizes.bulk_exchange_turns * bulk_batch(sizes.bulk_exchange_rows).nbytes
    )
    return lambda s: nbytes / s / 1e9


def figure(cell: Cell, convert: Callable[[float], float], latency: bool) -> Figure | None:
    values = [convert(s) for r in cell.rounds for s in r]
    if cell.note is not None or not values:
        return None
    per_round = [statistics.median([convert(s) for s in r]) for r in cell.rounds if r]
    p99 = percentile(values, 0.99) if latency else None
    return Figure(statistics.median(values), min(per_round), max(per_round), p99, len(values))


def title_of(w: Workload, sizes: Sizes) -> str:
    if w.key in ("bulk", "bulk_local"):
        return f"{w.title} {sizes.bulk_batches * bulk_batch().nbytes / 2**30:.2f} GiB"
    if w.key == "bulk_exchange":
        mib = sizes.bulk_exchange_turns * bulk_batch(sizes.bulk_exchange_rows).nbytes / 2**20
        return f"{w.title} {mib:.0f} MiB"
    if w.key == "threads":
        return f"unary add x{sizes.thread_calls:,}, {sizes.threads} threads"
    return w.title


def rows_of(results: dict[str, dict[str, dict[str, Cell]]], workloads: Sequence[Workload], sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    for w in workloads:
        for mode, cells_by_workload in results.items():
            cells = cells_by_workload[w.key]
            figs = {n: figure(cells[n], converter(w, sizes), w.kind == "latency") for n in SIDES}
            notes = {n: c.note for n, c in cells.items() if c.note is not None}
            higher = w.kind in ("gbps", "calls")
            vgi = figs[VGI]

            def ratio(other: Figure | None, vgi: Figure | None = vgi) -> float | None:
                return vgi.median / other.median if vgi is not None and other is not None else None

            unit = UNITS[w.kind] + (" p50" if w.kind == "latency" else "")
            row = Row(
                w.key,
                title_of(w, sizes),
                mode,
                unit,
                figs,
                notes,
                ratio(figs[RAW]),
                {t: ratio(figs[n]) for t, n in zip(TRANSPORTS, RPC, strict=True)},
                higher,
            )
            row.paired_raw = paired_ratio(cells[VGI], cells[RAW], converter(w, sizes))
            check_targets(row, w)
            rows.append(row)
    return rows


def paired_ratio(vgi: Cell, raw: Cell, convert: Callable[[float], float]) -> float | None:
    """Median over rounds of the ratio of the two sides' medians in that round."""
    pairs = [
        statistics.median(convert(s) for s in a) / statistics.median(convert(s) for s in b)
        for a, b in zip(vgi.rounds, raw.rounds, strict=False)
        if a and b
    ]
    if vgi.note is not None or raw.note is not None or not pairs:
        return None
    return statistics.median(pairs)


def ahead(ratio: float, higher_is_better: bool) -> bool:
    return ratio > 1 if higher_is_better else ratio < 1


def check_targets(row: Row, w: Workload) -> None:
    """Fill in the row's target text and whether its targets were met in this run."""
    checks: list[tuple[str, bool | None]] = []
    if w.raw_target is not None:
        op, bound = w.raw_target
        ok = None if row.ratio_raw is None else (row.ratio_raw <= bound if op == "<=" else row.ratio_raw >= bound)
        checks.append((f"{op}{bound}x raw", ok))
    rivals = TRANSPORTS if w.ahead_of_all_rpc else ("http",)
    measured = [t for t in rivals if row.ratios_rpc[t] is not None]
    if measured:
        behind = [t for t in measured if not ahead(row.ratios_rpc[t] or 0.0, row.higher_is_better)]
        checks.append((">all vgi-rpc" if w.ahead_of_all_rpc else ">rpc http", not behind))
        row.misses += [f"behind vgi-rpc {t}" for t in behind]
    row.target = ", ".join(text for text, _ in checks)
    known = [ok for _, ok in checks if ok is not None]
    row.met = all(known) if known else None
    if w.raw_target is not None and checks[0][1] is False:
        row.misses.insert(0, "raw target")


def token_rows(rows: list[Row]) -> list[Row]:
    """In-process cost of minting and verifying one state token, beside a raw exchange round trip of this run."""
    mint, verify = token_cost_us()
    raw_turn = next((r.figures[RAW] for r in rows if r.workload == "turn" and r.mode == PLAIN), None)
    out = []
    for key, title, value in (("token_mint", "token mint, per turn", mint), ("token_verify", "token verify", verify)):
        figs: dict[str, Figure | None] = {n: None for n in SIDES}
        figs[VGI] = Figure(value, value, value, None, 20_000)
        figs[RAW] = raw_turn
        ratio = value / raw_turn.median if raw_turn is not None else None
        out.append(
            Row(
                key, f"{title} (small state)", "in-process", "us", figs, {}, ratio, {t: None for t in TRANSPORTS}, False
            )
        )
        out[-1].target = "share of a raw round trip"
    return out


def token_cost_us(samples: int = 20_000) -> tuple[float, float]:
    """Median µs to mint and to verify one token for a small flat state (in-process, no network)."""
    from benchmarks.services import EchoState
    from vgi_flight._compact import state_to_bytes
    from vgi_flight._tokens import KeyRing, StreamBinding, StreamSigner, new_stream_id, verify_token

    ring = KeyRing.single(b"k" * 32)
    binding = StreamBinding(
        new_stream_id(),
        "echo",
        "bench",
        "benchmarks.services:EchoState",
        SMALL_SCHEMA.serialize().to_pybytes(),
        SMALL_SCHEMA.serialize().to_pybytes(),
    )
    signer = StreamSigner(ring, binding, 3600)
    state = EchoState(turns=7)
    mint = latency_samples(lambda: signer.mint(7, state_to_bytes(state)), samples)
    token = signer.mint(7, state_to_bytes(state))
    verify = latency_samples(lambda: verify_token(ring, token), samples)
    return statistics.median(mint) * 1e6, statistics.median(verify) * 1e6


# --- output --------------------------------------------------------------------------------------


def number(value: float) -> str:
    return f"{value:.0f}" if value >= 1000 else f"{value:.3g}" if value < 10 else f"{value:.1f}"


def with_spread(fig: Figure | None, note: str | None) -> str:
    if fig is None:
        return short_note(note)
    if fig.low == fig.high:
        return number(fig.median)
    return f"{number(fig.median)} ({number(fig.low)}\u2013{number(fig.high)})"


def short_note(note: str | None) -> str:
    if note is None:
        return "-"
    return "n/a" if note.startswith("n/a") else "skipped" if note.startswith("skipped") else "error"


def times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def rpc_ratio(row: Row, transport: str) -> str:
    ratio = row.ratios_rpc[transport]
    if ratio is None:
        return short_note(row.notes.get(f"vgi-rpc {transport}")) if row.mode != "in-process" else ""
    return times(ratio) + ("!" if not ahead(ratio, row.higher_is_better) else "")


def table_lines(rows: list[Row], markdown: bool = False) -> list[str]:
    """The main table: vgi-flight and raw Flight (median, spread), ratio, target; vgi-flight / vgi-rpc ratios."""
    head = ["workload", "mode", "unit", "vgi-flight", "raw flight", "vgi/raw", "target", "met"]
    head += [f"/{t}" for t in TRANSPORTS]
    body: list[list[str]] = []
    for row in rows:
        met = "" if row.met is None else "yes" if row.met else "NO"
        body.append(
            [
                row.title,
                row.mode,
                row.unit,
                with_spread(row.figures[VGI], row.notes.get(VGI)),
                with_spread(row.figures[RAW], row.notes.get(RAW)),
                times(row.ratio_raw) + (f" ({times(row.paired_raw)} paired)" if row.paired_raw is not None else ""),
                row.target,
                met,
                *(rpc_ratio(row, t) for t in TRANSPORTS),
            ]
        )
        vgi, raw = row.figures[VGI], row.figures[RAW]
        if vgi is not None and vgi.p99 is not None:
            raw_p99 = raw.p99 if raw is not None else None
            ratio = vgi.p99 / raw_p99 if raw_p99 else None
            p99 = [number(raw_p99) if raw_p99 else "-", times(ratio)]
            body.append(["  p99", row.mode, "us p99", number(vgi.p99), *p99, "", "", *[""] * len(TRANSPORTS)])
    return render(head, body, markdown, right_from=3)


def rpc_table_lines(rows: list[Row], markdown: bool = False) -> list[str]:
    """vgi-rpc's own figures (median, spread) beside vgi-flight's."""
    head = ["workload", "mode", "unit", "vgi-flight", *RPC]
    body = [
        [
            row.title,
            row.mode,
            row.unit,
            with_spread(row.figures[VGI], row.notes.get(VGI)),
            *(with_spread(row.figures[n], row.notes.get(n)) for n in RPC),
        ]
        for row in rows
        if row.mode != "in-process"
    ]
    return render(head, body, markdown, right_from=3)


def render(head: list[str], body: list[list[str]], markdown: bool, right_from: int) -> list[str]:
    if markdown:
        lines = ["| " + " | ".join(head) + " |"]
        lines.append(
            "|"
            + "|".join("---" if i < right_from or h in ("target", "met") else "---:" for i, h in enumerate(head))
            + "|"
        )
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return lines
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def fmt(cells: list[str]) -> str:
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            right = i >= right_from and head[i] not in ("target", "met")
            out.append(cell.rjust(width) if right else cell.ljust(width))
        return "  ".join(out).rstrip()

    return [fmt(head), *(fmt(r) for r in body)]


LEGEND = (
    "Figures: median of all samples (lowest\u2013highest per-round median); p99 of all calls on latency rows.\n"
    "vgi/raw and /<transport> = vgi-flight / the other side, in the row's unit: for us and ms lower is better\n"
    "(< 1x: vgi-flight is faster), for GB/s and calls/s higher is better (> 1x: vgi-flight is faster).\n"
    "'!' marks a vgi-rpc transport ahead of vgi-flight. target: vgi/raw bound (p50 on latency rows); '>rpc http':\n"
    "ahead of vgi-rpc HTTP; '>all vgi-rpc': ahead of every vgi-rpc transport. met: all held in this run."
)


def notes_lines(rows: list[Row]) -> list[str]:
    seen: dict[str, set[str]] = {}
    for row in rows:
        for side, note in row.notes.items():
            seen.setdefault(note, set()).add(side)
    return [f"{', '.join(sorted(sides))}: {note}" for note, sides in sorted(seen.items())]


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def environment(peers: Peers, plan: Plan, seconds: float, load_before: str) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "pyarrow": pa.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": {"before": load_before, "after": load_average()},
        "vgirpc": peers.versions,
        "plan": {**asdict(replace(plan, sizes=Sizes())), "sizes": plan.sizes.to_json()},
        "seconds": round(seconds, 1),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer rounds and calls, small bulk")
    parser.add_argument("--json", help="also write the figures and every sample to this file")
    parser.add_argument("--no-secure", action="store_true", help="skip the mTLS + HMAC mode")
    parser.add_argument("--no-peers", action="store_true", help="skip vgi-rpc")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    keys = [w.key for w in WORKLOADS]
    parser.add_argument("--only", help=f"comma-separated workloads, of: {', '.join(keys)}")
    parser.add_argument("--rounds", type=int, help="rounds per workload (default: 8, quick: 3; best even)")
    parser.add_argument(
        "--raw-mtls-only",
        action="store_true",
        help="in the mTLS+HMAC mode, raw Flight does not sign requests (shows what signing costs vgi-flight)",
    )
    parser.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="leave glibc's adaptive malloc thresholds (bulk rows then vary with each process's heap history)",
    )
    args = parser.parse_args(argv)
    allocator = "allocator defaults (--malloc-defaults)" if args.malloc_defaults else hold_thresholds()
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = replace(plan, rounds=args.rounds)
    workloads = list(WORKLOADS)
    if args.only:
        wanted = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = sorted(set(wanted) - set(keys))
        if unknown:
            parser.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(keys)}")
        workloads = [w for w in WORKLOADS if w.key in wanted]

    started = time.perf_counter()
    load_before = load_average()
    if args.no_peers:
        peers = Peers(None, "skipped: --no-peers", False)
    else:
        python, skipped, http = vgirpc_python()
        peers = Peers(python, skipped, http)
        if skipped:
            print(f"vgi-rpc: {skipped}", file=sys.stderr)
    modes = [PLAIN] if args.no_secure else [PLAIN, SECURE]
    raw_hmac = not args.raw_mtls_only
    results = {mode: run_mode(mode, workloads, plan, peers, started, raw_hmac=raw_hmac) for mode in modes}
    rows = rows_of(results, workloads, plan.sizes)
    rows += token_rows(rows)
    seconds = time.perf_counter() - started
    env = environment(peers, plan, seconds, load_before)
    env["raw_secure"] = "mTLS + HMAC" if raw_hmac else "mTLS only"
    env["allocator"] = allocator

    print()
    for line in table_lines(rows, args.markdown):
        print(line)
    print()
    for line in rpc_table_lines(rows, args.markdown):
        print(line)
    print()
    print(LEGEND)
    for line in notes_lines(rows):
        print(line)
    rpc = env["vgirpc"]
    rpc_text = f"; vgi-rpc {rpc['vgi_rpc']} on Python {rpc['python']}" if rpc else ""
    load = env["load_average"]
    print(
        f"vgi-flight on Python {env['python']}, pyarrow {env['pyarrow']}{rpc_text}; {env['machine']}, load average "
        f"{load['before']} before, {load['after']} after; {seconds:.0f} s"
    )
    if SECURE in modes:
        print(f"raw Flight in the {SECURE} mode: {env['raw_secure']}")
    print(allocator)
    if args.json:
        samples = {
            mode: {w: {n: asdict(c) for n, c in cells.items()} for w, cells in by_workload.items()}
            for mode, by_workload in results.items()
        }
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "rows": [asdict(r) for r in rows], "samples": samples}, fh, indent=1)


if __name__ == "__main__":
    main()
