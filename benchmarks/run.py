"""vgi-flight benchmark: every workload beside the same workload on raw pyarrow.flight, in one run.

    python -m benchmarks.run [--quick] [--json results.json]

Servers run in child processes on 127.0.0.1; the client runs here. Rounds of the two sides are
interleaved so that machine noise hits both alike. Figures are medians over rounds (p99 for
latency) and each vgi-flight figure is reported as a ratio to raw pyarrow.flight from this run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.flight as flight

from benchmarks.services import SMALL_SCHEMA, BenchService, bulk_batch, ipc, read_one, small_batch
from vgi_flight import AnnotatedBatch, connect

BULK_ROUNDS = 9  # one sample per round: more rounds steady the median of the throughput rows
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextmanager
def server_process(which: str, *options: str) -> Iterator[str]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.services", which, *options],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    location = proc.stdout.readline().strip()
    try:
        yield location
    finally:
        proc.kill()
        proc.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Row:
    workload: str
    unit: str
    vgi: float
    raw: float
    ratio: float
    vgi_p99: float | None = None
    raw_p99: float | None = None
    target: str = ""


def latency_samples(fn: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def interleave(
    vgi: Callable[[], object], raw: Callable[[], object], rounds: int, per_round: int
) -> tuple[list[float], list[float]]:
    """Alternate rounds of the two sides; return all samples of each."""
    for fn in (vgi, raw):  # warm up
        latency_samples(fn, max(3, per_round // 10))
    vgi_samples: list[float] = []
    raw_samples: list[float] = []
    for _ in range(rounds):
        vgi_samples += latency_samples(vgi, per_round)
        raw_samples += latency_samples(raw, per_round)
    return vgi_samples, raw_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, noisy)")
    parser.add_argument("--json", help="also write results to this file")
    parser.add_argument("--no-secure", action="store_true", help="skip the mTLS + HMAC rows")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    rounds = 5
    rows: list[Row] = []

    with server_process("vgi") as vgi_loc, server_process("raw") as raw_loc:
        raw = flight.connect(raw_loc)
        raw.wait_for_server(10) if hasattr(raw, "wait_for_server") else None
        with connect(BenchService, vgi_loc) as svc:
            n = max(20, int(400 * scale))

            # unary noop
            v, r = interleave(lambda: svc.noop(), lambda: list(raw.do_action(flight.Action("noop", b""))), rounds, n)
            rows.append(latency_row("unary noop", v, r, "p50 <= 1.3x"))

            # unary add: both sides send a one-row IPC batch and read one back
            def raw_add() -> int:
                body = ipc(small_add_batch(2, 40))
                result = list(raw.do_action(flight.Action("add", body)))[-1]
                return int(read_one(result.body).column(0)[0].as_py())

            v, r = interleave(lambda: svc.add(a=2, b=40), raw_add, rounds, n)
            rows.append(latency_row("unary add", v, r, "p50 <= 1.3x"))

            # producer of 50 one-row batches
            def vgi_small() -> int:
                return sum(1 for _ in svc.small_batches(count=50))

            def raw_small() -> int:
                return sum(1 for _ in raw.do_get(flight.Ticket(b"small:50")))

            m = max(5, int(40 * scale))
            v, r = interleave(vgi_small, raw_small, rounds, m)
            rows.append(median_row("producer 50 small batches", v, r, "ms"))

            # exchange of 20 rounds
            batch = small_batch(1)

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

            v, r = interleave(vgi_exchange, raw_exchange, rounds, m)
            rows.append(median_row("exchange 20 rounds (open+close)", v, r, "ms"))

            # one exchange round trip inside an open stream (the state token is minted every turn)
            v, r = exchange_turns(svc, raw, rounds, n)
            rows.append(latency_row("exchange round trip", v, r, "p50 <= 1.5x"))

            # bulk producer: ~1 GiB (1024 x 1 MiB batches) in the full run
            nbatches = max(64, int(1024 * scale))
            nbytes = nbatches * bulk_batch().nbytes

            def vgi_bulk() -> None:
                for _ in svc.bulk(batches=nbatches):
                    pass

            def raw_bulk() -> None:
                for _ in raw.do_get(flight.Ticket(f"bulk:{nbatches}".encode())):
                    pass

            v, r = interleave(vgi_bulk, raw_bulk, BULK_ROUNDS, 1)
            vg, rg = [nbytes / s / 1e9 for s in v], [nbytes / s / 1e9 for s in r]
            rows.append(
                Row(
                    f"bulk producer {nbytes / 2**30:.2f} GiB",
                    "GB/s",
                    statistics.median(vg),
                    statistics.median(rg),
                    statistics.median(vg) / statistics.median(rg),
                    target=">= 0.9x",
                )
            )
        raw.close()

    if not args.no_secure:
        rows += secure_rows(rounds, max(20, int(400 * scale)), max(64, int(1024 * scale)))
    print_table(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([asdict(r) for r in rows], fh, indent=2)


def exchange_turns(svc: BenchService, raw: flight.FlightClient, rounds: int, n: int) -> tuple[list[float], list[float]]:
    """Latency of one exchange round trip inside an open stream, vgi-flight (token per turn) and raw."""
    batch = small_batch(1)
    with svc.echo() as session:
        writer, reader = raw.do_exchange(flight.FlightDescriptor.for_command(b"echo"))
        writer.begin(SMALL_SCHEMA)

        def raw_turn() -> None:
            writer.write_batch(batch)
            reader.read_chunk()

        samples = interleave(lambda: session.exchange(AnnotatedBatch(batch)), raw_turn, rounds, n)
        writer.done_writing()
        for _ in reader:
            pass
        writer.close()
    return samples


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


def secure_rows(rounds: int, n: int, nbatches: int) -> list[Row]:
    """The same workloads over mTLS, vgi-flight also requiring HMAC-signed requests."""
    import importlib.util
    import tempfile

    from benchmarks.services import HMAC_KEY_ID, HMAC_SECRET
    from vgi_flight import HmacAuth

    spec = importlib.util.spec_from_file_location("certs_generate", os.path.join(ROOT, "certs", "generate.py"))
    assert spec is not None
    assert spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as directory:
        generate.generate(directory, principals=["bench"], force=True)
        files = {n: Path(directory, n).read_bytes() for n in ("ca.pem", "client-bench.pem", "client-bench.key")}
        tls = {
            "tls_root_certs": files["ca.pem"],
            "cert_chain": files["client-bench.pem"],
            "private_key": files["client-bench.key"],
        }
        with (
            server_process("vgi", "--tls", directory, "--hmac") as vgi_loc,
            server_process("raw", "--tls", directory) as raw_loc,
        ):
            raw = flight.FlightClient(raw_loc, **tls)
            with connect(BenchService, vgi_loc, auth=HmacAuth(HMAC_KEY_ID, HMAC_SECRET), **tls) as svc:

                def raw_add() -> int:
                    result = list(raw.do_action(flight.Action("add", ipc(small_add_batch(2, 40)))))[-1]
                    return int(read_one(result.body).column(0)[0].as_py())

                v, r = interleave(lambda: svc.add(a=2, b=40), raw_add, rounds, n)
                rows.append(latency_row("mTLS+HMAC unary add", v, r, ""))

                v, r = exchange_turns(svc, raw, rounds, n)
                rows.append(latency_row("mTLS+HMAC exchange round trip", v, r, "p50 <= 1.6x"))

                nbytes = nbatches * bulk_batch().nbytes
                v, r = interleave(
                    lambda: sum(1 for _ in svc.bulk(batches=nbatches)),
                    lambda: sum(1 for _ in raw.do_get(flight.Ticket(f"bulk:{nbatches}".encode()))),
                    BULK_ROUNDS,
                    1,
                )
                vg, rg = [nbytes / s / 1e9 for s in v], [nbytes / s / 1e9 for s in r]
                rows.append(
                    Row(
                        f"mTLS bulk producer {nbytes / 2**30:.2f} GiB",
                        "GB/s",
                        statistics.median(vg),
                        statistics.median(rg),
                        statistics.median(vg) / statistics.median(rg),
                        target=">= 0.9x",
                    )
                )
            raw.close()
    # Tokens have no raw counterpart: report their cost beside a raw exchange round trip of this run.
    raw_turn_us = next(row.raw for row in rows if row.workload == "mTLS+HMAC exchange round trip")
    mint, verify = token_cost_us()
    share = "share of a raw round trip"
    rows.append(Row("token mint, per turn (small state)", "us", mint, raw_turn_us, mint / raw_turn_us, target=share))
    rows.append(Row("token verify, per resume", "us", verify, raw_turn_us, verify / raw_turn_us, target=share))
    return rows


def small_add_batch(a: int, b: int):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    from benchmarks.services import ADD_PARAMS

    return pa.record_batch([pa.array([a], pa.int64()), pa.array([b], pa.int64())], schema=ADD_PARAMS)


def latency_row(name: str, v: list[float], r: list[float], target: str) -> Row:
    vm, rm = statistics.median(v) * 1e6, statistics.median(r) * 1e6
    return Row(name, "us p50", vm, rm, vm / rm, percentile(v, 0.99) * 1e6, percentile(r, 0.99) * 1e6, target)


def median_row(name: str, v: list[float], r: list[float], unit: str, target: str = "") -> Row:
    vm, rm = statistics.median(v) * 1e3, statistics.median(r) * 1e3
    return Row(name, unit, vm, rm, vm / rm, target=target)


def print_table(rows: list[Row]) -> None:
    print(
        f"{'workload':<34} {'unit':<7} {'vgi-flight':>11} {'raw flight':>11} {'ratio':>7} {'vgi p99':>9} "
        f"{'raw p99':>9}  target"
    )
    for row in rows:
        p99 = f"{row.vgi_p99:>9.1f} {row.raw_p99:>9.1f}" if row.vgi_p99 is not None else f"{'':>9} {'':>9}"
        print(
            f"{row.workload:<34} {row.unit:<7} {row.vgi:>11.2f} {row.raw:>11.2f} {row.ratio:>6.2f}x {p99}  {row.target}"
        )
    print("ratio = vgi-flight / raw pyarrow.flight (for GB/s, higher is better; for times, lower is better)")


if __name__ == "__main__":
    main()
