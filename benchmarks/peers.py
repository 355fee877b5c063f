"""vgi-flight beside raw pyarrow.flight and vgi-rpc (pipe, subprocess, unix socket, HTTP), in one run.

    python -m benchmarks.peers [--quick] [--json results.json]

vgi-rpc needs Python >= 3.13: this finds a 3.13 interpreter (``python3.13`` on PATH, else
``$(pyenv root)/versions/3.13*/bin/python3.13``), builds a venv under
``${VGI_BENCH_CACHE:-~/.cache/vgi-flight-bench}/vgirpc-venv`` with ``vgi-rpc[http]`` and pyarrow
(reused on later runs), and runs ``benchmarks/vgirpc_workloads.py`` inside it. Without 3.13 the
vgi-rpc columns read "skipped: no Python 3.13".

The vgi-flight and raw sides are ``benchmarks.services`` servers in child processes with the client
here, exactly as in ``benchmarks.run``. The vgi-rpc client is another interpreter, so samples cannot
be interleaved call by call: instead every round runs, per workload, a vgi-flight round, a raw
round and one short ``vgirpc_workloads.py measure`` subprocess per vgi-rpc transport (the order of
the transports rotates between rounds). The vgi-rpc unix and HTTP servers are started once for the
whole run, like the Flight servers; "subprocess" spawns its worker over stdin/stdout in each run
(spawn time is not measured) and "pipe" serves on a thread of the measuring process. Figures are
medians over all samples of all rounds (p99 for latency); ratios are vgi-flight / vgi-rpc-<transport>
from this run. All servers listen on loopback only and every child is killed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.flight as flight

from benchmarks.run import latency_samples, percentile, server_process, small_add_batch
from benchmarks.services import SMALL_SCHEMA, BenchService, bulk_batch, ipc, read_one, small_batch
from vgi_flight import AnnotatedBatch, connect

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD_SCRIPT = Path(__file__).resolve().parent / "vgirpc_workloads.py"
TRANSPORTS = ("pipe", "subprocess", "unix", "http")
MEASURE_TIMEOUT = 300.0  # seconds for one vgi-rpc measurement subprocess


@dataclass(frozen=True)
class Workload:
    key: str  # the name vgirpc_workloads.py knows it by
    title: str
    kind: str  # "latency" (us p50 + p99), "ms" (median per call) or "bulk" (GB/s)


WORKLOADS = (
    Workload("noop", "unary noop", "latency"),
    Workload("add", "unary add", "latency"),
    Workload("small", "producer 50 small batches", "ms"),
    Workload("exchange20", "exchange 20 rounds (open+close)", "ms"),
    Workload("turn", "exchange round trip", "latency"),
    Workload("bulk", "bulk producer", "bulk"),
)


@dataclass
class Plan:
    rounds: int  # rounds of every non-bulk workload
    per_round: int  # latency samples per round and side
    stream_per_round: int  # "ms" samples per round and side
    bulk_rounds: int
    bulk_per_round: int
    bulk_batches: int


QUICK = Plan(rounds=4, per_round=50, stream_per_round=8, bulk_rounds=3, bulk_per_round=2, bulk_batches=102)
FULL = Plan(rounds=5, per_round=200, stream_per_round=20, bulk_rounds=7, bulk_per_round=1, bulk_batches=1024)


@dataclass
class Side:
    """All samples of one side (seconds per call), or why there are none."""

    samples: list[float] = field(default_factory=list)
    skipped: str | None = None


# --- the vgi-rpc environment ---------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("VGI_BENCH_CACHE") or Path.home() / ".cache" / "vgi-flight-bench")


def python_version(exe: str) -> tuple[int, int] | None:
    """(major, minor) of an interpreter that actually runs (a pyenv shim may exist but fail)."""
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def find_python313() -> str | None:
    candidates = [shutil.which("python3.13")]
    pyenv_root = None
    if shutil.which("pyenv"):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
            pyenv_root = out.stdout.strip() or None
    for root in (pyenv_root, os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")):
        if root:
            candidates += sorted(glob.glob(os.path.join(root, "versions", "3.13*", "bin", "python3.13")), reverse=True)
    for exe in candidates:
        if exe and python_version(exe) == (3, 13):
            return exe
    return None


def venv_status(python: Path) -> tuple[bool, bool]:
    """Whether the venv's python imports vgi_rpc + pyarrow, and whether it also has the HTTP extras."""
    if not python.exists():
        return False, False
    base = subprocess.run([python, "-c", "import pyarrow, vgi_rpc"], capture_output=True, timeout=120)
    if base.returncode != 0:
        return False, False
    http = subprocess.run([python, "-c", "import vgi_rpc.http, waitress"], capture_output=True, timeout=120)
    return True, http.returncode == 0


def vgirpc_python() -> tuple[Path | None, str | None, bool]:
    """The venv python to run vgi-rpc with (None + the reason if unavailable), and whether HTTP works."""
    venv = cache_dir() / "vgirpc-venv"
    python = venv / "bin" / "python"
    ok, http = venv_status(python)
    if ok and http:
        return python, None, True
    py313 = find_python313()
    if py313 is None:
        return (python, None, False) if ok else (None, "skipped: no Python 3.13", False)
    print(f"building {venv} with {py313} (pip install vgi-rpc[http] pyarrow) ...", file=sys.stderr, flush=True)
    try:
        if not python.exists():
            subprocess.run([py313, "-m", "venv", str(venv)], check=True, timeout=300)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if subprocess.run([*pip, "vgi-rpc[http]", "pyarrow"], timeout=900).returncode != 0:
            subprocess.run([*pip, "vgi-rpc", "pyarrow"], timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"building the vgi-rpc venv failed: {exc}", file=sys.stderr)
    ok, http = venv_status(python)
    if not ok:
        return None, "skipped: pip install vgi-rpc failed", False
    return python, None, http


# --- child processes -----------------------------------------------------------------------------


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """Kill a child started with start_new_session=True and everything it spawned."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


@contextlib.contextmanager
def vgirpc_server(python: Path, mode: str, address: str | None = None) -> Iterator[str]:
    """A vgi-rpc server (unix or http) in its own process group; yields its address."""
    args = [str(python), str(WORKLOAD_SCRIPT), "serve", mode] + ([address] if address else [])
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"vgi-rpc {mode} server exited with {proc.wait()}")
        if mode == "http":
            if not line.startswith("PORT:"):
                raise RuntimeError(f"vgi-rpc http server printed {line!r}")
            yield f"http://127.0.0.1:{int(line[5:])}"
        else:
            yield line
    finally:
        kill_group(proc)


def measure_vgirpc(
    python: Path, transport: str, address: str | None, workload: str, count: int, warmup: int, batches: int
) -> tuple[list[float], dict[str, Any]]:
    """One round of one workload over one vgi-rpc transport, in its own short subprocess."""
    args = [str(python), str(WORKLOAD_SCRIPT), "measure", "--transport", transport, "--workload", workload]
    args += ["--count", str(count), "--warmup", str(warmup), "--batches", str(batches)]
    if address:
        args += ["--address", address]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=MEASURE_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"vgi-rpc {transport} {workload}: timed out after {MEASURE_TIMEOUT:.0f} s") from exc
    finally:
        kill_group(proc)  # also reaps a "subprocess" worker left behind by a failed run
    if proc.returncode != 0:
        tail = err.strip().splitlines()[-1:] or ["(no stderr)"]
        raise RuntimeError(f"vgi-rpc {transport} {workload}: exit {proc.returncode}: {tail[0]}")
    result = json.loads(out.strip().splitlines()[-1])
    return [float(s) for s in result["samples"]], result


# --- the vgi-flight and raw sides ----------------------------------------------------------------


def flight_callables(
    svc: BenchService, raw: flight.FlightClient, workload: str, nbatches: int
) -> tuple[Callable[[], object], Callable[[], object]]:
    """(vgi-flight, raw) callables for every workload but "turn" (which needs an open stream)."""
    batch = small_batch(1)

    def raw_add() -> int:
        result = list(raw.do_action(flight.Action("add", ipc(small_add_batch(2, 40)))))[-1]
        return int(read_one(result.body).column(0)[0].as_py())

    def vgi_exchange() -> None:
        with svc.echo() as session:
            for _ in range(20):
                session.exchange(AnnotatedBatch(batch))

    def raw_exchange() -> None:
        writer, reader = raw.do_exchange(flight.FlightDescriptor.for_command(b"echo"))
        writer.begin(SMALL_SCHEMA)
        for _ in range(20):
            writer.write_batch(batch)
            reader.read_chunk()
        writer.done_writing()
        for _ in reader:
            pass
        writer.close()

    table: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "noop": (lambda: svc.noop(), lambda: list(raw.do_action(flight.Action("noop", b"")))),
        "add": (lambda: svc.add(a=2, b=40), raw_add),
        "small": (
            lambda: sum(1 for _ in svc.small_batches(count=50)),
            lambda: sum(1 for _ in raw.do_get(flight.Ticket(b"small:50"))),
        ),
        "exchange20": (vgi_exchange, raw_exchange),
        "bulk": (
            lambda: sum(1 for _ in svc.bulk(batches=nbatches)),
            lambda: sum(1 for _ in raw.do_get(flight.Ticket(f"bulk:{nbatches}".encode()))),
        ),
    }
    return table[workload]


def flight_turns(
    svc: BenchService, raw: flight.FlightClient, count: int, warmup: int
) -> tuple[list[float], list[float]]:
    """One round of single exchange round trips inside open streams, vgi-flight then raw."""
    batch = small_batch(1)
    with svc.echo() as session:
        latency_samples(lambda: session.exchange(AnnotatedBatch(batch)), warmup)
        vgi = latency_samples(lambda: session.exchange(AnnotatedBatch(batch)), count)
    writer, reader = raw.do_exchange(flight.FlightDescriptor.for_command(b"echo"))
    writer.begin(SMALL_SCHEMA)

    def raw_turn() -> None:
        writer.write_batch(batch)
        reader.read_chunk()

    latency_samples(raw_turn, warmup)
    raw_samples = latency_samples(raw_turn, count)
    writer.done_writing()
    for _ in reader:
        pass
    writer.close()
    return vgi, raw_samples


# --- the run -------------------------------------------------------------------------------------


def run(plan: Plan, python: Path | None, skip_reason: str | None, http_ok: bool) -> dict[str, Any]:
    names = ["vgi-flight", "raw flight", *(f"vgi-rpc {t}" for t in TRANSPORTS)]
    sides: dict[str, dict[str, Side]] = {w.key: {n: Side() for n in names} for w in WORKLOADS}
    versions: dict[str, Any] = {}
    addresses: dict[str, str | None] = {"pipe": None, "subprocess": None}
    for w in WORKLOADS:
        for t in TRANSPORTS:
            if python is None:
                sides[w.key][f"vgi-rpc {t}"].skipped = skip_reason
            elif t == "http" and not http_ok:
                sides[w.key][f"vgi-rpc {t}"].skipped = "skipped: vgi-rpc[http] not installed"
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        vgi_loc = stack.enter_context(server_process("vgi"))
        raw_loc = stack.enter_context(server_process("raw"))
        if python is not None:
            sock_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="vgirpc-bench-"))
            for t, address in (("unix", os.path.join(sock_dir, "rpc.sock")), ("http", None)):
                if t == "http" and not http_ok:
                    continue
                try:
                    addresses[t] = stack.enter_context(vgirpc_server(python, t, address))
                except RuntimeError as exc:
                    print(f"error: {exc}", file=sys.stderr, flush=True)
                    for w in WORKLOADS:
                        sides[w.key][f"vgi-rpc {t}"].skipped = f"error: {exc}"
        raw = flight.connect(raw_loc)
        stack.callback(raw.close)
        svc = stack.enter_context(connect(BenchService, vgi_loc))
        warmed: set[str] = set()
        for w in WORKLOADS:
            bulk = w.kind == "bulk"
            rounds = plan.bulk_rounds if bulk else plan.rounds
            count = plan.bulk_per_round if bulk else plan.per_round if w.kind == "latency" else plan.stream_per_round
            warmup = 1 if bulk else max(3, count // 10)
            batches = plan.bulk_batches if bulk else 0
            for r in range(rounds):
                # vgi-flight and raw: warmed up once (as benchmarks.run does), then one round each
                if w.key == "turn":
                    v, rw = flight_turns(svc, raw, count, warmup)
                else:
                    vgi_fn, raw_fn = flight_callables(svc, raw, w.key, batches)
                    if w.key not in warmed:
                        for fn in (vgi_fn, raw_fn):
                            latency_samples(fn, warmup)
                        warmed.add(w.key)
                    v = latency_samples(vgi_fn, count)
                    rw = latency_samples(raw_fn, count)
                sides[w.key]["vgi-flight"].samples += v
                sides[w.key]["raw flight"].samples += rw
                # vgi-rpc: one short subprocess per transport, the order rotating between rounds
                order = TRANSPORTS[r % len(TRANSPORTS) :] + TRANSPORTS[: r % len(TRANSPORTS)]
                for t in order:
                    side = sides[w.key][f"vgi-rpc {t}"]
                    if side.skipped is not None or python is None:
                        continue
                    try:
                        samples, meta = measure_vgirpc(python, t, addresses.get(t), w.key, count, warmup, batches)
                    except (RuntimeError, ValueError, KeyError) as exc:
                        side.skipped = f"error: {exc}"
                        print(side.skipped, file=sys.stderr, flush=True)
                        continue
                    side.samples += samples
                    versions = {k: meta[k] for k in ("python", "vgi_rpc", "pyarrow")}
            print(f"  {w.title}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return {"sides": sides, "names": names, "vgirpc_versions": versions, "seconds": time.perf_counter() - started}


@dataclass
class Row:
    workload: str
    unit: str
    values: dict[str, float | None]  # per side: median (us, ms or GB/s) or p99 (us)
    ratios: dict[str, float | None]  # per vgi-rpc transport: vgi-flight / vgi-rpc-<transport>
    notes: dict[str, str] = field(default_factory=dict)  # per side: why there is no figure
    samples: dict[str, int] = field(default_factory=dict)


def rows_of(result: dict[str, Any], plan: Plan) -> list[Row]:
    rows: list[Row] = []
    nbytes = plan.bulk_batches * bulk_batch().nbytes
    for w in WORKLOADS:
        sides: dict[str, Side] = result["sides"][w.key]
        figures: list[tuple[str, str, Callable[[list[float]], float]]]
        if w.kind == "latency":
            figures = [
                (w.title, "us p50", lambda s: statistics.median(s) * 1e6),
                (f"{w.title} p99", "us p99", lambda s: percentile(s, 0.99) * 1e6),
            ]
        elif w.kind == "ms":
            figures = [(w.title, "ms", lambda s: statistics.median(s) * 1e3)]
        else:
            figures = [
                (
                    f"{w.title} {nbytes / 2**30:.2f} GiB",
                    "GB/s",
                    lambda s: statistics.median([nbytes / x / 1e9 for x in s]),
                )
            ]
        for title, unit, fig in figures:
            values = {
                n: (fig(side.samples) if side.samples and side.skipped is None else None) for n, side in sides.items()
            }
            notes = {n: side.skipped for n, side in sides.items() if side.skipped is not None}
            vgi = values["vgi-flight"]
            ratios: dict[str, float | None] = {}
            for t in TRANSPORTS:
                peer = values[f"vgi-rpc {t}"]
                ratios[t] = vgi / peer if vgi is not None and peer else None
            rows.append(Row(title, unit, values, ratios, notes, {n: len(s.samples) for n, s in sides.items()}))
    return rows


def print_table(rows: list[Row], names: list[str]) -> None:
    short = {"vgi-flight": "vgi-flight", "raw flight": "raw flight"} | {
        f"vgi-rpc {t}": f"rpc {t[:7]}" for t in TRANSPORTS
    }
    header = f"{'workload':<36} {'unit':<7}" + "".join(f" {short[n]:>11}" for n in names)
    header += "".join(f" {'/' + t[:7]:>9}" for t in TRANSPORTS)
    print(header)
    for row in rows:
        line = f"{row.workload:<36} {row.unit:<7}"
        for n in names:
            v = row.values[n]
            note = row.notes.get(n, "")
            blank = "skipped" if note.startswith("skipped") else "error" if note else "-"
            line += f" {v:>11.2f}" if v is not None else f" {blank:>11}"
        for t in TRANSPORTS:
            ratio = row.ratios[t]
            line += f" {ratio:>8.2f}x" if ratio is not None else f" {'-':>9}"
        print(line)
    notes = sorted({note for row in rows for note in row.notes.values()})
    for note in notes:
        sides = sorted({n for row in rows for n, v in row.notes.items() if v == note})
        print(f"{', '.join(sides)}: {note}")
    print(
        "/<transport> = vgi-flight / vgi-rpc over that transport, measured in this run "
        "(times: lower is better, so < 1x means vgi-flight is faster; GB/s: higher is better, so > 1x means "
        "vgi-flight is faster)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and samples, 0.1 GiB bulk (a smoke run)")
    parser.add_argument("--json", help="also write the figures and every sample to this file")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    python, skip_reason, http_ok = vgirpc_python()
    if skip_reason:
        print(skip_reason, file=sys.stderr)
    result = run(plan, python, skip_reason, http_ok)
    rows = rows_of(result, plan)
    print_table(rows, result["names"])
    versions = result["vgirpc_versions"]
    if versions:
        print(
            f"vgi-rpc {versions['vgi_rpc']} on Python {versions['python']} (pyarrow {versions['pyarrow']}); "
            f"vgi-flight on Python {sys.version.split()[0]}; {result['seconds']:.0f} s"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "plan": asdict(plan),
                    "vgirpc": versions,
                    "python": sys.version.split()[0],
                    "rows": [asdict(r) for r in rows],
                    "samples": {w: {n: asdict(s) for n, s in sides.items()} for w, sides in result["sides"].items()},
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
